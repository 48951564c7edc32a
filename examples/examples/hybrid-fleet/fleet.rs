//! The processes of the demo: the upstream IdP (node `oidc-provider`), the three meshgate nodes
//! and the admin CLI — started, watched and cleaned up.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// How long a child process may take to print its startup line.
const STARTUP: Duration = Duration::from_secs(60);

/// The upstream's two confidential clients: the credentials the federated agents already have.
pub const AGENT_7: (&str, &str) = ("agent-7", "agent-7-secret-at-the-idp");
/// The `fail_closed` federated agent's credentials at the upstream.
pub const AGENT_8: (&str, &str) = ("agent-8", "agent-8-secret-at-the-idp");
/// The resource indicator under which the upstream mints JWTs for meshgate (`aud: meshgate`).
pub const UPSTREAM_RESOURCE: &str = "https://meshgate.test/";

/// The workspace root, where `bench/oidc` lives.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the examples crate lives in the workspace")
        .to_path_buf()
}

/// How meshgate is run: the CLI linked into this example (re-executed as `hybrid-fleet meshgate
/// ...`), or an installed binary.
#[derive(Clone, Debug)]
pub struct Meshgate {
    program: PathBuf,
    prefix: Vec<String>,
}

impl Meshgate {
    /// `--meshgate PATH` / `MESHGATE_BIN` when given, else this executable's embedded CLI.
    pub fn new(binary: Option<PathBuf>) -> Result<Self, String> {
        match binary {
            Some(path) if path.is_file() => Ok(Self {
                program: path,
                prefix: Vec::new(),
            }),
            Some(path) => Err(format!("no meshgate binary at {}", path.display())),
            None => Ok(Self {
                program: std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?,
                prefix: vec!["meshgate".into()],
            }),
        }
    }

