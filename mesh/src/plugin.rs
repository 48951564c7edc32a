//! Replicated plugin records: a developer's signed [`PluginManifest`], a member's [`PluginTrust`]
//! in (or withdrawal of trust from) a developer key, and a member's [`PluginRecord`] installing a
//! manifest. Module bytes are never replicated: the manifest names them by SHA-256 digest and each
//! node keeps them content-addressed in its data directory (see `plugins/ABI.md`).
//!
//! Pure data and signatures: nothing here reads a clock or touches the file system.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::did::DidKey;
use crate::identity::NodeIdentity;
use crate::kel::KeyChains;

/// The plugin ABI version this build runs (`plugins/ABI.md`).
pub const ABI_VERSION: u32 = 1;

/// The hooks a plugin may implement.
pub const HOOKS: [&str; 3] = ["on_token_request", "map_upstream_claims", "on_introspect"];

/// A developer's signed description of one plugin module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginManifest {
    /// The plugin's name: 1–64 of `a-z 0-9 - _`; installing another manifest of the same name
    /// replaces it.
    pub name: String,
    /// The plugin's version (free text, shown by `plugin list`).
    pub version: String,
    /// The ABI version the module was written for; only [`ABI_VERSION`] runs.
    pub abi: u32,
    /// The hooks the module exports, each one of [`HOOKS`].
    pub hooks: Vec<String>,
    /// SHA-256 of the module bytes, lowercase hex.
    pub sha256: String,
    /// Whether a failing call (trap, timeout, malformed output) lets the request through
    /// unchanged instead of denying it.
    #[serde(default)]
    pub fail_open: bool,
    /// The developer key that signed the manifest.
    pub signer: DidKey,
    /// The signer's ed25519 signature over [`PluginManifest::signed_bytes`], base64url.
    pub signature: String,
}

impl PluginManifest {
    /// A manifest for a module with digest `sha256`, signed with the developer `key`. Fails if a
    /// field is invalid (see [`PluginManifest::check`]).
    pub fn sign(
        key: &SigningKey,
        name: String,
        version: String,
        hooks: Vec<String>,
        sha256: String,
        fail_open: bool,
    ) -> Result<Self, Error> {
        let mut manifest = Self {
            name,
            version,
            abi: ABI_VERSION,
            hooks,
            sha256,
            fail_open,
            signer: DidKey::from_public_key(key.verifying_key().to_bytes()),
            signature: String::new(),
        };
        manifest.check()?;
        manifest.signature = URL_SAFE_NO_PAD.encode(key.sign(&manifest.signed_bytes()).to_bytes());
        Ok(manifest)
    }

    /// The canonical bytes the signature covers: the JSON array
    /// `["meshgate-plugin", abi, name, version, hooks, sha256, fail_open, signer]`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let fields = (
            "meshgate-plugin",
            self.abi,
            &self.name,
            &self.version,
            &self.hooks,
            &self.sha256,
            self.fail_open,
            &self.signer,
        );
        serde_json::to_vec(&fields).unwrap_or_default()
    }

    /// Checks the fields: name, hooks, digest format and ABI version.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |reason: String| Error::BadPlugin { reason };
        if !valid_name(&self.name) {
            return Err(bad(format!(
                "plugin name `{}` must be 1-64 characters of a-z, 0-9, '-' and '_'",
                self.name
            )));
        }
        if self.version.is_empty() || self.version.len() > 64 {
            return Err(bad("plugin version must be 1-64 characters".into()));
        }
        if self.abi != ABI_VERSION {
            return Err(bad(format!(
                "plugin ABI version {} is not supported (this build runs version {ABI_VERSION})",
                self.abi
            )));
        }
        if self.hooks.is_empty() {
            return Err(bad("a plugin must declare at least one hook".into()));
        }
        for hook in &self.hooks {
            if !HOOKS.contains(&hook.as_str()) {
                return Err(bad(format!("unknown hook `{hook}` (known: {})", HOOKS.join(", "))));
            }
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("sha256 must be 64 lowercase hex digits".into()));
        }
        Ok(())
    }

    /// Checks the fields and the signer's signature (not whether the signer is trusted).
    pub fn verify(&self) -> Result<(), Error> {
        self.check()?;
        let signature = URL_SAFE_NO_PAD
            .decode(&self.signature)
            .map_err(|_| Error::BadSignature {
                what: "plugin manifest".into(),
            })?;
        crate::identity::verify(&self.signer, &self.signed_bytes(), &signature, "plugin manifest")
    }

    /// Whether the plugin declares `hook`.
    pub fn implements(&self, hook: &str) -> bool {
        self.hooks.iter().any(|h| h == hook)
    }
}

/// Whether `name` is a valid plugin name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A member's signed statement that plugins signed by `signer` may (or, `trusted: false`, may no
/// longer) run in the mesh. One per signer: the latest statement replaces the previous one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginTrust {
    /// The developer key.
    pub signer: DidKey,
    /// Trusted (`plugin trust`) or not (`plugin untrust`).
    pub trusted: bool,
    /// The member that said so.
    pub by: DidKey,
    /// When (Unix seconds).
    pub at: u64,
    /// `by`'s signature over the other fields, base64url.
    pub signature: String,
}

impl PluginTrust {
    /// `member` (un)trusts `signer` at `now`.
    pub fn sign(member: &NodeIdentity, signer: DidKey, trusted: bool, now: u64) -> Self {
        let mut record = Self {
            signer,
            trusted,
            by: member.did(),
            at: now,
            signature: String::new(),
        };
        let signature = crate::state::sign_fields(member, &record.signed_fields());
        record.signature = signature;
        record
    }

