//! The pages in a real browser: Debian's headless Chromium (`/usr/bin/chromium`, installed by
//! scripts/test.sh) driven by playwright-core (`js/browser_journeys.mjs`) against
//! `meshgate serve`, with a loopback redirect URI served by this test.
//!
//! Every journey is a row of [`JOURNEYS`]: what the browser does lives in the script, what must
//! arrive at the redirect URI (a code that redeems, an error, nothing) — or, for the device
//! flow, what the polling device gets — is checked here. Every page is audited (language, one
//! heading, labelled inputs, named buttons, fields pointing at the page's alert) and
//! photographed: the screenshots stay in `target/screenshots/` as test artifacts.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compat_tests::{Meshgate, cli, js_dir, workspace_root};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::login::add_user;
use super::support;

/// Where Debian's `chromium` package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the whole script may take (it starts a browser on a loaded machine).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// What a journey must end with at the client.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// A code (with the journey's `state` and the issuer's `iss`) that redeems for tokens,
    /// delivered by `method` (`GET`: query; `POST`: form_post).
    Code { method: &'static str },
    /// This `error` at the redirect URI, with `state` and `iss`.
    Error(&'static str),
    /// An error page on the issuer with this status; nothing reaches the client.
    ErrorPage(u16),
    /// Back at the post-logout redirect URI with `state`.
    LoggedOut,
    /// The login page answered 429 with `Retry-After` within this many attempts (wrong passwords
    /// of earlier journeys from the same address count too; the budget does not refill).
    Throttled { within: u64 },
    /// The journey answered the device authorization (RFC 8628) this test started for it: the
    /// device's polling of `/token` afterwards ends with tokens (`None`) or this error.
    Device { poll: Option<&'static str> },
    /// A wrong user code on the device page: the code page answered 400 with an alert, and the
    /// journey's device authorization is still pending.
    DeviceWrongCode,
}

impl Outcome {
    /// Whether the journey needs a device authorization started before it runs.
    fn needs_device(self) -> bool {
        matches!(self, Outcome::Device { .. } | Outcome::DeviceWrongCode)
    }
}

/// One page journey of `js/browser_journeys.mjs`.
struct Journey {
    name: &'static str,
    /// The headings of the pages it sees on the issuer, in order, repeats in a row counted once
    /// (pages that submit themselves are not seen).
    pages: &'static [&'static str],
    /// The screenshots it takes, `target/screenshots/{name}-{step}.png`.
    screenshots: &'static [&'static str],
    outcome: Outcome,
}

