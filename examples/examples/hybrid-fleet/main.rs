//! Run with: `cargo run -p examples --example hybrid-fleet [-- --duration 40]`
//!
//! A hybrid fleet on one machine, with an outage you can watch. One command starts
//!
//! - an upstream identity provider: node `oidc-provider` (`bench/oidc/upstream.mjs`; installed
//!   with `npm ci` on first use), holding the credentials of two agents, `agent-7` and `agent-8`;
//! - three meshgate nodes in a mesh on 127.0.0.1, .2 and .3, each configured as a user writes it
//!   (trusted and gossip peers, the upstream with its timeouts and breaker, a default degradation
//!   policy; the files are printed and kept in the work directory with `--keep`);
//! - six agents, each asking its own node for a token ten times a second and failing over to the
//!   next node when its node stops answering:
//!   - `billing-1..3`: `client_credentials` clients of the mesh ("issue-local": no upstream);
//!   - `edge-exchanger`: exchanges (RFC 8693) agent-7's upstream access token for a local one,
//!     policy `issue_local`;
//!   - `agent-7`, `agent-8`: federated clients — they authenticate with the credentials they
//!     have at the upstream, which meshgate forwards; policies `issue_local` and `fail_closed`.
//!
//! After a quarter of the run it kills the upstream (SIGKILL), at half time node 3 (SIGKILL);
//! a table shows per node tokens/s, tokens, degraded tokens, policy refusals and failures,
//! refreshed every second (in place on a terminal, one line per second otherwise). At the end a
//! summary says what each agent got; the exit status is 0 only when the issue-local clients had
//! no failure, the `issue_local` agents were served (degraded) through the outage, the
//! `fail_closed` agent was refused cleanly, and the agents of node 3 failed over.
//!
//! Options: `--duration SECS` (default 40, at least 12), `--rate N` requests per second per agent
//! (default 10), `--keep` (keep the work directory: configurations, node logs),
//! `--meshgate PATH` (run an installed `meshgate` binary; also `MESHGATE_BIN`). By default the
//! nodes run the meshgate CLI linked into this example, so this one `cargo run` needs nothing
//! else but `node` and `npm`. Ctrl-C stops everything it started.

mod agents;
mod fleet;
mod table;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;

use agents::{Agent, Kind, Policy, Stats};
use fleet::{AGENT_7, AGENT_8, Meshgate, Ports, Process};
use table::{Live, Timeline};

const NODES: usize = 3;
/// The node killed at half time (0-based).
const VICTIM: usize = 2;

const USAGE: &str = "usage: hybrid-fleet [--duration SECS] [--rate N] [--keep] [--meshgate PATH]";

