//! The tokio driver of mesh sync: listens on `node.sync.listen`, dials bootstrap peers and every
//! known member, and runs one [`Session`] per connection — the sans-IO core that authenticates the
//! peer with the [`crate::wire`] handshake, runs Automerge's sync protocol, pings and notices
//! silence. The driver keeps only what needs I/O: sockets, timers, the registry of sessions and
//! dialing. The document itself stays behind the [`Replica`] trait, which the node implements.
//!
//! One session per peer: when two nodes dial each other at once, both keep the session initiated
//! by the smaller DID. Sessions ping; a peer silent for `dead_after` is dropped and redialed with
//! backoff.
//!
//! Membership (SWIM, [`crate::membership`]) runs next to the sessions on a UDP socket bound to the
//! sync listener's address and port: its view is what [`Driver::status`] reports as alive, suspect
//! or dead, and the dialer dials peers it reports alive at once and peers it reports down rarely.
//!
//! With `mdns` on, [`crate::discovery`] registers the node on the local network and proposes the
//! members it finds there as extra dial and announce targets.

mod mdns;
mod swim;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::did::DidKey;
use crate::doc::PeerSync;
use crate::identity::NodeIdentity;
use crate::membership::{Liveness, MembershipConfig};
use crate::session::{self, CloseReason, Event, Output, Session, SessionConfig};

/// What the driver needs from the node's replicated document.
pub trait Replica: Send + Sync + 'static {
    /// Whether `did` is a member of the mesh (may connect).
    fn is_member(&self, did: &DidKey) -> bool;
    /// The key that signs for `did` now (handshakes and datagrams verify with it): the last key of
    /// its key event chain; the default, the DID's own key, suits a state without rotations.
    fn current_key(&self, did: &DidKey) -> [u8; 32] {
        did.public_key()
    }
    /// Whether `event`, carried by a peer's `Hello`, is the next rotation of its DID after the
    /// events known here (`State::extends_chain`); the default accepts none.
    fn extends_chain(&self, event: &crate::kel::KeyEvent) -> bool {
        let _ = event;
        false
    }
    /// Members other than this node with the sync address they announced.
    fn peer_addresses(&self) -> Vec<(DidKey, String)>;
    /// The next sync message for `peer`, if any.
    fn generate(&self, peer: &DidKey, sync: &mut PeerSync) -> Option<Vec<u8>>;
    /// Applies a sync message from `peer` (persisting it before returning).
    fn receive(&self, peer: &DidKey, sync: &mut PeerSync, message: &[u8]) -> Result<(), String>;
    /// The epochs the replica holds ([`session::Document::epochs`]); default the genesis epoch.
    fn epochs(&self) -> crate::epoch::Announce {
        crate::epoch::Announce::genesis()
    }
    /// The next sync message of epoch `seed` ([`session::Document::generate_in`]); the default
    /// serves the genesis epoch through [`Replica::generate`].
    fn generate_in(&self, peer: &DidKey, seed: &[u8; 32], sync: &mut PeerSync) -> Option<Vec<u8>> {
        (*seed == crate::epoch::Epoch::genesis().seed).then(|| self.generate(peer, sync))?
    }
    /// Applies a sync message of epoch `seed` ([`session::Document::receive_in`]); the default
    /// serves the genesis epoch through [`Replica::receive`].
    fn receive_in(&self, peer: &DidKey, seed: &[u8; 32], sync: &mut PeerSync, message: &[u8]) -> Result<(), String> {
        if *seed == crate::epoch::Epoch::genesis().seed {
            return self.receive(peer, sync, message);
        }
        Ok(())
    }
    /// A peer announced its epochs ([`session::Document::offer`]); the default ignores it.
    fn offer(&self, peer: &DidKey, announce: &crate::epoch::Announce) {
        let _ = (peer, announce);
    }
}

