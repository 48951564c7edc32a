//! Run with: `cargo run -p examples --example client_credentials -- ISSUER CLIENT_ID CLIENT_SECRET [SCOPE...]`
//!
//! A service that gets an access token with the `oauth2` crate (client_credentials, HTTP Basic client
//! authentication) from the token endpoint it discovers in the issuer's RFC 8414 metadata, and prints
//! the token response. Nothing here is meshgate-specific: point it at any OAuth 2.1 issuer.
//!
//! Try it against a local node:
//! ```sh
//! meshgate serve &
//! meshgate client add --name demo --grant client_credentials --scope "read write" --json
//! cargo run -p examples --example client_credentials -- http://127.0.0.1:8700 ID SECRET read
//! ```

use adapters::http::{HttpClient, HttpConfig};
use oauth2::basic::BasicClient;
use oauth2::{AuthType, ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: client_credentials ISSUER CLIENT_ID CLIENT_SECRET [SCOPE...]";
    let issuer = args.next().ok_or(usage)?;
    let client_id = args.next().ok_or(usage)?;
    let client_secret = args.next().ok_or(usage)?;
    let scopes: Vec<String> = args.collect();

    let http = HttpClient::new(&HttpConfig::default())?;
    let metadata_url = format!(
        "{}/.well-known/oauth-authorization-server",
        issuer.trim_end_matches('/')
    );
    let request = oauth2::http::Request::get(&metadata_url).body(Vec::new())?;
    let response = oauth2::AsyncHttpClient::call(&http, request).await?;
    let metadata: serde_json::Value = serde_json::from_slice(response.body())?;
    if metadata["issuer"] != issuer.trim_end_matches('/') {
        return Err(format!("metadata names issuer {} instead of {issuer}", metadata["issuer"]).into());
    }
    let token_endpoint = metadata["token_endpoint"]
        .as_str()
        .ok_or("metadata has no token_endpoint")?;

    let client = BasicClient::new(ClientId::new(client_id))
        .set_client_secret(ClientSecret::new(client_secret))
        .set_auth_type(AuthType::BasicAuth)
        .set_token_uri(TokenUrl::new(token_endpoint.to_owned())?);
    let token = client
        .exchange_client_credentials()
        .add_scopes(scopes.into_iter().map(Scope::new))
        .request_async(&http)
        .await?;
    let out = serde_json::json!({
        "access_token": token.access_token().secret(),
        "expires_in": token.expires_in().map(|d| d.as_secs()),
        "scope": token.scopes().map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
    });
    println!("{out}");
    Ok(())
}
