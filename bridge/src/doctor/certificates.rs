//! Certificates near expiry: every PEM certificate named under `bridge.tls` in the configuration
//! file and every `.pem`/`.crt` in `DATA_DIR/tls`, read with a minimal DER walk to `notAfter`.

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
        for (i, der) in pem_certificates(&text).into_iter().enumerate() {
            let Some(not_after) = not_after(&der) else {
                findings.push(finding(
                    "certificate",
                    Status::Warn,
                    format!("{} #{i}: not a parseable X.509 certificate", file.display()),
                    "Its expiry could not be read.",
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
                format!("{} #{i}: expires in {} day(s)", file.display(), left / 86_400),
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

fn pem_certificates(text: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let body = &rest[start + 27..];
        let Some(end) = body.find("-----END CERTIFICATE-----") else {
            break;
        };
        let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b64) {
            out.push(der);
        }
        rest = &body[end..];
    }
    out
}

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The `notAfter` of a DER X.509 certificate (Unix seconds).
pub fn not_after(certificate: &[u8]) -> Option<i64> {
    let (0x30, cert, _) = der(certificate)? else {
        return None;
    };
    let (0x30, tbs, _) = der(cert)? else { return None };
    let mut rest = tbs;
    let (tag, _, after) = der(rest)?;
    if tag == 0xa0 {
        rest = after; // [0] version
    }
    for _ in 0..3 {
        // serialNumber, signature, issuer
        rest = der(rest)?.2;
    }
    let (0x30, validity, _) = der(rest)? else { return None };
    let (_, _, after_not_before) = der(validity)?;
    let (tag, time, _) = der(after_not_before)?;
    let time = std::str::from_utf8(time).ok()?;
    let full = match tag {
        0x17 => {
            // UTCTime YYMMDDHHMMSSZ: 50-99 → 19xx, else 20xx.
            let year: u32 = time.get(..2)?.parse().ok()?;
            format!("{}{time}", if year >= 50 { "19" } else { "20" })
        }
        0x18 => time.to_owned(),
        _ => return None,
    };
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        full.get(..4)?,
        full.get(4..6)?,
        full.get(6..8)?,
        full.get(8..10)?,
        full.get(10..12)?,
        full.get(12..14)?
    );
    let at = humantime::parse_rfc3339_weak(&rfc3339).ok()?;
    Some(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_expiry_is_read_from_der() {
        // A minimal certificate-shaped DER: version, serial, algorithm, issuer, validity.
        fn element(tag: u8, content: &[u8]) -> Vec<u8> {
            let mut out = vec![tag, content.len() as u8];
            out.extend_from_slice(content);
            out
        }
        let validity = [element(0x17, b"250101000000Z"), element(0x18, b"20301231235959Z")].concat();
        let tbs = [
            element(0xa0, &element(0x02, &[2])),
            element(0x02, &[1]),
            element(0x30, &[]),
            element(0x30, &[]),
            element(0x30, &validity),
        ]
        .concat();
        let cert = element(0x30, &element(0x30, &tbs));
        // 2030-12-31T23:59:59Z
        assert_eq!(not_after(&cert), Some(1_924_991_999));
        assert_eq!(not_after(&[0x30, 0x05, 1]), None);
    }

    /// A real certificate (openssl, P-256), valid until 2029-08-26T15:26:27Z.
    const CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----\nMIIBkjCCATmgAwIBAgIUEg+YLTZPUXCajEHm6uOU4Nhcqf4wCgYIKoZIzj0EAwIw\nHzEdMBsGA1UEAwwUbWVzaGdhdGUtZG9jdG9yLXRlc3QwHhcNMjYxMTMwMTUyNjI3\nWhcNMjkwODI2MTUyNjI3WjAfMR0wGwYDVQQDDBRtZXNoZ2F0ZS1kb2N0b3ItdGVz\ndDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABG7i+C31HI/tGozw7/waVDmJXAcU\ncjFNjMLCKwGO/m6EuKtZcMJMLzAaSj8P/CTHzzhhpvaSWy/urFkMPFi6p6ujUzBR\nMB0GA1UdDgQWBBREKuvSBqiTUURB5XWM/r3RHHAXnjAfBgNVHSMEGDAWgBREKuvS\nBqiTUURB5XWM/r3RHHAXnjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cA\nMEQCIH8iMxUD2+SCdLOTxVXlnykOThbhwjpsV4K9IeWsEFwyAiA+mffj2MkSm+UC\nqkoVj2LaWirxCZUrf9XrTDjJCePfnQ==\n-----END CERTIFICATE-----";
    const NOT_AFTER: u64 = 1882452387;

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
