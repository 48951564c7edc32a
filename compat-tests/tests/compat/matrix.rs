//! The routing matrix: client library × grant × upstream state × placement, every cell that
//! applies run against real processes, the whole table printed (and written to
//! `target/routing-matrix.txt`) before a failing cell fails the test.
//!
//! - **Libraries**: the `oauth2` crate and the `openidconnect` crate (Rust, over
//!   `adapters::http`), npm `openid-client` 6 and the MCP SDK's client auth (`js/matrix.mjs`),
//!   Python Authlib (`python/authlib_matrix.py`). Runners: `matrix_runners.rs`.
//! - **Grants**: client_credentials, authorization code + PKCE S256 (the login and consent pages
//!   posted over HTTP), refresh, device (RFC 8628), token exchange (RFC 8693, a subject token of
//!   the oidc-provider upstream, `bench/oidc`).
//! - **Upstream states**: `up`; `down` (SIGKILL: connections refused); `frozen` (SIGSTOP: accepts
//!   connections, never answers); `flapping` (frozen 2.5 s, answering 1.5 s, over and over while
//!   the cells run; the state fails unless both nodes' circuit breakers opened).
//! - **Placements**: `same` — minted and validated on node 1; `cross` — minted on node 1 and
//!   validated on node 2 of a 2-node mesh (for refresh: the refresh token minted on node 1 is
//!   redeemed on node 2 and the new access token validated there; for device: device codes are
//!   node-local, so the device is approved on and polls node 1 and the token is validated on
//!   node 2).
//!
//! The device cells (RFC 8628): the library starts the device authorization at node 1 and polls
//! `/token` while the cell approves the code on node 1's `/device` page over plain HTTP (sign in,
//! the code, Approve — each form with the session's CSRF token). The nodes tell devices a 1 s
//! polling interval (`bridge.device_poll_interval`), so a device cell takes seconds. Authlib has
//! no device-flow client (its `rfc8628` module is server-side only): its runner makes the device
//! authorization request with the `OAuth2Session` and polls with
//! `fetch_token(grant_type=urn:ietf:params:oauth:grant-type:device_code)`, handling
//! `authorization_pending` / `slow_down` itself.
//!
//! "Validated" = introspection on the validating node answers `active: true` and jose verifies the
//! JWT (`typ` at+jwt, the minting node's issuer) against the validating node's `/jwks.json`.
//! Expected answers: the local grants (client_credentials, code, refresh, device) never depend on the
//! upstream — a normal token in every state; token exchange follows the exchange client's
//! `issue_local` policy (`degraded_ttl: 30s`): up → a normal token; down and frozen → a token with
//! `degraded: true` and `expires_in` ≤ 30 (the policy's documented answer, as `upstream.rs` checks);
//! flapping → either of the two, whichever phase the request met.
//!
//! One fixture per upstream state (a mesh, the upstream and the clients, built once), the cells of
//! that state run one after another against it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use compat_tests::{ClientOptions, Meshgate, client_add, workspace_root};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::login::{REDIRECT, add_public_client, add_user};
use super::matrix_runners::{Env, Minted, NodeRef, run};
use super::mesh::{Mesh, eventually};
use super::support::{self, Jwt, basic, form, post_form};
use super::upstream::{Upstream, mint_subject, wait_for_status};

/// A client library under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lib {
    Oauth2,
    OpenIdConnect,
    OpenIdClient,
    McpSdk,
    Authlib,
}

impl Lib {
    const ALL: [Lib; 5] = [
        Lib::Oauth2,
        Lib::OpenIdConnect,
        Lib::OpenIdClient,
        Lib::McpSdk,
        Lib::Authlib,
    ];

    fn name(self) -> &'static str {
        match self {
            Lib::Oauth2 => "oauth2 (Rust)",
            Lib::OpenIdConnect => "openidconnect (Rust)",
            Lib::OpenIdClient => "openid-client 6 (npm)",
            Lib::McpSdk => "MCP SDK 1.32 (npm)",
            Lib::Authlib => "Authlib (Python)",
        }
    }
}

