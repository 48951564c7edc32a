//! `meshgate protect` in front of a small HTTP service, against a real `meshgate serve`: RFC 9728
//! metadata, 401 with `resource_metadata`, 403 `insufficient_scope`, forwarded identity headers
//! (spoofed ones stripped), revocation, request bounds and a dead upstream.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use compat_tests::{ClientOptions, Meshgate, meshgate_bin};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::support::{self, basic, form, post_form};

/// A running `meshgate protect`; killed when dropped.
pub struct Protected {
    child: Child,
    /// Where it listens, `127.0.0.1:PORT`.
    pub listen: String,
    /// The resource URL.
    pub resource: String,
    stderr: Arc<Mutex<String>>,
}

impl Protected {
    /// Starts `meshgate protect --listen 127.0.0.1:PORT --resource http://127.0.0.1:PORT{path}
    /// ... --json` on a free port and waits for its startup line.
    pub fn spawn(path: &str, upstream: &str, issuer: &str, scope: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let resource = format!("http://{listen}{path}");
        let mut command = Command::new(meshgate_bin());
        command
            .args([
                "protect",
                "--listen",
                &listen,
                "--upstream",
                upstream,
                "--resource",
                &resource,
            ])
            .args(["--scope", scope, "--issuer", issuer, "--json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start meshgate protect");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, buffer) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                buffer.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let (send, receive) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = send.send(lines.next().and_then(Result::ok).unwrap_or_default());
            for _ in lines {}
        });
        let line = receive.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!(
                "meshgate protect printed no startup JSON ({e}): {line:?}\n{}",
                stderr.lock().unwrap()
            )
        });
        assert_eq!(info["listen"], listen.as_str(), "{info}");
        Self {
            child,
            listen,
            resource,
            stderr,
        }
    }

    /// An absolute URL on the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// What it logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Protected {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny HTTP/1.1 service on 127.0.0.1 that answers every request with a JSON echo of its method,
/// path, headers and body length. Returns its base URL and a handle that stops it.
pub async fn echo_service() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 8192];
                let header_end = loop {
                    let Ok(n) = stream.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at;
                    }
                };
                let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap_or_default().to_owned();
                let mut headers = serde_json::Map::new();
                let mut length = 0usize;
                for line in lines {
                    if let Some((k, v)) = line.split_once(':') {
                        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
                        if k == "content-length" {
                            length = v.parse().unwrap_or(0);
                        }
                        headers.insert(k, Value::String(v));
                    }
                }
                let mut body = buffer[header_end + 4..].to_vec();
                while body.len() < length {
                    let Ok(n) = stream.read(&mut chunk).await else { return };
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                let mut parts = request_line.split(' ');
                let echo = json!({
                    "method": parts.next(),
                    "path": parts.next(),
                    "headers": headers,
                    "body": String::from_utf8_lossy(&body),
                })
                .to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{echo}",
                    echo.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (base, task)
}

