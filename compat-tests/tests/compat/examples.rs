//! The runnable examples, run as a user would run them (`cargo run -p examples --example ...`).

use std::process::Command;

use compat_tests::{Meshgate, workspace_root};
use serde_json::Value;

use super::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_example_gets_a_token() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    let registered = server.client_add("example", "read write");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "run",
            "--quiet",
            "-p",
            "examples",
            "--example",
            "client_credentials",
            "--",
        ])
        .args([
            server.issuer(),
            &registered.client_id,
            &registered.client_secret,
            "read",
        ])
        .output()
        .expect("cargo run the example");
    assert!(
        output.status.success(),
        "example failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("the example prints JSON");
    assert_eq!(answer["scope"], "read");
    assert!(
        answer["access_token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3)
    );
    let introspection = support::introspect(&server, &registered, answer["access_token"].as_str().unwrap()).await;
    assert_eq!(introspection["active"], true);
}

/// `examples/examples/legacy-agent`: an `oauth2`-crate agent configured for its old central
/// gateway is moved to meshgate by configuration alone — its Keycloak client imported with the
/// same id and secret, meshgate serving HTTPS with the CA from `tls init`, and only the agent's
/// token URL (and CA file) changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_agent_moves_to_meshgate_by_configuration_only() {
    let dir = support::temp_dir();
    let realm = workspace_root().join("compat-tests/fixtures/keycloak-realm-export.json");
    compat_tests::cli(dir.path(), &["import", "keycloak", realm.to_str().unwrap()]);
    let init: Value = serde_json::from_str(&compat_tests::cli(dir.path(), &["tls", "init", "--json"])).unwrap();
    let server = Meshgate::spawn_args(
        dir.path(),
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
    );
    let config_dir = support::temp_dir();
    let config = config_dir.path().join("agent.env");
    // The agent's configuration as it was for the central gateway, with the token URL and CA
    // changed: the only edit a migration needs.
    std::fs::write(
        &config,
        format!(
            "# was: GATEWAY_TOKEN_URL=https://auth.corp/realms/agents/protocol/openid-connect/token\n\
             GATEWAY_TOKEN_URL={}/token\n\
             GATEWAY_CLIENT_ID=billing-agent\n\
             GATEWAY_CLIENT_SECRET=kc-billing-3f9a1c5e7b2d4f6a8c0e1b3d5f7a9c1e\n\
             GATEWAY_SCOPE=invoices:read\n\
             GATEWAY_CA_FILE={}\n",
            server.issuer(),
            init["ca_cert"].as_str().unwrap()
        ),
    )
    .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "run",
            "--quiet",
            "-p",
            "examples",
            "--example",
            "legacy-agent",
            "--",
            "--once",
        ])
        .env("AGENT_CONFIG", &config)
        .env_remove("GATEWAY_TOKEN_URL")
        .output()
        .expect("cargo run the example");
    assert!(
        output.status.success(),
        "legacy-agent failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line: Value = serde_json::from_slice(&output.stdout).expect("the agent prints one JSON line");
    assert_eq!(line["token_type"], "bearer", "{line}");
    assert_eq!(line["scope"], "invoices:read", "{line}");
    assert!(line["expires_in"].as_u64().is_some_and(|s| s > 0), "{line}");
    let logs = server.stderr();
    assert!(!logs.contains("kc-billing-3f9a1c5e7b2d4f6a8c0e1b3d5f7a9c1e"));
}

/// `examples/examples/hybrid-fleet`: one command starts oidc-provider as the upstream, a 3-node
/// mesh and six agents, kills the upstream and then a node, and ends with a summary in which the
/// issue-local clients had no failure, the `issue_local` agents were served (degraded) through
/// the outage and the `fail_closed` agent was refused cleanly.
#[test]
fn hybrid_fleet_example_runs_through_the_outage_with_zero_local_failures() {
    assert!(
        workspace_root().join("bench/oidc/node_modules/oidc-provider").is_dir(),
        "oidc-provider is not installed: run `npm ci` in bench/oidc (scripts/test.sh does)"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "run",
            "--quiet",
            "-p",
            "examples",
            "--example",
            "hybrid-fleet",
            "--",
            "--duration",
            "20",
        ])
        .env_remove("MESHGATE_BIN")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cargo run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "hybrid-fleet failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("RESULT: PASS: failures: 0 for issue-local clients"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok   issue-local clients (client_credentials, no upstream): 0 failures"),
        "{stdout}"
    );
    for agent in ["billing-1", "billing-3", "edge-exchanger", "agent-7", "agent-8"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(agent)),
            "no summary row for {agent}:\n{stdout}"
        );
    }
    // Not a terminal: one plain line per second, no cursor movement.
    assert!(stdout.contains("upstream DOWN (killed at "), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "ANSI escapes on a pipe:\n{stdout}");
}

