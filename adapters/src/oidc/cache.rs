//! The JWKS disk cache: one JSON file per upstream, written atomically with mode 0600, read at
//! start so verification works after a restart while the upstream is unreachable.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// The cache file's content.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CacheFile {
    /// Format version, 1.
    pub(crate) version: u32,
    /// The configured issuer the documents were fetched for.
    pub(crate) issuer: String,
    /// When the JWKS was fetched, in milliseconds since the Unix epoch.
    pub(crate) fetched_at_ms: u64,
    /// The discovery document, or `null` for an upstream with explicit endpoints.
    pub(crate) discovery: Value,
    /// The JWKS as fetched.
    pub(crate) jwks: Value,
}

impl CacheFile {
    pub(crate) const VERSION: u32 = 1;

    pub(crate) fn fetched_at(&self) -> Duration {
        Duration::from_millis(self.fetched_at_ms)
    }
}

/// Reads the cache file at `path`; `Ok(None)` when there is none.
pub(crate) fn load(path: &Path) -> Result<Option<CacheFile>, Error> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_error(path, source)),
    };
    let file: CacheFile = serde_json::from_slice(&bytes).map_err(|error| Error::InvalidDocument {
        what: "JWKS cache file",
        reason: error.to_string(),
    })?;
    if file.version != CacheFile::VERSION {
        return Err(Error::InvalidDocument {
            what: "JWKS cache file",
            reason: format!("unknown version {}", file.version),
        });
    }
    Ok(Some(file))
}

/// Replaces the cache file at `path` atomically: writes a 0600 temporary file next to it, syncs
/// it, renames it over `path`, and syncs the directory.
pub(crate) fn store(path: &Path, file: &CacheFile) -> Result<(), Error> {
    let bytes = serde_json::to_vec_pretty(file).map_err(|error| io_error(path, error.into()))?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    // A leftover temporary file may carry other permissions; start from none.
    match fs::remove_file(&temporary) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(io_error(&temporary, error)),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(&temporary).map_err(|error| io_error(&temporary, error))?;
    out.write_all(&bytes)
        .and_then(|()| out.sync_all())
        .map_err(|error| io_error(&temporary, error))?;
    drop(out);
    fs::rename(&temporary, path).map_err(|error| io_error(path, error))?;
    if let Some(directory) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        // Makes the rename durable; a failure here loses at most this write.
        let _ = File::open(directory).and_then(|directory| directory.sync_all());
    }
    Ok(())
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::CacheIo {
        path: PathBuf::from(path),
        source,
    }
}