/// A grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Grant {
    ClientCredentials,
    AuthorizationCode,
    Refresh,
    Device,
    TokenExchange,
}

impl Grant {
    const ALL: [Grant; 5] = [
        Grant::ClientCredentials,
        Grant::AuthorizationCode,
        Grant::Refresh,
        Grant::Device,
        Grant::TokenExchange,
    ];

    /// The name in the table and in the node / Python command names.
    pub(super) fn name(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::AuthorizationCode => "authorization_code",
            Grant::Refresh => "refresh",
            Grant::Device => "device",
            Grant::TokenExchange => "token_exchange",
        }
    }
}

/// What the upstream does while a state's cells run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UpstreamState {
    Up,
    Down,
    Frozen,
    Flapping,
}

impl UpstreamState {
    const ALL: [UpstreamState; 4] = [
        UpstreamState::Up,
        UpstreamState::Down,
        UpstreamState::Frozen,
        UpstreamState::Flapping,
    ];

    fn name(self) -> &'static str {
        match self {
            UpstreamState::Up => "up",
            UpstreamState::Down => "down",
            UpstreamState::Frozen => "frozen",
            UpstreamState::Flapping => "flapping",
        }
    }
}

/// Where the token is validated, relative to where it was minted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Placement {
    Same,
    Cross,
}

impl Placement {
    const ALL: [Placement; 2] = [Placement::Same, Placement::Cross];

    fn name(self) -> &'static str {
        match self {
            Placement::Same => "same",
            Placement::Cross => "cross",
        }
    }
}

/// Whether `lib` can do `grant` at all; the reason when it cannot. Every other cell runs.
fn applies(lib: Lib, grant: Grant) -> Result<(), &'static str> {
    match (lib, grant) {
        (Lib::McpSdk, Grant::Device) => Err("the MCP SDK's client has no device grant"),
        (Lib::Oauth2, Grant::TokenExchange) => Err("the oauth2 crate has no RFC 8693 request"),
        (Lib::OpenIdConnect, Grant::TokenExchange) => Err("the openidconnect crate has no RFC 8693 request"),
        (Lib::McpSdk, Grant::TokenExchange) => Err("the MCP SDK's client has no RFC 8693 token exchange"),
        _ => Ok(()),
    }
}

