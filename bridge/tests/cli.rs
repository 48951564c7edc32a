//! The `meshgate` binary as a user meets it: flags, configuration errors, the data directory,
//! the CLI working beside a running server, signals.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

fn meshgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshgate"));
    command.env_remove("MESHGATE_LOG");
    command
}

fn run(args: &[&str]) -> Output {
    meshgate().args(args).output().unwrap()
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

struct Server {
    child: Child,
    info: Value,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        let mut child = meshgate()
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--sync-listen",
                "127.0.0.1:0",
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let info: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("serve printed {line:?}"));
        Server { child, info }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.info["issuer"].as_str().unwrap())
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("serve did not stop within 30 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn version() {
    let output = run(&["--version"]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("meshgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn config_check_names_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "bridge:\n  listen: 127.0.0.1:8700\n  access_token_ttl: 5m\n").unwrap();
    assert!(run(&["config", "check", good.to_str().unwrap()]).status.success());

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "bridge:\n  listen: here\n  isuer: x\nnode:\n  sync:\n    crdt_buffer_mb: -1\n",
    )
    .unwrap();
    let output = run(&["config", "check", bad.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for path in ["bridge.listen", "bridge.isuer", "node.sync.crdt_buffer_mb"] {
        assert!(stderr.contains(path), "{path} not named in:\n{stderr}");
    }
}

#[test]
fn invalid_configuration_never_starts_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let output = meshgate()
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("MESHGATE_BRIDGE__METRICS_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("bridge.metrics_listen"));
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

#[test]
fn default_data_dir_follows_xdg_then_home() {
    let dir = tempfile::tempdir().unwrap();
    let xdg = dir.path().join("xdg");
    let output = meshgate()
        .args(["id", "--json"])
        .env("XDG_DATA_HOME", &xdg)
        .output()
        .unwrap();
    let did = json(&output)["did"].as_str().unwrap().to_owned();
    assert!(did.starts_with("did:key:z6Mk"));
    assert!(xdg.join("meshgate/keys/node.ed25519").exists());
    let again = json(
        &meshgate()
            .args(["id", "--json"])
            .env("XDG_DATA_HOME", &xdg)
            .output()
            .unwrap(),
    );
    assert_eq!(again["did"], did.as_str(), "identity reused");

    let home = dir.path().join("home");
    let output = meshgate()
        .args(["id", "--json"])
        .env_remove("XDG_DATA_HOME")
        .env("HOME", &home)
        .output()
        .unwrap();
    json(&output);
    assert!(home.join(".local/share/meshgate/keys/node.ed25519").exists());
}

#[test]
fn key_files_readable_by_others_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    json(&run(&["id", "--json", "--data-dir", data.to_str().unwrap()]));
    let key = data.join("keys/node.ed25519");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = meshgate()
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("readable by group or others"), "{stderr}");
}

#[test]
fn cli_manages_clients_beside_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    // Registered before the server runs: the CLI opens the store itself.
    let early = json(&run(&[
        "client",
        "add",
        "--data-dir",
        d,
        "--name",
        "early",
        "--grant",
        "client_credentials",
        "--scope",
        "read",
        "--json",
    ]));
    let server = Server::start(&data);
    assert!(server.info["did"].as_str().unwrap().starts_with("did:key:z6Mk"));
    // Registered while it runs: through the admin socket, visible at once.
    let late = json(&run(&[
        "client",
        "add",
        "--data-dir",
        d,
        "--name",
        "late",
        "--grant",
        "client_credentials",
        "--scope",
        "read write",
        "--audience",
        "https://api.example/",
        "--token-alg",
        "ES256",
        "--json",
    ]));
    let client = reqwest::blocking::Client::new();
    for c in [&early, &late] {
        let response = client
            .post(server.url("/token"))
            .basic_auth(c["client_id"].as_str().unwrap(), c["client_secret"].as_str())
            .form(&[("grant_type", "client_credentials")])
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let list = run(&["client", "list", "--data-dir", d, "--json"]);
    let text = String::from_utf8_lossy(&list.stdout).to_string();
    assert_eq!(json(&list).as_array().unwrap().len(), 2);
    for c in [&early, &late] {
        assert!(
            !text.contains(c["client_secret"].as_str().unwrap()),
            "client list shows a secret"
        );
    }
    let shown = json(&run(&[
        "client",
        "show",
        late["client_id"].as_str().unwrap(),
        "--data-dir",
        d,
        "--json",
    ]));
    assert_eq!(shown["token_alg"], "ES256");
    assert_eq!(shown["audiences"], serde_json::json!(["https://api.example/"]));
    let rotated = json(&run(&[
        "client",
        "rotate-secret",
        late["client_id"].as_str().unwrap(),
        "--grace",
        "1h",
        "--data-dir",
        d,
        "--json",
    ]));
    assert!(rotated["client_secret"].is_string());
    let keys = json(&run(&["keys", "rotate", "--data-dir", d, "--json"]));
    assert_eq!(keys["active"].as_array().unwrap().len(), 3);
    let jwks: Value = client.get(server.url("/jwks.json")).send().unwrap().json().unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 6);
    json(&run(&[
        "client",
        "remove",
        early["client_id"].as_str().unwrap(),
        "--data-dir",
        d,
        "--json",
    ]));
    let output = run(&["client", "show", early["client_id"].as_str().unwrap(), "--data-dir", d]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no client"));

    let bad = run(&["client", "add", "--data-dir", d, "--name", "x", "--grant", "password"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unsupported grant"));

    let did = server.info["did"].clone();
    let status = server.terminate();
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}");
    let server = Server::start(&data);
    assert_eq!(server.info["did"], did, "identity reused after restart");
    assert!(server.terminate().success());
}

#[test]
fn two_servers_cannot_share_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let output = meshgate()
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--sync-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("locked"));
    let metrics = format!("http://{}/metrics", server.info["metrics_listen"].as_str().unwrap());
    let text = reqwest::blocking::get(&metrics).unwrap().text().unwrap();
    assert!(text.contains("meshgate_signing_key_age_seconds"), "{text}");
    for path in ["/healthz", "/readyz"] {
        let url = format!("http://{}{path}", server.info["metrics_listen"].as_str().unwrap());
        assert_eq!(reqwest::blocking::get(&url).unwrap().status(), 200);
    }
    assert!(server.terminate().success());
}

fn with_stdin(args: &[&str], data_dir: &Path, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = meshgate()
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn users_and_code_flow_clients_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let added = json(&with_stdin(
        &[
            "user",
            "add",
            "carol",
            "--email",
            "carol@example.test",
            "--password-stdin",
            "--json",
        ],
        data,
        "s3cret\n",
    ));
    assert_eq!(added["username"], "carol");
    // Without --password-stdin the password is never taken from anywhere else.
    let refused = with_stdin(&["user", "add", "dave"], data, "x\n");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--password-stdin"));
    let data_arg = data.to_str().unwrap();
    let list = json(&run(&["user", "list", "--data-dir", data_arg, "--json"]));
    assert_eq!(list[0]["email"], "carol@example.test");
    assert!(!list.to_string().contains("argon2"));
    assert!(
        json(&with_stdin(
            &["user", "passwd", "carol", "--password-stdin", "--json"],
            data,
            "new\n"
        ))["updated_at"]
            .is_u64()
    );
    let client = json(&run(&[
        "client",
        "add",
        "--name",
        "cli",
        "--redirect-uri",
        "http://127.0.0.1/cb",
        "--public",
        "--scope",
        "openid",
        "--data-dir",
        data_arg,
        "--json",
    ]));
    assert_eq!(client["token_endpoint_auth_method"], "none");
    assert!(client.get("client_secret").is_none());
    let bad = run(&[
        "client",
        "add",
        "--name",
        "x",
        "--redirect-uri",
        "javascript:alert(1)",
        "--data-dir",
        data_arg,
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("javascript"), "{bad:?}");
    let removed = json(&run(&["user", "remove", "carol", "--data-dir", data_arg, "--json"]));
    assert_eq!(removed["removed"], "carol");
    // An upstream identity linked ahead of its first sign-in (login.users: existing).
    let link = [
        "user",
        "link",
        "--upstream",
        "corp",
        "--subject",
        "f3a9-77",
        "--name",
        "Frank",
        "--data-dir",
        data_arg,
        "--json",
    ];
    let linked = json(&run(&link));
    assert_eq!(linked["username"], "upstream:corp:f3a9-77");
    assert!(!run(&link).status.success(), "linked twice");
    let list = json(&run(&["user", "list", "--data-dir", data_arg, "--json"]));
    assert_eq!(list[0]["username"], "upstream:corp:f3a9-77");
    assert_eq!(list[0]["name"], "Frank");
}

#[test]
fn device_flow_clients_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let show = |id: &str| json(&run(&["client", "show", id, "--data-dir", data, "--json"]));
    let grants = |client: &Value| -> Vec<String> {
        let grants = client["grant_types"].as_array().unwrap_or_else(|| panic!("{client}"));
        grants.iter().map(|g| g.as_str().unwrap().to_owned()).collect()
    };
    let device = "urn:ietf:params:oauth:grant-type:device_code";
    // A public device-only client.
    let tv = json(&run(&[
        "client",
        "add",
        "--name",
        "tv",
        "--grant",
        "device_code",
        "--public",
        "--scope",
        "openid",
        "--data-dir",
        data,
        "--json",
    ]));
    assert_eq!(tv["token_endpoint_auth_method"], "none", "{tv}");
    assert_eq!(
        grants(&show(tv["client_id"].as_str().unwrap())),
        [device, "refresh_token"]
    );
    // A confidential code-flow client that also takes the device flow (the full URI works too).
    let both = json(&run(&[
        "client",
        "add",
        "--name",
        "both",
        "--redirect-uri",
        "http://127.0.0.1/cb",
        "--grant",
        device,
        "--scope",
        "openid",
        "--data-dir",
        data,
        "--json",
    ]));
    assert!(both["client_secret"].is_string(), "{both}");
    assert_eq!(
        grants(&show(both["client_id"].as_str().unwrap())),
        ["authorization_code", "refresh_token", device]
    );
    // --public needs a redirect URI or the device flow; device_code mixes with no other grant.
    let public_alone = run(&["client", "add", "--name", "x", "--public", "--data-dir", data]);
    assert!(!public_alone.status.success());
    assert!(String::from_utf8_lossy(&public_alone.stderr).contains("--grant device_code"));
    let mixed = run(&[
        "client",
        "add",
        "--name",
        "x",
        "--grant",
        "device_code",
        "--grant",
        "client_credentials",
        "--data-dir",
        data,
    ]);
    assert!(!mixed.status.success());
    assert!(String::from_utf8_lossy(&mixed.stderr).contains("no other --grant"));
}
