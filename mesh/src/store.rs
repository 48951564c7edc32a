//! Crash-safe persistence of the replicated [`Doc`] in the data directory, with its materialized
//! [`State`] kept beside it in memory.
//!
//! # Files
//!
//! - `state.automerge`, the snapshot: the whole document as of the last compaction (absent until
//!   the first one: the document is then the genesis document plus the log). It is only ever
//!   replaced whole: written to a temporary file, synced, renamed over the old one and the
//!   directory synced, so a crash leaves either the old or the new snapshot.
//! - `state.log`, the log: every change set persisted since the snapshot, one checksummed frame
//!   each (format in `store/log.rs`). [`Store::apply`] and [`Store::receive_sync_message`] append one frame
//!   with the changes made since the last one and sync it before returning: a change is
//!   acknowledged only once it is on disk.
//! - `state.automerge.prev` and `state.log.prev`: the snapshot and the log as they were before the
//!   last compaction (hard links, so they cost no copy). Together they hold everything the current
//!   snapshot holds: if `state.automerge` is ever found corrupt (bit rot, a truncating copy), the
//!   document is rebuilt from them and the current log — see *Recovery*.
//! - Epochs (see [`crate::epoch`]): `state.automerge` holds the *current* epoch's document (it
//!   records its own epoch), and the log of epoch `n ≥ 1` is `state-{n}-{seed prefix}.log`, so a log
//!   is only ever replayed into the document it was written for. `previous.automerge` holds the
//!   previous epoch's document as of the switch. A switch writes `previous.automerge`, then the new
//!   `state.automerge`, then the new epoch's empty log, each atomically, then removes the old log: a
//!   crash leaves either the old epoch with its log or the new epoch (its log is created if
//!   missing, stale logs of other epochs are removed at load).
//! - `lock`: one process at a time owns a data directory; [`Store::open`] takes an exclusive lock on
//!   it.
//!
//! # Loading
//!
//! The snapshot (or the genesis document) is loaded, then every intact frame of the log in order.
//! A snapshot that does not load is an error naming the file. A frame that is cut short or fails
//! its checksum (a crash during an append, or damage) ends the log: it is logged with what was
//! dropped, the rest is ignored and everything before it is kept. The damaged log is then set
//! aside as `state.log.damaged` and replaced by a compaction, so new frames never follow damage.
//!
//! # Recovery
//!
//! A snapshot that does not load (Automerge checksums every chunk, so truncation and damage are
//! detected) is set aside as `state.automerge.corrupt`, logged at error level with the reason, and
//! the document is rebuilt from `state.automerge.prev` (or the genesis document when the corrupt
//! snapshot was the first), `state.log.prev` and `state.log`, then written as a new snapshot.
//! Every crash point of a compaction leaves a previous snapshot and logs that add up to everything
//! acknowledged (the order is: link the old snapshot to `.prev`, rename the new one into place,
//! link the old log to `.prev`, replace the log).
//!
//! A corrupt snapshot without a usable previous snapshot and `state.log.prev` (a directory never
//! compacted by this version, one whose previous snapshot is damaged too, or one just past an
//! epoch change) cannot be rebuilt locally: it is an error naming the file, unless
//! [`Config::recover_from_peers`] is set (a node with peers). Then the marker file
//! `recovering-from-peers` is written first, every file of the old document is moved to
//! `corrupt-state/`, the error is logged saying the state is recovered from peers, and the store
//! starts from the genesis document. [`Store::recovering_from_peers`] then holds (across
//! restarts, while the marker is there) until a sync with a peer has brought over everything the
//! peer held, in the best epoch any peer announced; the node does not serve until then. Changes
//! acknowledged here but not yet replicated when the snapshot broke are lost with it (they are in
//! the set-aside files).
//!
//! # Compaction
//!
//! Once the log is larger than both the snapshot and [`Config::compaction_min_log_bytes`], the
//! whole document is written as a new snapshot (atomically, as above) and only then is the log
//! replaced by an empty one (also atomically). A crash between the two steps leaves the new
//! snapshot and the old log: replaying the log's changes over a snapshot that already holds them
//! is harmless, since Automerge ignores changes it has. Each step is durable (file and directory
//! synced) before the next starts, so no order of crash loses an acknowledged change.
//!
//! # Failures
//!
//! If an append or sync fails, the log may end in a partial frame, and a failed sync may have lost
//! pages it reported clean: the log is no longer appended to, and the next persist compacts
//! instead (a new snapshot and a new log), which also retries the changes that failed.

