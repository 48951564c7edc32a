//! HTTPS: `meshgate tls init` creates a local CA and a server certificate, `serve --tls` serves
//! with it, openid-client in its strict default mode (no insecure-request allowance) trusts it
//! through NODE_EXTRA_CA_CERTS, and a re-issued certificate is picked up without a restart and
//! without dropping established connections.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use compat_tests::{Meshgate, cli, node_with_env};
use serde_json::{Value, json};

use super::support;

fn serve_tls(dir: &Path) -> Meshgate {
    Meshgate::spawn_args(
        dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--sync-listen",
            "127.0.0.1:0",
            "--tls",
        ],
        &[],
    )
}

fn tls_init(dir: &Path) -> Value {
    let out = cli(dir, &["tls", "init", "--json"]);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("tls init printed no JSON ({e}): {out}"))
}

/// The DER of the first certificate in a PEM file.
fn der_of(pem_file: &str) -> Vec<u8> {
    let pem = std::fs::read_to_string(pem_file).unwrap();
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

fn https_client(ca_file: &str) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_file).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .tls_info(true)
        .build()
        .unwrap()
}

/// GETs the metadata and answers the DER of the certificate the server presented.
async fn peer_certificate(client: &reqwest::Client, url: &str) -> Vec<u8> {
    let response = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    assert!(response.status().is_success(), "GET {url}: {}", response.status());
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls_info is on")
        .peer_certificate()
        .expect("the server presented a certificate")
        .to_vec();
    let _ = response.bytes().await;
    info
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_strict_mode_over_https_with_the_generated_ca() {
    let dir = support::temp_dir();
    let init = tls_init(dir.path());
    let ca = init["ca_cert"].as_str().expect("ca_cert").to_owned();
    for key in ["ca_key", "key"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(init[key].as_str().unwrap()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let server = serve_tls(dir.path());
    assert!(server.issuer().starts_with("https://127.0.0.1:"), "{}", server.issuer());
    let registered = server.client_add("strict", "read");
    let input = json!({
        "issuer": server.issuer(),
        "client_id": registered.client_id,
        "client_secret": registered.client_secret,
        "scope": "read",
    });

    let result = node_with_env("openid-client-strict", &input, &[("NODE_EXTRA_CA_CERTS", &ca)]);
    assert_eq!(result["metadata"]["issuer"], server.issuer(), "{result:#}");
    assert!(
        result["metadata"]["token_endpoint"]
            .as_str()
            .is_some_and(|t| t.starts_with("https://")),
        "{result:#}"
    );
    assert!(result["token"]["access_token"].is_string(), "{result:#}");
    assert_eq!(result["introspected"]["active"], true, "{result:#}");
    let token = support::Jwt::parse(result["token"]["access_token"].as_str().unwrap());
    assert_eq!(token.payload["iss"], server.issuer());

    // Without the CA the same strict client refuses the server: trust really is checked.
    let refused = node_with_env("openid-client-strict-fails", &input, &[]);
    assert_eq!(refused["ok"], false, "{refused:#}");

    // Plain HTTP on the TLS port gets nothing useful.
    let plain = reqwest::Client::new()
        .get(server.issuer().replacen("https://", "http://", 1) + "/.well-known/oauth-authorization-server")
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissued_certificate_is_served_to_new_connections_without_dropping_old_ones() {
    let dir = support::temp_dir();
    let init = tls_init(dir.path());
    let ca = init["ca_cert"].as_str().unwrap().to_owned();
    let cert_file = init["cert"].as_str().unwrap().to_owned();
    let first = der_of(&cert_file);
    let server = serve_tls(dir.path());
    let url = format!("{}/.well-known/oauth-authorization-server", server.issuer());

    let kept = https_client(&ca);
    assert_eq!(peer_certificate(&kept, &url).await, first);

    let again = tls_init(dir.path());
    assert_eq!(again["new_ca"], false, "the CA is reused: {again:#}");
    let second = der_of(&cert_file);
    assert_ne!(first, second);

    let mut seen = Vec::new();
    for _ in 0..300 {
        seen = peer_certificate(&https_client(&ca), &url).await;
        if seen == second {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen,
        second,
        "new connections never saw the re-issued certificate\n{}",
        server.output()
    );

    // The connection opened before the reload is still open and still works.
    assert_eq!(
        peer_certificate(&kept, &url).await,
        first,
        "the kept-alive connection was replaced"
    );
    assert!(
        server.stderr().contains("TLS certificate reloaded"),
        "{}",
        server.output()
    );
}