/// One cell's result.
#[derive(Clone, Debug)]
enum Verdict {
    /// Passed; the note (e.g. `degraded`) is shown in the table.
    Pass(String),
    Fail(String),
    NotApplicable(&'static str),
}

/// How long one cell may take (a node or Python process, a login, the polls) before it fails.
const CELL_BOUND: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_matrix() {
    let started = Instant::now();
    let mut results: Vec<(Lib, Grant, UpstreamState, Placement, Verdict)> = Vec::new();
    let mut fixture_problems = Vec::new();
    for state in UpstreamState::ALL {
        let state_started = Instant::now();
        // A fixture that cannot be built fails that state's cells; the table is still printed.
        let fixture = match tokio::spawn(Fixture::start(state)).await {
            Ok(fixture) => Ok(fixture),
            Err(error) => Err(format!(
                "the upstream-{} fixture failed: {}",
                state.name(),
                panic_text(error)
            )),
        };
        let mut to_verify = Vec::new();
        for lib in Lib::ALL {
            for grant in Grant::ALL {
                for placement in Placement::ALL {
                    let verdict = match (applies(lib, grant), &fixture) {
                        (Err(reason), _) => Verdict::NotApplicable(reason),
                        (Ok(()), Err(problem)) => Verdict::Fail(problem.clone()),
                        (Ok(()), Ok(fixture)) => match cell(fixture, lib, grant, placement).await {
                            Ok((checked, note)) => {
                                to_verify.push((results.len(), checked));
                                Verdict::Pass(note)
                            }
                            Err(problem) => Verdict::Fail(problem),
                        },
                    };
                    results.push((lib, grant, state, placement, verdict));
                }
            }
        }
        // jose, once per state: every passing cell's JWT against its validating node's JWKS.
        let batch: Vec<Value> = to_verify.iter().map(|(_, checked)| checked.clone()).collect();
        let verified = tokio::task::spawn_blocking(move || {
            compat_tests::node_script("matrix.mjs", &["verify"], &json!({ "tokens": batch }))
        })
        .await
        .expect("the verify task");
        for (position, (index, _)) in to_verify.iter().enumerate() {
            let answer = verified.as_ref().map(|v| v["results"][position].clone());
            let problem = match answer {
                Ok(result) if result["ok"] == true => continue,
                Ok(result) => format!(
                    "jose rejects the JWT against the validating node's JWKS: {}",
                    result["error"]
                ),
                Err(problem) => format!("jose verification did not run: {problem}"),
            };
            results[*index].4 = Verdict::Fail(problem);
        }
        if let Ok(fixture) = fixture {
            fixture_problems.extend(fixture.stop());
        }
        eprintln!(
            "routing matrix: upstream {} done in {:.0?}",
            state.name(),
            state_started.elapsed()
        );
    }

    let table = render(&results, &fixture_problems, started.elapsed());
    eprintln!("{table}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| workspace_root().join(dir))
        .unwrap_or_else(|| workspace_root().join("target"));
    let _ = std::fs::create_dir_all(&target);
    let file = target.join("routing-matrix.txt");
    if let Err(error) = std::fs::write(&file, &table) {
        eprintln!("cannot write {}: {error}", file.display());
    }
    let failed = results.iter().filter(|r| matches!(r.4, Verdict::Fail(_))).count() + fixture_problems.len();
    assert_eq!(
        failed,
        0,
        "{failed} routing-matrix cells failed (table above and in {})",
        file.display()
    );
}

/// Runs one cell (bounded by [`CELL_BOUND`]; a panic in a runner is a failure, not an abort) and
/// checks the token: the grant's expected answer, introspection on the validating node. Returns
/// what jose must verify ({token, issuer, jwks_uri}) and the table note.
async fn cell(fixture: &Fixture, lib: Lib, grant: Grant, placement: Placement) -> Result<(Value, String), String> {
    let env = fixture.env.clone();
    let task = tokio::spawn(async move {
        let minted = run(lib, grant, placement, &env).await?;
        let mut note = expected(&env, grant, &minted)?.to_owned();
        if minted.attempts > 1 {
            note = format!("{} tries", minted.attempts);
        }
        let validator = env.validator(placement);
        introspected_active(&env, validator, placement, &minted.access_token).await?;
        let checked = json!({
            "token": minted.access_token,
            "issuer": minted.issuer,
            "jwks_uri": format!("{}/jwks.json", validator.url),
        });
        Ok::<_, String>((checked, note))
    });
    match tokio::time::timeout(CELL_BOUND, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => Err(format!("the runner panicked: {}", panic_text(error))),
        Err(_) => Err(format!("no result within {CELL_BOUND:?}")),
    }
}

fn panic_text(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a non-text panic".into()),
        Err(error) => error.to_string(),
    }
}

/// Checks the answer the grant must give in this upstream state; the note for the table.
fn expected(env: &Env, grant: Grant, minted: &Minted) -> Result<&'static str, String> {
    let claims = Jwt::parse(&minted.access_token).payload;
    let degraded = claims["degraded"] == true;
    if grant != Grant::TokenExchange {
        return if degraded {
            Err(format!("a local grant got a degraded token: {claims}"))
        } else {
            Ok("")
        };
    }
    let response = &minted.response;
    if response["issued_token_type"] != super::upstream::ACCESS_TOKEN {
        return Err(format!(
            "issued_token_type {} in {response}",
            response["issued_token_type"]
        ));
    }
    if claims["sub"] != super::upstream::UPSTREAM_CLIENT || claims["act"]["sub"] != env.exchange.client_id.as_str() {
        return Err(format!(
            "sub / act.sub {} / {} in {claims}",
            claims["sub"], claims["act"]["sub"]
        ));
    }
    let short = response["expires_in"].as_u64().is_some_and(|ttl| ttl <= 30);
    match (env.state, degraded) {
        (UpstreamState::Up, false) => Ok(""),
        (UpstreamState::Up, true) => Err(format!("a degraded token while the upstream is up: {claims}")),
        (_, false) if env.state != UpstreamState::Flapping => Err(format!(
            "issue_local with the upstream {}: want a degraded token, got {claims}",
            env.state.name()
        )),
        (_, false) => Ok("normal"),
        (_, true) if short => Ok("degraded"),
        (_, true) => Err(format!(
            "a degraded token must live ≤ degraded_ttl (30 s): expires_in {}",
            response["expires_in"]
        )),
    }
}