    /// Its key in the state: the signer's DID.
    pub fn key(&self) -> String {
        self.signer.to_string()
    }

    fn signed_fields(&self) -> impl Serialize + '_ {
        ("plugin-trust", &self.signer, self.trusted, &self.by, self.at)
    }

    /// Checks the signature against `by`'s keys.
    pub fn verify(&self, chains: &dyn KeyChains) -> Result<(), Error> {
        crate::state::verify_fields(chains, &self.by, &self.signed_fields(), &self.signature, "plugin trust")
    }
}

/// A member's signed installation of a plugin manifest (or, `removed`, its removal), and the
/// clients it applies to. One per plugin name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// The developer's manifest.
    pub manifest: PluginManifest,
    /// Applies to every client.
    #[serde(default)]
    pub all_clients: bool,
    /// Applies to these clients (`client update CLIENT --plugin NAME`).
    #[serde(default)]
    pub clients: Vec<String>,
    /// Removed (`plugin remove`): a tombstone, so the removal replicates like any other record.
    #[serde(default)]
    pub removed: bool,
    /// The member that wrote this record.
    pub by: DidKey,
    /// When (Unix seconds).
    pub at: u64,
    /// `by`'s signature over the other fields, base64url.
    pub signature: String,
}

impl PluginRecord {
    /// `member` writes the record at `now`.
    pub fn sign(
        member: &NodeIdentity,
        manifest: PluginManifest,
        all_clients: bool,
        clients: Vec<String>,
        removed: bool,
        now: u64,
    ) -> Self {
        let mut record = Self {
            manifest,
            all_clients,
            clients,
            removed,
            by: member.did(),
            at: now,
            signature: String::new(),
        };
        let signature = crate::state::sign_fields(member, &record.signed_fields());
        record.signature = signature;
        record
    }

    /// Its key in the state: the plugin's name.
    pub fn key(&self) -> String {
        self.manifest.name.clone()
    }

    fn signed_fields(&self) -> impl Serialize + '_ {
        (
            "plugin",
            &self.manifest,
            self.all_clients,
            &self.clients,
            self.removed,
            &self.by,
            self.at,
        )
    }

    /// Checks the member's signature against `by`'s keys (the manifest's own signature is checked
    /// by [`PluginManifest::verify`]).
    pub fn verify(&self, chains: &dyn KeyChains) -> Result<(), Error> {
        crate::state::verify_fields(
            chains,
            &self.by,
            &self.signed_fields(),
            &self.signature,
            "plugin record",
        )
    }

    /// Whether the plugin applies to `client_id`.
    pub fn applies_to(&self, client_id: &str) -> bool {
        !self.removed && (self.all_clients || self.clients.iter().any(|c| c == client_id))
    }
}

/// A new developer signing key (ed25519) from the operating system's random source.
pub fn generate_developer_key() -> SigningKey {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("operating system random number generator failed");
    SigningKey::from_bytes(&seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Change, State};

    fn manifest(key: &SigningKey) -> PluginManifest {
        PluginManifest::sign(
            key,
            "narrow".into(),
            "1.0.0".into(),
            vec!["on_token_request".into()],
            "ab".repeat(32),
            false,
        )
        .unwrap()
    }

    #[test]
    fn manifests_verify_and_refuse_tampering() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let m = manifest(&key);
        m.verify().unwrap();
        let mut tampered = m.clone();
        tampered.sha256 = "cd".repeat(32);
        assert!(tampered.verify().is_err());
        let mut renamed = m.clone();
        renamed.signer = DidKey::from_public_key(SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes());
        assert!(renamed.verify().is_err());
        let mut hooked = m;
        hooked.hooks.push("on_introspect".into());
        assert!(hooked.verify().is_err());
        assert!(
            PluginManifest::sign(
                &key,
                "Bad Name".into(),
                "1".into(),
                vec!["on_introspect".into()],
                "ab".repeat(32),
                false
            )
            .is_err()
        );
    }

    #[test]
    fn trust_and_plugin_records_replicate_and_verify() {
        let node = NodeIdentity::from_seed([1; 32]);
        let key = SigningKey::from_bytes(&[7; 32]);
        let m = manifest(&key);
        let trust = PluginTrust::sign(&node, m.signer, true, 5);
        let record = PluginRecord::sign(&node, m, true, vec![], false, 6);
        let mut state = State::default();
        state.apply(&Change::TrustPluginSigner(trust.clone()));
        state.apply(&Change::PutPlugin(record.clone()));
        trust.verify(&state).unwrap();
        record.verify(&state).unwrap();
        assert!(state.trusted_plugin_signers(&node.did(), &[]).contains(&trust.signer));
        let untrust = PluginTrust::sign(&node, trust.signer, false, 7);
        state.apply(&Change::TrustPluginSigner(untrust));
        assert!(state.trusted_plugin_signers(&node.did(), &[]).is_empty());
        // An outsider's trust does not count.
        let outsider = NodeIdentity::from_seed([9; 32]);
        state.apply(&Change::TrustPluginSigner(PluginTrust::sign(
            &outsider,
            trust.signer,
            true,
            8,
        )));
        assert!(state.trusted_plugin_signers(&node.did(), &[]).is_empty());
        let mut forged = record.clone();
        forged.all_clients = false;
        assert!(forged.verify(&state).is_err());
    }
}
