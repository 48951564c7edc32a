//! The agents of the fleet: each asks its preferred node for tokens at a steady rate and fails
//! over to the next node when its node stops answering. What they got is counted per node and
//! per agent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::fleet::{AGENT_7, UPSTREAM_RESOURCE};

const EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// How an agent gets its tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `client_credentials` with a client of the mesh: no upstream involved.
    Local,
    /// RFC 8693 token exchange of an upstream access token (verified offline from the cached JWKS).
    Exchange,
    /// A federated client: its credentials live at the upstream, meshgate forwards them.
    Federated,
}

impl Kind {
    /// For the tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Local => "client_credentials",
            Kind::Exchange => "token exchange",
            Kind::Federated => "federated client",
        }
    }
}

/// The client's degradation policy (for the upstream-dependent agents).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// No upstream involved.
    None,
    /// Degraded local tokens while the upstream is unavailable.
    IssueLocal,
    /// `503 temporarily_unavailable` while the upstream is unavailable.
    FailClosed,
}

impl Policy {
    /// For the tables.
    pub fn label(self) -> &'static str {
        match self {
            Policy::None => "-",
            Policy::IssueLocal => "issue_local",
            Policy::FailClosed => "fail_closed",
        }
    }
}

/// One agent.
#[derive(Clone, Debug)]
pub struct Agent {
    /// Its name (the client's name in meshgate).
    pub name: String,
    /// How it gets tokens.
    pub kind: Kind,
    /// Its client's degradation policy.
    pub policy: Policy,
    /// Its credentials at meshgate (for a federated agent: at the upstream).
    pub client_id: String,
    /// The secret that goes with `client_id`.
    pub client_secret: String,
    /// The node it asks first (0-based).
    pub preferred: usize,
}

/// Counters of answers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Tokens received (degraded ones included).
    pub tokens: u64,
    /// Tokens carrying `degraded: true`.
    pub degraded: u64,
    /// Refusals by policy (`fail_closed` while the upstream is unavailable): expected, not failures.
    pub refused: u64,
    /// Requests that got neither a token nor a policy refusal.
    pub failures: u64,
}

/// Per agent: its counts plus how often it moved to another node.
#[derive(Clone, Debug, Default)]
pub struct AgentCounts {
    /// Answers.
    pub counts: Counts,
    /// Moves to the next node after its node stopped answering.
    pub failovers: u64,
    /// Tokens received after the upstream was killed.
    pub tokens_after_upstream_death: u64,
    /// The node it asks now (0-based).
    pub current: usize,
    /// The last failure, for the summary.
    pub last_failure: Option<String>,
}

/// What the agents saw, shared with the display.
#[derive(Debug)]
pub struct Stats {
    /// Per node, answers that node gave.
    pub nodes: Mutex<Vec<Counts>>,
    /// Per agent (same order as the agents).
    pub agents: Mutex<Vec<AgentCounts>>,
    /// Set once the upstream has been killed.
    pub upstream_down: AtomicBool,
    /// Set once the agents should stop.
    pub stop: AtomicBool,
}

impl Stats {
    /// Zero counts for `nodes` nodes and `agents`.
    pub fn new(nodes: usize, agents: &[Agent]) -> Arc<Self> {
        Arc::new(Self {
            nodes: Mutex::new(vec![Counts::default(); nodes]),
            agents: Mutex::new(
                agents
                    .iter()
                    .map(|a| AgentCounts {
                        current: a.preferred,
                        ..AgentCounts::default()
                    })
                    .collect(),
            ),
            upstream_down: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        })
    }
}

/// One request of `agent` to `node`, for the readiness check: `Ok` when it got a token.
pub async fn probe(agent: &Agent, node: &str, subject: Option<&str>) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    match request(&http, agent, node, subject).await {
        Outcome::Token { .. } => Ok(()),
        Outcome::Refused => Err("503 temporarily_unavailable".into()),
        Outcome::Error(problem) | Outcome::Unreachable(problem) => Err(problem),
    }
}

/// An access token of the upstream for meshgate's audience (`aud: meshgate`), minted for
/// agent-7 with its upstream credentials: the subject token the exchange agent exchanges.
pub async fn upstream_token(http: &reqwest::Client, issuer: &str) -> Option<String> {
    let response = http
        .post(format!("{issuer}/token"))
        .basic_auth(AGENT_7.0, Some(AGENT_7.1))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "read"),
            ("resource", UPSTREAM_RESOURCE),
        ])
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    body["access_token"].as_str().map(str::to_owned)
}

/// What one request to one node came to.
enum Outcome {
    Token {
        degraded: bool,
    },
    Refused,
    /// The node answered an error (status and the OAuth error).
    Error(String),
    /// No answer: connection refused or reset, timeout.
    Unreachable(String),
}