struct Options {
    duration: u64,
    rate: f64,
    keep: bool,
    meshgate: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Self {
            duration: 40,
            rate: 10.0,
            keep: false,
            meshgate: std::env::var_os("MESHGATE_BIN").map(PathBuf::from),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().cloned().ok_or(format!("{name} needs a value\n{USAGE}"));
            match arg.as_str() {
                "--duration" => {
                    options.duration = value("--duration")?
                        .parse()
                        .ok()
                        .filter(|d| (12..=3600).contains(d))
                        .ok_or("--duration: whole seconds from 12 to 3600")?;
                }
                "--rate" => {
                    options.rate = value("--rate")?
                        .parse()
                        .ok()
                        .filter(|r: &f64| (0.5..=200.0).contains(r))
                        .ok_or("--rate: requests per second per agent, from 0.5 to 200")?;
                }
                "--keep" => options.keep = true,
                "--meshgate" => options.meshgate = Some(PathBuf::from(value("--meshgate")?)),
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        Ok(options)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // The nodes: this executable re-run as `hybrid-fleet meshgate serve ...`.
    if args.get(1).map(String::as_str) == Some("meshgate") {
        let cli = bridge::cli::Cli::parse_from(&args[1..]);
        bridge::init_logging(cli.is_serve());
        std::process::exit(bridge::cli::run(cli));
    }
    let options = match Options::parse(&args[1..]) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let work = std::env::temp_dir().join(format!("meshgate-hybrid-fleet-{}", std::process::id()));
    let result = runtime.block_on(demo(&options, &work));
    let keep = options.keep || matches!(result, Ok(Ended::Failed) | Err(_));
    if keep {
        println!("work directory (configurations, logs): {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    match result {
        Ok(Ended::Passed) => ExitCode::SUCCESS,
        Ok(Ended::Failed) => ExitCode::from(1),
        Ok(Ended::Interrupted) => {
            eprintln!("interrupted: every process this demo started is stopped");
            ExitCode::from(130)
        }
        Err(message) => {
            eprintln!("hybrid-fleet: {message}");
            ExitCode::from(2)
        }
    }
}

enum Ended {
    Passed,
    Failed,
    Interrupted,
}

/// The fleet's processes; whatever is still running is killed when this is dropped (also on an
/// error or a panic).
struct Fleet {
    upstream: Option<Process>,
    nodes: Vec<Option<Process>>,
}

impl Fleet {
    /// Stops the nodes gracefully (SIGTERM), then the upstream.
    fn shut_down(&mut self) {
        for node in self.nodes.iter_mut().flatten() {
            node.stop(Duration::from_secs(10));
        }
        if let Some(upstream) = self.upstream.as_mut() {
            upstream.kill();
        }
    }
}

async fn demo(options: &Options, work: &Path) -> Result<Ended, String> {
    std::fs::create_dir_all(work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let meshgate = Meshgate::new(options.meshgate.clone())?;
    let mut fleet = Fleet {
        upstream: None,
        nodes: Vec::new(),
    };
    let interrupted = interrupt_signal();
    tokio::pin!(interrupted);

    // 1. The upstream IdP.
    let (upstream, issuer) = fleet::start_upstream(work)?;
    fleet.upstream = Some(upstream);
    println!("upstream IdP (oidc-provider) at {issuer}");

    // 2. Three nodes: identities, one configuration each, started.
    let ports = Ports {
        http: fleet::free_port()?,
        sync: fleet::free_port()?,
        metrics: fleet::free_port()?,
    };
    let data: Vec<PathBuf> = (1..=NODES).map(|i| work.join(format!("node{i}"))).collect();
    let configs: Vec<PathBuf> = (1..=NODES).map(|i| work.join(format!("node{i}.yaml"))).collect();
    let mut dids = Vec::new();
    for dir in &data {
        let id = meshgate.cli_json(&["id", "--data-dir", &dir.to_string_lossy()])?;
        dids.push(
            id["did"]
                .as_str()
                .ok_or(format!("`meshgate id` printed {id}"))?
                .to_owned(),
        );
    }
    for (i, config) in configs.iter().enumerate() {
        let text = fleet::node_config(i + 1, ports, &dids, &issuer);
        if i == 0 {
            println!("node1.yaml (node2 and node3 differ only in their addresses):\n{text}");
        }
        std::fs::write(config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    }
    let mut addresses = Vec::new();
    for i in 0..NODES {
        let command = meshgate.command(&[
            "serve",
            "--data-dir",
            &data[i].to_string_lossy(),
            "--config",
            &configs[i].to_string_lossy(),
            "--json",
        ]);
        let (process, info) = Process::spawn(
            &format!("node{}", i + 1),
            command,
            &work.join(format!("node{}.log", i + 1)),
        )?;
        fleet.nodes.push(Some(process));
        addresses.push(
            info["issuer"]
                .as_str()
                .ok_or(format!("node{} printed {info}", i + 1))?
                .to_owned(),
        );
        println!("node{} serving at {} ({})", i + 1, addresses[i], dids[i]);
    }

    // 3. The agents' clients, registered on node 1 (the mesh replicates them to the others).
    let agents = register_agents(&meshgate, &data[0], &configs[0])?;

    // 4. Ready when every agent gets a token from every node: the clients have replicated and
    //    every node has the upstream's keys. This also records, on the mesh, the federated
    //    agents' secrets as the upstream accepted them (as argon2 hashes).
    println!("waiting for the mesh to replicate the clients and fetch the upstream's keys ...");
    let subject = agents::upstream_token(&reqwest::Client::new(), &issuer)
        .await
        .ok_or("the upstream minted no token for agent-7")?;
    let ready_by = Instant::now() + Duration::from_secs(90);
    for agent in &agents {
        for address in &addresses {
            loop {
                match agents::probe(agent, address, Some(&subject)).await {
                    Ok(()) => break,
                    Err(problem) if Instant::now() > ready_by => {
                        return Err(format!(
                            "{} gets no token from {address} after 90 s: {problem}",
                            agent.name
                        ));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
    }

    // 5. Run: the agents, the outage, the table.
    let stats = Stats::new(NODES, &agents);
    let mut handles = Vec::new();
    for (index, agent) in agents.iter().enumerate() {
        handles.push(tokio::spawn(agents::run(
            index,
            agent.clone(),
            addresses.clone(),
            issuer.clone(),
            options.rate,
            stats.clone(),
        )));
    }
    let kill_upstream_at = options.duration / 4;
    let kill_node_at = options.duration / 2;
    let mut live = Live::new(NODES, std::io::stdout().is_terminal());
    let mut timeline = Timeline::default();
    let start = Instant::now();
    live.event(
        0,
        &format!(
            "{} agents started; the upstream dies at {kill_upstream_at}s, node{} at {kill_node_at}s",
            agents.len(),
            VICTIM + 1
        ),
    );
    let mut interrupted_run = false;
    let mut second = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        tokio::select! {
            _ = second.tick() => {}
            _ = &mut interrupted => { interrupted_run = true; break; }
        }
        let elapsed = start.elapsed().as_secs();
        if timeline.upstream_killed.is_none() && elapsed >= kill_upstream_at {
            if let Some(upstream) = fleet.upstream.as_mut() {
                upstream.kill();
            }
            stats.upstream_down.store(true, Ordering::Relaxed);
            timeline.upstream_killed = Some(elapsed);
            live.event(
                elapsed,
                "upstream IdP killed (SIGKILL): federated and token-exchange agents now depend on their policy",
            );
        }
        if timeline.node_killed.is_none() && elapsed >= kill_node_at {
            if let Some(node) = fleet.nodes[VICTIM].as_mut() {
                node.kill();
            }
            timeline.node_killed = Some((VICTIM, elapsed));
            live.event(
                elapsed,
                &format!(
                    "node{} killed (SIGKILL): its agents fail over to a surviving node",
                    VICTIM + 1
                ),
            );
        }
        let nodes = stats.nodes.lock().expect("stats").clone();
        live.draw(elapsed, options.duration, &addresses, &nodes, timeline);
        if elapsed >= options.duration {
            break;
        }
    }
    stats.stop.store(true, Ordering::Relaxed);
    for handle in handles {
        let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
    }
    fleet.shut_down();
    if interrupted_run {
        return Ok(Ended::Interrupted);
    }
    let nodes = stats.nodes.lock().expect("stats").clone();
    let counts = stats.agents.lock().expect("stats").clone();
    if table::summary(options.duration, timeline, &agents, &counts, &nodes) {
        Ok(Ended::Passed)
    } else {
        Ok(Ended::Failed)
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn interrupt_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Registers the six agents' clients with the admin CLI, as an operator would.
fn register_agents(meshgate: &Meshgate, data: &Path, config: &Path) -> Result<Vec<Agent>, String> {
    let data = data.to_string_lossy().into_owned();
    let config = config.to_string_lossy().into_owned();
    let add = |extra: &[&str]| -> Result<serde_json::Value, String> {
        let mut args = vec!["client", "add", "--data-dir", &data, "--config", &config];
        args.extend_from_slice(extra);
        meshgate.cli_json(&args)
    };
    let credentials = |value: &serde_json::Value| -> Result<(String, String), String> {
        match (value["client_id"].as_str(), value["client_secret"].as_str()) {
            (Some(id), Some(secret)) => Ok((id.to_owned(), secret.to_owned())),
            _ => Err(format!("`client add` printed {value}")),
        }
    };
    let mut agents = Vec::new();
    for n in 1..=3 {
        let name = format!("billing-{n}");
        let (client_id, client_secret) = credentials(&add(&[
            "--name",
            &name,
            "--grant",
            "client_credentials",
            "--scope",
            "read write",
        ])?)?;
        agents.push(Agent {
            name,
            kind: Kind::Local,
            policy: Policy::None,
            client_id,
            client_secret,
            preferred: n - 1,
        });
    }
    let (client_id, client_secret) = credentials(&add(&[
        "--name",
        "edge-exchanger",
        "--grant",
        "token-exchange",
        "--scope",
        "read",
        "--on-upstream-unavailable",
        "issue_local",
        "--degraded-ttl",
        "60s",
    ])?)?;
    agents.push(Agent {
        name: "edge-exchanger".into(),
        kind: Kind::Exchange,
        policy: Policy::IssueLocal,
        client_id,
        client_secret,
        preferred: 1,
    });
    for ((id, secret), policy, preferred) in [(AGENT_7, Policy::IssueLocal, 2), (AGENT_8, Policy::FailClosed, 0)] {
        // Federated: the same client id as at the upstream, no local secret.
        let mut args = vec![
            "--name",
            id,
            "--upstream",
            "corp",
            "--client-id",
            id,
            "--scope",
            "read",
            "--on-upstream-unavailable",
            policy.label(),
        ];
        if policy == Policy::IssueLocal {
            args.extend(["--degraded-ttl", "60s"]);
        }
        add(&args)?;
        agents.push(Agent {
            name: id.into(),
            kind: Kind::Federated,
            policy,
            client_id: id.into(),
            client_secret: secret.into(),
            preferred,
        });
    }
    Ok(agents)
}