mod log;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use self::log::{Log, Replay};
use crate::Error;
use crate::doc::{Doc, PeerSync, SavePoint};
use crate::epoch::{Announce, Epoch, Offered, Replicas};
use crate::state::{Change, State};

const STATE_FILE: &str = "state.automerge";
const PREVIOUS_FILE: &str = "previous.automerge";
const LOG_FILE: &str = "state.log";
const DAMAGED_LOG_FILE: &str = "state.log.damaged";
const PREV_STATE_FILE: &str = "state.automerge.prev";
const PREV_LOG_FILE: &str = "state.log.prev";
const CORRUPT_STATE_FILE: &str = "state.automerge.corrupt";
const LOCK_FILE: &str = "lock";
/// Present while the store recovers from peers (see *Recovery*); holds the reason.
const RECOVERING_FILE: &str = "recovering-from-peers";
/// Where the files of a document that could not be recovered locally are set aside.
const CORRUPT_DIR: &str = "corrupt-state";

/// How a [`Store`] persists its document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The log is compacted into a new snapshot once it is larger than both the snapshot and this
    /// many bytes. Default 1 MiB.
    pub compaction_min_log_bytes: u64,
    /// The bound on the document's size on disk (`node.sync.crdt_buffer_mb`): once the document
    /// (snapshot and log) passes half of it, and twice its size when its epoch started, the store
    /// starts a new epoch holding the live state only. `None`: unbounded. Default `None`.
    pub epoch_bound_bytes: Option<u64>,
    /// When neither the snapshot nor the previous snapshot and its log can rebuild the document,
    /// start from the genesis document and recover the state from peers (see *Recovery*) instead
    /// of failing. Set for a node that has peers to recover from. Default `false`.
    pub recover_from_peers: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            compaction_min_log_bytes: 1 << 20,
            epoch_bound_bytes: None,
            recover_from_peers: false,
        }
    }
}

/// The state of one data directory, owned exclusively by this process while it lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    config: Config,
    replicas: Replicas,
    state: State,
    /// The document's size on disk when its epoch started here (0 when loaded).
    epoch_floor: u64,
    /// Whether the warning that the live state alone passes half the bound was logged.
    warned_live_state: bool,
    /// Bumped whenever admissions, removals, key events or node information change.
    membership_version: u64,
    /// Everything up to this point is on disk (snapshot and log).
    saved: SavePoint,
    snapshot_size: u64,
    /// The log to append to; `None` when it must be replaced first (after a failed write).
    log: Option<Log>,
    /// Whether the document is being recovered from peers (the marker file is present).
    recovering: bool,
    /// The best epoch a peer announced, so a recovery is complete only in the mesh's epoch.
    best_announced: Option<crate::epoch::EpochId>,
    _lock: fs::File,
}

