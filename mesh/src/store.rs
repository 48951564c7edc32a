//! Crash-safe persistence of the replicated [`Doc`] in the data directory, with its materialized
//! [`State`] kept beside it in memory.
//!
//! The document lives in `state.automerge`; every change is written to a temporary file, synced,
//! renamed over the old file and the directory synced, so a crash leaves either the old or the new
//! document. One process at a time owns a data directory: [`Store::open`] takes an exclusive lock on
//! `lock`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::Error;
use crate::doc::{Doc, PeerSync};
use crate::state::{Change, State};

const STATE_FILE: &str = "state.automerge";
const LOCK_FILE: &str = "lock";

/// The state of one data directory, owned exclusively by this process while it lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    saved_size: usize,
    doc: Doc,
    state: State,
    _lock: fs::File,
}

impl Store {
    /// Opens the data directory `dir` (creating it, mode 0700), locks it and loads its state.
    /// Fails with [`Error::Locked`] if another process holds it.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        create_private_dir(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(Error::io("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked(dir.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path)(e)),
        }
        let mut actor = [0u8; 16];
        getrandom::fill(&mut actor).map_err(|_| Error::Random)?;
        let doc = load(&dir.join(STATE_FILE), actor)?;
        let state = doc.state();
        let saved_size = fs::metadata(dir.join(STATE_FILE))
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        Ok(Self {
            dir: dir.to_path_buf(),
            saved_size,
            doc,
            state,
            _lock: lock,
        })
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies local `changes` (as one document change stamped `now`) and persists the document
    /// before returning.
    pub fn apply(&mut self, changes: &[Change], now: u64) -> Result<(), Error> {
        if changes.is_empty() {
            return Ok(());
        }
        self.doc.apply(changes, now)?;
        self.persist()?;
        for change in changes {
            self.state.apply(change);
        }
        Ok(())
    }

    /// The document's heads, hex.
    pub fn heads(&self) -> Vec<String> {
        self.doc.heads()
    }

    /// The next sync message for a peer.
    pub fn generate_sync_message(&mut self, peer: &mut PeerSync) -> Option<Vec<u8>> {
        self.doc.generate_sync_message(peer)
    }

    /// Applies a peer's sync message, persists the document and returns how the state changed.
    pub fn receive_sync_message(&mut self, peer: &mut PeerSync, message: &[u8]) -> Result<Vec<Change>, Error> {
        let changes = self.doc.receive_sync_message(peer, message)?;
        if !changes.is_empty() {
            self.persist()?;
            for change in &changes {
                self.state.apply(change);
            }
        }
        Ok(changes)
    }

    /// Size of the document as last saved, in bytes.
    pub fn document_size(&self) -> usize {
        self.saved_size
    }

    fn persist(&mut self) -> Result<(), Error> {
        let bytes = self.doc.save();
        save(&self.dir, &bytes)?;
        self.saved_size = bytes.len();
        Ok(())
    }
}

/// Creates `dir` (and parents) if missing and makes it private to its owner.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(Error::io("create data directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(Error::io("set permissions of", dir))
}

fn load(path: &Path, actor: [u8; 16]) -> Result<Doc, Error> {
    match fs::read(path) {
        Ok(bytes) => Doc::load(&bytes, actor),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Doc::new(actor)),
        Err(e) => Err(Error::io("read", path)(e)),
    }
}

fn save(dir: &Path, bytes: &[u8]) -> Result<(), Error> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(".state.automerge.tmp");
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

/// Syncs a directory so that a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        {
            let mut store = Store::open(&path).unwrap();
            assert!(matches!(Store::open(&path), Err(Error::Locked(_))));
            store
                .apply(
                    &[Change::Revoke {
                        jti: "j".into(),
                        exp: 9,
                    }],
                    1,
                )
                .unwrap();
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
        assert!(Store::open(dir.path()).is_err());
    }
}
