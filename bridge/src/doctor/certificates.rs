//! Certificates near expiry: every PEM certificate named under `bridge.tls` in the configuration
//! file and every `.pem`/`.crt` in `DATA_DIR/tls`, parsed with `x509-parser` (already in the
//! tree through `rcgen`) for `notAfter`.

use std::path::{Path, PathBuf};

use super::{Finding, Status, finding};

/// A certificate expiring within this is a warning.
const CERT_WARN_SECS: i64 = 30 * 86_400;

/// Certificates: PEM files named under `bridge.tls` in the configuration file (any string value
/// ending in .pem/.crt/.cert) and every .pem/.crt under DATA_DIR/tls.
pub(super) fn findings(config_file: Option<&Path>, data_dir: &Path, now: u64) -> Vec<Finding> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(file) = config_file
        && let Ok(text) = std::fs::read_to_string(file)
        && let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(&text)
        && let Some(tls) = value.get("bridge").and_then(|b| b.get("tls"))
    {
        collect_paths(tls, &mut files);
    }
    if let Ok(entries) = std::fs::read_dir(data_dir.join("tls")) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pem" || e == "crt") && !files.contains(&path) {
                files.push(path);
            }
        }
    }
    let mut findings = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            findings.push(finding(
                "certificate",
                Status::Fail,
                format!("{}: unreadable", file.display()),
                "The TLS configuration names a certificate file that cannot be read.",
                "Check the path and permissions under bridge.tls.",
            ));
            continue;
        };
        for (i, block) in certificate_blocks(&text).into_iter().enumerate() {
            let Some(not_after) = block.as_deref().and_then(not_after) else {
                findings.push(finding(
                    "certificate",
                    Status::Warn,
                    format!("{} #{i}: not a parseable X.509 certificate", file.display()),
                    "Its expiry could not be read: the PEM block or the certificate in it is malformed.",
                    "Check the file holds PEM certificates.",
                ));
                continue;
            };
            let left = not_after - now as i64;
            let status = match left {
                l if l <= 0 => Status::Fail,
                l if l <= CERT_WARN_SECS => Status::Warn,
                _ => Status::Ok,
            };
            findings.push(finding(
                "certificate",
                status,
                if left <= 0 {
                    format!("{} #{i}: expired {} day(s) ago", file.display(), -left / 86_400)
                } else {
                    format!("{} #{i}: expires in {} day(s)", file.display(), left / 86_400)
                },
                "Strict clients refuse an expired certificate: every token request fails with a TLS error.",
                "Renew it (or `meshgate tls init` for the local CA) before it expires; meshgate reloads certificates on change.",
            ));
        }
    }
    findings
}

fn collect_paths(value: &serde_yaml::Value, out: &mut Vec<PathBuf>) {
    match value {
        serde_yaml::Value::String(s) if [".pem", ".crt", ".cert"].iter().any(|e| s.ends_with(e)) => {
            out.push(PathBuf::from(s));
        }
        serde_yaml::Value::Mapping(map) => map.values().for_each(|v| collect_paths(v, out)),
        serde_yaml::Value::Sequence(list) => list.iter().for_each(|v| collect_paths(v, out)),
        _ => {}
    }
}

/// Most PEM blocks read from one file.
const MAX_BLOCKS: usize = 256;

/// The `CERTIFICATE` blocks of a PEM text, in order, as DER; `None` for a block that is not
/// valid PEM (bad base64, no end line). Other blocks (a private key beside the certificate) are
/// skipped.
fn certificate_blocks(text: &str) -> Vec<Option<Vec<u8>>> {
    x509_parser::pem::Pem::iter_from_buffer(text.as_bytes())
        .take(MAX_BLOCKS)
        .filter_map(|block| match block {
            Ok(pem) if pem.label == "CERTIFICATE" => Some(Some(pem.contents)),
            Ok(_) => None,
            Err(_) => Some(None),
        })
        .collect()
}