impl Store {
    /// Opens the data directory `dir` (creating it, mode 0700), locks it and loads its state, with
    /// the default [`Config`]. Fails with [`Error::Locked`] if another process holds it.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        Self::open_with(dir, Config::default())
    }

    /// Like [`Store::open`], persisting as `config` says.
    pub fn open_with(dir: &Path, config: Config) -> Result<Self, Error> {
        create_private_dir(dir)?;
        let lock = lock(dir)?;
        let mut actor = [0u8; 16];
        getrandom::fill(&mut actor).map_err(|_| Error::Random)?;
        let (mut doc, snapshot_size, recovered) = match load_snapshot(&dir.join(STATE_FILE), actor) {
            Ok((doc, size)) => (doc, size, false),
            Err(Error::CorruptDocument { reason }) => match recover_snapshot(dir, actor, reason) {
                Ok(doc) => (doc, 0, true),
                Err(Error::CorruptDocument { reason }) if config.recover_from_peers => {
                    (start_from_peers(dir, actor, &reason)?, 0, true)
                }
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let recovering = dir.join(RECOVERING_FILE).exists();
        let log_name = log_name(doc.epoch());
        remove_stale_logs(dir, &log_name);
        let log_path = dir.join(&log_name);
        let replay = Replay::read(&log_path)?;
        let damage = match &replay {
            Some(replay) => replay_log(&mut doc, replay, &log_path),
            None => None,
        };
        if replay.as_ref().is_some_and(|r| r.frames() > 1) {
            let saved = doc.save();
            doc.reload(&saved);
        }
        let state = doc.state();
        let previous = load_previous(&dir.join(PREVIOUS_FILE), doc.epoch(), actor);
        let mut store = Self {
            dir: dir.to_path_buf(),
            config,
            saved: doc.save_point(),
            replicas: Replicas::new(doc, previous, actor),
            state,
            epoch_floor: 0,
            warned_live_state: false,
            membership_version: 0,
            snapshot_size,
            log: None,
            recovering,
            best_announced: None,
            _lock: lock,
        };
        match (replay, damage) {
            (Some(_), Some(_)) => store.replace_damaged_log(!recovered),
            (Some(replay), None) if replay.len() >= log::MAGIC.len() as u64 => {
                store.log = Some(Log::open(&log_path, replay.len())?);
            }
            // No log (a directory written before there was one) or an empty file.
            _ => store.log = Some(Log::create(dir, &log_name)?),
        }
        if recovered {
            store.write_snapshot()?;
            tracing::warn!(dir = %dir.display(), "wrote a new state snapshot from the recovered document");
        }
        Ok(store)
    }

    /// Applies local `changes` (as one document change stamped `now`) and persists them before
    /// returning.
    pub fn apply(&mut self, changes: &[Change], now: u64) -> Result<(), Error> {
        if changes.is_empty() {
            return Ok(());
        }
        self.replicas.current_mut().apply(changes, now)?;
        self.persist()?;
        self.applied(changes);
        self.bound()
    }

    /// The next sync message for a peer.
    pub fn generate_sync_message(&mut self, peer: &mut PeerSync) -> Option<Vec<u8>> {
        self.replicas.current().generate_sync_message(peer)
    }

    /// Applies a peer's sync message, persists what it added and returns how the state changed.
    pub fn receive_sync_message(&mut self, peer: &mut PeerSync, message: &[u8]) -> Result<Vec<Change>, Error> {
        let changes = self.replicas.current_mut().receive_sync_message(peer, message)?;
        self.persist()?;
        self.applied(&changes);
        self.bound()?;
        let seed = self.epoch().seed;
        self.note_sync(&seed, peer);
        Ok(changes)
    }

    /// The epochs this store holds, to announce to peers.
    pub fn announce(&self) -> Announce {
        self.replicas.announce()
    }

    /// The current epoch.
    pub fn epoch(&self) -> &Epoch {
        self.replicas.current().epoch()
    }

    /// The next sync message of epoch `seed` (current or previous) for a peer.
    pub fn generate_in(&mut self, seed: &[u8; 32], peer: &mut PeerSync) -> Option<Vec<u8>> {
        self.replicas.generate(seed, peer)
    }

    /// Applies a peer's sync message of epoch `seed`, persists what it added (changes to the
    /// previous epoch are carried forward into the current one, stamped `now`) and returns how the
    /// state changed. A message of an epoch not held here changes nothing.
    pub fn receive_in(
        &mut self,
        seed: &[u8; 32],
        peer: &mut PeerSync,
        message: &[u8],
        now: u64,
    ) -> Result<Vec<Change>, Error> {
        let epoch = self.epoch().id();
        let changes = self.replicas.receive(seed, peer, message, now)?;
        if self.epoch().id() == epoch {
            self.persist()?;
        } else {
            // It completed an epoch received from peers and moved to it.
            self.persist_switch()?;
        }
        self.applied(&changes);
        self.bound()?;
        self.note_sync(seed, peer);
        Ok(changes)
    }

    /// Moves to a peer's announced epoch if it is better and can be built here (see
    /// [`Replicas::offer`]); the switch is durable before this returns.
    pub fn offer(&mut self, announce: &Announce, now: u64) -> Result<Offered, Error> {
        let announced = announce.current.id();
        if self
            .best_announced
            .as_ref()
            .is_none_or(|best| announced.better_than(best))
        {
            self.best_announced = Some(announced);
        }
        let offered = self.replicas.offer(announce, now)?;
        if let Offered::Switched(changes) = &offered {
            self.applied(changes);
            self.persist_switch()?;
            tracing::info!(
                epoch = announce.current.number,
                "moved to a peer's new epoch of the replicated document"
            );
        }
        Ok(offered)
    }

    /// Starts a new epoch now, from the current document at its heads (done automatically when
    /// the document passes its bound, see [`Config::epoch_bound_bytes`]).
    pub fn start_epoch(&mut self) -> Result<(), Error> {
        self.replicas.start_next();
        self.persist_switch()?;
        tracing::info!(
            epoch = self.epoch().number,
            bytes = self.snapshot_size,
            "started a new epoch of the replicated document"
        );
        Ok(())
    }

    /// A number that changes whenever admissions, removals, key events or node information change
    /// (what [`State::members`] and the members' announced addresses depend on), so callers can
    /// cache what they derive from them.
    pub fn membership_version(&self) -> u64 {
        self.membership_version
    }

    /// Sets the bound (see [`Config::epoch_bound_bytes`]).
    pub fn set_epoch_bound(&mut self, bytes: Option<u64>) {
        self.config.epoch_bound_bytes = bytes;
    }

    /// Writes the whole document as a new snapshot and starts an empty log. Done automatically
    /// when the log grows past its threshold (see [`Config`]).
    pub fn compact(&mut self) -> Result<(), Error> {
        self.write_snapshot()?;
        self.start_log()
    }

    /// Whether the document is being recovered from peers: it was started from the genesis
    /// document because no good local copy was left, and no peer has synced its state here yet
    /// (see *Recovery*). Survives restarts until the first complete sync.
    pub fn recovering_from_peers(&self) -> bool {
        self.recovering
    }

    /// After a sync message of epoch `seed` from a peer: ends a recovery from peers once this
    /// store holds everything the peer said it holds, in the best epoch announced to it.
    fn note_sync(&mut self, seed: &[u8; 32], peer: &PeerSync) {
        if !self.recovering {
            return;
        }
        let current = self.epoch().id();
        let in_best_epoch = self
            .best_announced
            .as_ref()
            .is_none_or(|best| !best.better_than(&current));
        if current.seed != *seed || !in_best_epoch || !self.replicas.current().holds_heads_of(peer) {
            return;
        }
        let marker = self.dir.join(RECOVERING_FILE);
        if let Err(e) = fs::remove_file(&marker)
            .map_err(Error::io("remove", &marker))
            .and_then(|()| sync_dir(&self.dir))
        {
            tracing::error!(error = %e, "cannot remove the recovery marker; the recovery ends here all the same");
        }
        self.recovering = false;
        tracing::warn!(
            epoch = current.number,
            clients = self.state.clients.len(),
            revocations = self.state.revocations.len(),
            "recovered the replicated state from a peer; serving again"
        );
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The document's heads, hex.
    pub fn heads(&self) -> Vec<String> {
        self.replicas.current().heads()
    }

    /// Size of the document on disk (snapshot and log) as last persisted, in bytes.
    pub fn document_size(&self) -> usize {
        let log = self.log.as_ref().map_or(0, Log::len);
        usize::try_from(self.snapshot_size + log).unwrap_or(usize::MAX)
    }

    /// Applies `changes` to the materialized state.
    fn applied(&mut self, changes: &[Change]) {
        for change in changes {
            if matches!(
                change,
                Change::Admit(_) | Change::RemoveNode(_) | Change::PutKeyEvent(_) | Change::PutNode(_)
            ) {
                self.membership_version += 1;
            }
            self.state.apply(change);
        }
    }

    /// Makes everything the document holds durable: one frame appended to the log, or a
    /// compaction when the log cannot be appended to or has grown past its threshold.
    fn persist(&mut self) -> Result<(), Error> {
        let point = self.replicas.current().save_point();
        if point == self.saved {
            return Ok(());
        }
        let Some(log) = &mut self.log else {
            return self.compact();
        };
        let chunk = self.replicas.current().save_after(&self.saved);
        if let Err(e) = log.append(&chunk) {
            self.log = None;
            return Err(e);
        }
        self.saved = point;
        if log.len() > self.snapshot_size.max(self.config.compaction_min_log_bytes)
            && let Err(e) = self.compact()
        {
            // The change is already durable in the log; compaction is retried on the next persist.
            tracing::warn!(error = %e, dir = %self.dir.display(), "compacting the state log failed");
        }
        Ok(())
    }

    /// Writes the whole document as the snapshot, atomically.
    fn write_snapshot(&mut self) -> Result<(), Error> {
        let point = self.replicas.current().save_point();
        let bytes = self.replicas.current().save();
        keep_previous(&self.dir, STATE_FILE, PREV_STATE_FILE)?;
        write_atomically(&self.dir, STATE_FILE, &bytes)?;
        self.saved = point;
        self.snapshot_size = bytes.len() as u64;
        Ok(())
    }

    /// Replaces the log by an empty one; only once the snapshot holds everything the log does.
    fn start_log(&mut self) -> Result<(), Error> {
        self.log = None;
        let log_name = log_name(self.epoch());
        keep_previous(&self.dir, &log_name, PREV_LOG_FILE)?;
        self.log = Some(Log::create(&self.dir, &log_name)?);
        Ok(())
    }

    /// Makes a switch of epoch durable: the previous document, the new snapshot, the new log,
    /// in that order, then the old log is removed.
    fn persist_switch(&mut self) -> Result<(), Error> {
        self.log = None;
        if let Some(previous) = self.replicas.previous() {
            write_atomically(&self.dir, PREVIOUS_FILE, &previous.save())?;
        }
        // The previous snapshot and log (kept for recovery) belong to the old epoch: a log of the
        // old epoch must never be replayed into the new one, so recovery has nothing to fall back
        // on until the new epoch's first compaction.
        let prev_log = self.dir.join(PREV_LOG_FILE);
        match fs::remove_file(&prev_log) {
            Ok(()) => sync_dir(&self.dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &prev_log)(e)),
        }
        self.write_snapshot()?;
        self.start_log()?;
        self.epoch_floor = self.snapshot_size;
        remove_stale_logs(&self.dir, &log_name(self.epoch()));
        Ok(())
    }

    /// Starts a new epoch if the document passed its bound (see [`Config::epoch_bound_bytes`]).
    fn bound(&mut self) -> Result<(), Error> {
        let Some(bound) = self.config.epoch_bound_bytes else {
            return Ok(());
        };
        let size = self.document_size() as u64;
        if size <= bound / 2 {
            return Ok(());
        }
        if size <= self.epoch_floor.saturating_mul(2) {
            if !self.warned_live_state {
                self.warned_live_state = true;
                tracing::warn!(
                    bytes = self.epoch_floor,
                    bound,
                    "the live replicated state alone takes more than a quarter of node.sync.crdt_buffer_mb; \
                     raise it"
                );
            }
            return Ok(());
        }
        self.start_epoch()
    }

    /// After loading a damaged log: writes a snapshot of what was kept, sets the damaged log aside
    /// and starts a new one. On failure the store still works: the next persist compacts.
    /// `pairs_with_previous`: the damaged log followed the snapshot that becomes the previous one
    /// (false after a recovery, when the previous snapshot and log on disk already pair).
    fn replace_damaged_log(&mut self, pairs_with_previous: bool) {
        let damaged = self.dir.join(DAMAGED_LOG_FILE);
        let result = self.write_snapshot().and_then(|()| {
            let log = self.dir.join(log_name(self.epoch()));
            fs::rename(&log, &damaged).map_err(Error::io("rename aside", &damaged))?;
            // The intact frames of the damaged log pair with the previous snapshot.
            if pairs_with_previous {
                keep_previous(&self.dir, DAMAGED_LOG_FILE, PREV_LOG_FILE)?;
            }
            self.start_log()
        });
        match result {
            Ok(()) => tracing::warn!(
                copy = %damaged.display(),
                "wrote a new snapshot of the state kept from the damaged log and set the log aside"
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot replace the damaged state log; will retry on the next change")
            }
        }
    }
}

/// Creates `dir` (and parents) if missing and makes it private to its owner.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(Error::io("create data directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(Error::io("set permissions of", dir))
}