/// Driver settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Addresses to dial at start (`host:port`), whatever DID answers there (it must be a member).
    pub bootstrap: Vec<String>,
    /// Largest accepted frame.
    pub max_frame: usize,
    /// How often an idle session pings.
    pub ping_interval: Duration,
    /// A peer silent this long is dropped.
    pub dead_after: Duration,
    /// Longest wait between redials of an unreachable peer.
    pub max_backoff: Duration,
    /// Membership (SWIM over UDP on the sync port); `None` runs without it, and liveness then
    /// comes from the sync sessions alone.
    pub membership: Option<MembershipConfig>,
    /// The wait between redials of a peer membership reports down.
    pub down_backoff: Duration,
    /// Discover members on the local network with mDNS ([`crate::discovery`]); off by default.
    pub mdns: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            bootstrap: Vec::new(),
            max_frame: 64 * 1024 * 1024,
            ping_interval: Duration::from_secs(2),
            dead_after: Duration::from_secs(8),
            max_backoff: Duration::from_secs(10),
            membership: Some(MembershipConfig::default()),
            down_backoff: Duration::from_secs(30),
            mdns: false,
        }
    }
}

/// A peer's state as the driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Membership reports it alive (connected or not); without membership: connected and answering.
    Alive,
    /// Membership suspects it; without membership: connected but silent for more than two ping
    /// intervals.
    Suspect,
    /// Membership reports it down or does not know it; without membership: a known member without
    /// a session.
    Dead,
}

/// One peer in [`Driver::status`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    /// The peer.
    pub did: DidKey,
    /// Its address (as dialed, announced or seen).
    pub addr: String,
    /// Alive, suspect or dead.
    pub state: PeerState,
    /// Seconds since the last sync message exchanged with it (in this session or an earlier one),
    /// if any.
    pub last_sync_secs_ago: Option<u64>,
}

/// A session in the registry: the one session kept per peer.
struct Registered {
    id: u64,
    initiator: DidKey,
    addr: String,
    close: watch::Sender<bool>,
    last_seen: Instant,
    last_sync: Option<Instant>,
}

struct Inner {
    identity: Arc<NodeIdentity>,
    replica: Arc<dyn Replica>,
    config: DriverConfig,
    local_addr: SocketAddr,
    sessions: Mutex<HashMap<DidKey, Registered>>,
    /// The origin of the sessions' time.
    started: Instant,
    dialing: Mutex<HashSet<String>>,
    changed: watch::Sender<u64>,
    shutdown: watch::Receiver<bool>,
    next_id: std::sync::atomic::AtomicU64,
    traffic: Traffic,
    /// Membership's view, refreshed after every membership event; `None` without membership.
    liveness: Mutex<Option<HashMap<DidKey, Liveness>>>,
    /// The last sync with peers whose session has ended.
    past_syncs: Mutex<HashMap<DidKey, Instant>>,
    /// What mDNS found (empty without it).
    discovered: Mutex<Vec<(DidKey, SocketAddr)>>,
    /// Whether the mDNS daemon runs.
    mdns_running: std::sync::atomic::AtomicBool,
    /// The driver's long-running tasks (accept, dial, membership, discovery), for [`Driver::stopped`].
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Bytes and sync messages the driver has sent and received, since start.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes of sync frames written to peers.
    pub bytes_sent: std::sync::atomic::AtomicU64,
    /// Bytes read from peers (all frames).
    pub bytes_received: std::sync::atomic::AtomicU64,
    /// Sync messages sent.
    pub sync_messages_sent: std::sync::atomic::AtomicU64,
    /// Sync messages received.
    pub sync_messages_received: std::sync::atomic::AtomicU64,
    /// Membership datagrams sent.
    pub datagrams_sent: std::sync::atomic::AtomicU64,
    /// Membership datagrams received (refused ones included).
    pub datagrams_received: std::sync::atomic::AtomicU64,
    /// Membership datagrams refused (not from a member, replayed, tampered, stale, malformed).
    pub datagrams_refused: std::sync::atomic::AtomicU64,
}

/// The running driver.
#[derive(Clone)]
pub struct Driver(Arc<Inner>);