    /// A `meshgate ARGS...` command.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.prefix).args(args).stdin(Stdio::null());
        command
    }

    /// Runs an admin command to completion and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let output = self
            .command(args)
            .output()
            .map_err(|e| format!("cannot run meshgate {}: {e}", args.join(" ")))?;
        if !output.status.success() {
            return Err(format!(
                "meshgate {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs an admin command with `--json` and parses its output.
    pub fn cli_json(&self, args: &[&str]) -> Result<Value, String> {
        let mut all = args.to_vec();
        all.push("--json");
        let printed = self.cli(&all)?;
        serde_json::from_str(printed.trim())
            .map_err(|e| format!("meshgate {} printed {printed:?}: {e}", args.join(" ")))
    }
}

/// A child process in its own process group (so the terminal's Ctrl-C reaches only this
/// program, which then stops the children in order), killed when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
}

impl Process {
    /// Spawns `command` with stdout piped, stderr appended to `log`, and waits for its first
    /// stdout line (a JSON startup line).
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<(Self, Value), String> {
        let log_file = std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .process_group(0);
        let mut child = command.spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (send, receive) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = send.send(lines.next().and_then(Result::ok).unwrap_or_default());
            // Keep draining, so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let mut process = Self { child };
        let line = receive.recv_timeout(STARTUP).unwrap_or_default();
        match serde_json::from_str::<Value>(&line) {
            Ok(info) => Ok((process, info)),
            Err(_) => {
                process.kill();
                let log_text = std::fs::read_to_string(log).unwrap_or_default();
                Err(format!(
                    "{name} did not start (printed {line:?}); its log {}:\n{}",
                    log.display(),
                    log_text
                        .lines()
                        .rev()
                        .take(20)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                ))
            }
        }
    }

    /// SIGKILL, as an outage does it; reaps the process.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// SIGTERM (a graceful stop), then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // `kill(1)`: the workspace forbids `unsafe`, so no libc call.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `node bench/oidc/upstream.mjs` with the two federated agents' clients; installs
/// oidc-provider first when `npm ci` has not been run. Returns the process and its issuer.
pub fn start_upstream(work: &Path) -> Result<(Process, String), String> {
    let dir = workspace_root().join("bench/oidc");
    if !dir.join("node_modules/oidc-provider").is_dir() {
        eprintln!("installing oidc-provider (npm ci in {})", dir.display());
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .map_err(|e| format!("cannot run npm (node >= 20.19 and npm are needed): {e}"))?;
        if !status.success() {
            return Err(format!("npm ci in {} failed: {status}", dir.display()));
        }
    }
    let mut command = Command::new("node");
    command
        .arg(dir.join("upstream.mjs"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .env("UPSTREAM_CLIENT_ID", AGENT_7.0)
        .env("UPSTREAM_CLIENT_SECRET", AGENT_7.1)
        .env("UPSTREAM_CLIENT2_ID", AGENT_8.0)
        .env("UPSTREAM_CLIENT2_SECRET", AGENT_8.1)
        .env("UPSTREAM_RESOURCE", UPSTREAM_RESOURCE);
    let (process, info) = Process::spawn("the upstream (oidc-provider)", command, &work.join("upstream.log"))?;
    let issuer = info["issuer"]
        .as_str()
        .ok_or_else(|| format!("the upstream printed no issuer: {info}"))?
        .to_owned();
    Ok((process, issuer))
}

/// A port free now on 127.0.0.1, .2 and .3 for TCP and UDP (the nodes use it on each), taken below
/// the kernel's ephemeral range (32768+) so no outgoing connection can be handed it before a node
/// binds it.
pub fn free_port() -> Result<u16, String> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 9_000) as u16;
    for _ in 0..20_000 {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 12_000 + (seed.wrapping_add(step.wrapping_mul(7)) % 20_000);
        let free = (1..=3).all(|n| {
            let ip = std::net::Ipv4Addr::new(127, 0, 0, n);
            std::net::TcpListener::bind((ip, port)).is_ok() && std::net::UdpSocket::bind((ip, port)).is_ok()
        });
        if free {
            return Ok(port);
        }
    }
    Err("cannot find a port free on 127.0.0.1-3 between 12000 and 32000".into())
}

/// The ports every node uses on its own loopback address.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// OAuth listener.
    pub http: u16,
    /// Mesh sync.
    pub sync: u16,
    /// `/metrics`.
    pub metrics: u16,
}

/// The configuration a user writes for node `i` (1-based) of the three: trusted and gossip
/// peers, and the upstream with its timeouts, breaker and the fleet's degradation policy.
pub fn node_config(i: usize, ports: Ports, dids: &[String], issuer: &str) -> String {
    let gossip: Vec<String> = (1..=3).map(|j| format!("\"127.0.0.{j}:{}\"", ports.sync)).collect();
    let trusted: Vec<String> = dids.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"# meshgate node {i} of the hybrid fleet (examples/examples/hybrid-fleet)
node:
  sync:
    listen: "127.0.0.{i}:{sync}"
    gossip_peers: [{gossip}]
    trusted_peers: [{trusted}]
bridge:
  listen: "127.0.0.{i}:{http}"
  metrics_listen: "127.0.0.{i}:{metrics}"
upstreams:
  - name: corp
    issuer: {issuer}
    audience: meshgate
    algorithms: [RS256]
    timeouts: {{ connect: 200ms, total: 2s, token_deadline: 1s }}
    breaker: {{ failure_threshold: 1, open_for: 2s, max_open_for: 10s }}
    jwks: {{ refresh_interval: 2s, min_refresh_interval: 1s }}
federation:
  jwks_fresh_for: 30s
  # Clients without a policy of their own: keep issuing (degraded) while the upstream is dark.
  default_policy: {{ on_upstream_unavailable: issue_local, max_offline: 72h, degraded_ttl: 2m }}
"#,
        sync = ports.sync,
        http = ports.http,
        metrics = ports.metrics,
        gossip = gossip.join(", "),
        trusted = trusted.join(", "),
    )
}