/// Syncs a directory so that a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("sync", dir))
}

/// Takes the exclusive lock on the data directory `dir`.
fn lock(dir: &Path) -> Result<fs::File, Error> {
    let path = dir.join(LOCK_FILE);
    let lock = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(Error::io("open", &path))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked(dir.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(Error::io("lock", &path)(e)),
    }
}

/// The snapshot at `path` and its size, or the genesis document if there is none.
fn load_snapshot(path: &Path, actor: [u8; 16]) -> Result<(Doc, u64), Error> {
    match fs::read(path) {
        Ok(bytes) => match Doc::load(&bytes, actor) {
            Ok(doc) => Ok((doc, bytes.len() as u64)),
            Err(Error::CorruptDocument { reason }) => Err(Error::CorruptDocument {
                reason: format!("{}: {reason}", path.display()),
            }),
            Err(e) => Err(e),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Doc::new(actor), 0)),
        Err(e) => Err(Error::io("read", path)(e)),
    }
}

/// Rebuilds the document after the snapshot failed to load with `reason`: sets the corrupt file
/// aside and loads the previous snapshot (or the genesis document) with the previous log; the
/// current log is loaded by the caller as usual.
fn recover_snapshot(dir: &Path, actor: [u8; 16], reason: String) -> Result<Doc, Error> {
    let prev_log = dir.join(PREV_LOG_FILE);
    if !prev_log.exists() {
        return Err(Error::CorruptDocument { reason });
    }
    let (mut doc, _) = load_snapshot(&dir.join(PREV_STATE_FILE), actor).map_err(|e| Error::CorruptDocument {
        reason: format!("{reason}; the previous snapshot does not load either: {e}"),
    })?;
    if let Some(replay) = log::Replay::read(&prev_log)? {
        replay_log(&mut doc, &replay, &prev_log);
    }
    let corrupt = dir.join(CORRUPT_STATE_FILE);
    fs::rename(dir.join(STATE_FILE), &corrupt).map_err(Error::io("rename aside", &corrupt))?;
    sync_dir(dir)?;
    tracing::error!(
        %reason,
        copy = %corrupt.display(),
        "the state snapshot is corrupt; recovering from the previous snapshot and its log \
         (state.automerge.prev, state.log.prev) and the current log"
    );
    Ok(doc)
}

