//! `meshgate doctor`: checks a node's configuration and surroundings and explains every finding
//! (ok / warn / fail, what it means, how to fix it). Fails (exit code 1) when any check fails.
//!
//! Checks: configuration validity, data directory and key file permissions, the node's state,
//! the JWKS the running node serves, clock skew against every peer (from the HTTP `Date` header
//! of its issuer), upstream reachability (discovery fetch), certificates near expiry (any PEM
//! certificate named under `bridge.tls` or kept in the data directory's `tls/`), and token
//! algorithms resource servers may not support.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh::clock::Clock;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{self, Config, Environment, Overrides};
use crate::error::Error;
use crate::keys::Alg;
use crate::node::{AdminRequest, Node};

mod certificates;

/// A skew up to this is fine.
const SKEW_OK_SECS: i64 = 5;
/// A skew beyond this breaks tokens (`iat`/`exp` checks of strict resource servers).
const SKEW_FAIL_SECS: i64 = 60;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Works, but deserves attention.
    Warn,
    /// Broken: `doctor` exits non-zero.
    Fail,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The check, e.g. `key_files`.
    pub check: &'static str,
    /// How bad.
    pub status: Status,
    /// What was found, in one line.
    pub summary: String,
    /// What it means.
    pub explanation: String,
    /// What to do about it (empty when ok).
    pub fix: String,
}

fn finding(check: &'static str, status: Status, summary: String, explanation: &str, fix: &str) -> Finding {
    Finding {
        check,
        status,
        summary,
        explanation: explanation.to_owned(),
        fix: if status == Status::Ok {
            String::new()
        } else {
            fix.to_owned()
        },
    }
}

/// Runs every check. `config_file` and `overrides` are those of the command line.
pub fn run(
    config_file: Option<&Path>,
    env: &dyn Environment,
    overrides: &Overrides,
    clock: Arc<dyn Clock>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let config = match config::load(config_file, env, overrides) {
        Ok(config) => {
            findings.push(finding(
                "config",
                Status::Ok,
                match config_file {
                    Some(file) => format!("{} is valid", file.display()),
                    None => "no file: defaults and MESHGATE_* environment, valid".into(),
                },
                "Every key is known and every value parses.",
                "",
            ));
            config
        }
        Err(e) => {
            findings.push(finding(
                "config",
                Status::Fail,
                e.to_string(),
                "meshgate refuses to start with an invalid configuration; each problem names its key path.",
                "Correct the named keys (`meshgate config check FILE` rechecks a file); see docs/operations.md for every key.",
            ));
            return findings;
        }
    };
    let data_dir = config.data_dir(env);
    findings.push(data_dir_finding(&data_dir));
    findings.push(key_files_finding(&data_dir.join("keys")));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            findings.push(finding(
                "runtime",
                Status::Fail,
                format!("cannot start a runtime: {e}"),
                "The network checks need an async runtime.",
                "Check the process limits (threads, file descriptors).",
            ));
            return findings;
        }
    };
    let client = adapters::http::HttpClient::new(&adapters::http::HttpConfig {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .ok();
    if !data_dir.exists() {
        if let Some(client) = &client {
            runtime.block_on(async { findings.extend(upstream_findings(client, &config).await) });
        }
        return findings;
    }
    let node = node_facts(&data_dir, &config, &clock);
    match &node {
        Ok(facts) => findings.push(finding(
            "state",
            Status::Ok,
            format!(
                "node {} ({}), {} peer(s), {} client(s)",
                facts.did,
                if facts.running { "running" } else { "not running" },
                facts.members.len(),
                facts.clients.len()
            ),
            "The replicated state loads and the node identity is readable.",
            "",
        )),
        Err(e) => findings.push(finding(
            "state",
            Status::Fail,
            format!("cannot read the node's state: {e}"),
            "Without its state the node cannot serve: the identity, keys or document are unreadable.",
            "Fix the permissions named above, or restore the data directory from a backup (docs/operations.md).",
        )),
    }
    if let (Ok(facts), Some(client)) = (&node, &client) {
        let now = clock.now();
        runtime.block_on(async {
            findings.push(jwks_finding(client, facts).await);
            findings.extend(skew_findings(client, facts, now).await);
            findings.extend(upstream_findings(client, &config).await);
        });
        findings.push(algorithm_finding(&config, facts));
    } else if let Some(client) = &client {
        runtime.block_on(async { findings.extend(upstream_findings(client, &config).await) });
    }
    findings.extend(certificates::findings(config_file, &data_dir, clock.now()));
    findings
}

/// The findings as text: one line each, explanation and fix indented under warnings and failures.
pub fn text(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let tag = match f.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        out.push_str(&format!("[{tag}] {:<14} {}\n", f.check, f.summary));
        if f.status != Status::Ok {
            out.push_str(&format!("       why: {}\n       fix: {}\n", f.explanation, f.fix));
        }
    }
    let worst = findings.iter().map(|f| f.status).max().unwrap_or(Status::Ok);
    out.push_str(match worst {
        Status::Ok => "all checks passed",
        Status::Warn => "no failures; see the warnings above",
        Status::Fail => "some checks failed",
    });
    out
}

