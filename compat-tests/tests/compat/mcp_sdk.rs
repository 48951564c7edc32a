//! The MCP SDK (`@modelcontextprotocol/sdk`) client against a small MCP server behind
//! `meshgate protect` and a real `meshgate serve`: protected-resource metadata → authorization-
//! server metadata → dynamic registration (the SDK's `registerClient` and `auth()`), and an
//! authorized MCP call with the SDK's client_credentials provider; and the full interactive flow
//! (`js/mcp_auth.mjs`): the SDK's `auth()` through `/authorize` (login and consent forms), PKCE
//! and RFC 8707 `resource`, then an authorized MCP call as the signed-in user.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use compat_tests::{ClientOptions, Meshgate, js_dir};
use serde_json::{Value, json};

use super::protect::Protected;
use super::support;

/// `node js/mcp_server.mjs`, killed when dropped.
struct McpServer {
    child: Child,
    port: u16,
}

impl McpServer {
    fn spawn() -> Self {
        let dir = js_dir();
        assert!(
            dir.join("node_modules/@modelcontextprotocol/sdk").is_dir(),
            "compat-tests/js/node_modules lacks @modelcontextprotocol/sdk: run scripts/test.sh (npm ci)"
        );
        let mut child = Command::new("node")
            .arg("mcp_server.mjs")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node mcp_server.mjs");
        let (send, receive) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = send.send(lines.next().and_then(Result::ok).unwrap_or_default());
            for _ in lines {}
        });
        let line = receive.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let port = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("mcp_server.mjs printed no port: {line:?}")
            }) as u16;
        Self { child, port }
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `node js/SCRIPT` (bounded by coreutils `timeout`) with `input` on stdin; its JSON output.
fn node_script(script: &str, input: &Value) -> Value {
    let mut child = Command::new("timeout")
        .args(["120", "node", script])
        .current_dir(js_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node {script} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("node {script} printed no JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_sdk_discovers_registers_and_calls_through_protect() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    let mcp = McpServer::spawn();
    let gate = server.client_add("protect", "introspect");
    let protect = Protected::spawn(
        "/mcp",
        &format!("http://127.0.0.1:{}", mcp.port),
        server.issuer(),
        "mcp:tools",
        &["--client-id", &gate.client_id],
        &[("MESHGATE_PROTECT_CLIENT_SECRET", &gate.client_secret)],
    );
    let agent = server.client_add_with(
        "mcp-agent",
        "mcp:tools",
        &ClientOptions {
            audiences: vec![protect.resource.clone()],
            ..Default::default()
        },
    );
    let input = json!({
        "mcp_url": protect.resource,
        "issuer": server.issuer(),
        "client_id": agent.client_id,
        "client_secret": agent.client_secret,
    });
    let result = tokio::task::spawn_blocking(move || node_script("mcp_discovery.mjs", &input))
        .await
        .unwrap();

    // 401 → resource metadata → authorization server.
    assert_eq!(result["unauthenticated"]["status"], 401, "{result:#}");
    assert_eq!(
        result["unauthenticated"]["resource_metadata_url"],
        protect.url("/.well-known/oauth-protected-resource/mcp")
    );
    assert_eq!(result["protected_resource"]["resource"], protect.resource.as_str());
    assert_eq!(
        result["protected_resource"]["authorization_servers"],
        json!([server.issuer()])
    );
    let metadata = &result["authorization_server"];
    assert_eq!(metadata["issuer"], server.issuer());
    assert_eq!(
        metadata["registration_endpoint"],
        format!("{}/register", server.issuer())
    );
    assert_eq!(metadata["client_id_metadata_document_supported"], true);
    // Registration through the SDK: a public loopback client, no credentials needed.
    for registered in [&result["registered"], &result["auth_registered"]] {
        assert!(
            registered["client_id"].as_str().is_some_and(|id| id.len() >= 20),
            "{result:#}"
        );
        assert_eq!(registered["token_endpoint_auth_method"], "none");
        assert_eq!(registered["redirect_uris"], json!(["http://127.0.0.1:33418/callback"]));
        assert_eq!(registered["scope"], "mcp:tools");
        assert!(registered.get("client_secret").is_none());
    }
    let listed = server.cli(&["client", "list", "--json"]);
    let listed: Value = serde_json::from_str(listed.trim()).unwrap();
    for registered in [&result["registered"], &result["auth_registered"]] {
        assert!(
            listed
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["client_id"] == registered["client_id"]),
            "the SDK's registration is a replicated client: {listed:#}"
        );
    }
    // The authorized MCP call: the server saw the identity protect verified, not the token.
    assert_eq!(result["tools"], json!(["whoami"]));
    let whoami = &result["whoami"];
    assert_eq!(whoami["subject"], agent.client_id.as_str(), "{result:#}");
    assert_eq!(whoami["client"], agent.client_id.as_str());
    assert_eq!(whoami["scope"], "mcp:tools");
    assert_eq!(whoami["authorization"], Value::Null);
}

/// The full MCP authorization flow (`js/mcp_auth.mjs`): the SDK's `auth()` discovers the
/// protected resource and the authorization server, registers a public client, sends the user
/// through `/authorize` (login form with CSRF, consent) with PKCE S256 and RFC 8707 `resource` =
/// the MCP server, exchanges the code, and calls the MCP server through `meshgate protect` as the
/// user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_sdk_full_authorization_flow_through_protect() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    super::login::add_user(dir.path(), "mcp-user", "correct horse battery staple");
    let mcp = McpServer::spawn();
    let gate = server.client_add("protect", "introspect");
    let protect = Protected::spawn(
        "/mcp",
        &format!("http://127.0.0.1:{}", mcp.port),
        server.issuer(),
        "mcp:tools",
        &["--client-id", &gate.client_id],
        &[("MESHGATE_PROTECT_CLIENT_SECRET", &gate.client_secret)],
    );
    let input = json!({
        "mcp_url": protect.resource,
        "issuer": server.issuer(),
        "username": "mcp-user",
        "password": "correct horse battery staple",
    });
    let result = tokio::task::spawn_blocking(move || node_script("mcp_auth.mjs", &input))
        .await
        .unwrap();

    assert_eq!(result["probe_status"], 401, "{result:#}");
    assert_eq!(result["first"], "REDIRECT", "{result:#}");
    let params = &result["authorization_params"];
    assert_eq!(params["code_challenge_method"], "S256", "{result:#}");
    assert_eq!(params["resource"], protect.resource.as_str(), "{result:#}");
    assert_eq!(params["client_id"], result["client_id"]);
    // The "browser" went through the login page and the consent page.
    let visited: Vec<&str> = result["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["url"].as_str())
        .collect();
    assert!(visited.iter().any(|u| u.ends_with("/login")), "{result:#}");
    assert!(visited.iter().any(|u| u.ends_with("/consent")), "{result:#}");
    assert_eq!(result["callback_params"]["iss"], server.issuer(), "{result:#}");
    assert_eq!(result["second"], "AUTHORIZED", "{result:#}");
    assert_eq!(
        result["token_type"].as_str().map(str::to_ascii_lowercase).as_deref(),
        Some("bearer")
    );
    assert_eq!(result["has_refresh_token"], true, "{result:#}");
    // The authorized call is the user's, through the dynamically registered client.
    assert_eq!(result["tools"], json!(["whoami"]));
    let whoami = &result["whoami"];
    let users: Value = serde_json::from_str(server.cli(&["user", "list", "--json"]).trim()).unwrap();
    let sub = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "mcp-user")
        .map(|u| u["sub"].clone())
        .unwrap_or_else(|| panic!("mcp-user is not listed: {users:#}"));
    assert_eq!(whoami["subject"], sub, "{result:#}");
    assert_eq!(whoami["client"], result["client_id"]);
    assert_eq!(whoami["scope"], "mcp:tools");
    assert_eq!(whoami["authorization"], Value::Null);
}