/// Starts over from the genesis document when no local copy can rebuild the state (`reason`):
/// sets every file of the old document aside in `corrupt-state/`, leaves the recovery marker
/// (durably, before anything else changes) and logs at error level that the state comes back
/// from peers.
fn start_from_peers(dir: &Path, actor: [u8; 16], reason: &str) -> Result<Doc, Error> {
    write_atomically(dir, RECOVERING_FILE, reason.as_bytes())?;
    let aside = dir.join(CORRUPT_DIR);
    create_private_dir(&aside)?;
    let entries = fs::read_dir(dir).map_err(Error::io("read", dir))?;
    let mut moved = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name.starts_with("state.")
            || name == PREVIOUS_FILE
            || (name.starts_with("state-") && name.ends_with(".log"));
        if ours {
            let target = aside.join(name);
            fs::rename(entry.path(), &target).map_err(Error::io("rename aside", &target))?;
            moved.push(name.to_owned());
        }
    }
    sync_dir(&aside)?;
    sync_dir(dir)?;
    tracing::error!(
        %reason,
        set_aside = %aside.display(),
        files = %moved.join(" "),
        "the state snapshot is corrupt and no good local snapshot is left to rebuild it from; \
         starting from an empty document and RECOVERING THE REPLICATED STATE FROM PEERS \
         (the OAuth endpoints answer 503 and /readyz is not ready until a peer has synced)"
    );
    Ok(Doc::new(actor))
}

