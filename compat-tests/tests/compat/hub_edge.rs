//! One meshgate node as the upstream of another (hub → edge), two `meshgate serve` processes:
//! the edge discovers the hub (RFC 8414 metadata, JWKS), exchanges hub tokens (RFC 8693), and
//! serves federated clients whose credentials live at the hub — a registered one
//! (`client add --upstream hub --client-id ID`) and an unknown one (`federate_unknown_clients`).
//! Then the hub is killed (SIGKILL) while agents keep asking: issue_local clients get degraded
//! local tokens with zero failures, a fail_closed client gets clean 503s, a wrong secret is still
//! refused, and no secret reaches a log.

use std::time::{Duration, Instant};

use compat_tests::{ClientOptions, Meshgate};
use reqwest::StatusCode;
use serde_json::Value;

use super::support::{self, Jwt, basic, form, post_form};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

fn status(edge: &Meshgate) -> Value {
    let printed = edge.cli(&["upstream", "status", "--json"]);
    serde_json::from_str(printed.trim()).unwrap_or_else(|e| panic!("`upstream status --json` printed {printed:?}: {e}"))
}

/// Polls `upstream status` until `done` holds for the `hub` entry (at most 60 s).
fn wait_for(edge: &Meshgate, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let hub = status(edge)["upstreams"][0].clone();
        if done(&hub) {
            return hub;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "waited 60 s for the hub to be {what}: {hub}\n{}",
            edge.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn client_credentials(server: &Meshgate, client_id: &str, secret: &str, scope: Option<&str>) -> support::Answer {
    let mut pairs = vec![("grant_type", "client_credentials")];
    if let Some(scope) = scope {
        pairs.push(("scope", scope));
    }
    post_form(&server.url("/token"), Some(&basic(client_id, secret)), form(&pairs)).await
}

fn shown(edge: &Meshgate, client_id: &str) -> Value {
    let printed = edge.cli(&["client", "show", client_id, "--json"]);
    serde_json::from_str(printed.trim()).unwrap_or_else(|e| panic!("`client show` printed {printed:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meshgate_hub_is_the_upstream_of_an_edge_and_its_death_degrades_by_policy() {
    let dir = support::temp_dir();
    let mut hub = Meshgate::spawn(&dir.path().join("hub"));
    let hub_issuer = hub.issuer().to_owned();
    let agent = hub.client_add("agent", "read write");
    let strict = hub.client_add("strict", "read write");
    let newcomer = hub.client_add("newcomer", "read");
    // The edge's own credentials at the hub, for introspecting hub tokens there.
    let introspector = hub.client_add("edge-introspector", "read");

    let edge_data = dir.path().join("edge");
    let config = dir.path().join("edge.yaml");
    std::fs::write(
        &config,
        format!(
            r#"bridge: {{ listen: "127.0.0.1:0", metrics_listen: "127.0.0.1:0" }}
node: {{ sync: {{ listen: "127.0.0.1:0" }} }}
upstreams:
  - name: hub
    issuer: {issuer}
    audience: {issuer}
    federate_unknown_clients: true
    client_id: {introspector_id}
    client_secret: {introspector_secret}
    timeouts: {{ connect: 200ms, total: 1s, token_deadline: 300ms }}
    breaker: {{ failure_threshold: 1, open_for: 1s, max_open_for: 2s }}
    jwks: {{ refresh_interval: 1s, min_refresh_interval: 1s }}
federation:
  jwks_fresh_for: 10s
  default_policy: {{ on_upstream_unavailable: issue_local, degraded_ttl: 30s }}
"#,
            issuer = hub.issuer(),
            introspector_id = introspector.client_id,
            introspector_secret = introspector.client_secret,
        ),
    )
    .expect("write the edge configuration");
    let config_arg = config.to_string_lossy().into_owned();
    let federated = |name: &str, client_id: &str, extra: &[&str]| {
        let mut args = vec![
            "client",
            "add",
            "--config",
            &config_arg,
            "--name",
            name,
            "--upstream",
            "hub",
            "--client-id",
            client_id,
        ];
        args.extend(extra);
        args.push("--json");
        let printed = compat_tests::cli(&edge_data, &args);
        let answer: Value = serde_json::from_str(printed.trim()).expect("client add prints JSON");
        assert_eq!(answer["client_id"], client_id, "{answer}");
        assert!(answer.get("client_secret").is_none(), "no local secret: {answer}");
        assert_eq!(answer["federation"]["upstream"], "hub", "{answer}");
    };
    // Only `read` is allowed locally although the hub grants `read write`: mapping narrows.
    federated("agent", &agent.client_id, &["--scope", "read", "--degraded-ttl", "30s"]);
    federated(
        "strict",
        &strict.client_id,
        &["--on-upstream-unavailable", "fail_closed"],
    );
    let exchanger = compat_tests::client_add(
        &edge_data,
        "exchanger",
        "read write",
        &ClientOptions {
            extra_args: vec!["--grant".into(), "token-exchange".into()],
            ..ClientOptions::default()
        },
    );
    let edge = Meshgate::spawn_with_config(&edge_data, &config, &[]);
    let hub_status = wait_for(&edge, "discovered", |hub| {
        hub["available"] == true && hub["jwks"]["keys"].as_u64() >= Some(1)
    });
    assert_eq!(hub_status["discovered"], true, "{hub_status}");

    // Federated: the agent's hub credentials work at the edge, forwarded to the hub.
    let answer = client_credentials(&edge, &agent.client_id, &agent.client_secret, None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let body = answer.json();
    let token = Jwt::parse(body["access_token"].as_str().expect("access_token"));
    assert_eq!(token.payload["iss"], edge.issuer());
    assert_eq!(token.payload["sub"], agent.client_id.as_str());
    assert_eq!(token.payload["scope"], "read", "the hub's `write` is not allowed here");
    assert!(token.payload.get("degraded").is_none(), "{}", token.payload);
    let normal_ttl = body["expires_in"].as_u64().expect("expires_in");
    assert!(normal_ttl > 30, "{body}");
    let recorded = shown(&edge, &agent.client_id);
    assert_eq!(recorded["federation"]["verified_secrets"], 1, "{recorded}");
    // A second success does not record the secret again.
    let again = client_credentials(&edge, &agent.client_id, &agent.client_secret, Some("read")).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(shown(&edge, &agent.client_id)["federation"]["verified_secrets"], 1);
    let widened = client_credentials(&edge, &agent.client_id, &agent.client_secret, Some("write")).await;
    if let Some(problem) = widened.oauth_error_mismatch(400, "invalid_scope") {
        panic!("a scope the client may not have here: {problem}");
    }
    let wrong = client_credentials(&edge, &agent.client_id, "not-the-secret", None).await;
    if let Some(problem) = wrong.oauth_error_mismatch(401, "invalid_client") {
        panic!("wrong secret while the hub is up: {problem}");
    }
    let strict_answer = client_credentials(&edge, &strict.client_id, &strict.client_secret, None).await;
    assert_eq!(strict_answer.status, StatusCode::OK, "{}", strict_answer.text);

    // An unknown client id: forwarded to the hub, recorded as federated once accepted.
    let answer = client_credentials(&edge, &newcomer.client_id, &newcomer.client_secret, None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let token = Jwt::parse(answer.json()["access_token"].as_str().unwrap());
    assert_eq!(token.payload["sub"], newcomer.client_id.as_str());
    assert_eq!(token.payload["scope"], "read");
    let recorded = shown(&edge, &newcomer.client_id);
    assert_eq!(recorded["federation"]["upstream"], "hub", "{recorded}");
    let unknown = client_credentials(&edge, "nobody-anywhere", "whatever", None).await;
    if let Some(problem) = unknown.oauth_error_mismatch(401, "invalid_client") {
        panic!("a client neither node knows: {problem}");
    }
    assert!(
        compat_tests::cli(&edge_data, &["client", "list", "--json"])
            .find("nobody-anywhere")
            .is_none(),
        "a refused client id must not be recorded"
    );

    // Token exchange of a hub token, verified offline against the hub's JWKS.
    let hub_token = support::access_token(&hub, &agent, &[]).await;
    let exchanged = post_form(
        &edge.url("/token"),
        Some(&basic(&exchanger.client_id, &exchanger.client_secret)),
        form(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &hub_token),
            ("subject_token_type", ACCESS_TOKEN),
            ("scope", "read"),
        ]),
    )
    .await;
    assert_eq!(exchanged.status, StatusCode::OK, "{}", exchanged.text);
    let token = Jwt::parse(exchanged.json()["access_token"].as_str().unwrap());
    assert_eq!(token.payload["sub"], agent.client_id.as_str());
    assert_eq!(token.payload["act"]["sub"], exchanger.client_id.as_str());

    // Introspection of the hub token at the edge: forwarded to the hub while it is up.
    let introspected = support::introspect(&edge, &exchanger, &hub_token).await;
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["verified_offline"], false, "{introspected}");
    assert_eq!(introspected["upstream"], "hub", "{introspected}");
    assert_eq!(introspected["sub"], agent.client_id.as_str(), "{introspected}");
    let real = Jwt::parse(&hub_token);
    let forged = format!("{}.{}.{}", real.header_part, real.payload_part, "AAAA");
    let introspected = support::introspect(&edge, &exchanger, &forged).await;
    assert_eq!(introspected["active"], false, "{introspected}");

    // The hub dies while agents keep asking: not one issue_local request fails.
    let load = {
        let edge_url = edge.url("/token");
        let (id, secret) = (agent.client_id.clone(), agent.client_secret.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(6) {
                let began = Instant::now();
                let answer = post_form(
                    &edge_url,
                    Some(&basic(&id, &secret)),
                    form(&[("grant_type", "client_credentials")]),
                )
                .await;
                answers.push((answer, began.elapsed()));
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    hub.kill();
    let answers = load.await.expect("the load task");
    let mut degraded = 0;
    let mut slowest = Duration::ZERO;
    for (answer, took) in &answers {
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "issue_local during the outage: {}",
            answer.text
        );
        let token = Jwt::parse(answer.json()["access_token"].as_str().unwrap());
        assert_eq!(token.payload["sub"], agent.client_id.as_str());
        assert_eq!(token.payload["scope"], "read");
        if token.payload["degraded"] == true {
            degraded += 1;
        }
        slowest = slowest.max(*took);
    }
    assert!(degraded > 0, "no degraded token in {} answers", answers.len());
    eprintln!(
        "hub killed under load: {} requests, {degraded} degraded, slowest {slowest:?}",
        answers.len()
    );

    let hub_status = wait_for(&edge, "unavailable", |hub| hub["available"] == false);
    assert_ne!(hub_status["breaker"]["state"], "closed", "{hub_status}");
    for round in 0..3 {
        let answer = client_credentials(&edge, &agent.client_id, &agent.client_secret, Some("read")).await;
        assert_eq!(answer.status, StatusCode::OK, "round {round}: {}", answer.text);
        let body = answer.json();
        assert!(body["expires_in"].as_u64().is_some_and(|ttl| ttl <= 30), "{body}");
        let token = Jwt::parse(body["access_token"].as_str().unwrap());
        assert_eq!(token.payload["degraded"], true, "{}", token.payload);
        let introspected = support::introspect(&edge, &exchanger, body["access_token"].as_str().unwrap()).await;
        assert_eq!(introspected["active"], true, "{introspected}");

        let answer = client_credentials(&edge, &newcomer.client_id, &newcomer.client_secret, None).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "auto-federated, round {round}: {}",
            answer.text
        );
        let token = Jwt::parse(answer.json()["access_token"].as_str().unwrap());
        assert_eq!(token.payload["degraded"], true, "{}", token.payload);
        assert_eq!(token.payload["scope"], "read");

        let answer = client_credentials(&edge, &strict.client_id, &strict.client_secret, None).await;
        if let Some(problem) = answer.oauth_error_mismatch(503, "temporarily_unavailable") {
            panic!("fail_closed, round {round}: {problem}");
        }
        assert!(
            answer
                .header("retry-after")
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|s| s >= 1),
            "{:?}",
            answer.headers
        );

        let answer = client_credentials(&edge, &agent.client_id, "not-the-secret", None).await;
        if let Some(problem) = answer.oauth_error_mismatch(401, "invalid_client") {
            panic!("wrong secret while the hub is down, round {round}: {problem}");
        }
        let answer = client_credentials(&edge, &newcomer.client_id, &agent.client_secret, None).await;
        if let Some(problem) = answer.oauth_error_mismatch(401, "invalid_client") {
            panic!("another client's secret while the hub is down: {problem}");
        }
    }

    // Introspection of the hub token while the hub is down: validated through the cached JWKS.
    let introspected = support::introspect(&edge, &exchanger, &hub_token).await;
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["verified_offline"], true, "{introspected}");
    assert_eq!(introspected["iss"], hub_issuer.as_str(), "{introspected}");
    assert_eq!(introspected["sub"], agent.client_id.as_str(), "{introspected}");
    let introspected = support::introspect(&edge, &exchanger, &forged).await;
    assert_eq!(introspected["active"], false, "{introspected}");

    let text = edge.cli(&["upstream", "status"]);
    assert!(text.contains("hub"), "{text}");
    let logs = edge.output();
    for secret in [&agent.client_secret, &strict.client_secret, &newcomer.client_secret] {
        assert!(!logs.contains(secret.as_str()), "a secret reached the edge's log");
    }
    let secrets = [
        &agent.client_secret,
        &strict.client_secret,
        &newcomer.client_secret,
        &introspector.client_secret,
    ];
    let state = files_under(&edge_data).into_iter().any(|bytes| {
        secrets
            .iter()
            .any(|secret| bytes.windows(secret.len()).any(|w| w == secret.as_bytes()))
    });
    assert!(!state, "a federated client's secret is stored in plaintext");
}

/// The contents of every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push(bytes);
        }
    }
    out
}
