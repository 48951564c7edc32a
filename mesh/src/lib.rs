//! The meshgate node: identity and replicated state.
//!
//! # Layout
//!
//! - [`did`]: `did:key` encoding of ed25519 public keys (multicodec `0xed01`, base58btc).
//! - [`identity`]: the node's long-term ed25519 identity and signed attestations.
//! - [`kel`]: the identity key event log (pre-rotation): a DID keeps its inception key's name while
//!   the key that signs for it changes.
//! - [`keystore`]: the [`keystore::KeyStore`] trait ("local enclave") and its 0600-file implementation.
//! - [`legacy`]: a previous gateway's public keys, published and trusted until a cutover ends.
//! - [`state`]: the replicated state document (clients, signing-key records, revocations) and the
//!   [`state::Change`]s applied to it. Pure data: no I/O, no clock.
//! - [`epoch`]: bounding the document: a fresh epoch document holding the live state only, built
//!   deterministically from a cut of the previous one; late changes carried forward.
//! - [`store`]: crash-safe persistence of the state in the data directory, under an exclusive lock.
//! - [`clock`]: injected time, so tests can move it.
//! - [`session`]: one sync session with one peer (handshake, Automerge sync, pings, silence
//!   timeout) as a sans-IO state machine; [`driver`] runs it over tokio TCP.
//! - [`membership`]: SWIM membership and failure detection (foca) over signed datagrams, sans-IO;
//!   the [`driver`] runs it over tokio UDP on the sync port.
//! - [`discovery`]: optional mDNS / DNS-SD discovery of nodes on the local network; it only
//!   proposes addresses to the [`driver`], admission is unchanged.
//! - [`wire`]: the mesh wire protocol, sans-IO: stream frames, the mutual-authentication handshake,
//!   and signed, replay-protected datagrams.
//!
//! The core types here read no clock and do no network I/O; time is passed in as Unix seconds.
#![forbid(unsafe_code)]

pub mod clock;
pub mod did;
pub mod discovery;
pub mod doc;
pub mod driver;
pub mod epoch;
pub mod identity;
pub mod kel;
pub mod keystore;
pub mod legacy;
pub mod login;
pub mod membership;
pub mod plugin;
pub mod session;
pub mod state;
pub mod store;
pub mod wire;

mod error;
pub use error::Error;