/// The agent loop: `rate` requests per second until `stats.stop`.
pub async fn run(
    index: usize,
    agent: Agent,
    nodes: Vec<String>,
    upstream_issuer: String,
    rate: f64,
    stats: Arc<Stats>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    let mut subject = SubjectToken::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stats.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if agent.kind == Kind::Exchange {
            subject.refresh(&http, &upstream_issuer).await;
        }
        let start = stats.agents.lock().expect("stats")[index].current;
        let mut last_problem = String::new();
        let mut served = false;
        for step in 0..nodes.len() {
            let node = (start + step) % nodes.len();
            let outcome = request(&http, &agent, &nodes[node], subject.token.as_deref()).await;
            let upstream_down = stats.upstream_down.load(Ordering::Relaxed);
            let mut node_counts = stats.nodes.lock().expect("stats");
            let mut agents = stats.agents.lock().expect("stats");
            let mine = &mut agents[index];
            match outcome {
                Outcome::Token { degraded } => {
                    for counts in [&mut node_counts[node], &mut mine.counts] {
                        counts.tokens += 1;
                        counts.degraded += u64::from(degraded);
                    }
                    if upstream_down {
                        mine.tokens_after_upstream_death += 1;
                    }
                    served = true;
                }
                // The policy at work: the upstream is down (or did not answer within its
                // token deadline) and this client must not get a local token.
                Outcome::Refused if agent.policy == Policy::FailClosed => {
                    node_counts[node].refused += 1;
                    mine.counts.refused += 1;
                    served = true;
                }
                Outcome::Refused => {
                    node_counts[node].failures += 1;
                    last_problem = format!("node{}: 503 temporarily_unavailable", node + 1);
                    continue;
                }
                Outcome::Error(problem) => {
                    node_counts[node].failures += 1;
                    last_problem = format!("node{}: {problem}", node + 1);
                    // 4xx: the request itself is wrong; no other node will answer otherwise.
                    if !problem.starts_with('5') {
                        break;
                    }
                    continue;
                }
                Outcome::Unreachable(problem) => {
                    // The node is gone: move on to the next one and stay there.
                    mine.failovers += 1;
                    mine.current = (node + 1) % nodes.len();
                    last_problem = format!("node{}: {problem}", node + 1);
                    continue;
                }
            }
            break;
        }
        if !served {
            let mut agents = stats.agents.lock().expect("stats");
            agents[index].counts.failures += 1;
            agents[index].last_failure = Some(last_problem);
        }
    }
}

async fn request(http: &reqwest::Client, agent: &Agent, node: &str, subject: Option<&str>) -> Outcome {
    let form: Vec<(&str, &str)> = match agent.kind {
        Kind::Local | Kind::Federated => vec![("grant_type", "client_credentials"), ("scope", "read")],
        Kind::Exchange => match subject {
            Some(subject) => vec![
                ("grant_type", EXCHANGE_GRANT),
                ("subject_token", subject),
                ("subject_token_type", ACCESS_TOKEN_TYPE),
                ("scope", "read"),
            ],
            None => return Outcome::Error("4xx: no upstream token to exchange yet".into()),
        },
    };
    let response = http
        .post(format!("{node}/token"))
        .basic_auth(&agent.client_id, Some(&agent.client_secret))
        .form(&form)
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(error) => return Outcome::Unreachable(describe(&error)),
    };
    let status = response.status().as_u16();
    let body: Value = match response.json().await {
        Ok(body) => body,
        Err(error) => return Outcome::Unreachable(describe(&error)),
    };
    match status {
        200 => match body["access_token"].as_str() {
            Some(token) => Outcome::Token {
                degraded: claims(token)["degraded"] == true,
            },
            None => Outcome::Error("200 without access_token".into()),
        },
        503 if body["error"] == "temporarily_unavailable" => Outcome::Refused,
        _ => Outcome::Error(format!("{status} {}", body["error"].as_str().unwrap_or("?"))),
    }
}

/// A reqwest error without its URL's details, in a few words.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        "connection refused".into()
    } else {
        "connection lost".into()
    }
}

/// The claims of a JWT (not verified: the agent only looks at `degraded`).
pub fn claims(jwt: &str) -> Value {
    jwt.split('.')
        .nth(1)
        .and_then(|payload| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

/// The exchange agent's upstream access token: renewed every 30 s while the upstream answers,
/// kept (it is valid for an hour) when it does not.
#[derive(Default)]
struct SubjectToken {
    token: Option<String>,
    fetched: Option<std::time::Instant>,
}

impl SubjectToken {
    async fn refresh(&mut self, http: &reqwest::Client, issuer: &str) {
        if self.fetched.is_some_and(|at| at.elapsed() < Duration::from_secs(30)) {
            return;
        }
        self.fetched = Some(std::time::Instant::now());
        if let Some(token) = upstream_token(http, issuer).await {
            self.token = Some(token);
        }
    }
}
