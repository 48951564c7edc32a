//! The driver's half of membership: the UDP socket on the sync port, foca's timers, the periodic
//! bootstrap announces, and the liveness snapshot that [`super::Driver::status`] and the dialer
//! read. Everything else is the sans-IO [`Membership`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::{Driver, flipped};
use crate::clock::{Clock, SystemClock};
use crate::did::DidKey;
use crate::membership::{Membership, MembershipConfig, Output, TimerEvent};
use crate::wire::MAX_DATAGRAM_LEN;

/// Binds the membership socket: UDP on the sync listener's address and port.
pub(super) fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Runs membership until shutdown, then announces the departure.
pub(super) async fn run(driver: Driver, socket: UdpSocket, config: MembershipConfig) {
    let local = driver.0.local_addr;
    // The address this node's SWIM identity carries; members reach it at the address its
    // datagrams come from, this is only the fallback.
    let advertised = if local.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], local.port()))
    } else {
        local
    };
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    let mut membership = Membership::new(
        driver.0.identity.clone(),
        advertised,
        &config,
        u64::from_le_bytes(seed),
        unix_now(),
    );
    let mut runner = Runner {
        driver: driver.clone(),
        socket,
        timers: BTreeMap::new(),
        next_timer: 0,
    };
    let mut shutdown = driver.0.shutdown.clone();
    let mut announce = tokio::time::interval(config.announce_interval);
    announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; MAX_DATAGRAM_LEN + 1];
    loop {
        let next = runner.timers.first_key_value().map(|((at, _), _)| *at);
        tokio::select! {
            _ = flipped(&mut shutdown) => {
                membership.leave(unix_now());
                runner.carry_out(&mut membership).await;
                return;
            }
            _ = announce.tick() => {
                let targets = driver.membership_targets().await;
                membership.bootstrap(targets, unix_now());
            }
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while let Some(entry) = runner.timers.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let timer = entry.remove();
                    membership.handle_timer(timer, unix_now());
                }
            }
            received = runner.socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => {
                    let traffic = &driver.0.traffic;
                    traffic.datagrams_received.fetch_add(1, Ordering::Relaxed);
                    let peers = super::ReplicaPeers(&*driver.0.replica);
                    if membership.handle_datagram(from, &buf[..n], unix_now(), &peers).is_err() {
                        traffic.datagrams_refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // ICMP errors (port unreachable from a stopped peer) surface here on some systems.
                Err(e) => tracing::trace!(error = %e, "membership receive failed"),
            },
        }
        runner.carry_out(&mut membership).await;
        let members = membership.members();
        *driver.0.liveness.lock().unwrap_or_else(|e| e.into_inner()) = Some(members);
    }
}

struct Runner {
    driver: Driver,
    socket: UdpSocket,
    /// Pending foca timers by deadline (and insertion order).
    timers: BTreeMap<(Instant, u64), TimerEvent>,
    next_timer: u64,
}

impl Runner {
    async fn carry_out(&mut self, membership: &mut Membership) {
        while let Some(output) = membership.poll_output() {
            match output {
                Output::Transmit { to, bytes } => match self.socket.send_to(&bytes, to).await {
                    Ok(_) => {
                        self.driver.0.traffic.datagrams_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::trace!(%to, error = %e, "membership send failed"),
                },
                Output::Schedule { after, timer } => {
                    self.next_timer += 1;
                    self.timers.insert((Instant::now() + after, self.next_timer), timer);
                }
            }
        }
    }
}

impl Driver {
    /// Where to announce: the bootstrap addresses (no DID), every member's announced address and
    /// the members mDNS found.
    /// Names that are not socket addresses are resolved (briefly: a slow resolver only delays this
    /// round).
    async fn membership_targets(&self) -> Vec<(Option<DidKey>, SocketAddr)> {
        let mut named: Vec<(Option<DidKey>, String)> =
            self.0.config.bootstrap.iter().map(|a| (None, a.clone())).collect();
        let replica = self.0.replica.clone();
        let members = tokio::task::spawn_blocking(move || replica.peer_addresses())
            .await
            .unwrap_or_default();
        for (did, addr) in members {
            named.retain(|(_, a)| a != &addr);
            named.push((Some(did), addr));
        }
        let mut out = Vec::with_capacity(named.len());
        for (did, name) in named {
            if let Ok(addr) = name.parse::<SocketAddr>() {
                out.push((did, addr));
                continue;
            }
            let resolved = tokio::time::timeout(Duration::from_secs(1), tokio::net::lookup_host(name.as_str())).await;
            if let Ok(Ok(mut addrs)) = resolved
                && let Some(addr) = addrs.next()
            {
                out.push((did, addr));
            }
        }
        for (did, addr) in self.discovered() {
            if !out.iter().any(|(_, a)| *a == addr) {
                out.push((Some(did), addr));
            }
        }
        out
    }
}

fn unix_now() -> u64 {
    SystemClock.now()
}