/// `examples/openclaw-mcp/run.sh`: meshgate serve + protect + the MCP server, the MCP SDK
/// client's full `auth()` flow to an authorized tool call, and the `exec` secret provider's token
/// authorizing the same calls.
#[test]
fn openclaw_mcp_example_authorizes_mcp_calls_end_to_end() {
    let output = Command::new(workspace_root().join("examples/openclaw-mcp/run.sh"))
        .current_dir(workspace_root())
        .env("MESHGATE_BIN", compat_tests::meshgate_bin())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run examples/openclaw-mcp/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "run.sh failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for line in [
        "ok   PKCE S256 and resource = the MCP endpoint",
        "ok   whoami: alice, through the registered client",
        "ok   callTool add",
        "ok   exec protocol:",
        "ok   MCP tool calls with the provider token as the agent",
        "openclaw-mcp: OK: authorized MCP call through meshgate protect",
    ] {
        assert!(stdout.contains(line), "missing {line:?}:\n{stdout}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

/// `examples/openclaw-mcp/meshgate-token.sh` on its own: the exec protocol and plain answers, a
/// wrong secret reported per id in the protocol's `errors` (exit 1), a secret file readable by
/// others refused, and the secret never printed.
#[test]
fn meshgate_token_script_answers_the_exec_protocol_and_refuses_loose_secrets() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    let agent = server.client_add("openclaw-agent", "read");
    let script = workspace_root().join("examples/openclaw-mcp/meshgate-token.sh");
    let secrets = support::temp_dir();
    let secret_file = secrets.path().join("agent.secret");
    let run = |secret: &str, mode: u32, stdin: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut child = Command::new(&script)
            .env("MESHGATE_ISSUER", server.issuer())
            .env("MESHGATE_CLIENT_ID", &agent.client_id)
            .env("MESHGATE_CLIENT_SECRET_FILE", &secret_file)
            .env("MESHGATE_SCOPE", "read")
            .env_remove("MESHGATE_CLIENT_SECRET")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run meshgate-token.sh");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "the secret was printed"
        );
        (output.status.success(), stdout, stderr)
    };
    let request = r#"{"protocolVersion":1,"provider":"meshgate","ids":["a/token","b"]}"#;

    let (ok, stdout, stderr) = run(&agent.client_secret, 0o600, request);
    assert!(ok, "{stdout}{stderr}");
    let answer: Value = serde_json::from_str(stdout.trim()).expect("one JSON answer");
    assert_eq!(answer["protocolVersion"], 1, "{answer}");
    let token = answer["values"]["a/token"].as_str().expect("a token for the first id");
    assert_eq!(answer["values"]["b"], token, "{answer}");
    let claims = support::Jwt::parse(token).payload;
    assert_eq!(claims["client_id"], agent.client_id.as_str());
    assert_eq!(claims["scope"], "read");

    let (ok, stdout, stderr) = run(&agent.client_secret, 0o600, "");
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(
        stdout.trim().split('.').count(),
        3,
        "plain mode prints the JWT: {stdout}"
    );

    let (ok, stdout, stderr) = run("not-the-secret-0123456789", 0o600, request);
    assert!(!ok, "a wrong secret must fail");
    let answer: Value = serde_json::from_str(stdout.trim()).expect("the errors in the exec protocol");
    assert_eq!(answer["values"], serde_json::json!({}), "{answer}");
    assert!(
        answer["errors"]["a/token"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("401 invalid_client")),
        "{answer}"
    );
    assert!(stderr.contains("invalid_client"), "{stderr}");

    let (ok, stdout, stderr) = run(&agent.client_secret, 0o644, "");
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("readable by others"), "{stderr}");
}