/// The findings as the JSON `doctor --json` prints.
pub fn json(findings: &[Finding]) -> Value {
    let worst = findings.iter().map(|f| f.status).max().unwrap_or(Status::Ok);
    json!({"status": worst, "findings": findings})
}

fn data_dir_finding(dir: &Path) -> Finding {
    let Ok(metadata) = std::fs::metadata(dir) else {
        return finding(
            "data_dir",
            Status::Warn,
            format!("{} does not exist yet", dir.display()),
            "meshgate creates the data directory (0700) with a fresh identity at first start.",
            "Nothing, if this is a new node; otherwise point --data-dir (or node.data_dir) at the existing one.",
        );
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return finding(
            "data_dir",
            Status::Warn,
            format!("{} has mode {mode:03o}", dir.display()),
            "The data directory holds the replicated state and the admin socket; others should not list it.",
            &format!("chmod 700 {}", dir.display()),
        );
    }
    finding(
        "data_dir",
        Status::Ok,
        format!("{} (mode {mode:03o}, uid {})", dir.display(), metadata.uid()),
        "Private to its owner.",
        "",
    )
}

fn key_files_finding(keys: &Path) -> Finding {
    let Ok(entries) = std::fs::read_dir(keys) else {
        return finding(
            "key_files",
            Status::Warn,
            format!("no key directory at {}", keys.display()),
            "The node identity and signing keys are created at first start.",
            "Nothing, if this is a new node; otherwise restore keys/ from a backup.",
        );
    };
    let mut open = Vec::new();
    let mut count = 0;
    for entry in entries.flatten() {
        count += 1;
        let mode = entry.metadata().map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        if mode & 0o077 != 0 {
            open.push(format!("{} ({mode:03o})", entry.path().display()));
        }
    }
    if !open.is_empty() {
        return finding(
            "key_files",
            Status::Fail,
            format!("readable by others: {}", open.join(", ")),
            "Private keys (node identity, token signing keys) readable by other users can be copied to mint tokens; meshgate refuses to load them.",
            &format!(
                "chmod 600 {}/*  (and rotate the keys if someone may have read them: `meshgate keys rotate`, `meshgate id rotate`)",
                keys.display()
            ),
        );
    }
    finding(
        "key_files",
        Status::Ok,
        format!("{count} key file(s), all 0600"),
        "Only the owner can read the private keys.",
        "",
    )
}

/// What the checks need from the node's state.
struct NodeFacts {
    did: String,
    running: bool,
    issuer: Option<String>,
    /// Other members' (DID, issuer).
    members: Vec<(String, Option<String>)>,
    clients: Vec<Value>,
    keys: Vec<Value>,
}

fn node_facts(data_dir: &Path, config: &Config, clock: &Arc<dyn Clock>) -> Result<NodeFacts, Error> {
    let running = crate::admin::call_running(data_dir, &AdminRequest::Status)?.is_some();
    let (alg, trusted) = (config.bridge.token_alg, config.node.sync.trusted_peers.clone());
    let open = || Node::open(data_dir, clock.clone(), alg, trusted.clone());
    let call = |request: AdminRequest| crate::admin::call(data_dir, &request, open);
    let status = call(AdminRequest::MeshStatus)?;
    let me = status["did"].as_str().unwrap_or_default().to_owned();
    let mut issuer = None;
    let mut members = Vec::new();
    for member in status["members"].as_array().into_iter().flatten() {
        let member_issuer = member["issuer"].as_str().map(str::to_owned);
        if member["self"] == true {
            issuer = member_issuer;
        } else {
            members.push((member["did"].as_str().unwrap_or_default().to_owned(), member_issuer));
        }
    }
    Ok(NodeFacts {
        did: me,
        running,
        issuer,
        members,
        clients: call(AdminRequest::ClientList)?.as_array().cloned().unwrap_or_default(),
        keys: call(AdminRequest::KeysList)?.as_array().cloned().unwrap_or_default(),
    })
}