/// The `notAfter` of a DER X.509 certificate (Unix seconds), parsed with `x509-parser`; `None`
/// when it is not a well-formed certificate.
pub fn not_after(certificate: &[u8]) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real certificate (openssl, P-256), valid until 2029-08-26T15:26:27Z.
    const CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----\nMIIBkjCCATmgAwIBAgIUEg+YLTZPUXCajEHm6uOU4Nhcqf4wCgYIKoZIzj0EAwIw\nHzEdMBsGA1UEAwwUbWVzaGdhdGUtZG9jdG9yLXRlc3QwHhcNMjYxMTMwMTUyNjI3\nWhcNMjkwODI2MTUyNjI3WjAfMR0wGwYDVQQDDBRtZXNoZ2F0ZS1kb2N0b3ItdGVz\ndDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABG7i+C31HI/tGozw7/waVDmJXAcU\ncjFNjMLCKwGO/m6EuKtZcMJMLzAaSj8P/CTHzzhhpvaSWy/urFkMPFi6p6ujUzBR\nMB0GA1UdDgQWBBREKuvSBqiTUURB5XWM/r3RHHAXnjAfBgNVHSMEGDAWgBREKuvS\nBqiTUURB5XWM/r3RHHAXnjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cA\nMEQCIH8iMxUD2+SCdLOTxVXlnykOThbhwjpsV4K9IeWsEFwyAiA+mffj2MkSm+UC\nqkoVj2LaWirxCZUrf9XrTDjJCePfnQ==\n-----END CERTIFICATE-----";
    const NOT_AFTER: u64 = 1882452387;

    fn der(pem: &str) -> Vec<u8> {
        certificate_blocks(pem).remove(0).expect("valid PEM")
    }

    #[test]
    fn certificate_expiry_is_read_with_a_parser() {
        assert_eq!(not_after(&der(CERTIFICATE)), Some(NOT_AFTER as i64));
        assert_eq!(not_after(&[0x30, 0x05, 1]), None);
        assert_eq!(not_after(b""), None);
        // A certificate-shaped DER with empty algorithm and names is not a certificate.
        assert_eq!(not_after(&[0x30, 0x02, 0x30, 0x00]), None);
    }

    #[test]
    fn an_expired_certificate_fails_and_a_malformed_pem_warns() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["expired.test".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let expired = params.self_signed(&key).unwrap().pem();
        assert_eq!(not_after(&der(&expired)), Some(1_609_459_200));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tls")).unwrap();
        std::fs::write(dir.path().join("tls/old.pem"), &expired).unwrap();
        // Bad base64 in one block, a truncated certificate in the next, and a private key (skipped).
        let truncated = {
            use base64::Engine;
            let mut bytes = der(CERTIFICATE);
            bytes.truncate(100);
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        let malformed = format!(
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n\
-----BEGIN CERTIFICATE-----\n{truncated}\n-----END CERTIFICATE-----\n{}",
            key.serialize_pem()
        );
        std::fs::write(dir.path().join("tls/broken.crt"), malformed).unwrap();
        let mut found = findings(None, dir.path(), NOT_AFTER);
        found.sort_by(|a, b| a.summary.cmp(&b.summary));
        let seen: Vec<(Status, &str)> = found.iter().map(|f| (f.status, f.summary.as_str())).collect();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0].0, Status::Warn, "{seen:?}");
        assert!(
            seen[0].1.ends_with("broken.crt #0: not a parseable X.509 certificate"),
            "{seen:?}"
        );
        assert_eq!(seen[1].0, Status::Warn, "{seen:?}");
        assert!(
            seen[1].1.ends_with("broken.crt #1: not a parseable X.509 certificate"),
            "{seen:?}"
        );
        assert_eq!(seen[2].0, Status::Fail, "{seen:?}");
        assert!(seen[2].1.contains("old.pem #0: expired "), "{seen:?}");
    }

    #[test]
    fn certificates_in_the_tls_config_and_data_dir_are_judged_by_expiry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tls")).unwrap();
        std::fs::write(dir.path().join("tls/ca.pem"), CERTIFICATE).unwrap();
        let status = |now: u64| -> Vec<Status> { findings(None, dir.path(), now).iter().map(|f| f.status).collect() };
        assert_eq!(status(NOT_AFTER - 100 * 86_400), [Status::Ok]);
        assert_eq!(status(NOT_AFTER - 10 * 86_400), [Status::Warn]);
        assert_eq!(status(NOT_AFTER + 1), [Status::Fail]);

        // Named under bridge.tls in the configuration file (whatever the key is called).
        let other = tempfile::tempdir().unwrap();
        let cert = other.path().join("server.crt");
        std::fs::write(&cert, CERTIFICATE).unwrap();
        let config = other.path().join("meshgate.yaml");
        std::fs::write(&config, format!("bridge:\n  tls:\n    cert: {}\n", cert.display())).unwrap();
        let found = findings(Some(&config), other.path(), NOT_AFTER - 10 * 86_400);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].status, Status::Warn);
        assert!(found[0].summary.contains("server.crt"), "{:?}", found[0]);
        assert!(found[0].summary.contains("expires in 10 day(s)"), "{:?}", found[0]);
    }
}
