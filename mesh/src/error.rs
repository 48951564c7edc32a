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
    /// A plugin manifest or plugin record is malformed (bad name, hook, digest or ABI version).
    #[error("invalid plugin: {reason}")]
    BadPlugin {
        /// What is wrong.
        reason: String,
    },
    /// A signed record's signature does not verify against its author.
    #[error("signature on {what} does not verify")]
    BadSignature {
        /// Which record failed.
        what: String,
    },
    /// The node's identity key files and the key events the replicated state holds for its DID
    /// disagree: the key files were replaced or restored from before a rotation.
    #[error("identity key files of {did} do not match its key event {seq} in the replicated state: {reason}")]
    IdentityKeyMismatch {
        /// The node's DID.
        did: crate::did::DidKey,
        /// The key files' seq.
        seq: u64,
        /// How they disagree.
        reason: &'static str,
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
    /// Saved replicated-document bytes cannot be loaded: they are not an Automerge document, or one
    /// without meshgate's genesis change or schema version.
    #[error("replicated document is corrupt: {reason}")]
    CorruptDocument {
        /// What is wrong with it.
        reason: String,
    },
    /// The replicated document was written under another schema major version.
    #[error("replicated document has schema major version {found}, this build reads major version {expected}")]
    IncompatibleDocument {
        /// Major version found in the document.
        found: u64,
        /// Major version this build supports.
        expected: u64,
    },
    /// A peer's sync message does not decode, or none of the changes it carries can be applied.
    #[error("malformed sync message: {reason}")]
    BadSyncMessage {
        /// What is wrong with it.
        reason: String,
    },
    /// Automerge refused a local change to the replicated document; the document is unchanged.
    #[error("cannot change the replicated document: {reason}")]
    DocumentChange {
        /// Why.
        reason: String,
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
    /// A stream frame announces a payload longer than the [`crate::wire::FrameDecoder`]'s limit;
    /// detected from the 4-byte length prefix, before the payload is buffered.
    #[error("mesh frame of {length} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The payload length the frame announced.
        length: u64,
        /// The decoder's configured limit.
        max: usize,
    },
    /// A stream frame has a kind byte this build does not know.
    #[error("unknown mesh frame kind {0}")]
    UnknownFrameKind(u8),
    /// A stream frame's payload does not match its kind (wrong length, invalid UTF-8), or the
    /// decoder was used after it had already failed.
    #[error("malformed mesh frame: {0}")]
    MalformedFrame(&'static str),
    /// The peer speaks another major version of the mesh protocol; minors of one major interoperate.
    #[error(
        "peer speaks mesh protocol {peer_major}.{peer_minor}, this node speaks {our_major}.{our_minor}; \
         the major versions must match"
    )]
    IncompatibleVersion {
        /// This node's major version.
        our_major: u16,
        /// This node's minor version.
        our_minor: u16,
        /// The peer's major version.
        peer_major: u16,
        /// The peer's minor version.
        peer_minor: u16,
    },
    /// A handshake frame arrived out of order (or any frame after the handshake ended or failed).
    #[error("mesh handshake: expected {expected}, received {received}")]
    UnexpectedFrame {
        /// What the handshake was waiting for.
        expected: &'static str,
        /// The kind of frame that arrived.
        received: &'static str,
    },
    /// The peer's DID is not admitted to the mesh.
    #[error("{0} is not admitted to this mesh")]
    NotAdmitted(crate::did::DidKey),
    /// The peer claims this node's own DID: a reflected Hello, or a node connected to itself.
    #[error("peer claims this node's own DID {0}")]
    OwnDid(crate::did::DidKey),
    /// The peer ended the stream with a `Bye` frame during the handshake.
    #[error("peer closed the mesh handshake: {reason}")]
    PeerClosed {
        /// The reason the peer gave.
        reason: String,
    },
    /// A datagram is longer than [`crate::wire::MAX_DATAGRAM_LEN`], or a payload too long to seal.
    #[error("mesh datagram of {length} bytes exceeds the limit of {max} bytes")]
    DatagramTooLarge {
        /// The datagram (or payload) length.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// A datagram is truncated, has trailing bytes, or an unknown format version.
    #[error("malformed mesh datagram: {0}")]
    MalformedDatagram(&'static str),
    /// A datagram's timestamp is further than the allowed skew from the receiver's clock.
    #[error("datagram from {sender} is stamped {timestamp}, now is {now}; allowed skew is {max_skew_secs} s")]
    DatagramSkew {
        /// The (authenticated or claimed) sender.
        sender: crate::did::DidKey,
        /// The datagram's timestamp, Unix seconds.
        timestamp: u64,
        /// The receiver's time, Unix seconds.
        now: u64,
        /// The allowed difference in seconds.
        max_skew_secs: u64,
    },
    /// A datagram's sequence number was already accepted from this sender.
    #[error("replayed datagram from {sender} (sequence {seq})")]
    ReplayedDatagram {
        /// The sender.
        sender: crate::did::DidKey,
        /// The repeated sequence number.
        seq: u64,
    },
    /// A datagram's sequence number is older than the sender's replay window.
    #[error("datagram from {sender} with sequence {seq} is older than the replay window (newest {newest})")]
    StaleDatagram {
        /// The sender.
        sender: crate::did::DidKey,
        /// The rejected sequence number.
        seq: u64,
        /// The newest sequence number accepted from this sender.
        newest: u64,
    },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Io { action, path, source }
    }
}
