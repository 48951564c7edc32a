//! Operating a node: the JSON log file survives restarts and stays within its bound, the audit
//! log answers who changed what, OTLP export reaches a collector while a frozen collector slows
//! no token request, and `meshgate doctor` explains what it finds.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use compat_tests::{Meshgate, cli};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::support::{self, basic, form, post_form};

/// Everything these tests wait for gets this long before failing.
const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` every 200 ms until it returns `Some`, for up to [`PATIENCE`].
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of an unlabelled metric line `name value` on the node's `/metrics`.
async fn metric(server: &Meshgate, name: &str) -> Option<f64> {
    let text = support::get(&server.metrics_url("/metrics")).await.text;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn log_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("logs")
}

/// Every log file (current and rotated) with its contents.
fn log_files(data_dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(log_dir(data_dir))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, std::fs::read_to_string(e.path()).unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_file_survives_a_restart() {
    let dir = support::temp_dir();
    let mut first = Meshgate::spawn(dir.path());
    let first_listen = first.info().listen.clone();
    first.client_add("logged", "read");
    first.stop();
    let mut second = Meshgate::spawn(dir.path());
    second.stop();

    let files = log_files(dir.path());
    let (name, text) = files
        .iter()
        .find(|(n, _)| n == "meshgate.log")
        .expect("logs/meshgate.log");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: not a JSON line ({e}): {l}")))
        .collect();
    let serving: Vec<&Value> = lines.iter().filter(|l| l["fields"]["message"] == "serving").collect();
    assert_eq!(serving.len(), 2, "one `serving` line per run in:\n{text}");
    assert_eq!(serving[0]["fields"]["listen"], first_listen.as_str(), "{text}");
    assert!(
        lines.iter().any(|l| l["fields"]["command"] == "client_add"),
        "the first run's admin command is in the file:\n{text}"
    );
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "shutting down"),
        "{text}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(log_dir(dir.path()).join("meshgate.log"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_bounds_the_log_file() {
    let dir = support::temp_dir();
    let env = [
        ("MESHGATE_LOG", "debug"),
        ("MESHGATE_OBSERVABILITY__LOG_FILE__MAX_FILE_BYTES", "4096"),
        ("MESHGATE_OBSERVABILITY__LOG_FILE__MAX_FILES", "3"),
    ];
    let mut server = Meshgate::spawn_with_env(dir.path(), &env);
    let client = server.client_add("rotating", "read");
    let authorization = basic(&client.client_id, &client.client_secret);
    // Each request logs a debug line of about 150 bytes: 300 of them fill the three files many
    // times over.
    for _ in 0..300 {
        let answer = post_form(
            &server.url("/token"),
            Some(&authorization),
            form(&[("grant_type", "client_credentials")]),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.text);
    }
    assert!(
        metric(&server, "meshgate_log_lines_dropped_total").await.is_some(),
        "/metrics counts dropped log lines"
    );
    server.stop();
    let files = log_files(dir.path());
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["meshgate.log", "meshgate.log.1", "meshgate.log.2"]);
    for (name, text) in &files {
        assert!(text.len() <= 4096, "{name} holds {} bytes", text.len());
        for line in text.lines() {
            serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{name}: torn line ({e}): {line}"));
        }
    }
    let total: usize = files.iter().map(|(_, t)| t.len()).sum();
    assert!(total > 2 * 4096, "rotation kept only {total} bytes");
}

/// Runs `meshgate audit --json ARGS` and parses the records.
fn audit(data_dir: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "--json"];
    all.extend_from_slice(args);
    let out = cli(data_dir, &all);
    serde_json::from_str::<Value>(out.trim())
        .unwrap_or_else(|e| panic!("audit --json printed no JSON ({e}): {out}"))
        .as_array()
        .expect("a list")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_names_who_changed_what_and_never_a_secret() {
    let dir = support::temp_dir();
    let mut server = Meshgate::spawn(dir.path());
    let client = server.client_add("audited", "read");
    server.cli(&["client", "update", &client.client_id, "--max-offline", "1h"]);
    let rotated: Value = serde_json::from_str(
        server
            .cli(&["client", "rotate-secret", &client.client_id, "--json"])
            .trim(),
    )
    .unwrap();
    server.cli(&["keys", "rotate"]);
    server.cli(&["client", "remove", &client.client_id]);
    server.cli(&["client", "list"]);

    let records = audit(dir.path(), &[]);
    let actions: Vec<&str> = records.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "client_add",
            "client_set_policy",
            "client_rotate_secret",
            "keys_rotate",
            "client_remove"
        ],
        "read-only commands are not audited; changes are, in order"
    );
    for record in &records {
        assert!(
            record["actor"].as_str().unwrap().starts_with("operator uid "),
            "{record}"
        );
        assert_eq!(record["node"], server.info().did.as_str());
        assert_eq!(record["verified"], true, "{record}");
        assert!(record["time"].as_str().unwrap().ends_with('Z'), "{record}");
    }
    assert_eq!(records[0]["detail"]["client_id"], client.client_id.as_str());
    assert_eq!(records[1]["detail"]["degradation"]["max_offline_secs"], 3600);
    let text = serde_json::to_string(&records).unwrap();
    for secret in [
        client.client_secret.as_str(),
        rotated["client_secret"].as_str().unwrap(),
    ] {
        assert!(!text.contains(secret), "a client secret in the audit log: {text}");
    }
    let table = server.cli(&["audit"]);
    assert!(table.starts_with("TIME"), "{table}");
    assert!(table.contains("client_rotate_secret"), "{table}");

    // Without a server the CLI changes the data directory itself, and says so.
    server.stop();
    cli(
        dir.path(),
        &["client", "add", "--name", "offline", "--grant", "client_credentials"],
    );
    let records = audit(dir.path(), &[]);
    assert_eq!(records.len(), 6);
    assert_eq!(records[5]["actor"], "offline cli");
    assert_eq!(records[5]["detail"]["name"], "offline");
    assert_eq!(audit(dir.path(), &["--since", "1h"]).len(), 6);
    assert!(audit(dir.path(), &["--since", "2999-01-01T00:00:00Z"]).is_empty());
}

/// What a tiny OTLP collector received: (path, JSON body) per request.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A loopback OTLP/HTTP collector that answers 200 to every POST and keeps what it got.
async fn collector() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received: Received = Arc::default();
    let store = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head_end, length) = loop {
                    let Ok(n) = stream.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                };
                while buffer.len() < head_end + length {
                    let Ok(n) = stream.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let body = serde_json::from_slice(&buffer[head_end..head_end + length]).unwrap_or(Value::Null);
                store.lock().unwrap().push((path, body));
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
            });
        }
    });
    (url, received)
}

/// A collector that is frozen, as one stopped with SIGSTOP: the kernel accepts its connections,
/// nothing ever reads or answers them. Returns its URL and how many connections it got.
async fn frozen_collector() -> (String, Arc<Mutex<Vec<tokio::net::TcpStream>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held: Arc<Mutex<Vec<tokio::net::TcpStream>>> = Arc::default();
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            keep.lock().unwrap().push(stream);
        }
    });
    (url, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_reaches_a_collector() {
    let (url, received) = collector().await;
    let dir = support::temp_dir();
    let env = [
        ("MESHGATE_OBSERVABILITY__OTLP__ENDPOINT", url.as_str()),
        ("MESHGATE_OBSERVABILITY__OTLP__INTERVAL", "1s"),
    ];
    let server = Meshgate::spawn_with_env(dir.path(), &env);
    let client = server.client_add("exported", "read");
    support::token(&server, &client, &[]).await;

    let span = eventually("a token span at the collector", async || {
        let received = received.lock().unwrap();
        received
            .iter()
            .filter(|(path, _)| path == "/v1/traces")
            .flat_map(|(_, body)| {
                body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|span| span["name"] == "POST token")
    })
    .await;
    assert_eq!(span["traceId"].as_str().unwrap().len(), 32, "{span}");
    assert!(span["attributes"].to_string().contains("\"200\""), "{span}");
    let issued = eventually("tokens_issued at the collector", async || {
        let received = received.lock().unwrap();
        received
            .iter()
            .filter(|(path, _)| path == "/v1/metrics")
            .flat_map(|(_, body)| {
                body["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|m| m["name"] == "meshgate_tokens_issued_total" && m["sum"]["dataPoints"].to_string().contains("1.0"))
    })
    .await;
    assert_eq!(issued["sum"]["isMonotonic"], true);
    let resource = received.lock().unwrap()[0].1.to_string();
    assert!(
        resource.contains(&server.info().did),
        "service.instance.id is the DID: {resource}"
    );
    assert!(
        !resource.contains(&client.client_secret),
        "a secret went to the collector"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_collector_slows_no_token_request() {
    let (url, held) = frozen_collector().await;
    let dir = support::temp_dir();
    let env = [
        ("MESHGATE_OBSERVABILITY__OTLP__ENDPOINT", url.as_str()),
        ("MESHGATE_OBSERVABILITY__OTLP__INTERVAL", "1s"),
        ("MESHGATE_OBSERVABILITY__OTLP__TIMEOUT", "1s"),
        ("MESHGATE_OBSERVABILITY__OTLP__QUEUE_SPANS", "4"),
    ];
    let mut server = Meshgate::spawn_with_env(dir.path(), &env);
    let client = server.client_add("unhindered", "read");
    eventually("an export stuck at the frozen collector", async || {
        (!held.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    // Every request succeeds within the client's timeout while exports hang; spans beyond the
    // queue are dropped and counted.
    let authorization = basic(&client.client_id, &client.client_secret);
    for _ in 0..50 {
        let answer = post_form(
            &server.url("/token"),
            Some(&authorization),
            form(&[("grant_type", "client_credentials")]),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.text);
    }
    eventually("a counted export failure", async || {
        metric(&server, "meshgate_otlp_export_failures_total")
            .await
            .filter(|n| *n >= 1.0)
    })
    .await;
    let dropped = metric(&server, "meshgate_otlp_spans_dropped_total")
        .await
        .unwrap_or(0.0);
    assert!(dropped >= 1.0, "50 spans through a queue of 4 dropped none");
    // Shutdown is not held up by the hanging export either.
    let status = server.stop();
    assert!(status.success(), "{status}\n{}", server.output());
}

/// Runs `meshgate doctor --json --config CONFIG --data-dir DIR`; returns the exit code and report.
fn doctor(data_dir: &Path, config: &Path) -> (i32, Value) {
    let output = std::process::Command::new(compat_tests::meshgate_bin())
        .args(["doctor", "--json", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run meshgate doctor");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().expect("exit code"), report)
}

fn findings<'a>(report: &'a Value, check: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["check"] == check)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_explains_each_finding_and_fails_on_readable_keys() {
    let dir = support::temp_dir();
    let data = dir.path().join("node");
    // An upstream nobody listens on: reachable = no, which is a warning (degradation applies).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path().join("meshgate.yaml");
    std::fs::write(
        &config,
        format!(
            "bridge:\n  listen: 127.0.0.1:0\n  metrics_listen: 127.0.0.1:0\nnode:\n  sync:\n    listen: 127.0.0.1:0\n\
             upstreams:\n  - name: corp\n    issuer: http://{dead}/realms/corp\n"
        ),
    )
    .unwrap();
    let server = Meshgate::spawn_with_config(&data, &config, &[]);
    server.client_add("eddsa-client", "read");

    let (code, report) = doctor(&data, &config);
    assert_eq!(code, 0, "no check fails on a healthy node: {report:#}");
    assert_eq!(report["status"], "warn", "{report:#}");
    for (check, status) in [
        ("config", "ok"),
        ("data_dir", "ok"),
        ("key_files", "ok"),
        ("state", "ok"),
        ("jwks", "ok"),
        ("clock_skew", "ok"),
        ("upstream", "warn"),
        ("algorithms", "warn"),
    ] {
        let found = findings(&report, check);
        assert_eq!(found.len(), 1, "{check}: {report:#}");
        assert_eq!(found[0]["status"], status, "{check}: {report:#}");
    }
    for finding in report["findings"].as_array().unwrap() {
        assert!(!finding["explanation"].as_str().unwrap().is_empty(), "{finding}");
        if finding["status"] != "ok" {
            assert!(!finding["fix"].as_str().unwrap().is_empty(), "{finding}");
        }
    }
    assert!(
        findings(&report, "upstream")[0]["summary"]
            .as_str()
            .unwrap()
            .contains("corp")
    );
    assert!(
        findings(&report, "algorithms")[0]["fix"]
            .as_str()
            .unwrap()
            .contains("RS256")
    );

    // A key file readable by others fails the check, with the command that fixes it.
    let key = std::fs::read_dir(data.join("keys"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let private = std::fs::metadata(&key).unwrap().permissions();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, report) = doctor(&data, &config);
    std::fs::set_permissions(&key, private).unwrap();
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["status"], "fail");
    let keys = findings(&report, "key_files");
    assert_eq!(keys[0]["status"], "fail", "{report:#}");
    assert!(keys[0]["fix"].as_str().unwrap().contains("chmod 600"), "{report:#}");

    // A broken configuration is a failure that names the key.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "bridge:\n  lissen: 127.0.0.1:1\n").unwrap();
    let (code, report) = doctor(&data, &broken);
    assert_eq!(code, 1);
    assert!(
        findings(&report, "config")[0]["summary"]
            .as_str()
            .unwrap()
            .contains("bridge.lissen"),
        "{report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_measures_clock_skew_against_a_peer() {
    let dir = support::temp_dir();
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let sync = [port(), port()];
    let data: Vec<std::path::PathBuf> = (0..2).map(|i| dir.path().join(format!("node{i}"))).collect();
    let dids: Vec<String> = data
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(cli(d, &["id", "--json"]).trim()).unwrap()["did"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let configs: Vec<std::path::PathBuf> = (0..2)
        .map(|i| {
            let path = dir.path().join(format!("node{i}.yaml"));
            std::fs::write(
                &path,
                format!(
                    "node:\n  sync:\n    listen: 127.0.0.1:{}\n    gossip_peers: [\"127.0.0.1:{}\"]\n    trusted_peers: [\"{}\"]\n\
                     bridge:\n  listen: 127.0.0.1:0\n  metrics_listen: 127.0.0.1:0\n",
                    sync[i],
                    sync[1 - i],
                    dids[1 - i]
                ),
            )
            .unwrap();
            path
        })
        .collect();
    let _nodes: Vec<Meshgate> = (0..2)
        .map(|i| Meshgate::spawn_with_config(&data[i], &configs[i], &[]))
        .collect();
    // Once node 1's information (its issuer) has synced to node 0, doctor on node 0 compares the
    // clocks: both run on this machine, so the skew is within a second or two.
    let skew = eventually("doctor comparing clocks with the peer", async || {
        let (code, report) = doctor(&data[0], &configs[0]);
        assert_eq!(code, 0, "{report:#}");
        findings(&report, "clock_skew")
            .into_iter()
            .find(|f| {
                let summary = f["summary"].as_str().unwrap_or_default();
                summary.contains(&dids[1]) && summary.contains(" s (http://")
            })
            .cloned()
    })
    .await;
    assert_eq!(skew["status"], "ok", "{skew:#}");

    // The audit log is replicated: node 0 answers with node 1's record of admitting node 0
    // (made by node 1 itself, from its trusted_peers), signed by node 1 and verified.
    let record = eventually("node 1's audit record on node 0", async || {
        audit(&data[0], &[]).into_iter().find(|r| r["node"] == dids[1].as_str())
    })
    .await;
    assert_eq!(record["action"], "mesh_admit", "{record:#}");
    assert_eq!(record["actor"], format!("node {}", dids[1]), "{record:#}");
    assert_eq!(record["detail"]["did"], dids[0].as_str(), "{record:#}");
    assert_eq!(record["verified"], true, "{record:#}");
}
