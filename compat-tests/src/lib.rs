//! Black-box harness for the `meshgate` binary, driven by independent clients.
//!
//! # Layout
//!
//! - [`Meshgate`]: one `meshgate serve --json` process on a data directory — spawned, awaited until
//!   it prints its startup line, its stdout and stderr captured for the test to read (e.g. to grep
//!   for secrets), stopped with SIGTERM. [`Meshgate::client_add`] and [`Meshgate::cli`] run the
//!   admin CLI against the same data directory.
//! - [`meshgate_bin`]: where the binary under test comes from (`MESHGATE_BIN`, else `cargo build`).
//! - [`node`]: runs a command of `js/compat.mjs` (openid-client, jose) with a JSON input and output.
//! - The scenarios themselves are the integration-test binary `tests/compat.rs`.
//!
//! Every wait is bounded and fails loudly with what the process printed.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// How long `meshgate serve` may take to print its startup line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a CLI invocation or a node script may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the server may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("compat-tests lives inside the workspace")
        .to_path_buf()
}

/// The `meshgate` binary under test: `$MESHGATE_BIN` when set, else built once per process with
/// `cargo build -p bridge --bin meshgate` and taken from the target directory
/// (`$CARGO_TARGET_DIR`, else `<workspace>/target`).
pub fn meshgate_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("MESHGATE_BIN") {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "MESHGATE_BIN={} is not a file", bin.display());
            return bin;
        }
        let cargo = std::env::var_os("CARGO")
            .or_else(|| option_env!("CARGO").map(OsString::from))
            .unwrap_or_else(|| OsString::from("cargo"));
        let output = Command::new(&cargo)
            .args(["build", "-p", "bridge", "--bin", "meshgate"])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("cannot run {cargo:?}: {error}"));
        assert!(
            output.status.success(),
            "`cargo build -p bridge --bin meshgate` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(|dir| workspace_root().join(dir))
            .unwrap_or_else(|| workspace_root().join("target"));
        let bin = target.join("debug").join("meshgate");
        assert!(bin.is_file(), "cargo built meshgate but {} is missing", bin.display());
        bin
    })
    .clone()
}

/// The startup line `meshgate serve --json` prints once it serves.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ServeInfo {
    /// The issuer URL, e.g. `http://127.0.0.1:PORT`.
    pub issuer: String,
    /// The bound OAuth listener, `127.0.0.1:PORT`.
    pub listen: String,
    /// The bound observability listener (`/metrics`, `/healthz`, `/readyz`).
    pub metrics_listen: String,
    /// The node's identity, `did:key:z6Mk…`.
    pub did: String,
    /// The data directory the node serves from.
    pub data_dir: String,
}

/// A client registered through `meshgate client add --json`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Registered {
    /// The client identifier.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
}

/// Options of `meshgate client add` beyond the name and scope.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// `--audience` values, one flag each.
    pub audiences: Vec<String>,
    /// `--token-alg`: `EdDSA`, `ES256` or `RS256`.
    pub token_alg: Option<String>,
    /// `--jwks-file`: the public keys of a `private_key_jwt` client.
    pub jwks_file: Option<PathBuf>,
    /// Further raw arguments, appended last.
    pub extra_args: Vec<String>,
}

/// What a process wrote to stdout and stderr, shared with the threads that read it.
#[derive(Clone, Debug, Default)]
struct Capture {
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Capture {
    fn text(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            lossy(&self.stdout),
            lossy(&self.stderr)
        )
    }
}

/// A running `meshgate serve` process; stopped with SIGTERM when dropped.
#[derive(Debug)]
pub struct Meshgate {
    child: Option<Child>,
    info: ServeInfo,
    data_dir: PathBuf,
    capture: Capture,
    readers: Vec<JoinHandle<()>>,
}

impl Meshgate {
    /// Starts `meshgate serve --data-dir DATA_DIR --listen 127.0.0.1:0 --metrics-listen
    /// 127.0.0.1:0 --json` and waits (up to [`STARTUP_TIMEOUT`]) for its startup line.
    pub fn spawn(data_dir: &Path) -> Self {
        Self::spawn_with_env(data_dir, &[])
    }

