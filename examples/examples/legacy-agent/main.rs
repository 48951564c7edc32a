//! Run with: GATEWAY_TOKEN_URL=https://127.0.0.1:8700/token GATEWAY_CLIENT_ID=billing-agent GATEWAY_CLIENT_SECRET=... GATEWAY_CA_FILE=~/.local/share/meshgate/tls/ca.pem cargo run -p examples --example legacy-agent -- --once
//!
//! A "legacy" agent as fleets have them: a Rust service that fetches a client_credentials token with
//! the `oauth2` crate from the central gateway's token URL in its configuration, and calls its API
//! with it. Nothing in it knows about meshgate. Moving it to meshgate is a configuration change:
//!
//!   before:  GATEWAY_TOKEN_URL=https://auth.corp/realms/agents/protocol/openid-connect/token
//!   after:   GATEWAY_TOKEN_URL=https://127.0.0.1:8700/token   (or keep the URL and point auth.corp
//!            at the local node, see docs/migration.md)
//!
//! with the client id and secret unchanged (`meshgate import keycloak realm.json` keeps both) and,
//! for a mesh-local CA, GATEWAY_CA_FILE naming the CA `meshgate tls init` printed.
//!
//! Configuration: environment variables, or KEY=VALUE lines in the file named by AGENT_CONFIG (the
//! environment wins):
//!   GATEWAY_TOKEN_URL      token endpoint (required)
//!   GATEWAY_CLIENT_ID      client id (required)
//!   GATEWAY_CLIENT_SECRET  client secret (required)
//!   GATEWAY_SCOPE          space-separated scopes (optional)
//!   GATEWAY_CA_FILE        extra trusted root CA, PEM (optional)
//!   AGENT_API_URL          an API to GET with the token each cycle (optional)
//!   AGENT_INTERVAL_SECS    seconds between cycles (default 30); `--once` runs one cycle
//!
//! Each cycle prints one JSON line: {"token_type", "expires_in", "scope", "token_prefix", "api_status"};
//! the token itself is never printed or logged (only its first 8 characters).

use std::collections::HashMap;
use std::time::Duration;

use adapters::http::{HttpClient, HttpConfig};
use oauth2::basic::BasicClient;
use oauth2::{AuthType, ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};

fn configuration() -> Result<HashMap<String, String>, Box<dyn std::error::Error>> {
    let mut config = HashMap::new();
    if let Ok(path) = std::env::var("AGENT_CONFIG") {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("AGENT_CONFIG {path}: {e}"))?;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("{path}: not KEY=VALUE: {line}"))?;
            config.insert(key.trim().to_owned(), value.trim().to_owned());
        }
    }
    for (key, value) in std::env::vars() {
        if key.starts_with("GATEWAY_") || key.starts_with("AGENT_") {
            config.insert(key, value);
        }
    }
    Ok(config)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let once = std::env::args().any(|a| a == "--once");
    let config = configuration()?;
    let get = |key: &str| config.get(key).cloned().filter(|v| !v.is_empty());
    let required = |key: &str| get(key).ok_or_else(|| format!("{key} is not configured"));

    let token_url = required("GATEWAY_TOKEN_URL")?;
    let client = BasicClient::new(ClientId::new(required("GATEWAY_CLIENT_ID")?))
        .set_client_secret(ClientSecret::new(required("GATEWAY_CLIENT_SECRET")?))
        .set_auth_type(AuthType::BasicAuth)
        .set_token_uri(TokenUrl::new(token_url)?);
    let scopes: Vec<Scope> = get("GATEWAY_SCOPE")
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| Scope::new(s.to_owned()))
        .collect();
    let http = HttpClient::new(&HttpConfig {
        extra_root_ca_pem: get("GATEWAY_CA_FILE").map(std::fs::read).transpose()?,
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        ..HttpConfig::default()
    })?;
    let interval = get("AGENT_INTERVAL_SECS").and_then(|s| s.parse().ok()).unwrap_or(30);

    loop {
        let token = client
            .exchange_client_credentials()
            .add_scopes(scopes.clone())
            .request_async(&http)
            .await?;
        let secret = token.access_token().secret();
        let api_status = match get("AGENT_API_URL") {
            Some(url) => {
                let request = oauth2::http::Request::get(&url)
                    .header("Authorization", format!("Bearer {secret}"))
                    .body(Vec::new())?;
                Some(oauth2::AsyncHttpClient::call(&http, request).await?.status().as_u16())
            }
            None => None,
        };
        let line = serde_json::json!({
            "token_type": format!("{:?}", token.token_type()).to_lowercase(),
            "expires_in": token.expires_in().map(|d| d.as_secs()),
            "scope": token.scopes().map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
            "token_prefix": secret.chars().take(8).collect::<String>(),
            "api_status": api_status,
        });
        println!("{line}");
        if once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(interval)).await;
    }
}