/// The journeys, in the order they run (later ones rely on the first one's remembered consent,
/// `device_wrong_code` and `logout` on the session the others share, which `logout` ends, and
/// `throttled` spends the login budget of the browser's address, so it and `device_throttled`,
/// which finds it spent, stay last).
///
/// The device journeys (RFC 8628) drive the verification page `/device` for a device
/// authorization this test starts for each of them ([`Outcome::needs_device`]), then poll
/// `/token` as the device would.
const JOURNEYS: &[Journey] = &[
    Journey {
        name: "login_and_consent",
        pages: &["Sign in", "Allow access?"],
        screenshots: &["login", "login-wrong-password", "consent", "callback"],
        outcome: Outcome::Code { method: "GET" },
    },
    Journey {
        name: "remembered_consent",
        pages: &["Sign in"],
        screenshots: &["callback"],
        outcome: Outcome::Code { method: "GET" },
    },
    Journey {
        name: "deny",
        pages: &["Allow access?"],
        screenshots: &["consent", "callback"],
        outcome: Outcome::Error("access_denied"),
    },
    Journey {
        name: "error_unknown_client",
        pages: &["Sign-in error"],
        screenshots: &["error"],
        outcome: Outcome::ErrorPage(400),
    },
    Journey {
        name: "error_bad_redirect_uri",
        pages: &["Sign-in error"],
        screenshots: &["error"],
        outcome: Outcome::ErrorPage(400),
    },
    Journey {
        name: "keyboard_only",
        pages: &["Sign in", "Allow access?"],
        screenshots: &["login", "consent"],
        outcome: Outcome::Code { method: "GET" },
    },
    Journey {
        name: "no_javascript",
        pages: &["Sign in", "Allow access?"],
        screenshots: &["consent"],
        outcome: Outcome::Code { method: "GET" },
    },
    Journey {
        name: "form_post",
        pages: &["Sign in"],
        screenshots: &["callback"],
        outcome: Outcome::Code { method: "POST" },
    },
    Journey {
        name: "form_post_no_javascript",
        pages: &["Sign in", "Continue to the application"],
        screenshots: &["continue"],
        outcome: Outcome::Code { method: "POST" },
    },
    Journey {
        name: "device_approve",
        pages: &[
            "Sign in",
            "Connect a device",
            "Connect this device?",
            "Device connected",
        ],
        screenshots: &["sign-in", "user-code", "confirm", "approved"],
        outcome: Outcome::Device { poll: None },
    },
    Journey {
        name: "device_deny_typed",
        pages: &["Sign in", "Connect a device", "Connect this device?", "Request denied"],
        screenshots: &["user-code", "confirm", "denied"],
        outcome: Outcome::Device {
            poll: Some("access_denied"),
        },
    },
    Journey {
        name: "device_wrong_code",
        pages: &["Connect a device", "Connect this device?"],
        screenshots: &["user-code", "wrong-code", "confirm"],
        outcome: Outcome::DeviceWrongCode,
    },
    Journey {
        name: "logout",
        pages: &["Sign out", "Sign in"],
        screenshots: &["confirm", "signed-out"],
        outcome: Outcome::LoggedOut,
    },
    Journey {
        name: "throttled",
        pages: &["Sign in"],
        screenshots: &["too-many"],
        outcome: Outcome::Throttled {
            within: LOGIN_FAILURES_PER_SOURCE,
        },
    },
    Journey {
        name: "device_throttled",
        pages: &["Sign in"],
        screenshots: &["too-many"],
        outcome: Outcome::Throttled { within: 1 },
    },
];

/// `bridge.device_poll_interval` of the server under test, seconds.
const DEVICE_POLL_INTERVAL: u64 = 1;

/// Starts a device authorization for `client_id` (RFC 8628 §3.1).
async fn start_device(server: &Meshgate, client_id: &str) -> Value {
    let body = support::form(&[("client_id", client_id), ("scope", "openid profile")]);
    let answer = support::post_form(&server.url("/device_authorization"), None, body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json()
}

/// Polls `/token` for `device_code` as a device does (RFC 8628 §3.5): waits the interval between
/// polls and lengthens it by 5 s on `slow_down`; returns the first other answer (status, body).
async fn poll_device(server: &Meshgate, client_id: &str, device_code: &str) -> (u16, Value) {
    let mut interval = DEVICE_POLL_INTERVAL;
    for _ in 0..10 {
        let body = support::form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code),
            ("client_id", client_id),
        ]);
        let answer = support::post_form(&server.url("/token"), None, body).await;
        let json = answer.json();
        if json["error"] != "slow_down" {
            return (answer.status.as_u16(), json);
        }
        interval += 5;
        tokio::time::sleep(Duration::from_secs(interval)).await;
    }
    panic!("the device was told to slow down ten times in a row");
}

/// `bridge.rate_limits.login_failures_per_source.burst` of the server under test (the
/// `throttled` journey spends it; every other journey together fails fewer times). Its rate is
/// set to one per 1000 s, so nothing refills during the test.
const LOGIN_FAILURES_PER_SOURCE: u64 = 5;

/// A request that reached the test's loopback client.
#[derive(Debug, Clone)]
struct Arrival {
    method: String,
    path: String,
    params: Vec<(String, String)>,
}

