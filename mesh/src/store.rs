//! Crash-safe persistence of the [`State`] in the data directory.
//!
//! The state lives in `state.json`; every change is written to a temporary file, synced, renamed
//! over the old file and the directory synced, so a crash leaves either the old or the new state.
//! One process at a time owns a data directory: [`Store::open`] takes an exclusive lock on `lock`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::Error;
use crate::state::{Change, SCHEMA_VERSION, State};

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";

/// The state of one data directory, owned exclusively by this process while it lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
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
        let state = load(&dir.join(STATE_FILE))?;
        Ok(Self {
            dir: dir.to_path_buf(),
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

    /// Applies `changes` and persists the result before returning; on error nothing changes.
    pub fn apply(&mut self, changes: &[Change]) -> Result<(), Error> {
        let mut next = self.state.clone();
        for change in changes {
            next.apply(change);
        }
        save(&self.dir, &next)?;
        self.state = next;
        Ok(())
    }
}

/// Creates `dir` (and parents) if missing and makes it private to its owner.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(Error::io("create data directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(Error::io("set permissions of", dir))
}

fn load(path: &Path) -> Result<State, Error> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(Error::io("read", path)(e)),
    };
    #[derive(serde::Deserialize)]
    struct Header {
        schema: u32,
    }
    let header: Header = serde_json::from_slice(&bytes).map_err(|source| Error::CorruptState {
        path: path.to_path_buf(),
        source,
    })?;
    if header.schema != SCHEMA_VERSION {
        return Err(Error::IncompatibleState {
            path: path.to_path_buf(),
            found: header.schema,
            expected: SCHEMA_VERSION,
        });
    }
    serde_json::from_slice(&bytes).map_err(|source| Error::CorruptState {
        path: path.to_path_buf(),
        source,
    })
}

fn save(dir: &Path, state: &State) -> Result<(), Error> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(".state.json.tmp");
    let bytes = serde_json::to_vec(state).map_err(|source| Error::CorruptState {
        path: path.clone(),
        source,
    })?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io("create", &tmp))?;
    file.write_all(&bytes).map_err(Error::io("write", &tmp))?;
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
                .apply(&[Change::Revoke {
                    jti: "j".into(),
                    exp: 9,
                }])
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
        fs::write(dir.path().join(STATE_FILE), b"{\"schema\":1,\"clients\":").unwrap();
        assert!(matches!(Store::open(dir.path()), Err(Error::CorruptState { .. })));
        fs::write(dir.path().join(STATE_FILE), b"{\"schema\":99}").unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(Error::IncompatibleState { found: 99, .. })
        ));
    }
}