async fn call(url: &str, token: Option<&str>, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut request = support::http().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

fn challenge(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protect_guards_an_http_service() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    let (upstream, upstream_task) = echo_service().await;
    let gate_client = server.client_add("protect", "introspect");
    let protect = Protected::spawn(
        "/mcp",
        &upstream,
        server.issuer(),
        "mcp:tools",
        &["--client-id", &gate_client.client_id, "--max-body-bytes", "1024"],
        &[("MESHGATE_PROTECT_CLIENT_SECRET", &gate_client.client_secret)],
    );
    let resource = protect.resource.clone();
    let metadata_url = protect.url("/.well-known/oauth-protected-resource/mcp");

    // RFC 9728 metadata, at the path-inserted and the root location.
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let answer = support::get(&protect.url(path)).await;
        let meta = answer.json();
        assert_eq!(meta["resource"], resource.as_str(), "{meta}");
        assert_eq!(meta["authorization_servers"], json!([server.issuer()]));
        assert_eq!(meta["scopes_supported"], json!(["mcp:tools"]));
        assert_eq!(meta["bearer_methods_supported"], json!(["header"]));
    }

    // No token: 401 pointing at the metadata.
    let response = call(&protect.url("/mcp"), None, &[]).await;
    assert_eq!(response.status(), 401);
    let www = challenge(&response);
    assert!(www.starts_with("Bearer "), "{www}");
    assert!(www.contains(&format!("resource_metadata=\"{metadata_url}\"")), "{www}");
    // Garbage: 401 invalid_token.
    let response = call(&protect.url("/mcp"), Some("not-a-jwt"), &[]).await;
    assert_eq!(response.status(), 401);
    assert!(challenge(&response).contains("error=\"invalid_token\""));

    let audience = ClientOptions {
        audiences: vec![resource.clone()],
        ..Default::default()
    };
    // A token for another audience (the issuer) is refused.
    let other_aud = server.client_add("elsewhere", "mcp:tools");
    let token = support::access_token(&server, &other_aud, &[]).await;
    let response = call(&protect.url("/mcp"), Some(&token), &[]).await;
    assert_eq!(response.status(), 401, "{}", response.text().await.unwrap());
    // The right audience without the scope: 403 insufficient_scope.
    let reader = server.client_add_with("reader", "read", &audience);
    let token = support::access_token(&server, &reader, &[]).await;
    let response = call(&protect.url("/mcp"), Some(&token), &[]).await;
    assert_eq!(response.status(), 403);
    let www = challenge(&response);
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");
    assert!(www.contains("scope=\"mcp:tools\""), "{www}");

    // A good token: forwarded with the verified identity; spoofed headers and the token stripped.
    let agent = server.client_add_with("agent", "mcp:tools read", &audience);
    let token = support::access_token(&server, &agent, &[]).await;
    let spoofed = [
        ("X-Meshgate-Subject", "admin"),
        ("x-meshgate-client", "someone-else"),
        ("X-MESHGATE-SCOPE", "everything"),
        ("X-Meshgate-Extra", "sneaky"),
    ];
    let response = call(&protect.url("/mcp/tools?x=1"), Some(&token), &spoofed).await;
    assert_eq!(response.status(), 200, "{}", protect.stderr());
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/mcp/tools?x=1");
    let headers = &echo["headers"];
    assert_eq!(headers["x-meshgate-subject"], agent.client_id.as_str(), "{echo}");
    assert_eq!(headers["x-meshgate-client"], agent.client_id.as_str());
    assert_eq!(headers["x-meshgate-scope"], "mcp:tools read");
    assert!(headers.get("x-meshgate-extra").is_none(), "{echo}");
    assert!(
        headers.get("authorization").is_none(),
        "the token is not passed through: {echo}"
    );

    // Bodies are forwarded, and bounded.
    let response = support::http()
        .post(protect.url("/mcp"))
        .bearer_auth(&token)
        .body("x".repeat(100))
        .send()
        .await
        .unwrap();
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"].as_str().unwrap().len(), 100);
    let response = support::http()
        .post(protect.url("/mcp"))
        .bearer_auth(&token)
        .body("x".repeat(4096))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // Revoked at the issuer: refused within the revocation-check interval (5 s by default).
    let revoked = post_form(
        &server.url("/revoke"),
        Some(&basic(&agent.client_id, &agent.client_secret)),
        form(&[("token", &token)]),
    )
    .await;
    assert_eq!(revoked.status, 200);
    let mut refused = false;
    for _ in 0..300 {
        let response = call(&protect.url("/mcp"), Some(&token), &[]).await;
        if response.status() == 401 {
            assert!(challenge(&response).contains("invalid_token"));
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "a revoked token was still accepted after 30 s");

    // The upstream goes away: 502 with a clear JSON body, never a 500.
    upstream_task.abort();
    let _ = upstream_task.await;
    let fresh = support::access_token(&server, &agent, &[]).await;
    let response = call(&protect.url("/mcp"), Some(&fresh), &[]).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "bad_gateway", "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("upstream"),
        "{body}"
    );

    // Nothing logged a token.
    let logs = format!("{}{}", protect.stderr(), server.stderr());
    assert!(!logs.contains(&token) && !logs.contains(&fresh), "a token was logged");
    assert!(!logs.contains(&gate_client.client_secret), "a secret was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protect_refuses_to_start_without_revocation_checks() {
    let output = Command::new(meshgate_bin())
        .args(["protect", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9"])
        .args([
            "--resource",
            "http://127.0.0.1:9/mcp",
            "--scope",
            "s",
            "--issuer",
            "http://127.0.0.1:9",
        ])
        .env_remove("MESHGATE_PROTECT_CLIENT_SECRET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--danger-skip-revocation-check"), "{stderr}");
}

/// Whether `token` passes the proxy now.
async fn passes(protect: &Protected, token: &str) -> bool {
    call(&protect.url("/mcp"), Some(token), &[]).await.status() == 200
}

/// Whether the proxy answers `token` 401 with an `error_description` containing `why`.
async fn refused(protect: &Protected, token: &str, why: &str) -> bool {
    let response = call(&protect.url("/mcp"), Some(token), &[]).await;
    response.status() == 401 && challenge(&response).contains(why)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protect_as_a_mesh_member_follows_replicated_revocations_and_removals() {
    use super::mesh::{Mesh, eventually};
    let mesh = Mesh::new(2);
    let a = mesh.start(1);
    let b = mesh.start(2);
    // The gateway's own identity, admitted on A by the operator; it trusts A and dials both.
    let dir = support::temp_dir();
    let data = dir.path().join("protect");
    let out = compat_tests::cli(&data, &["id", "--json"]);
    let did = serde_json::from_str::<Value>(&out).unwrap()["did"]
        .as_str()
        .unwrap()
        .to_owned();
    compat_tests::cli(&mesh.data(1), &["mesh", "admit", &did, "--json"]);
    let config = dir.path().join("protect.yaml");
    std::fs::write(
        &config,
        format!(
            "node:\n  sync:\n    listen: \"127.0.0.1:0\"\n    gossip_peers: [\"{}\", \"{}\"]\n    trusted_peers: [\"{}\"]\n",
            mesh.sync_addr(1),
            mesh.sync_addr(2),
            mesh.did(1)
        ),
    )
    .unwrap();
    let (upstream, _upstream_task) = echo_service().await;
    // No --client-id and no secret: the member never calls introspection.
    let protect = Protected::spawn(
        "/mcp",
        &upstream,
        a.issuer(),
        "mcp:tools",
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );

    let audience = ClientOptions {
        audiences: vec![protect.resource.clone()],
        ..Default::default()
    };
    let agent = a.client_add_with("agent", "mcp:tools", &audience);
    let token = support::access_token(&a, &agent, &[]).await;
    eventually("A's token passes the member gateway", || passes(&protect, &token)).await;
    let response = call(&protect.url("/mcp"), Some(&token), &[]).await;
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-meshgate-client"], agent.client_id.as_str(), "{echo}");
    assert_eq!(echo["headers"]["x-meshgate-scope"], "mcp:tools", "{echo}");
    // Without a token, or with a token for another audience: refused as before.
    assert_eq!(call(&protect.url("/mcp"), None, &[]).await.status(), 401);
    let elsewhere = a.client_add("elsewhere", "mcp:tools");
    let other = support::access_token(&a, &elsewhere, &[]).await;
    eventually("the other client reaches the gateway", || {
        refused(&protect, &other, "another audience")
    })
    .await;

    // Revoked on B: the revocation replicates to the gateway, which refuses the token.
    eventually("B knows A's client and token", || async {
        let answer = post_form(
            &b.url("/introspect"),
            Some(&basic(&agent.client_id, &agent.client_secret)),
            form(&[("token", &token)]),
        )
        .await;
        answer.status == 200 && answer.json()["active"] == true
    })
    .await;
    let revoked = post_form(
        &b.url("/revoke"),
        Some(&basic(&agent.client_id, &agent.client_secret)),
        form(&[("token", &token)]),
    )
    .await;
    assert_eq!(revoked.status, 200);
    eventually("the gateway refuses the token revoked on B", || {
        refused(&protect, &token, "token revoked")
    })
    .await;

    // A token of B passes until B is removed from the mesh, then is refused.
    let b_token = support::access_token(&b, &agent, &[]).await;
    eventually("B's token passes the gateway", || passes(&protect, &b_token)).await;
    compat_tests::cli(&mesh.data(1), &["mesh", "remove", mesh.did(2), "--json"]);
    eventually("the gateway refuses the removed node's token", || {
        refused(&protect, &b_token, "unknown signing key")
    })
    .await;
    // A's fresh tokens still pass.
    let fresh = support::access_token(&a, &agent, &[]).await;
    assert!(passes(&protect, &fresh).await, "{}", protect.stderr());

    let logs = protect.stderr();
    assert!(!logs.contains(&token) && !logs.contains(&fresh), "a token was logged");
    drop((a, b));
}