impl Arrival {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

type Arrivals = Arc<Mutex<Vec<Arrival>>>;

fn parse_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The application's side of the redirect: a loopback HTTP server that records every request
/// (query or form body) and answers a small page.
async fn loopback_client() -> (String, Arrivals) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let arrivals: Arrivals = Arc::default();
    let store = arrivals.clone();
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
                        break (end + 4, length.min(1 << 20));
                    }
                    if buffer.len() > 1 << 20 {
                        return;
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
                let mut words = head.split_whitespace();
                let method = words.next().unwrap_or("").to_owned();
                let target = words.next().unwrap_or("").to_owned();
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let mut params = parse_pairs(query);
                if method == "POST" {
                    params.extend(parse_pairs(&String::from_utf8_lossy(
                        &buffer[head_end..head_end + length],
                    )));
                }
                store.lock().unwrap().push(Arrival {
                    method,
                    path: path.to_owned(),
                    params,
                });
                let page = "<!doctype html><html lang=\"en\"><head><title>Test application</title></head>\
<body><main><h1>Back at the application</h1><p>The test recorded this request.</p></main></body></html>";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
connection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, arrivals)
}

/// Runs `node js/browser_journeys.mjs` with `input`; panics with its output when it fails.
fn run_journeys(input: &Value) -> Value {
    let dir = js_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "{} is missing: run scripts/test.sh (it runs `npm ci` in compat-tests/js) before the compat tests",
        dir.join("node_modules/playwright-core").display()
    );
    let mut child = Command::new("node")
        .arg(dir.join("browser_journeys.mjs"))
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(status) if status.success() => serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("browser_journeys.mjs printed no JSON ({e}):\n{stdout}\n{stderr}")),
        Some(status) => panic!("browser_journeys.mjs failed ({status}):\n{stdout}\n{stderr}"),
        None => panic!("browser_journeys.mjs ran longer than {SCRIPT_TIMEOUT:?}:\n{stdout}\n{stderr}"),
    }
}

/// Checks a screenshot file is a non-empty PNG.
fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("screenshot {}: {e}", path.display()));
    assert!(
        bytes.len() > 100 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG ({} bytes)",
        path.display(),
        bytes.len()
    );
}

