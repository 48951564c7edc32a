//! meshgate's signed WebAssembly plugins: verification before compilation, the wasmtime sandbox
//! that runs them with hard limits, and the typed hooks of ABI version 1 (`plugins/ABI.md`).
//!
//! # Layout
//!
//! - [`sandbox`]: the wasmtime engine (pooling allocator, epoch deadlines, memory cap), the
//!   verify-then-compile step ([`Sandbox::load`]) and one raw call ([`Plugin::call`]).
//! - [`hooks`]: the JSON documents each hook receives and answers, and the checks that keep a
//!   plugin from widening what the node decided (scopes only narrow, reserved claims stay).
//! - [`digest`]: the SHA-256 content address of a module.
//!
//! The replicated records (manifests, trust, installations) are in [`mesh::plugin`]; the node glue
//! (fetching modules from peers, the token path) is in the `bridge` crate.
#![forbid(unsafe_code)]

pub mod hooks;
pub mod sandbox;

pub use sandbox::{Limits, Plugin, Sandbox};

use mesh::did::DidKey;

/// Every failure of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The module's bytes do not hash to the manifest's digest: tampered or truncated.
    #[error(
        "plugin `{name}`: module digest {actual} does not match the manifest's {expected} (tampered or corrupt module)"
    )]
    DigestMismatch {
        /// The plugin.
        name: String,
        /// The manifest's digest.
        expected: String,
        /// The module's digest.
        actual: String,
    },
    /// The manifest is malformed or its signature does not verify.
    #[error("plugin `{name}`: manifest refused: {source}")]
    BadManifest {
        /// The plugin.
        name: String,
        /// Why.
        source: mesh::Error,
    },
    /// The manifest's signer is not a trusted plugin signer of the mesh now.
    #[error("plugin `{name}`: signer {signer} is not trusted (run `meshgate plugin trust {signer}` to trust it)")]
    UntrustedSigner {
        /// The plugin.
        name: String,
        /// The signer.
        signer: DidKey,
    },
    /// wasmtime refused the module (not WebAssembly, invalid, imports something, lacks an
    /// export the ABI requires, or too large).
    #[error("plugin `{name}`: module refused: {reason}")]
    BadModule {
        /// The plugin.
        name: String,
        /// Why.
        reason: String,
    },
    /// The engine could not be configured.
    #[error("plugin engine: {0}")]
    Engine(String),
    /// A call failed: trap, deadline, memory cap, malformed or oversized output, or a decision
    /// that would widen the request.
    #[error("plugin `{name}` {hook}: {reason}")]
    Call {
        /// The plugin.
        name: String,
        /// The hook.
        hook: String,
        /// What went wrong.
        reason: String,
    },
}

/// Compiles WebAssembly text (`.wat`) to a binary module, deterministically (the same text gives
/// the same bytes, hence the same digest). Binary input is returned unchanged.
pub fn build(source: &[u8]) -> Result<Vec<u8>, Error> {
    wat::parse_bytes(source)
        .map(|bytes| bytes.into_owned())
        .map_err(|e| Error::BadModule {
            name: "(source)".into(),
            reason: e.to_string(),
        })
}

/// SHA-256 digests of modules.
pub mod digest {
    use sha2::{Digest, Sha256};

    /// The lowercase hex SHA-256 of `bytes`: a module's content address.
    pub fn sha256_hex(bytes: &[u8]) -> String {
        let digest = Sha256::digest(bytes);
        let mut out = String::with_capacity(64);
        for byte in digest {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }
}