/// Introspection at `node` (as the resource-server client) answers `active: true`: at once on the
/// minting node; on the other node polled for up to 10 s (the fixture already waited for node 1's
/// key there, so this only absorbs replication jitter — and keeps a broken matrix from taking an
/// hour).
async fn introspected_active(env: &Env, node: &NodeRef, placement: Placement, token: &str) -> Result<(), String> {
    let patience = match placement {
        Placement::Same => Duration::ZERO,
        Placement::Cross => Duration::from_secs(10),
    };
    let deadline = Instant::now() + patience;
    loop {
        let answer = post_form(
            &format!("{}/introspect", node.url),
            Some(&basic(&env.introspector.client_id, &env.introspector.client_secret)),
            form(&[("token", token)]),
        )
        .await;
        if answer.status == StatusCode::OK && answer.json()["active"] == true {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "introspection at {} is not active (waited {patience:?}): {} {}",
                node.url, answer.status, answer.text
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The mesh, the upstream and the clients of one upstream state.
struct Fixture {
    env: Arc<Env>,
    nodes: Vec<Meshgate>,
    upstream: Upstream,
    flapper: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
    _mesh: Mesh,
}

const USER: &str = "matrix-user";
const PASSWORD: &str = "matrix-password-7c1e";
/// The scope of the public (code flow) client.
pub(super) const LOGIN_SCOPE: &str = "openid profile";

impl Fixture {
    /// Starts the upstream and a 2-node mesh federating it, registers the clients and a user, waits
    /// until node 2 knows them and node 1's keys, mints a subject token, then puts the upstream
    /// into `state` (and waits until both nodes see it unavailable, for down and frozen).
    async fn start(state: UpstreamState) -> Self {
        let mut upstream = Upstream::start_with(&[]);
        let mesh = Mesh::new(2);
        let federation = format!(
            r#"upstreams:
  - name: corp
    issuer: {issuer}
    audience: meshgate
    algorithms: [RS256]
    timeouts: {{ connect: 200ms, total: 1s, token_deadline: 300ms }}
    breaker: {{ failure_threshold: 1, open_for: 1s, max_open_for: 2s }}
    jwks: {{ refresh_interval: 1s, min_refresh_interval: 1s }}
"#,
            issuer = upstream.issuer
        );
        for i in 1..=2 {
            mesh.append_config(i, &federation);
        }
        let data = mesh.data(1);
        let plain = ClientOptions::default();
        let machine = client_add(&data, "matrix-machine", "read write", &plain);
        let introspector = client_add(&data, "matrix-resource", "introspect", &plain);
        let exchange = client_add(
            &data,
            "matrix-exchange",
            "read write",
            &ClientOptions {
                extra_args: [
                    "--grant",
                    "token-exchange",
                    "--on-upstream-unavailable",
                    "issue_local",
                    "--degraded-ttl",
                    "30s",
                ]
                .map(String::from)
                .to_vec(),
                ..ClientOptions::default()
            },
        );
        add_user(&data, USER, PASSWORD);
        let public_client = add_public_client(&data, LOGIN_SCOPE);
        let device_client = add_device_client(&data);
        let nodes: Vec<Meshgate> = (1..=2).map(|i| mesh.start_with_env(i, DEVICE_POLL_INTERVAL)).collect();
        for node in &nodes {
            wait_for_status(node, "fetched", |corp| {
                corp["available"] == true && corp["jwks"]["keys"].as_u64() == Some(1)
            });
        }
        // Node 2 knows the clients and node 1's signing key before any cell runs.
        let probe = support::access_token(&nodes[0], &machine, &[]).await;
        let kid = Jwt::parse(&probe).header["kid"].as_str().unwrap_or_default().to_owned();
        eventually("node 2 knows the clients and node 1's key", || async {
            let answer = post_form(
                &nodes[1].url("/introspect"),
                Some(&basic(&introspector.client_id, &introspector.client_secret)),
                form(&[("token", &probe)]),
            )
            .await;
            answer.status == StatusCode::OK
                && answer.json()["active"] == true
                && support::kids(&support::jwks(&nodes[1]).await).contains(&kid)
        })
        .await;
        let subject_token = mint_subject(&upstream).await;

        let mut flapper = None;
        match state {
            UpstreamState::Up => {}
            UpstreamState::Down | UpstreamState::Frozen => {
                if state == UpstreamState::Down {
                    upstream.kill();
                } else {
                    upstream.freeze();
                }
                for node in &nodes {
                    wait_for_status(node, "unavailable", |corp| corp["available"] == false);
                }
            }
            UpstreamState::Flapping => flapper = Some(flap(upstream.pid())),
        }
        let node_ref = |node: &Meshgate| NodeRef {
            issuer: node.issuer().to_owned(),
            url: node.url(""),
        };
        let env = Arc::new(Env {
            state,
            nodes: [node_ref(&nodes[0]), node_ref(&nodes[1])],
            machine,
            introspector,
            exchange,
            public_client,
            device_client,
            redirect_uri: REDIRECT.to_owned(),
            username: USER.to_owned(),
            password: PASSWORD.to_owned(),
            subject_token,
        });
        Self {
            env,
            nodes,
            upstream,
            flapper,
            _mesh: mesh,
        }
    }

    /// Stops the flapping (the upstream continued), then the nodes and the upstream. Returns what
    /// went wrong with the state itself: a flapping upstream that no node ever saw go down (its
    /// circuit breaker never opened) did not test anything.
    fn stop(mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some((stop, thread)) = self.flapper.take() {
            // The breaker's status shows only the current episode; the log keeps every opening.
            for (i, node) in self.nodes.iter().enumerate() {
                if !node.stderr().contains("upstream circuit opened") {
                    problems.push(format!(
                        "upstream flapping: node {} never saw the upstream go down (no \"upstream circuit \
                         opened\" in its log)",
                        i + 1
                    ));
                }
            }
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        for node in &mut self.nodes {
            node.stop();
        }
        self.upstream.kill();
        problems
    }
}

/// The polling interval the nodes tell devices: 1 s (the minimum) keeps the device cells short.
const DEVICE_POLL_INTERVAL: &[(&str, &str)] = &[("MESHGATE_BRIDGE__DEVICE_POLL_INTERVAL", "1s")];

/// Registers the public device client (`--grant device_code --public`, scope [`LOGIN_SCOPE`]:
/// refresh and ID tokens included); its client id.
fn add_device_client(data: &std::path::Path) -> String {
    let out = compat_tests::cli(
        data,
        &[
            "client",
            "add",
            "--name",
            "matrix device",
            "--grant",
            "device_code",
            "--public",
            "--scope",
            LOGIN_SCOPE,
            "--json",
        ],
    );
    let answer: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|error| panic!("`meshgate client add --grant device_code` printed no JSON ({error}): {out}"));
    assert_eq!(answer["token_endpoint_auth_method"], "none", "{out}");
    answer["client_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no client_id in {out}"))
        .to_owned()
}

/// How long each flapping freeze lasts: longer than the JWKS refresh interval (1 s) plus the
/// upstream's total timeout (1 s), so a refresh always starts and times out inside it — every
/// freeze opens the breaker and the nodes really see the upstream come and go. (A freeze shorter
/// than that can stay unseen: a hung refresh completes at the thaw and realigns the next ones.)
const FLAP_FROZEN: Duration = Duration::from_millis(2500);
/// How long the upstream answers between two freezes.
const FLAP_UP: Duration = Duration::from_millis(1500);

/// Freezes ([`FLAP_FROZEN`]) and thaws ([`FLAP_UP`]) process `pid` until told to stop; leaves it
/// running.
fn flap(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let signal = |name: &str| {
            let _ = std::process::Command::new("kill")
                .args([name, &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        // Bounded: the matrix is over long before this many toggles (an hour).
        for _ in 0..1200 {
            if flag.load(Ordering::Relaxed) {
                break;
            }
            signal("-STOP");
            std::thread::sleep(FLAP_FROZEN);
            signal("-CONT");
            std::thread::sleep(FLAP_UP);
        }
        signal("-CONT");
    });
    (stop, thread)
}

/// The table: one row per (library, grant), one column per (upstream state, placement); n/a rows
/// say why; failures are listed under the table.
fn render(
    results: &[(Lib, Grant, UpstreamState, Placement, Verdict)],
    fixture_problems: &[String],
    took: Duration,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ROUTING MATRIX: library × grant × upstream state (up / down = SIGKILL / frozen = SIGSTOP / flapping) × \
         placement (same = minted and validated on node 1; cross = minted on node 1, validated on node 2)"
    );
    let _ = write!(out, "{:<22} {:<19}", "library", "grant");
    for state in UpstreamState::ALL {
        for placement in Placement::ALL {
            let _ = write!(out, " | {:<15}", format!("{}/{}", state.name(), placement.name()));
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    let _ = writeln!(out, "{}", "-".repeat(42 + 8 * 18));
    let mut failures = Vec::new();
    let (mut passed, mut failed, mut not_applicable) = (0, 0, 0);
    for lib in Lib::ALL {
        for grant in Grant::ALL {
            let _ = write!(out, "{:<22} {:<19}", lib.name(), grant.name());
            let mut reason = None;
            for state in UpstreamState::ALL {
                for placement in Placement::ALL {
                    let verdict = results
                        .iter()
                        .find(|r| r.0 == lib && r.1 == grant && r.2 == state && r.3 == placement)
                        .map(|r| &r.4);
                    let shown = match verdict {
                        Some(Verdict::Pass(note)) => {
                            passed += 1;
                            if note.is_empty() {
                                "pass".to_owned()
                            } else {
                                format!("pass ({note})")
                            }
                        }
                        Some(Verdict::Fail(problem)) => {
                            failed += 1;
                            failures.push(format!(
                                "FAIL {} / {} / upstream {} / {}: {problem}",
                                lib.name(),
                                grant.name(),
                                state.name(),
                                placement.name()
                            ));
                            "FAIL".to_owned()
                        }
                        Some(Verdict::NotApplicable(why)) => {
                            not_applicable += 1;
                            reason = Some(*why);
                            "n/a".to_owned()
                        }
                        None => "not run".to_owned(),
                    };
                    let _ = write!(out, " | {shown:<15}");
                }
            }
            if let Some(why) = reason {
                let _ = write!(out, " | n/a: {why}");
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
        }
    }
    failed += fixture_problems.len();
    let _ = writeln!(
        out,
        "{passed} passed, {failed} failed, {not_applicable} n/a — in {:.0?}",
        took
    );
    for failure in failures {
        let _ = writeln!(out, "{failure}");
    }
    for problem in fixture_problems {
        let _ = writeln!(out, "FAIL {problem}");
    }
    out
}