    /// [`Meshgate::spawn`] with extra environment variables, e.g. `MESHGATE_LOG=debug`.
    pub fn spawn_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_listening(data_dir, "127.0.0.1:0", env)
    }

    /// [`Meshgate::spawn_with_env`] with the OAuth listener on `listen` (e.g. the address of a
    /// previous run, so the issuer stays the same across a restart).
    pub fn spawn_listening(data_dir: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        let args = [
            "--listen",
            listen,
            "--metrics-listen",
            "127.0.0.1:0",
            "--sync-listen",
            "127.0.0.1:0",
        ];
        Self::spawn_args(data_dir, &args, env)
    }

    /// Starts `meshgate serve --data-dir DATA_DIR --config CONFIG --json`: every address comes from
    /// the configuration file, as an operator would run it.
    pub fn spawn_with_config(data_dir: &Path, config: &Path, env: &[(&str, &str)]) -> Self {
        let config = config.to_string_lossy().into_owned();
        Self::spawn_args(data_dir, &["--config", &config], env)
    }

    /// Starts `meshgate serve --data-dir DATA_DIR ARGS... --json`.
    pub fn spawn_args(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let bin = meshgate_bin();
        let mut command = Command::new(&bin);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", bin.display()));

        let capture = Capture::default();
        let (first_line, startup) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let buffer = capture.stdout.clone();
        let stdout_reader = thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = Vec::new();
            let _ = std::io::BufRead::read_until(&mut reader, b'\n', &mut line);
            buffer.lock().unwrap().extend_from_slice(&line);
            let _ = first_line.send(String::from_utf8_lossy(&line).into_owned());
            copy_into(reader, &buffer);
        });
        let buffer = capture.stderr.clone();
        let stderr_reader = thread::spawn(move || copy_into(stderr, &buffer));

        let mut waited = Duration::ZERO;
        let step = Duration::from_millis(100);
        let line = loop {
            match startup.recv_timeout(step) {
                Ok(line) => break line,
                Err(RecvTimeoutError::Disconnected) => break String::new(),
                Err(RecvTimeoutError::Timeout) => {}
            }
            waited += step;
            if waited >= STARTUP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "meshgate serve printed no startup line within {STARTUP_TIMEOUT:?}\n{}",
                    capture.text()
                );
            }
        };
        if line.is_empty() {
            let status = wait_for(&mut child, Duration::from_secs(5));
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!(
                "meshgate serve closed stdout without printing its startup line (exit status \
                 {status:?})\n{}",
                capture.text()
            );
        }
        let info: ServeInfo = match serde_json::from_str(line.trim()) {
            Ok(info) => info,
            Err(error) => {
                // Give an exiting process a moment so its stderr is complete in the message.
                thread::sleep(Duration::from_millis(500));
                let status = child.try_wait().ok().flatten();
                if status.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                panic!(
                    "meshgate serve's first stdout line is not the startup JSON ({error}); \
                     exit status {status:?}; line: {line:?}\n{}",
                    capture.text()
                );
            }
        };
        Self {
            child: Some(child),
            info,
            data_dir: data_dir.to_path_buf(),
            capture,
            readers: vec![stdout_reader, stderr_reader],
        }
    }

    /// The startup line.
    pub fn info(&self) -> &ServeInfo {
        &self.info
    }

    /// The issuer URL, without a trailing slash as printed.
    pub fn issuer(&self) -> &str {
        &self.info.issuer
    }

    /// An absolute URL on the OAuth listener, e.g. `url("/token")`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.info.listen)
    }

    /// An absolute URL on the observability listener, e.g. `metrics_url("/healthz")`.
    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.info.metrics_listen)
    }

    /// The process id of the server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `meshgate ARGS --data-dir DATA_DIR` and returns its stdout; panics with the output
    /// when it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(&self.data_dir, args)
    }

    /// Registers a client_credentials client with `scope` (space-separated) and returns its
    /// credentials.
    pub fn client_add(&self, name: &str, scope: &str) -> Registered {
        self.client_add_with(name, scope, &ClientOptions::default())
    }

    /// [`Meshgate::client_add`] with the further `options`.
    pub fn client_add_with(&self, name: &str, scope: &str, options: &ClientOptions) -> Registered {
        client_add(&self.data_dir, name, scope, options)
    }

    /// Everything the server printed so far, stdout then stderr, with headings. After
    /// [`Meshgate::stop`] this is complete.
    pub fn output(&self) -> String {
        self.capture.text()
    }

    /// What the server printed on stdout so far, the startup line included.
    pub fn stdout(&self) -> String {
        lossy(&self.capture.stdout)
    }

    /// What the server printed on stderr (its logs) so far.
    pub fn stderr(&self) -> String {
        lossy(&self.capture.stderr)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Kills the server with SIGKILL (a crash: no graceful shutdown) and waits for it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        let _ = child.kill();
        let _ = child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// Sends SIGTERM, waits up to [`STOP_TIMEOUT`] for the process to exit and for its output to
    /// be read to the end, and returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        terminate(&child);
        let status = wait_for(&mut child, STOP_TIMEOUT).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "meshgate serve did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}",
                self.capture.text()
            )
        });
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }
}