/// Makes `dir/previous` a hard link to `dir/name` (if it exists), durably: the copy of a file
/// that recovery falls back on, replaced atomically.
fn keep_previous(dir: &Path, name: &str, previous: &str) -> Result<(), Error> {
    let source = dir.join(name);
    if !source.exists() {
        return Ok(());
    }
    let tmp = dir.join(format!(".{previous}.tmp"));
    let _ = fs::remove_file(&tmp);
    fs::hard_link(&source, &tmp).map_err(Error::io("link", &tmp))?;
    let target = dir.join(previous);
    fs::rename(&tmp, &target).map_err(Error::io("rename into place", &target))?;
    sync_dir(dir)
}

/// The log file of `epoch`: `state.log` for the genesis epoch, `state-{n}-{seed prefix}.log` after.
fn log_name(epoch: &Epoch) -> String {
    if epoch.number == 0 {
        return LOG_FILE.to_owned();
    }
    let prefix: String = epoch.seed[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("state-{}-{prefix}.log", epoch.number)
}

/// Removes logs of other epochs than the one named `keep` (left by a switch a crash interrupted).
fn remove_stale_logs(dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_log = name == LOG_FILE || (name.starts_with("state-") && name.ends_with(".log"));
        if is_log && name != keep {
            match fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file = name, "removed the log of an earlier epoch"),
                Err(e) => tracing::warn!(file = name, error = %e, "cannot remove the log of an earlier epoch"),
            }
        }
    }
}

