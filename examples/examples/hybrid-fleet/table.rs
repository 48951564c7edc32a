//! The live table (redrawn in place on a terminal, one line per second otherwise) and the
//! summary with its verdict.

use std::io::Write;

use crate::agents::{Agent, AgentCounts, Counts, Kind, Policy};

/// What happened when, in seconds since the agents started.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timeline {
    /// When the upstream was killed.
    pub upstream_killed: Option<u64>,
    /// When the node was killed (and which, 0-based).
    pub node_killed: Option<(usize, u64)>,
}

/// The live view: keeps the previous totals to show tokens per second.
pub struct Live {
    tty: bool,
    drawn_lines: usize,
    previous: Vec<u64>,
}

impl Live {
    /// A view for stdout; `tty` chooses in-place redrawing.
    pub fn new(nodes: usize, tty: bool) -> Self {
        Self {
            tty,
            drawn_lines: 0,
            previous: vec![0; nodes],
        }
    }

    /// Prints an event line (above the table on a terminal).
    pub fn event(&mut self, elapsed: u64, text: &str) {
        let mut out = std::io::stdout().lock();
        if self.tty && self.drawn_lines > 0 {
            let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn_lines);
            self.drawn_lines = 0;
        }
        let _ = writeln!(out, "[{elapsed:>3}s] {text}");
        let _ = out.flush();
    }

    /// Draws the table once (call about once a second).
    pub fn draw(&mut self, elapsed: u64, duration: u64, addresses: &[String], nodes: &[Counts], timeline: Timeline) {
        let rates: Vec<u64> = nodes
            .iter()
            .zip(&self.previous)
            .map(|(now, before)| now.tokens.saturating_sub(*before))
            .collect();
        self.previous = nodes.iter().map(|c| c.tokens).collect();
        let state = |i: usize| match timeline.node_killed {
            Some((killed, _)) if killed == i => "KILLED",
            _ => "up",
        };
        let upstream = match timeline.upstream_killed {
            Some(at) => format!("DOWN (killed at {at}s)"),
            None => "up".to_owned(),
        };
        let mut out = std::io::stdout().lock();
        if !self.tty {
            let mut line = format!("[{elapsed:>3}s] upstream {upstream}");
            for (i, c) in nodes.iter().enumerate() {
                line.push_str(&format!(
                    " | node{} {} {}/s tokens={} degraded={} refused={} failures={}",
                    i + 1,
                    state(i),
                    rates[i],
                    c.tokens,
                    c.degraded,
                    c.refused,
                    c.failures
                ));
            }
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            return;
        }
        let mut lines = vec![
            format!("t = {elapsed}s of {duration}s    upstream: {upstream}"),
            format!(
                "{:<6} {:<24} {:<7} {:>8} {:>8} {:>9} {:>8} {:>9}",
                "NODE", "ADDRESS", "STATE", "TOKENS/S", "TOKENS", "DEGRADED", "REFUSED", "FAILURES"
            ),
        ];
        for (i, c) in nodes.iter().enumerate() {
            lines.push(format!(
                "{:<6} {:<24} {:<7} {:>8} {:>8} {:>9} {:>8} {:>9}",
                format!("node{}", i + 1),
                addresses[i].trim_start_matches("http://"),
                state(i),
                rates[i],
                c.tokens,
                c.degraded,
                c.refused,
                c.failures
            ));
        }
        if self.drawn_lines > 0 {
            let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn_lines);
        }
        for line in &lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
        self.drawn_lines = lines.len();
    }
}

