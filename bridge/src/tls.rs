//! HTTPS for the OAuth listener: rustls with a certificate and key from files (`bridge.tls`, or the
//! ones `meshgate tls init` writes), reloaded when the files change, and the local CA that
//! `meshgate tls init` creates.
//!
//! - One process-wide crypto provider, aws-lc-rs, installed by [`install_crypto_provider`] before any
//!   TLS use (the HTTP client of the upstream adapters uses the same one).
//! - Hot reload: [`ReloadingCert`] is a [`ResolvesServerCert`] holding the current certificate
//!   behind an atomic pointer; a background task polls the files' modification time and size and
//!   swaps in the new pair. Handshakes in progress and established connections keep the pair they
//!   started with; new handshakes get the new one. A file that does not parse (say, half written)
//!   is logged and the previous pair stays.
//! - Handshakes run in their own tasks (bounded by a timeout), so a slow or silent client never
//!   holds up the accept loop.

use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use mesh::clock::Clock as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;

use tokio::sync::watch;

use crate::error::Error;

/// How often the certificate files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);
/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The directory in the data directory `meshgate tls init` writes to.
pub const TLS_DIR: &str = "tls";

/// `bridge.tls`: the certificate chain and private key of the OAuth listener, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain (end entity first), PEM.
    pub cert: PathBuf,
    /// The private key (PKCS#8, SEC1 or PKCS#1), PEM.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The server certificate and key `meshgate tls init` writes into `data_dir`.
    pub fn generated(data_dir: &Path) -> Self {
        let dir = data_dir.join(TLS_DIR);
        Self {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

/// Installs aws-lc-rs as the process's rustls crypto provider (once; later calls do nothing).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    install_crypto_provider();
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

fn tls_error(files: &TlsFiles, why: impl std::fmt::Display) -> Error {
    Error::Config(vec![format!(
        "bridge.tls: {} / {}: {why}",
        files.cert.display(),
        files.key.display()
    )])
}

/// Loads the certificate chain and key of `files` into a rustls [`CertifiedKey`], checking that
/// they belong together.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, Error> {
    let cert_pem =
        std::fs::read(&files.cert).map_err(|e| tls_error(files, format!("cannot read the certificate: {e}")))?;
    let key_pem = std::fs::read(&files.key).map_err(|e| tls_error(files, format!("cannot read the key: {e}")))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error(files, format!("certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(tls_error(files, "no certificate in the PEM file"));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| tls_error(files, format!("key PEM: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| tls_error(files, e))
}

/// A file's identity for change detection: modification time and length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The listener's certificate, swapped atomically when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
    files: TlsFiles,
}

impl ReloadingCert {
    /// Loads `files`; fails when they do not hold a matching certificate and key.
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, Error> {
        let key = load(&files)?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(key),
            files,
        }))
    }

    /// Reloads the files; on failure the current pair stays.
    pub fn reload(&self) -> Result<(), Error> {
        let key = load(&self.files)?;
        self.current.store(Arc::new(key));
        Ok(())
    }

    /// Polls the files every `every` until `shutdown` flips, reloading on change.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: watch::Receiver<bool>) {
        let stop = crate::serve::wait_for(shutdown);
        tokio::pin!(stop);
        let mut seen = (stamp(&self.files.cert), stamp(&self.files.key));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            let now = (stamp(&self.files.cert), stamp(&self.files.key));
            if now == seen {
                continue;
            }
            match self.reload() {
                Ok(()) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                    seen = now;
                }
                // Leave `seen` alone: a pair written in two steps is retried at the next tick.
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate changed but does not load; keeping the previous one")
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls server configuration for `cert` (HTTP/1.1 over ALPN).
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<Arc<rustls::ServerConfig>, Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(vec![format!("bridge.tls: {e}")]))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What `meshgate tls init` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Initialized {
    /// The CA certificate clients must trust.
    pub ca_cert: PathBuf,
    /// The CA's private key (0600).
    pub ca_key: PathBuf,
    /// The server certificate (signed by the CA).
    pub cert: PathBuf,
    /// The server's private key (0600).
    pub key: PathBuf,
    /// The subject alternative names of the server certificate.
    pub names: Vec<String>,
    /// Whether the CA was created now (false: an existing one signed the new certificate).
    pub new_ca: bool,
}

fn io_err(action: String) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { action, source }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), Error> {
    use std::io::Write;
    // Write to a temporary file and rename, so a watching server never reads half a file.
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(format!("create {}", tmp.display())))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(format!("write {}", tmp.display())))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("rename {}", path.display())))
}