impl Driver {
    /// Starts listening on `listener` and dialing; runs until `shutdown` flips to true. With
    /// membership configured, also binds UDP on the listener's address (same port); if that fails
    /// the driver logs a warning and runs without membership. With `mdns`, also starts
    /// [`crate::discovery`] (without it if that fails, with a warning).
    pub fn start(
        listener: std::net::TcpListener,
        identity: Arc<NodeIdentity>,
        replica: Arc<dyn Replica>,
        config: DriverConfig,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let listener = TcpListener::from_std(listener)?;
        let swim = config
            .membership
            .clone()
            .and_then(|membership| match swim::bind(local_addr) {
                Ok(socket) => Some((socket, membership)),
                Err(e) => {
                    tracing::warn!(addr = %local_addr, error = %e, "membership disabled: cannot bind UDP");
                    None
                }
            });
        let discovery = config
            .mdns
            .then(|| crate::discovery::Discovery::start(identity.did(), local_addr))
            .and_then(|started| {
                started
                    .inspect_err(|e| tracing::warn!(error = %e, "mDNS discovery disabled: cannot start"))
                    .ok()
            });
        let (changed, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            identity,
            replica,
            config,
            local_addr,
            sessions: Mutex::new(HashMap::new()),
            started: Instant::now(),
            dialing: Mutex::new(HashSet::new()),
            changed,
            shutdown,
            next_id: std::sync::atomic::AtomicU64::new(1),
            traffic: Traffic::default(),
            liveness: Mutex::new(swim.as_ref().map(|_| HashMap::new())),
            past_syncs: Mutex::new(HashMap::new()),
            discovered: Mutex::new(Vec::new()),
            mdns_running: std::sync::atomic::AtomicBool::new(discovery.is_some()),
            tasks: Mutex::new(Vec::new()),
        });
        let driver = Driver(inner);
        let mut tasks = vec![
            tokio::spawn(driver.clone().accept_loop(listener)),
            tokio::spawn(driver.clone().dial_loop()),
        ];
        if let Some((socket, membership)) = swim {
            tasks.push(tokio::spawn(swim::run(driver.clone(), socket, membership)));
        }
        if let Some(discovery) = discovery {
            tasks.push(tokio::spawn(mdns::run(driver.clone(), discovery)));
        }
        *driver.0.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok(driver)
    }

    /// Resolves once the driver's own tasks have finished after shutdown: the listener is closed,
    /// the dialer stopped, membership has sent its leave and discovery its goodbye. Call it after
    /// flipping the shutdown signal; a second call returns at once.
    pub async fn stopped(&self) {
        let tasks = std::mem::take(&mut *self.0.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// The bound sync address.
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr
    }

    /// Tells every session that the local document changed, so they send what their peer lacks.
    pub fn notify_changed(&self) {
        self.0.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Traffic counters since start.
    pub fn traffic(&self) -> &Traffic {
        &self.0.traffic
    }

    /// Every connected peer and every known member without a session. With membership, a peer's
    /// state is membership's view of it; without, the sessions' (see [`PeerState`]).
    pub fn status(&self) -> Vec<PeerStatus> {
        let now = Instant::now();
        let liveness = self.0.liveness.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let state_of = |did: &DidKey, session_state: PeerState| match &liveness {
            Some(view) => match view.get(did) {
                Some(Liveness::Alive) => PeerState::Alive,
                Some(Liveness::Suspect) => PeerState::Suspect,
                _ => PeerState::Dead,
            },
            None => session_state,
        };
        let past = self.0.past_syncs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let secs_ago = |t: Instant| now.duration_since(t).as_secs();
        let mut out: Vec<PeerStatus> = {
            let sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions
                .iter()
                .map(|(did, s)| {
                    let session_state = if now.duration_since(s.last_seen) > self.0.config.ping_interval * 2 {
                        PeerState::Suspect
                    } else {
                        PeerState::Alive
                    };
                    PeerStatus {
                        did: *did,
                        addr: s.addr.clone(),
                        state: state_of(did, session_state),
                        last_sync_secs_ago: s.last_sync.or_else(|| past.get(did).copied()).map(secs_ago),
                    }
                })
                .collect()
        };
        for (did, addr) in self.0.replica.peer_addresses() {
            if did != self.0.identity.did() && !out.iter().any(|p| p.did == did) {
                out.push(PeerStatus {
                    did,
                    addr,
                    state: state_of(&did, PeerState::Dead),
                    last_sync_secs_ago: past.get(&did).copied().map(secs_ago),
                });
            }
        }
        out.sort_by_key(|p| p.did);
        out
    }

    /// Membership's view of `did`; `None` without membership.
    fn liveness(&self, did: &DidKey) -> Option<Liveness> {
        let view = self.0.liveness.lock().unwrap_or_else(|e| e.into_inner());
        view.as_ref().map(|v| v.get(did).copied().unwrap_or(Liveness::Unknown))
    }

    async fn accept_loop(self, listener: TcpListener) {
        let mut shutdown = self.0.shutdown.clone();
        loop {
            let (stream, addr) = tokio::select! {
                _ = flipped(&mut shutdown) => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "mesh accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let driver = self.clone();
            tokio::spawn(async move {
                if let Err(e) = driver.run_session(stream, false, addr.to_string()).await {
                    tracing::debug!(peer = %addr, error = %e, "mesh session (accepted) ended");
                }
            });
        }
    }

    async fn dial_loop(self) {
        let mut shutdown = self.0.shutdown.clone();
        let mut backoff: HashMap<String, (Instant, Duration)> = HashMap::new();
        let mut was_alive: HashSet<DidKey> = HashSet::new();
        let own = [self.0.local_addr.to_string()];
        loop {
            let mut targets: Vec<(Option<DidKey>, String, Option<Liveness>)> = self
                .0
                .config
                .bootstrap
                .iter()
                .map(|a| (None, a.clone(), None))
                .collect();
            for (did, addr) in self.0.replica.peer_addresses() {
                targets.retain(|(_, a, _)| a != &addr);
                targets.push((Some(did), addr, self.liveness(&did)));
            }
            for (did, addr) in self.discovered() {
                let addr = addr.to_string();
                if !targets.iter().any(|(_, a, _)| *a == addr) {
                    targets.push((Some(did), addr, self.liveness(&did)));
                }
            }
            // Peers membership reports alive first; one that just came alive is dialed at once.
            targets.sort_by_key(|(_, _, liveness)| *liveness != Some(Liveness::Alive));
            let alive: HashSet<DidKey> = targets
                .iter()
                .filter(|(_, _, l)| *l == Some(Liveness::Alive))
                .filter_map(|(did, _, _)| *did)
                .collect();
            for (did, addr, _) in &targets {
                if did.is_some_and(|did| alive.contains(&did) && !was_alive.contains(&did)) {
                    backoff.remove(addr);
                }
            }
            was_alive = alive;
            let now = Instant::now();
            for (did, addr, liveness) in targets {
                if own.contains(&addr) || did == Some(self.0.identity.did()) {
                    continue;
                }
                let connected = {
                    let sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
                    match did {
                        Some(did) => sessions.contains_key(&did),
                        None => sessions.values().any(|s| s.addr == addr),
                    }
                };
                if connected || backoff.get(&addr).is_some_and(|(at, _)| *at > now) {
                    continue;
                }
                if !self
                    .0
                    .dialing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(addr.clone())
                {
                    continue;
                }
                let wait = if liveness == Some(Liveness::Down) {
                    // Membership says it is down: do not hammer it; it is dialed again at once
                    // when it comes back.
                    self.0.config.down_backoff
                } else {
                    backoff.get(&addr).map_or(Duration::from_millis(250), |(_, d)| {
                        (*d * 2).min(self.0.config.max_backoff)
                    })
                };
                backoff.insert(addr.clone(), (now + wait, wait));
                let driver = self.clone();
                tokio::spawn(async move {
                    let result = match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(&addr)).await {
                        Ok(Ok(stream)) => driver.run_session(stream, true, addr.clone()).await,
                        Ok(Err(e)) => Err(format!("connect: {e}")),
                        Err(_) => Err("connect: timed out".into()),
                    };
                    if let Err(e) = result {
                        tracing::debug!(peer = %addr, error = %e, "mesh session (dialed) ended");
                    }
                    driver.0.dialing.lock().unwrap_or_else(|e| e.into_inner()).remove(&addr);
                });
            }
            // A session that ran resets its address's backoff.
            {
                let sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
                for s in sessions.values() {
                    backoff.remove(&s.addr);
                }
            }
            tokio::select! {
                _ = flipped(&mut shutdown) => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Runs one connection from connect to close: feeds a [`Session`] what the socket, the timers
    /// and the rest of the node produce, and carries out what it answers.
    async fn run_session(&self, stream: TcpStream, initiator: bool, addr: String) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
        let identity = self.0.identity.clone();
        let mut session = Session::new(&identity, self.session_config());
        let mut link = SessionLink {
            initiator,
            addr,
            registered: None,
        };
        let result = self
            .drive(&mut session, &mut link, nonce, &mut reader, &mut writer)
            .await;
        if let Some((peer, id, _)) = link.registered {
            self.unregister(peer, id);
            tracing::info!(%peer, "mesh peer disconnected");
        }
        result
    }

    async fn drive(
        &self,
        session: &mut Session<'_>,
        link: &mut SessionLink,
        nonce: [u8; 32],
        reader: &mut tokio::net::tcp::OwnedReadHalf,
        writer: &mut tokio::net::tcp::OwnedWriteHalf,
    ) -> Result<(), String> {
        let mut changed = self.0.changed.subscribe();
        let mut shutdown = self.0.shutdown.clone();
        let mut buf = vec![0u8; 64 * 1024];
        let mut event = Event::Connected {
            initiator: link.initiator,
            nonce,
        };
        loop {
            let outputs = self.handle(session, event);
            if let ControlFlow::Break(result) = self.carry_out(outputs, link, writer).await {
                return result;
            }
            let deadline = session
                .next_timeout()
                .map_or_else(|| Instant::now() + Duration::from_secs(3600), |t| self.0.started + t);
            let registered = link.registered.is_some();
            let close = async {
                match &mut link.registered {
                    Some((_, _, close)) => flipped(close).await,
                    None => std::future::pending().await,
                }
            };
            event = tokio::select! {
                _ = flipped(&mut shutdown) => Event::Shutdown,
                _ = close => return Ok(()), // replaced by a preferred session
                result = changed.changed(), if registered => {
                    if result.is_err() {
                        return Ok(());
                    }
                    Event::LocalChange
                }
                _ = tokio::time::sleep_until(deadline) => Event::Tick,
                read = reader.read(&mut buf) => {
                    let n = read.map_err(|e| e.to_string())?;
                    if let Some((peer, id, _)) = &link.registered {
                        self.touch(*peer, *id, false);
                        self.0.traffic.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    if n == 0 { Event::Eof } else { Event::Bytes(&buf[..n]) }
                }
            };
        }
    }

    /// Hands `event` to the session; events that may touch the document run where blocking is
    /// allowed (the replica persists what it receives).
    fn handle(&self, session: &mut Session<'_>, event: Event<'_>) -> Vec<Output> {
        let now = self.0.started.elapsed();
        let mut doc = ReplicaDocument(&*self.0.replica);
        match event {
            Event::Bytes(_) | Event::LocalChange => blocking(|| session.handle(event, now, &mut doc)),
            _ => session.handle(event, now, &mut doc),
        }
    }

    /// Carries out the session's outputs in order; breaks with the session's result once it is over.
    async fn carry_out(
        &self,
        outputs: Vec<Output>,
        link: &mut SessionLink,
        writer: &mut tokio::net::tcp::OwnedWriteHalf,
    ) -> ControlFlow<Result<(), String>> {
        for output in outputs {
            match output {
                Output::Transmit { bytes, sync_messages } => {
                    if let Err(e) = write_bytes(writer, &bytes).await {
                        return ControlFlow::Break(Err(e));
                    }
                    if sync_messages > 0 {
                        let traffic = &self.0.traffic;
                        traffic
                            .sync_messages_sent
                            .fetch_add(sync_messages as u64, Ordering::Relaxed);
                        traffic.bytes_sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        if let Some((peer, id, _)) = &link.registered {
                            self.touch(*peer, *id, true);
                        }
                    }
                }
                Output::Established { peer } => {
                    let initiator_did = if link.initiator { self.0.identity.did() } else { peer };
                    match self.register(peer, initiator_did, link.addr.clone()) {
                        Some((id, close)) => link.registered = Some((peer, id, close)),
                        None => return ControlFlow::Break(Ok(())), // a preferred session to this peer exists
                    }
                    tracing::info!(%peer, addr = %link.addr, "mesh peer connected");
                }
                Output::Applied => {
                    self.0.traffic.sync_messages_received.fetch_add(1, Ordering::Relaxed);
                    if let Some((peer, id, _)) = &link.registered {
                        self.touch(*peer, *id, true);
                    }
                    // What this peer sent may be news for the others.
                    self.notify_changed();
                }
                Output::Closed(reason) => {
                    return ControlFlow::Break(match reason {
                        CloseReason::Shutdown => Ok(()),
                        CloseReason::Refused(e) => {
                            tracing::warn!(peer = %link.addr, error = %e, "mesh handshake refused");
                            Err(e.to_string())
                        }
                        CloseReason::SyncRefused(e) => {
                            let peer = link.registered.as_ref().map(|(peer, _, _)| *peer);
                            tracing::warn!(peer = ?peer, error = %e, "mesh sync message refused");
                            Err(e)
                        }
                        other => Err(other.to_string()),
                    });
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn session_config(&self) -> SessionConfig {
        SessionConfig {
            max_frame: self.0.config.max_frame,
            ping_interval: self.0.config.ping_interval,
            dead_after: self.0.config.dead_after,
            ..SessionConfig::default()
        }
    }

    fn register(&self, peer: DidKey, initiator: DidKey, addr: String) -> Option<(u64, watch::Receiver<bool>)> {
        let mut sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = sessions.get(&peer) {
            if !session::supersedes(self.0.identity.did(), peer, existing.initiator, initiator) {
                return None;
            }
            let _ = existing.close.send(true);
        }
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let (close, close_rx) = watch::channel(false);
        let now = Instant::now();
        sessions.insert(
            peer,
            Registered {
                id,
                initiator,
                addr,
                close,
                last_seen: now,
                last_sync: None,
            },
        );
        Some((id, close_rx))
    }

    fn unregister(&self, peer: DidKey, id: u64) {
        let mut sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.get(&peer).is_some_and(|s| s.id == id)
            && let Some(last_sync) = sessions.remove(&peer).and_then(|s| s.last_sync)
        {
            self.0
                .past_syncs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(peer, last_sync);
        }
    }

    fn touch(&self, peer: DidKey, id: u64, synced: bool) {
        let mut sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sessions.get_mut(&peer).filter(|s| s.id == id) {
            let now = Instant::now();
            s.last_seen = now;
            if synced {
                s.last_sync = Some(now);
            }
        }
    }
}

/// What the driver knows about one connection besides its session.
struct SessionLink {
    initiator: bool,
    /// As dialed, or as seen when accepted.
    addr: String,
    /// The peer, the registry id and the close signal, once registered.
    registered: Option<(DidKey, u64, watch::Receiver<bool>)>,
}

/// The node's replica as a session's [`session::Document`].
struct ReplicaDocument<'r>(&'r dyn Replica);

impl session::Document for ReplicaDocument<'_> {
    fn is_member(&self, did: &DidKey) -> bool {
        self.0.is_member(did)
    }

    fn current_key(&self, did: &DidKey) -> [u8; 32] {
        self.0.current_key(did)
    }

    fn extends_chain(&self, event: &crate::kel::KeyEvent) -> bool {
        self.0.extends_chain(event)
    }

    fn generate(&mut self, peer: &DidKey, sync: &mut PeerSync) -> Option<Vec<u8>> {
        self.0.generate(peer, sync)
    }

    fn receive(&mut self, peer: &DidKey, sync: &mut PeerSync, message: &[u8]) -> Result<(), String> {
        self.0.receive(peer, sync, message)
    }

    fn epochs(&self) -> crate::epoch::Announce {
        self.0.epochs()
    }

    fn generate_in(&mut self, peer: &DidKey, seed: &[u8; 32], sync: &mut PeerSync) -> Option<Vec<u8>> {
        self.0.generate_in(peer, seed, sync)
    }

    fn receive_in(
        &mut self,
        peer: &DidKey,
        seed: &[u8; 32],
        sync: &mut PeerSync,
        message: &[u8],
    ) -> Result<(), String> {
        self.0.receive_in(peer, seed, sync, message)
    }

    fn offer(&mut self, peer: &DidKey, announce: &crate::epoch::Announce) {
        self.0.offer(peer, announce);
    }
}

/// The node's replica as the wire protocol's [`crate::wire::Peers`] (membership datagrams).
struct ReplicaPeers<'r>(&'r dyn Replica);

impl crate::wire::Peers for ReplicaPeers<'_> {
    fn is_admitted(&self, did: &DidKey) -> bool {
        self.0.is_member(did)
    }

    fn current_key(&self, did: &DidKey) -> [u8; 32] {
        self.0.current_key(did)
    }
}

/// Runs `f`, which may block (lock the document, write it to disk), without stalling the other
/// tasks of a multi-threaded runtime; on a current-thread runtime it simply runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Resolves once the flag is true (or its sender is gone), holding no borrow across awaits.
async fn flipped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

async fn write_bytes(writer: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8]) -> Result<(), String> {
    tokio::time::timeout(Duration::from_secs(10), writer.write_all(bytes))
        .await
        .map_err(|_| "write timed out".to_string())?
        .map_err(|e| e.to_string())
}