async fn redeem(server: &Meshgate, client_id: &str, redirect_uri: &str, code: &str, verifier: &str) -> Value {
    let body = support::form(&[
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("client_id", client_id),
        ("code_verifier", verifier),
    ]);
    let answer = support::post_form(&server.url("/token"), None, body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_work_in_headless_chromium_with_keyboard_and_without_javascript() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run scripts/test.sh (it installs Debian's chromium and chromium-driver)"
    );
    let (client_url, arrivals) = loopback_client().await;
    let redirect_uri = format!("{client_url}/callback");
    let post_logout = format!("{client_url}/bye");
    let dir = support::temp_dir();
    let burst = LOGIN_FAILURES_PER_SOURCE.to_string();
    let poll_interval = format!("{DEVICE_POLL_INTERVAL}s");
    let server = Meshgate::spawn_with_env(
        dir.path(),
        &[
            ("MESHGATE_BRIDGE__RATE_LIMITS__LOGIN_FAILURES_PER_SOURCE__BURST", &burst),
            ("MESHGATE_BRIDGE__RATE_LIMITS__LOGIN_FAILURES_PER_SOURCE__RATE", "0.001"),
            ("MESHGATE_BRIDGE__DEVICE_POLL_INTERVAL", &poll_interval),
        ],
    );
    let password = "correct horse battery staple";
    add_user(dir.path(), "alice", password);
    let out = cli(
        dir.path(),
        &[
            "client",
            "add",
            "--name",
            "Browser Test App",
            // Loopback: any port matches (RFC 8252 §7.3).
            "--redirect-uri",
            "http://127.0.0.1/callback",
            "--post-logout-redirect-uri",
            &post_logout,
            "--public",
            "--scope",
            "openid profile",
            "--json",
        ],
    );
    let client: Value = serde_json::from_str(out.trim()).unwrap();
    let client_id = client["client_id"].as_str().unwrap().to_owned();
    // The device of the device journeys: a public device-flow client (refresh tokens included).
    let out = cli(
        dir.path(),
        &[
            "client",
            "add",
            "--name",
            "Browser Test TV",
            "--grant",
            "device_code",
            "--public",
            "--scope",
            "openid profile",
            "--json",
        ],
    );
    let tv: Value = serde_json::from_str(out.trim()).unwrap();
    let tv_id = tv["client_id"].as_str().unwrap().to_owned();
    // One device authorization per device journey; before the user acts, the device waits.
    let mut devices = serde_json::Map::new();
    let mut device_codes = std::collections::HashMap::new();
    for journey in JOURNEYS.iter().filter(|j| j.outcome.needs_device()) {
        let started = start_device(&server, &tv_id).await;
        let device_code = started["device_code"].as_str().unwrap().to_owned();
        let (status, pending) = poll_device(&server, &tv_id, &device_code).await;
        assert_eq!(
            (status, &pending["error"]),
            (400, &Value::from("authorization_pending")),
            "{pending}"
        );
        device_codes.insert(journey.name, device_code);
        devices.insert(
            journey.name.to_owned(),
            serde_json::json!({
                "user_code": started["user_code"],
                "verification_uri": started["verification_uri"],
                "verification_uri_complete": started["verification_uri_complete"],
            }),
        );
    }

    let screenshots: PathBuf = workspace_root().join("target/screenshots");
    // Only this run's pictures: a stale one must not stand in for a step that did not happen.
    if screenshots.exists() {
        std::fs::remove_dir_all(&screenshots).unwrap();
    }
    let names: Vec<&str> = JOURNEYS.iter().map(|j| j.name).collect();
    let input = serde_json::json!({
        "issuer": server.issuer(),
        "client_id": client_id,
        "username": "alice",
        "password": password,
        "callback": client_url,
        "post_logout": post_logout,
        "screenshots": screenshots,
        "chromium": CHROMIUM,
        "journeys": names,
        "devices": devices,
    });
    let result = tokio::task::spawn_blocking(move || run_journeys(&input)).await.unwrap();

    let arrivals = arrivals.lock().unwrap().clone();
    for journey in JOURNEYS {
        let name = journey.name;
        let seen = &result["journeys"][name];
        let state = seen["state"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no result {result:#}"));
        let at_client: Vec<&Arrival> = arrivals.iter().filter(|a| a.param("state") == Some(state)).collect();
        match journey.outcome {
            Outcome::Code { method } => {
                assert_eq!(at_client.len(), 1, "{name}: {at_client:?}");
                let arrival = at_client[0];
                assert_eq!(
                    (arrival.method.as_str(), arrival.path.as_str()),
                    (method, "/callback"),
                    "{name}"
                );
                assert_eq!(arrival.param("iss"), Some(server.issuer()), "{name}: RFC 9207 iss");
                let code = arrival
                    .param("code")
                    .unwrap_or_else(|| panic!("{name}: no code {arrival:?}"));
                let verifier = seen["verifier"].as_str().unwrap();
                let tokens = redeem(&server, &client_id, &redirect_uri, code, verifier).await;
                assert!(
                    tokens["access_token"].is_string() && tokens["id_token"].is_string(),
                    "{name}: {tokens}"
                );
            }
            Outcome::Error(error) => {
                assert_eq!(at_client.len(), 1, "{name}: {at_client:?}");
                let arrival = at_client[0];
                assert_eq!(arrival.param("error"), Some(error), "{name}: {arrival:?}");
                assert_eq!(arrival.param("iss"), Some(server.issuer()), "{name}");
                assert_eq!(arrival.param("code"), None, "{name}");
            }
            Outcome::ErrorPage(status) => {
                assert!(at_client.is_empty(), "{name}: redirected {at_client:?}");
                assert_eq!(seen["status"], status, "{name}: {seen:#}");
                assert!(
                    seen["url"].as_str().unwrap().starts_with(server.issuer()),
                    "{name}: {seen:#}"
                );
                assert!(
                    seen["alert"].as_str().is_some_and(|a| !a.is_empty()),
                    "{name}: {seen:#}"
                );
            }
            Outcome::LoggedOut => {
                assert_eq!(at_client.len(), 1, "{name}: {at_client:?}");
                assert_eq!(at_client[0].path, "/bye", "{name}");
                assert_eq!(at_client[0].method, "GET", "{name}");
            }
            Outcome::Throttled { within } => {
                assert!(at_client.is_empty(), "{name}: {at_client:?}");
                assert_eq!(seen["status"], 429, "{name}: {seen:#}");
                let attempts = seen["attempts"].as_u64().unwrap();
                assert!((1..=within).contains(&attempts), "{name}: {seen:#}");
                let retry: u64 = seen["retry_after"].as_str().unwrap().parse().unwrap();
                assert!(retry >= 1, "{name}: {seen:#}");
                let alert = seen["alert"].as_str().unwrap();
                assert!(alert.contains("Too many failed sign-in attempts"), "{name}: {alert}");
            }
            Outcome::Device { poll } => {
                assert!(at_client.is_empty(), "{name}: {at_client:?}");
                let (status, answer) = poll_device(&server, &tv_id, &device_codes[name]).await;
                match poll {
                    None => {
                        assert_eq!(status, 200, "{name}: {answer}");
                        assert!(
                            answer["access_token"].is_string()
                                && answer["id_token"].is_string()
                                && answer["refresh_token"].is_string(),
                            "{name}: {answer}"
                        );
                        assert_eq!(answer["scope"], "openid profile", "{name}");
                    }
                    Some(error) => {
                        assert_eq!(
                            (status, answer["error"].as_str()),
                            (400, Some(error)),
                            "{name}: {answer}"
                        );
                        assert!(answer.get("access_token").is_none(), "{name}: {answer}");
                    }
                }
            }
            Outcome::DeviceWrongCode => {
                assert!(at_client.is_empty(), "{name}: {at_client:?}");
                let wrong = &seen["wrong_code"];
                assert_eq!(wrong["status"], 400, "{name}: {seen:#}");
                let alert = wrong["alert"].as_str().unwrap_or_default();
                assert!(alert.contains("not valid"), "{name}: {alert}");
                let (status, answer) = poll_device(&server, &tv_id, &device_codes[name]).await;
                assert_eq!(
                    (status, answer["error"].as_str()),
                    (400, Some("authorization_pending")),
                    "{name}: a wrong code, then an undecided confirmation, decide nothing: {answer}"
                );
            }
        }
        let mut headings: Vec<&str> = seen["headings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        headings.dedup();
        assert_eq!(headings, journey.pages, "{name}: the pages seen");
        // Every page of the journey speaks its language, has one heading, labels every field.
        for audit in seen["audits"].as_array().unwrap() {
            assert_eq!(audit["lang"], "en", "{name}: {audit}");
            assert_eq!(audit["h1"], 1, "{name}: {audit}");
            assert_eq!(audit["unlabelled"], serde_json::json!([]), "{name}: {audit}");
            assert_eq!(audit["unnamed_buttons"], serde_json::json!([]), "{name}: {audit}");
            assert_eq!(audit["undescribed"], serde_json::json!([]), "{name}: {audit}");
            assert!(
                audit["title"].as_str().is_some_and(|t| t.ends_with("meshgate")),
                "{name}: {audit}"
            );
        }
        for step in journey.screenshots {
            let file = screenshots.join(format!("{name}-{step}.png"));
            assert!(
                result["screenshots"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|taken| taken.as_str() == file.to_str()),
                "{name}: no {step} screenshot this run"
            );
            assert_png(&file);
        }
    }
    // Nothing the journeys did was refused or crashed the server, and no password was logged.
    assert!(!server.stderr().contains(password), "the password reached the logs");
}