impl Drop for Meshgate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            if wait_for(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Runs `meshgate ARGS --data-dir DATA_DIR` (no server needed) and returns its stdout; panics
/// with the output when it fails or runs longer than [`COMMAND_TIMEOUT`].
pub fn cli(data_dir: &Path, args: &[&str]) -> String {
    let mut command = Command::new(meshgate_bin());
    command.args(args).arg("--data-dir").arg(data_dir);
    let output = run(command, None, COMMAND_TIMEOUT);
    assert!(
        output.status.success(),
        "`meshgate {}` failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        output.status,
        output.stdout,
        output.stderr
    );
    output.stdout
}

/// [`cli`] with `stdin` on standard input (e.g. `user add NAME --password-stdin`).
pub fn cli_with_stdin(data_dir: &Path, args: &[&str], stdin: &str) -> String {
    let mut command = Command::new(meshgate_bin());
    command.args(args).arg("--data-dir").arg(data_dir);
    let output = run(command, Some(stdin.to_owned()), COMMAND_TIMEOUT);
    assert!(
        output.status.success(),
        "`meshgate {}` failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        output.status,
        output.stdout,
        output.stderr
    );
    output.stdout
}

/// Runs `meshgate client add ... --json` on `data_dir` and parses the credentials it prints.
pub fn client_add(data_dir: &Path, name: &str, scope: &str, options: &ClientOptions) -> Registered {
    let mut args = vec![
        "client".to_string(),
        "add".into(),
        "--name".into(),
        name.into(),
        "--grant".into(),
        "client_credentials".into(),
        "--scope".into(),
        scope.into(),
    ];
    for audience in &options.audiences {
        args.extend(["--audience".into(), audience.clone()]);
    }
    if let Some(alg) = &options.token_alg {
        args.extend(["--token-alg".into(), alg.clone()]);
    }
    if let Some(file) = &options.jwks_file {
        args.extend(["--jwks-file".into(), file.display().to_string()]);
    }
    args.extend(options.extra_args.iter().cloned());
    args.push("--json".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = cli(data_dir, &args);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|error| panic!("`meshgate client add` printed no credentials JSON ({error}): {stdout:?}"))
}

/// The directory of the node scripts, `compat-tests/js`.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Runs `node js/compat.mjs COMMAND` with `input` as JSON on stdin and returns the JSON it prints.
///
/// Panics — never skips — when `compat-tests/js/node_modules` is missing, and with the script's
/// stderr when it fails.
pub fn node(command: &str, input: &Value) -> Value {
    node_with_env(command, input, &[])
}

/// [`node`] with extra environment variables for the node process (e.g. `NODE_EXTRA_CA_CERTS`).
pub fn node_with_env(command: &str, input: &Value, env: &[(&str, &str)]) -> Value {
    let dir = js_dir();
    assert!(
        dir.join("node_modules").is_dir(),
        "{} is missing: run scripts/test.sh (it runs `npm ci` in compat-tests/js) before the \
         compat tests",
        dir.join("node_modules").display()
    );
    let mut process = Command::new("node");
    process.arg(dir.join("compat.mjs")).arg(command).current_dir(&dir);
    for (name, value) in env {
        process.env(name, value);
    }
    let output = run(process, Some(input.to_string()), COMMAND_TIMEOUT);
    assert!(
        output.status.success(),
        "node compat.mjs {command} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        output.stdout,
        output.stderr
    );
    serde_json::from_str(output.stdout.trim()).unwrap_or_else(|error| {
        panic!(
            "node compat.mjs {command} printed no JSON ({error}):\n{}\n{}",
            output.stdout, output.stderr
        )
    })
}

/// Runs `node js/SCRIPT ARGS...` with `input` as JSON on stdin; the JSON it prints, or — unlike
/// [`node`], which panics — the failure as text (exit status, stdout, stderr), so a caller that
/// tabulates many runs (the routing matrix) records it and goes on. Panics only when
/// `compat-tests/js/node_modules` is missing: that is a broken setup, not a result.
pub fn node_script(script: &str, args: &[&str], input: &Value) -> Result<Value, String> {
    let dir = js_dir();
    assert!(
        dir.join("node_modules").is_dir(),
        "{} is missing: run scripts/test.sh (it runs `npm ci` in compat-tests/js) before the \
         compat tests",
        dir.join("node_modules").display()
    );
    let mut process = Command::new("node");
    process.arg(dir.join(script)).args(args).current_dir(&dir);
    json_result(&format!("node {script} {}", args.join(" ")), process, input)
}

/// Runs `compat-tests/python/.venv/bin/python python/SCRIPT ARGS...` like [`node_script`]. Panics
/// (never skips) when the venv scripts/test.sh creates is missing.
pub fn python_script(script: &str, args: &[&str], input: &Value) -> Result<Value, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let python = dir.join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test.sh (it creates the venv and installs authlib) before the \
         compat tests",
        python.display()
    );
    let mut process = Command::new(python);
    process.arg(dir.join(script)).args(args).current_dir(&dir);
    json_result(&format!("python {script} {}", args.join(" ")), process, input)
}

