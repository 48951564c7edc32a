//! The key store ("local enclave"): named secret blobs. The default keeps them as 0600 files in a
//! directory; the trait lets a TPM, HSM or OS keyring replace it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::Error;

/// Storage for secret key material.
pub trait KeyStore: Send + Sync {
    /// The stored bytes under `name`, or `None` if there are none.
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Stores `bytes` under `name`, durably, replacing what was there.
    fn store(&self, name: &str, bytes: &[u8]) -> Result<(), Error>;
    /// Deletes `name`; deleting a missing entry is not an error.
    fn remove(&self, name: &str) -> Result<(), Error>;
    /// Where `name` lives, for error messages.
    fn describe(&self, name: &str) -> PathBuf;
}

/// A directory of files readable only by their owner (mode 0600, directory 0700).
#[derive(Debug, Clone)]
pub struct FileKeyStore {
    dir: PathBuf,
}

impl FileKeyStore {
    /// Opens (creating if needed) the key directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        fs::create_dir_all(dir).map_err(Error::io("create key directory", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(Error::io("set permissions of", dir))?;
        Ok(Self { dir: dir.to_path_buf() })
    }
}

impl KeyStore for FileKeyStore {
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let path = self.dir.join(name);
        let metadata = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &path)(e)),
        };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::KeyFilePermissions { path, mode });
        }
        fs::read(&path).map(Some).map_err(Error::io("read", &path))
    }

    fn store(&self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
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
        crate::store::sync_dir(&self.dir)
    }

    fn remove(&self, name: &str) -> Result<(), Error> {
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    fn describe(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_open_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileKeyStore::open(dir.path()).unwrap();
        store.store("k", b"secret").unwrap();
        let mode = fs::metadata(dir.path().join("k")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(store.load("k").unwrap().unwrap(), b"secret");
        assert_eq!(store.load("missing").unwrap(), None);
        fs::set_permissions(dir.path().join("k"), fs::Permissions::from_mode(0o644)).unwrap();
        let err = store.load("k").unwrap_err();
        assert!(matches!(err, Error::KeyFilePermissions { .. }), "{err}");
    }
}
