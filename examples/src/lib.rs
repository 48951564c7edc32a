//! Runnable meshgate examples; each file under `examples/` starts with its `Run with:` line.
//!
//! # Layout
//!
//! - `examples/client_credentials.rs`: a service using the `oauth2` crate's client_credentials grant
//!   against a meshgate issuer, exactly as it would against any OAuth 2.1 server.
//! - `examples/legacy-agent/`: an agent written for a central gateway, moved to meshgate by
//!   configuration only.
//! - `examples/hybrid-fleet/`: an upstream IdP, a three-node mesh and six agents through an
//!   upstream outage and a node kill, with a live table and a summary (`fleet.rs`: the processes
//!   and the nodes' configuration; `agents.rs`: the agents; `table.rs`: the display).
//! - `openclaw-mcp/` (beside this crate, not Rust): an MCP server behind `meshgate protect`, the
//!   MCP SDK's authorization flow, OpenClaw's configuration and an `exec` secret provider.
#![forbid(unsafe_code)]