/// The previous epoch's document at `path`, if present, loadable and the epoch before `current`.
fn load_previous(path: &Path, current: &Epoch, actor: [u8; 16]) -> Option<Doc> {
    if current.number == 0 {
        return None;
    }
    let bytes = fs::read(path).ok()?;
    match Doc::load(&bytes, actor) {
        Ok(doc) if doc.epoch().number + 1 == current.number => Some(doc),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "ignoring the previous epoch's document");
            None
        }
    }
}

/// Loads the intact frames of the log at `path` into `doc`, up to the first damaged one or the
/// first Automerge refuses, and returns whether (and why) anything was dropped, having logged it.
///
/// One frame at a time: each costs a pass over the whole document (12 s for 791 frames into
/// 100,000 revocations), but Automerge 0.12 applying more than one frame's changes at once can hold
/// most of a gigabyte: with the state `bench/mesh.sh` leaves, all 432 frames at once left 750 MB
/// resident, and on a second run's state two frames at a time peaked at 914 MB (three: 920 MB,
/// four: 943 MB) against 176 MB one at a time. [`Store::open_with`] then reloads the document from
/// its own save ([`Doc::reload`]).
fn replay_log(doc: &mut Doc, replay: &Replay, path: &Path) -> Option<log::Damage> {
    let mut damage = replay.damage.clone();
    let mut kept = replay.frames();
    for (frame, (offset, chunk)) in replay.chunks().enumerate() {
        if let Err(e) = doc.load_incremental(chunk) {
            let end = replay.damage.as_ref().map_or(replay.len(), |d| d.offset + d.dropped);
            kept = frame;
            damage = Some(log::Damage {
                offset,
                dropped: end - offset,
                reason: format!("frame {frame}: {e}"),
            });
            break;
        }
    }
    if let Some(damage) = &damage {
        tracing::warn!(
            file = %path.display(),
            offset = damage.offset,
            dropped_bytes = damage.dropped,
            kept_frames = kept,
            reason = %damage.reason,
            "dropping the damaged tail of the state log; everything before it is kept"
        );
    }
    damage
}

