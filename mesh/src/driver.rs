//! The tokio driver of mesh sync: listens on `node.sync.listen`, dials bootstrap peers and every
//! known member, authenticates each connection with the [`crate::wire`] handshake, and runs
//! Automerge's sync protocol per peer over it. The document itself stays behind the [`Replica`]
//! trait, which the node implements.
//!
//! One session per peer: when two nodes dial each other at once, both keep the session initiated
//! by the smaller DID. Sessions ping; a peer silent for `dead_after` is dropped and redialed with
//! backoff.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::did::DidKey;
use crate::doc::PeerSync;
use crate::identity::NodeIdentity;
use crate::wire::{Frame, FrameDecoder, Handshake, Step};

/// What the driver needs from the node's replicated document.
pub trait Replica: Send + Sync + 'static {
    /// Whether `did` is a member of the mesh (may connect).
    fn is_member(&self, did: &DidKey) -> bool;
    /// Members other than this node with the sync address they announced.
    fn peer_addresses(&self) -> Vec<(DidKey, String)>;
    /// The next sync message for `peer`, if any.
    fn generate(&self, peer: &DidKey, sync: &mut PeerSync) -> Option<Vec<u8>>;
    /// Applies a sync message from `peer` (persisting it before returning).
    fn receive(&self, peer: &DidKey, sync: &mut PeerSync, message: &[u8]) -> Result<(), String>;
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
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            bootstrap: Vec::new(),
            max_frame: 64 * 1024 * 1024,
            ping_interval: Duration::from_secs(2),
            dead_after: Duration::from_secs(8),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// A peer's state as the driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Connected and answering.
    Alive,
    /// Connected but silent for more than two ping intervals.
    Suspect,
    /// A known member without a session.
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
    /// Seconds since the last sync message exchanged with it, if any.
    pub last_sync_secs_ago: Option<u64>,
}

struct Session {
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
    sessions: Mutex<HashMap<DidKey, Session>>,
    dialing: Mutex<HashSet<String>>,
    changed: watch::Sender<u64>,
    shutdown: watch::Receiver<bool>,
    next_id: std::sync::atomic::AtomicU64,
    traffic: Traffic,
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
}

/// The running driver.
#[derive(Clone)]
pub struct Driver(Arc<Inner>);