fn json_result(what: &str, process: Command, input: &Value) -> Result<Value, String> {
    let output = run(process, Some(input.to_string()), COMMAND_TIMEOUT);
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}): {}{}",
            output.status,
            output.stdout.trim(),
            output.stderr.trim()
        ));
    }
    serde_json::from_str(output.stdout.trim())
        .map_err(|error| format!("{what} printed no JSON ({error}): {}{}", output.stdout, output.stderr))
}

/// A finished process's status and output.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command` to completion with `stdin`, killing it after `timeout`.
fn run(mut command: Command, stdin: Option<String>, timeout: Duration) -> Finished {
    command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let capture = Capture::default();
    let readers = [
        {
            let (pipe, buffer) = (child.stdout.take(), capture.stdout.clone());
            thread::spawn(move || copy_into(pipe.expect("stdout is piped"), &buffer))
        },
        {
            let (pipe, buffer) = (child.stderr.take(), capture.stderr.clone());
            thread::spawn(move || copy_into(pipe.expect("stderr is piped"), &buffer))
        },
    ];
    let Some(status) = wait_for(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{command:?} ran longer than {timeout:?}\n{}", capture.text());
    };
    for reader in readers {
        let _ = reader.join();
    }
    Finished {
        status,
        stdout: lossy(&capture.stdout),
        stderr: lossy(&capture.stderr),
    }
}

fn lossy(buffer: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buffer.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

fn copy_into(mut from: impl Read, into: &Mutex<Vec<u8>>) {
    let mut chunk = [0u8; 8192];
    loop {
        match from.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(read) => into.lock().unwrap().extend_from_slice(&chunk[..read]),
        }
    }
}

/// Sends SIGTERM through `kill(1)`, so the harness needs no `unsafe` FFI.
fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn wait_for(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if waited >= timeout {
            return None;
        }
        thread::sleep(step);
        waited += step;
    }
}