/// Replaces `dir/name` by `bytes` atomically: a temporary file is written and synced, renamed over
/// it and the directory synced, so a crash leaves either the old or the new content.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Error> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io("create", &tmp))?;
    file.write_all(bytes).map_err(Error::io("write", &tmp))?;
    file.sync_all().map_err(Error::io("sync", &tmp))?;
    fs::rename(&tmp, &path).map_err(Error::io("rename into place", &path))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revoke(jti: &str, exp: u64) -> Change {
        Change::Revoke { jti: jti.into(), exp }
    }

    #[test]
    fn persists_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        {
            let mut store = Store::open(&path).unwrap();
            assert!(matches!(Store::open(&path), Err(Error::Locked(_))));
            store.apply(&[revoke("j", 9)], 1).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.state().revocations.get("j"), Some(&9));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn corrupt_state_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), b"not an automerge document").unwrap();
        let error = Store::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains(STATE_FILE), "{error}");
    }

    #[test]
    fn a_log_with_a_foreign_header_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LOG_FILE), b"something else entirely").unwrap();
        let error = Store::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains(LOG_FILE), "{error}");
    }

    #[test]
    fn each_change_appends_one_frame_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert!(
            !dir.path().join(STATE_FILE).exists(),
            "no snapshot before the first compaction"
        );
        store.apply(&[revoke("a", 9)], 1).unwrap();
        store.apply(&[revoke("b", 9)], 2).unwrap();
        // A change that changes nothing is not persisted.
        store.apply(&[revoke("b", 9)], 3).unwrap();
        let replay = Replay::read(&dir.path().join(LOG_FILE)).unwrap().unwrap();
        assert_eq!(store.document_size() as u64, replay.len());
        assert_eq!((replay.frames(), replay.damage), (2, None));
    }

    #[test]
    fn the_log_is_compacted_past_its_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            compaction_min_log_bytes: 2_000,
            ..Config::default()
        };
        let mut store = Store::open_with(dir.path(), config).unwrap();
        for i in 0..100 {
            store.apply(&[revoke(&format!("jti-{i}"), 9)], i).unwrap();
            assert!(Replay::read(&dir.path().join(LOG_FILE)).unwrap().unwrap().len() <= 2_000 + 1_000);
        }
        assert!(dir.path().join(STATE_FILE).exists());
        assert!(store.snapshot_size > 0);
        let heads = store.heads();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.state().revocations.len(), 100);
        assert_eq!(store.heads(), heads);
    }

    #[test]
    fn a_failed_append_makes_the_next_persist_compact() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.apply(&[revoke("a", 9)], 1).unwrap();
        // As after a failed write: the log is no longer trusted.
        store.log = None;
        store.apply(&[revoke("b", 9)], 2).unwrap();
        assert!(dir.path().join(STATE_FILE).exists());
        let replay = Replay::read(&dir.path().join(LOG_FILE)).unwrap().unwrap();
        assert_eq!(replay.frames(), 0);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.state().revocations.len(), 2);
    }
}
