use std::path::PathBuf;

/// Every failure the `mesh` crate reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `did:key` string is not a well-formed ed25519 `did:key`.
    #[error("invalid did:key: {0}")]
    InvalidDid(&'static str),
    /// A key file has the wrong length or content.
    #[error("key file {path} is malformed: {reason}")]
    MalformedKey {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key file can be read by users other than its owner.
    #[error("key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    KeyFilePermissions {
        /// The offending file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A signed record's signature does not verify against its author.
    #[error("signature on {what} does not verify")]
    BadSignature {
        /// Which record failed.
        what: String,
    },
    /// The state file is not valid JSON of the expected schema.
    #[error("state file {path} is corrupt: {source}")]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The state file was written by an incompatible schema version.
    #[error("state file {path} has schema version {found}, this build reads version {expected}")]
    IncompatibleState {
        /// The state file.
        path: PathBuf,
        /// Version found in the file.
        found: u32,
        /// Version this build supports.
        expected: u32,
    },
    /// Another process holds the data directory's lock.
    #[error("data directory {0} is locked by another meshgate process")]
    Locked(PathBuf),
    /// An I/O operation on the data directory failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The operating system's random number generator failed.
    #[error("random number generator failed")]
    Random,
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Io { action, path, source }
    }
}
