//! Federation with a real upstream: node `oidc-provider` (bench/oidc, installed by
//! scripts/test.sh) issues RS256 JWT access tokens for meshgate's audience; meshgate exchanges
//! them (RFC 8693), then the upstream is killed (SIGKILL) and an `issue_local` client keeps
//! getting degraded tokens from the cached JWKS while a `fail_closed` client gets clean 503s.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use compat_tests::{ClientOptions, Meshgate, Registered, workspace_root};
use reqwest::StatusCode;
use serde_json::Value;

use super::support::{self, Jwt, basic, form, post_form};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const UPSTREAM_CLIENT: &str = "upstream-agent";
const UPSTREAM_SECRET: &str = "upstream-agent-secret-4f1c9d2e7b";

/// `node bench/oidc/upstream.mjs`, killed when dropped.
struct Upstream {
    child: Child,
    issuer: String,
}

impl Upstream {
    fn start() -> Self {
        let dir = workspace_root().join("bench/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run `npm ci` in {} (scripts/test.sh does)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("upstream.mjs"))
            .current_dir(&dir)
            .env("UPSTREAM_CLIENT_ID", UPSTREAM_CLIENT)
            .env("UPSTREAM_CLIENT_SECRET", UPSTREAM_SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run node");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the upstream's startup line");
        let info: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            let mut stderr = String::new();
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut stderr));
            panic!("oidc-provider did not start: {line:?}\n{stderr}")
        });
        Self {
            child,
            issuer: info["issuer"].as_str().expect("issuer").to_owned(),
        }
    }

    /// SIGKILL: connections are refused from now on.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

fn upstream_status(server: &Meshgate) -> Value {
    let printed = server.cli(&["upstream", "status", "--json"]);
    serde_json::from_str(printed.trim()).unwrap_or_else(|e| panic!("`upstream status --json` printed {printed:?}: {e}"))
}

/// Polls `upstream status` until `done` holds for the `corp` entry (at most 60 s).
fn wait_for_status(server: &Meshgate, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let status = upstream_status(server);
        assert_eq!(status["running"], true, "{status}");
        let corp = status["upstreams"][0].clone();
        if done(&corp) {
            return corp;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "waited 60 s for the upstream to be {what}: {corp}\n{}",
            server.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn exchange(server: &Meshgate, client: &Registered, subject: &str) -> support::Answer {
    post_form(
        &server.url("/token"),
        Some(&basic(&client.client_id, &client.client_secret)),
        form(&[
            ("grant_type", EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", ACCESS_TOKEN),
            ("scope", "read"),
        ]),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_tokens_are_exchanged_and_survive_its_death_by_policy() {
    let mut upstream = Upstream::start();
    let dir = support::temp_dir();
    let data = dir.path().join("data");
    let options = ClientOptions {
        extra_args: vec!["--grant".into(), "token-exchange".into()],
        ..ClientOptions::default()
    };
    let local = compat_tests::client_add(&data, "edge-agent", "read write", &options);
    let closed = compat_tests::client_add(&data, "strict-agent", "read write", &options);
    let config = dir.path().join("meshgate.yaml");
    std::fs::write(
        &config,
        format!(
            r#"bridge: {{ listen: "127.0.0.1:0", metrics_listen: "127.0.0.1:0" }}
node: {{ sync: {{ listen: "127.0.0.1:0" }} }}
upstreams:
  - name: corp
    issuer: {issuer}
    audience: meshgate
    algorithms: [RS256]
    breaker: {{ failure_threshold: 1, open_for: 1s, max_open_for: 2s }}
    jwks: {{ refresh_interval: 1s, min_refresh_interval: 1s }}
federation:
  default_policy: {{ on_upstream_unavailable: issue_local, degraded_ttl: 30s }}
  clients:
    {closed}: {{ on_upstream_unavailable: fail_closed }}
"#,
            issuer = upstream.issuer,
            closed = closed.client_id,
        ),
    )
    .expect("write the configuration");
    let server = Meshgate::spawn_with_config(&data, &config, &[]);
    wait_for_status(&server, "fetched", |corp| corp["jwks"]["keys"].as_u64() == Some(1));

    // An RS256 JWT access token from oidc-provider, for meshgate's audience.
    let minted = post_form(
        &format!("{}/token", upstream.issuer),
        Some(&basic(UPSTREAM_CLIENT, UPSTREAM_SECRET)),
        form(&[
            ("grant_type", "client_credentials"),
            ("scope", "read"),
            ("resource", "https://meshgate.test/"),
        ]),
    )
    .await;
    assert_eq!(minted.status, StatusCode::OK, "{}", minted.text);
    let subject = minted.json()["access_token"].as_str().expect("access_token").to_owned();
    let upstream_jwt = Jwt::parse(&subject);
    assert_eq!(upstream_jwt.header["alg"], "RS256");
    assert_eq!(upstream_jwt.payload["aud"], "meshgate");

    for client in [&local, &closed] {
        let answer = exchange(&server, client, &subject).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let body = answer.json();
        assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
        let token = Jwt::parse(body["access_token"].as_str().expect("access_token"));
        assert_eq!(token.payload["iss"], server.issuer());
        assert_eq!(token.payload["sub"], UPSTREAM_CLIENT);
        assert_eq!(token.payload["act"]["sub"], client.client_id.as_str());
        assert_eq!(token.payload["scope"], "read");
        assert!(token.payload.get("degraded").is_none(), "{}", token.payload);
        let introspected = support::introspect(&server, client, body["access_token"].as_str().unwrap()).await;
        assert_eq!(introspected["active"], true);
    }

    upstream.kill();
    let corp = wait_for_status(&server, "unavailable", |corp| corp["available"] == false);
    assert_ne!(corp["breaker"]["state"], "closed", "{corp}");
    assert!(corp["last_refresh_error"]["error"].is_string(), "{corp}");
    let text = server.cli(&["upstream", "status"]);
    assert!(text.contains("corp") && text.contains("last refresh error"), "{text}");

    for _ in 0..3 {
        let answer = exchange(&server, &local, &subject).await;
        assert_eq!(answer.status, StatusCode::OK, "issue_local: {}", answer.text);
        let body = answer.json();
        assert!(body["expires_in"].as_u64().is_some_and(|ttl| ttl <= 30), "{body}");
        let token = Jwt::parse(body["access_token"].as_str().unwrap());
        assert_eq!(token.payload["degraded"], true, "{}", token.payload);
        assert_eq!(token.payload["sub"], UPSTREAM_CLIENT);

        let answer = exchange(&server, &closed, &subject).await;
        if let Some(problem) = answer.oauth_error_mismatch(503, "temporarily_unavailable") {
            panic!("fail_closed: {problem}");
        }
        let retry: u64 = answer
            .header("retry-after")
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no Retry-After: {:?}", answer.headers));
        assert!(retry >= 1, "Retry-After {retry}");
    }

    let metrics = support::get(&server.metrics_url("/metrics")).await.text;
    assert!(
        metrics.contains(r#"meshgate_upstream_breaker_state{upstream="corp"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("meshgate_tokens_degraded_total 3"), "{metrics}");
    assert!(
        !server.output().contains(&subject) && !server.output().contains(UPSTREAM_SECRET),
        "a token or secret reached the logs"
    );
}