impl Driver {
    /// Starts listening on `listener` and dialing; runs until `shutdown` flips to true.
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
        let (changed, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            identity,
            replica,
            config,
            local_addr,
            sessions: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashSet::new()),
            changed,
            shutdown,
            next_id: std::sync::atomic::AtomicU64::new(1),
            traffic: Traffic::default(),
        });
        let driver = Driver(inner);
        tokio::spawn(driver.clone().accept_loop(listener));
        tokio::spawn(driver.clone().dial_loop());
        Ok(driver)
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

    /// Every connected peer and every known member without a session.
    pub fn status(&self) -> Vec<PeerStatus> {
        let now = Instant::now();
        let mut out: Vec<PeerStatus> = {
            let sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions
                .iter()
                .map(|(did, s)| PeerStatus {
                    did: *did,
                    addr: s.addr.clone(),
                    state: if now.duration_since(s.last_seen) > self.0.config.ping_interval * 2 {
                        PeerState::Suspect
                    } else {
                        PeerState::Alive
                    },
                    last_sync_secs_ago: s.last_sync.map(|t| now.duration_since(t).as_secs()),
                })
                .collect()
        };
        for (did, addr) in self.0.replica.peer_addresses() {
            if did != self.0.identity.did() && !out.iter().any(|p| p.did == did) {
                out.push(PeerStatus {
                    did,
                    addr,
                    state: PeerState::Dead,
                    last_sync_secs_ago: None,
                });
            }
        }
        out.sort_by_key(|p| p.did);
        out
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
        let own = [self.0.local_addr.to_string()];
        loop {
            let mut targets: Vec<(Option<DidKey>, String)> =
                self.0.config.bootstrap.iter().map(|a| (None, a.clone())).collect();
            for (did, addr) in self.0.replica.peer_addresses() {
                targets.retain(|(_, a)| a != &addr);
                targets.push((Some(did), addr));
            }
            let now = Instant::now();
            for (did, addr) in targets {
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
                let wait = backoff.get(&addr).map_or(Duration::from_millis(250), |(_, d)| {
                    (*d * 2).min(self.0.config.max_backoff)
                });
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

    async fn run_session(&self, stream: TcpStream, initiator: bool, addr: String) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let mut decoder = FrameDecoder::new(self.0.config.max_frame);
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
        let (mut handshake, first) = if initiator {
            Handshake::initiator(&self.0.identity, nonce)
        } else {
            Handshake::responder(&self.0.identity, nonce)
        };
        write_frames(&mut writer, &first).await?;
        let replica = self.0.replica.clone();
        let is_member = move |did: &DidKey| replica.is_member(did);
        let mut buf = vec![0u8; 64 * 1024];
        let peer = loop {
            let frame = match decoder.next().map_err(|e| e.to_string())? {
                Some(frame) => frame,
                None => {
                    let n = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf))
                        .await
                        .map_err(|_| "handshake timed out".to_string())?
                        .map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("closed during handshake".into());
                    }
                    decoder.push(&buf[..n]);
                    continue;
                }
            };
            match handshake.handle(frame, &is_member) {
                Ok(Step::Send(frames)) => write_frames(&mut writer, &frames).await?,
                Ok(Step::Done { peer, send, .. }) => {
                    write_frames(&mut writer, &send).await?;
                    break peer;
                }
                Err(e) => {
                    tracing::warn!(peer = %addr, error = %e, "mesh handshake refused");
                    let _ = write_frames(&mut writer, &[Frame::Bye { reason: e.to_string() }]).await;
                    return Err(e.to_string());
                }
            }
        };
        let initiator_did = if initiator { self.0.identity.did() } else { peer };
        let (id, mut close) = match self.register(peer, initiator_did, addr.clone()) {
            Some(registered) => registered,
            None => return Ok(()), // a preferred session to this peer exists
        };
        tracing::info!(%peer, %addr, "mesh peer connected");
        let result = self
            .sync_loop(peer, id, &mut reader, &mut writer, &mut decoder, &mut close)
            .await;
        self.unregister(peer, id);
        tracing::info!(%peer, "mesh peer disconnected");
        result
    }

    fn register(&self, peer: DidKey, initiator: DidKey, addr: String) -> Option<(u64, watch::Receiver<bool>)> {
        let mut sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = sessions.get(&peer) {
            let me = self.0.identity.did();
            let preferred = me.min(peer);
            if existing.initiator == preferred || initiator != preferred {
                return None;
            }
            let _ = existing.close.send(true);
        }
        let id = self.0.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (close, close_rx) = watch::channel(false);
        let now = Instant::now();
        sessions.insert(
            peer,
            Session {
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
        if sessions.get(&peer).is_some_and(|s| s.id == id) {
            sessions.remove(&peer);
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

    async fn sync_loop(
        &self,
        peer: DidKey,
        id: u64,
        reader: &mut tokio::net::tcp::OwnedReadHalf,
        writer: &mut tokio::net::tcp::OwnedWriteHalf,
        decoder: &mut FrameDecoder,
        close: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut sync = PeerSync::default();
        let mut changed = self.0.changed.subscribe();
        let mut shutdown = self.0.shutdown.clone();
        let mut ping = tokio::time::interval(self.0.config.ping_interval);
        let mut last_heard = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        let mut counter = 0u64;
        sync = self.send_generated(peer, id, sync, writer).await?;
        loop {
            tokio::select! {
                _ = flipped(&mut shutdown) => {
                    let _ = write_frames(writer, &[Frame::Bye { reason: "shutting down".into() }]).await;
                    return Ok(());
                }
                _ = flipped(close) => return Ok(()),
                result = changed.changed() => {
                    if result.is_err() {
                        return Ok(());
                    }
                    sync = self.send_generated(peer, id, sync, writer).await?;
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > self.0.config.dead_after {
                        return Err("peer silent".into());
                    }
                    counter += 1;
                    write_frames(writer, &[Frame::Ping(counter)]).await?;
                }
                read = reader.read(&mut buf) => {
                    let n = read.map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("peer closed the connection".into());
                    }
                    last_heard = Instant::now();
                    self.touch(peer, id, false);
                    self.0.traffic.bytes_received.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    decoder.push(&buf[..n]);
                    while let Some(frame) = decoder.next().map_err(|e| e.to_string())? {
                        match frame {
                            Frame::Sync(message) => {
                                self.0.traffic.sync_messages_received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let replica = self.0.replica.clone();
                                let (back, result) = tokio::task::spawn_blocking(move || {
                                    let mut sync = sync;
                                    let result = replica.receive(&peer, &mut sync, &message);
                                    (sync, result)
                                })
                                .await
                                .map_err(|e| e.to_string())?;
                                sync = back;
                                if let Err(e) = result {
                                    tracing::warn!(%peer, error = %e, "mesh sync message refused");
                                    return Err(e);
                                }
                                self.touch(peer, id, true);
                                sync = self.send_generated(peer, id, sync, writer).await?;
                                // What this peer sent may be news for the others.
                                self.notify_changed();
                            }
                            Frame::Ping(n) => write_frames(writer, &[Frame::Pong(n)]).await?,
                            Frame::Pong(_) => {}
                            Frame::Bye { reason } => return Err(format!("peer said bye: {reason}")),
                            other => return Err(format!("unexpected frame after handshake: {}", other.name())),
                        }
                    }
                }
            }
        }
    }

    async fn send_generated(
        &self,
        peer: DidKey,
        id: u64,
        sync: PeerSync,
        writer: &mut tokio::net::tcp::OwnedWriteHalf,
    ) -> Result<PeerSync, String> {
        let replica = self.0.replica.clone();
        let (sync, messages) = tokio::task::spawn_blocking(move || {
            let mut sync = sync;
            let mut messages = Vec::new();
            while let Some(m) = replica.generate(&peer, &mut sync) {
                messages.push(Frame::Sync(m));
                if messages.len() >= 16 {
                    break;
                }
            }
            (sync, messages)
        })
        .await
        .map_err(|e| e.to_string())?;
        if !messages.is_empty() {
            let traffic = &self.0.traffic;
            traffic
                .sync_messages_sent
                .fetch_add(messages.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let bytes: usize = messages.iter().map(|m| m.encode().len()).sum();
            traffic
                .bytes_sent
                .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
            write_frames(writer, &messages).await?;
            self.touch(peer, id, true);
        }
        Ok(sync)
    }
}

/// Resolves once the flag is true (or its sender is gone), holding no borrow across awaits.
async fn flipped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

async fn write_frames(writer: &mut tokio::net::tcp::OwnedWriteHalf, frames: &[Frame]) -> Result<(), String> {
    let mut bytes = Vec::new();
    for frame in frames {
        bytes.extend_from_slice(&frame.encode());
    }
    tokio::time::timeout(Duration::from_secs(10), writer.write_all(&bytes))
        .await
        .map_err(|_| "write timed out".to_string())?
        .map_err(|e| e.to_string())
}