/// Creates (or reuses) the local CA in `data_dir/tls` and issues a server certificate for
/// `127.0.0.1`, `localhost`, `::1` and `extra` names (host names or IP addresses), valid for
/// `days` days.
pub fn init(data_dir: &Path, extra: &[String], days: u32) -> Result<Initialized, Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let gen_err = |what: &str| {
        let what = what.to_owned();
        move |e: rcgen::Error| Error::Admin(format!("{what}: {e}"))
    };
    let dir = data_dir.join(TLS_DIR);
    std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("chmod {}", dir.display())))?;
    let (ca_cert_path, ca_key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let now = time_now();
    let (ca_pem, ca_key, new_ca) = if ca_cert_path.exists() && ca_key_path.exists() {
        let pem = std::fs::read_to_string(&ca_cert_path).map_err(io_err(format!("read {}", ca_cert_path.display())))?;
        let key = std::fs::read_to_string(&ca_key_path).map_err(io_err(format!("read {}", ca_key_path.display())))?;
        (pem, KeyPair::from_pem(&key).map_err(gen_err("the CA key"))?, false)
    } else {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err("generate the CA key"))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "meshgate local CA");
        name.push(DnType::OrganizationName, "meshgate");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key).map_err(gen_err("sign the CA certificate"))?;
        write_file(&ca_key_path, &key.serialize_pem(), 0o600)?;
        write_file(&ca_cert_path, &cert.pem(), 0o644)?;
        (cert.pem(), key, true)
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key).map_err(gen_err("the CA certificate"))?;
    let mut names: Vec<String> = vec!["127.0.0.1".into(), "localhost".into(), "::1".into()];
    for name in extra {
        let name = name.trim().to_owned();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    let mut params = CertificateParams::new(names.clone()).map_err(gen_err("subject alternative names"))?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.get(3).cloned().unwrap_or_else(|| "localhost".into()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(i64::from(days.clamp(1, 825)));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err("generate the server key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(gen_err("sign the server certificate"))?;
    let files = TlsFiles::generated(data_dir);
    // Key first: a watching server sees the new pair complete once the certificate changes too.
    write_file(&files.key, &key.serialize_pem(), 0o600)?;
    write_file(&files.cert, &cert.pem(), 0o644)?;
    Ok(Initialized {
        ca_cert: ca_cert_path,
        ca_key: ca_key_path,
        cert: files.cert,
        key: files.key,
        names,
        new_ca,
    })
}

fn time_now() -> time::OffsetDateTime {
    let secs = mesh::clock::SystemClock.now();
    time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_ca_and_a_matching_server_pair_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = init(dir.path(), &["auth.corp".into()], 30).unwrap();
        assert!(first.new_ca);
        for path in [&first.ca_key, &first.key] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        load(&TlsFiles::generated(dir.path())).unwrap();
        let ca_before = std::fs::read(&first.ca_cert).unwrap();
        let cert_before = std::fs::read(&first.cert).unwrap();
        let second = init(dir.path(), &[], 30).unwrap();
        assert!(!second.new_ca);
        assert_eq!(std::fs::read(&second.ca_cert).unwrap(), ca_before, "the CA is reused");
        assert_ne!(
            std::fs::read(&second.cert).unwrap(),
            cert_before,
            "a new server certificate"
        );
        load(&TlsFiles::generated(dir.path())).unwrap();
    }

    #[test]
    fn bridge_tls_is_configured_by_file_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "bridge:\n  tls: { cert: /etc/c.pem, key: /etc/k.pem }\n").unwrap();
        let config = crate::config::check(&file).unwrap();
        assert_eq!(
            config.bridge.tls,
            Some(TlsFiles {
                cert: "/etc/c.pem".into(),
                key: "/etc/k.pem".into()
            })
        );
        std::fs::write(&file, "bridge:\n  tls: { cert: /etc/c.pem, kee: /etc/k.pem }\n").unwrap();
        let Err(Error::Config(problems)) = crate::config::check(&file) else {
            panic!("accepted a misspelt key")
        };
        assert!(problems.join("\n").contains("bridge.tls"), "{problems:?}");
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        init(a.path(), &[], 1).unwrap();
        init(b.path(), &[], 1).unwrap();
        let files = TlsFiles {
            cert: TlsFiles::generated(a.path()).cert,
            key: TlsFiles::generated(b.path()).key,
        };
        assert!(load(&files).is_err());
    }
}