async fn get(client: &adapters::http::HttpClient, url: &str) -> Result<(u16, Option<String>, Vec<u8>), String> {
    let request = axum::http::Request::builder()
        .uri(url)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let response = client.execute(request).await.map_err(|e| e.to_string())?;
    let date = response
        .headers()
        .get(axum::http::header::DATE)
        .and_then(|d| d.to_str().ok())
        .map(str::to_owned);
    Ok((response.status().as_u16(), date, response.body().clone()))
}

async fn jwks_finding(client: &adapters::http::HttpClient, facts: &NodeFacts) -> Finding {
    let Some(issuer) = facts.issuer.as_deref().filter(|_| facts.running) else {
        return finding(
            "jwks",
            Status::Warn,
            "the node is not running: its JWKS was not fetched".into(),
            "Resource servers validate tokens with the keys at {issuer}/jwks.json.",
            "Start it (`meshgate serve`, or the systemd unit in docs/meshgate.service) and run doctor again.",
        );
    };
    let url = format!("{issuer}/jwks.json");
    let own: Vec<&str> = facts
        .keys
        .iter()
        .filter(|k| k["node"] == facts.did.as_str() && k["retired_at"].is_null())
        .filter_map(|k| k["kid"].as_str())
        .collect();
    match get(client, &url).await {
        Ok((200, _, body)) => {
            let served: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let kids: Vec<&str> = served["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k["kid"].as_str())
                .collect();
            let missing: Vec<&&str> = own.iter().filter(|k| !kids.contains(k)).collect();
            if missing.is_empty() {
                finding(
                    "jwks",
                    Status::Ok,
                    format!("{url} serves {} key(s), this node's active ones included", kids.len()),
                    "Resource servers can validate this node's tokens.",
                    "",
                )
            } else {
                finding(
                    "jwks",
                    Status::Fail,
                    format!("{url} lacks active key(s) {missing:?}"),
                    "Tokens signed with a key missing from the JWKS fail validation at every resource server.",
                    "Check that the issuer URL reaches this node (bridge.issuer, DNS, proxies); restart the node.",
                )
            }
        }
        Ok((status, _, _)) => finding(
            "jwks",
            Status::Fail,
            format!("{url} answered {status}"),
            "Resource servers cannot fetch the signing keys, so they reject every token.",
            "Check that bridge.issuer points at this node (path included) and nothing in between rewrites it.",
        ),
        Err(e) => finding(
            "jwks",
            Status::Fail,
            format!("{url}: {e}"),
            "The issuer URL the node announces does not reach it, so resource servers cannot fetch its keys.",
            "Check bridge.issuer, bridge.listen, DNS and firewalls.",
        ),
    }
}

/// The skew of a peer's clock from its HTTP `Date` header (seconds, positive = peer ahead),
/// judged: within 5 s ok, within 60 s warn, beyond fail.
pub fn skew(date: &str, now: u64) -> Option<(i64, Status)> {
    let peer = humantime::parse_rfc3339_weak(&rfc1123_to_rfc3339(date)?).ok()?;
    let peer = peer.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    let skew = peer - now as i64;
    let status = match skew.abs() {
        s if s <= SKEW_OK_SECS => Status::Ok,
        s if s <= SKEW_FAIL_SECS => Status::Warn,
        _ => Status::Fail,
    };
    Some((skew, status))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → `1994-11-06T08:49:37Z` (RFC 9110 IMF-fixdate only).
fn rfc1123_to_rfc3339(date: &str) -> Option<String> {
    let parts: Vec<&str> = date.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? + 1;
    Some(format!("{year}-{month:02}-{day:0>2}T{time}Z"))
}

async fn skew_findings(client: &adapters::http::HttpClient, facts: &NodeFacts, now: u64) -> Vec<Finding> {
    if facts.members.is_empty() {
        return vec![finding(
            "clock_skew",
            Status::Ok,
            "no peers to compare clocks with (a mesh of one)".into(),
            "Clock skew between nodes matters once tokens cross nodes.",
            "",
        )];
    }
    let mut findings = Vec::new();
    for (did, issuer) in &facts.members {
        let Some(issuer) = issuer else {
            findings.push(finding(
                "clock_skew",
                Status::Warn,
                format!("{did} has not announced an issuer yet"),
                "The peer has not synced its node information to this node.",
                "Check `meshgate mesh status`: the peer must be reachable on its sync address.",
            ));
            continue;
        };
        let url = format!("{issuer}/jwks.json");
        let found = match get(client, &url).await {
            Ok((_, Some(date), _)) => match skew(&date, now) {
                Some((seconds, status)) => finding(
                    "clock_skew",
                    status,
                    format!("{did}: {seconds:+} s ({issuer})"),
                    "Tokens minted on one node carry its clock in iat/exp; resource servers and other nodes judge them by theirs. Beyond a few seconds, fresh tokens look not-yet-valid or expire early.",
                    "Run NTP (chrony, systemd-timesyncd) on every node.",
                ),
                None => finding(
                    "clock_skew",
                    Status::Warn,
                    format!("{did}: unreadable Date header `{date}`"),
                    "The skew could not be measured.",
                    "Check what answers at the peer's issuer URL.",
                ),
            },
            Ok((_, None, _)) => finding(
                "clock_skew",
                Status::Warn,
                format!("{did}: no Date header from {url}"),
                "The skew could not be measured.",
                "Check what answers at the peer's issuer URL.",
            ),
            Err(e) => finding(
                "clock_skew",
                Status::Warn,
                format!("{did}: {url}: {e}"),
                "This node cannot reach the peer's issuer; clients of that node are unaffected, but its clock could not be compared.",
                "Check the peer is up (`meshgate mesh status`) and its issuer URL reachable from here.",
            ),
        };
        findings.push(found);
    }
    findings
}

async fn upstream_findings(client: &adapters::http::HttpClient, config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    for upstream in &config.upstreams {
        let url = match upstream.endpoints.as_ref().and_then(|e| e.jwks.as_ref()) {
            Some(jwks) => jwks.to_string(),
            None => upstream.issuer.discovery_url(),
        };
        let name = &upstream.name;
        let explanation = "Federated clients and token exchange need the upstream; while it is unreachable each client's degradation policy applies (issue_local: shorter degraded tokens up to max_offline; fail_closed: 503).";
        findings.push(match get(client, &url).await {
            Ok((200, _, _)) => finding(
                "upstream",
                Status::Ok,
                format!("{name}: {url} answers"),
                explanation,
                "",
            ),
            Ok((status, _, _)) => finding(
                "upstream",
                Status::Warn,
                format!("{name}: {url} answered {status}"),
                explanation,
                "Check upstreams[].issuer (the discovery document lives at ISSUER/.well-known/openid-configuration) or set upstreams[].endpoints.",
            ),
            Err(e) => finding(
                "upstream",
                Status::Warn,
                format!("{name}: {url}: {e}"),
                explanation,
                "Check the upstream is up and reachable from this host (DNS, firewall, proxy); `meshgate upstream status` shows the breaker.",
            ),
        });
    }
    findings
}

fn algorithm_finding(config: &Config, facts: &NodeFacts) -> Finding {
    let eddsa = facts.clients.iter().filter(|c| c["token_alg"] == "EdDSA").count();
    let has_rs256 = facts
        .keys
        .iter()
        .any(|k| k["alg"] == "RS256" && k["retired_at"].is_null());
    if config.bridge.token_alg == Alg::EdDSA || eddsa > 0 {
        return finding(
            "algorithms",
            Status::Warn,
            format!(
                "default token algorithm {}, {eddsa} client(s) get EdDSA tokens",
                config.bridge.token_alg
            ),
            "EdDSA is fast and compact, but many resource servers cannot validate it (older JWT libraries, several API gateways and Java/.NET stacks); RFC 9068 only requires RS256.",
            "For clients whose resource servers lack EdDSA: `meshgate client add --token-alg RS256` (or ES256), or set bridge.token_alg: RS256 as the default.",
        );
    }
    finding(
        "algorithms",
        if has_rs256 { Status::Ok } else { Status::Warn },
        format!("default token algorithm {}", config.bridge.token_alg),
        "Tokens use algorithms every RFC 9068 resource server supports.",
        "Restart the node: it generates a key per algorithm at start.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_judged_from_the_date_header() {
        // 2026-11-30T12:00:00Z
        let now = 1_796_040_000;
        assert_eq!(skew("Mon, 30 Nov 2026 12:00:03 GMT", now), Some((3, Status::Ok)));
        assert_eq!(skew("Mon, 30 Nov 2026 11:59:30 GMT", now), Some((-30, Status::Warn)));
        assert_eq!(skew("Mon, 30 Nov 2026 12:05:00 GMT", now), Some((300, Status::Fail)));
        assert_eq!(skew("yesterday", now), None);
    }
}