/// Prints the summary tables and the verdict; returns whether every check held.
pub fn summary(duration: u64, timeline: Timeline, agents: &[Agent], counts: &[AgentCounts], nodes: &[Counts]) -> bool {
    let upstream_at = timeline.upstream_killed.map_or("-".into(), |s| format!("{s}s"));
    let node_at = timeline
        .node_killed
        .map_or("-".into(), |(i, s)| format!("node{} at {s}s", i + 1));
    println!();
    println!("== summary: {duration}s; upstream killed (SIGKILL) at {upstream_at}; killed (SIGKILL): {node_at} ==");
    println!(
        "{:<6} {:<7} {:>8} {:>9} {:>8} {:>9}",
        "NODE", "STATE", "TOKENS", "DEGRADED", "REFUSED", "FAILURES"
    );
    for (i, c) in nodes.iter().enumerate() {
        let state = if timeline.node_killed.is_some_and(|(k, _)| k == i) {
            "KILLED"
        } else {
            "up"
        };
        println!(
            "{:<6} {:<7} {:>8} {:>9} {:>8} {:>9}",
            format!("node{}", i + 1),
            state,
            c.tokens,
            c.degraded,
            c.refused,
            c.failures
        );
    }
    println!();
    println!(
        "{:<15} {:<19} {:<12} {:>6} {:>8} {:>9} {:>8} {:>10} {:>9}",
        "AGENT", "GETS TOKENS BY", "POLICY", "NODE", "TOKENS", "DEGRADED", "REFUSED", "FAILOVERS", "FAILURES"
    );
    for (agent, c) in agents.iter().zip(counts) {
        let node = if c.current == agent.preferred {
            format!("{}", agent.preferred + 1)
        } else {
            format!("{}→{}", agent.preferred + 1, c.current + 1)
        };
        println!(
            "{:<15} {:<19} {:<12} {:>6} {:>8} {:>9} {:>8} {:>10} {:>9}",
            agent.name,
            agent.kind.label(),
            agent.policy.label(),
            node,
            c.counts.tokens,
            c.counts.degraded,
            c.counts.refused,
            c.failovers,
            c.counts.failures
        );
    }
    println!();

    let mut ok = true;
    let mut verdict = |pass: bool, text: String| {
        println!("{} {text}", if pass { "ok  " } else { "FAIL" });
        ok &= pass;
    };
    let local: Vec<(&Agent, &AgentCounts)> = agents
        .iter()
        .zip(counts)
        .filter(|(a, _)| a.kind == Kind::Local)
        .collect();
    let local_failures: u64 = local.iter().map(|(_, c)| c.counts.failures).sum();
    let local_tokens: u64 = local.iter().map(|(_, c)| c.counts.tokens).sum();
    let local_failovers: u64 = local.iter().map(|(_, c)| c.failovers).sum();
    verdict(
        local_failures == 0 && local_tokens > 0,
        format!(
            "issue-local clients (client_credentials, no upstream): {local_failures} failures, {local_tokens} tokens, {local_failovers} failovers"
        ),
    );
    for (agent, c) in agents.iter().zip(counts).filter(|(a, _)| a.kind != Kind::Local) {
        let what = format!("{} ({}, {})", agent.name, agent.kind.label(), agent.policy.label());
        match agent.policy {
            Policy::IssueLocal => verdict(
                c.counts.failures == 0 && c.counts.degraded > 0 && c.tokens_after_upstream_death > 0,
                format!(
                    "{what}: served through the upstream outage: {} tokens after it died, {} of them degraded (short-lived, `degraded: true`); {} failures{}",
                    c.tokens_after_upstream_death,
                    c.counts.degraded,
                    c.counts.failures,
                    last_failure(c)
                ),
            ),
            Policy::FailClosed => verdict(
                c.counts.failures == 0 && c.counts.refused > 0 && c.counts.tokens > 0 && c.counts.degraded == 0,
                format!(
                    "{what}: refused by policy while the upstream was unavailable ({} × 503 temporarily_unavailable, as configured), {} tokens while it was up, {} degraded; {} failures{}",
                    c.counts.refused,
                    c.counts.tokens,
                    c.counts.degraded,
                    c.counts.failures,
                    last_failure(c)
                ),
            ),
            Policy::None => {}
        }
    }
    let failovers: u64 = counts.iter().map(|c| c.failovers).sum();
    if let Some((node, _)) = timeline.node_killed {
        verdict(
            failovers > 0,
            format!(
                "agents of node{} failed over to a surviving node ({failovers} failovers)",
                node + 1
            ),
        );
    }
    println!();
    if ok {
        println!(
            "RESULT: PASS: failures: 0 for issue-local clients; upstream-dependent agents served per their degradation policy"
        );
    } else {
        println!("RESULT: FAIL: see the FAIL lines above (node logs are kept in the work directory)");
    }
    ok
}

fn last_failure(c: &AgentCounts) -> String {
    c.last_failure
        .as_ref()
        .map_or(String::new(), |f| format!(" (last: {f})"))
}
