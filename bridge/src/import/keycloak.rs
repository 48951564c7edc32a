//! Keycloak realm exports (`kc.sh export --realm R`, or the admin console's partial export):
//! `clients[]` and `users[]` with their password credentials.
//!
//! Mapping of a client: `clientId` → id, `name` → name, `secret` → secret (argon2-hashed, or the
//! HMAC key for `client-secret-jwt`), `clientAuthenticatorType` (`client-secret`,
//! `client-secret-jwt`, `client-jwt` with `use.jwks.string`/`jwks.string`) → authentication,
//! `redirectUris` → redirect URIs, the flow switches (`serviceAccountsEnabled`,
//! `standardFlowEnabled`, `directAccessGrantsEnabled`, `implicitFlowEnabled`, the device and
//! token-exchange attributes) → grant types, `defaultClientScopes` + `optionalClientScopes` →
//! scopes, audience mappers (`oidc-audience-mapper`) → audiences,
//! `access.token.signed.response.alg` → token algorithm. Everything else that carries information
//! is reported field by field.

use serde_json::{Value, json};

use super::field::{is_set, string, strings};
use super::{AuthMethod, ImportedClient, ImportedUser, Parsed, Unmapped};
use crate::error::Error;
use crate::password::PasswordHash;

/// Clients every Keycloak realm has; they belong to Keycloak itself.
const BUILT_IN: &[&str] = &[
    "account",
    "account-console",
    "admin-cli",
    "broker",
    "realm-management",
    "security-admin-console",
];

/// Client fields this mapping reads, or that carry no meaning outside Keycloak.
const HANDLED: &[&str] = &[
    "id",
    "clientId",
    "name",
    "description",
    "secret",
    "clientAuthenticatorType",
    "redirectUris",
    "serviceAccountsEnabled",
    "standardFlowEnabled",
    "directAccessGrantsEnabled",
    "implicitFlowEnabled",
    "publicClient",
    "defaultClientScopes",
    "optionalClientScopes",
    "protocolMappers",
    "attributes",
    "enabled",
    "protocol",
    "surrogateAuthRequired",
    "alwaysDisplayInConsole",
    "notBefore",
    "nodeReRegistrationTimeout",
    "fullScopeAllowed",
    "frontchannelLogout",
    "authenticationFlowBindingOverrides",
    "access",
    "registeredNodes",
];

/// Attributes this mapping reads, or that are Keycloak bookkeeping.
const HANDLED_ATTRIBUTES: &[&str] = &[
    "oauth2.device.authorization.grant.enabled",
    "standard.token.exchange.enabled",
    "use.refresh.tokens",
    "access.token.signed.response.alg",
    "use.jwks.string",
    "jwks.string",
    "use.jwks.url",
    "client.secret.creation.time",
    "display.on.consent.screen",
    "backchannel.logout.session.required",
    "backchannel.logout.revoke.offline.tokens",
    "post.logout.redirect.uris",
    "realm_client",
    "oidc.ciba.grant.enabled",
    "frontchannel.logout.session.required",
    "require.pushed.authorization.requests",
    "pkce.code.challenge.method",
    "token.endpoint.auth.signing.alg",
];

/// Parses a realm export.
pub fn parse(realm: &Value) -> Result<Parsed, Error> {
    let name = realm
        .get("realm")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Admin("not a Keycloak realm export: no `realm` name".into()))?;
    let mut parsed = Parsed {
        source: format!("Keycloak realm `{name}` (its issuer was …/realms/{name})"),
        ..Default::default()
    };
    for client in realm.get("clients").and_then(Value::as_array).into_iter().flatten() {
        let Some(id) = string(client, "clientId") else {
            parsed.unmapped.push(Unmapped {
                client_id: None,
                field: "clients[].clientId".into(),
                value: client.get("id").cloned().unwrap_or(Value::Null),
                reason: "a client without clientId".into(),
            });
            continue;
        };
        if BUILT_IN.contains(&id.as_str()) {
            parsed.skipped.push((id, "Keycloak built-in client".into()));
            continue;
        }
        if client
            .get("protocol")
            .and_then(Value::as_str)
            .is_some_and(|p| p != "openid-connect")
        {
            parsed.skipped.push((id, "not an OpenID Connect client".into()));
            continue;
        }
        if client.get("enabled") == Some(&Value::Bool(false)) {
            parsed.skipped.push((id, "disabled in Keycloak".into()));
            continue;
        }
        if client.get("bearerOnly") == Some(&Value::Bool(true)) {
            parsed
                .skipped
                .push((id, "bearer-only (a resource server, not a client)".into()));
            continue;
        }
        parsed.clients.push(client_of(client, &id, &mut parsed.unmapped));
    }
    for user in realm.get("users").and_then(Value::as_array).into_iter().flatten() {
        if user.get("serviceAccountClientId").is_some() {
            continue; // a client's service account, not a person
        }
        if let Some(user) = user_of(user, &mut parsed.unmapped) {
            parsed.users.push(user);
        }
    }
    Ok(parsed)
}

fn client_of(client: &Value, id: &str, unmapped: &mut Vec<Unmapped>) -> ImportedClient {
    let attributes = client.get("attributes").cloned().unwrap_or(json!({}));
    let attribute = |key: &str| attributes.get(key).and_then(Value::as_str).map(str::to_owned);
    let flag = |key: &str| client.get(key) == Some(&Value::Bool(true));
    let mut note = |field: &str, value: Value, reason: &str| unmapped.push(Unmapped::field(id, field, value, reason));

    let public = flag("publicClient");
    let authenticator = client
        .get("clientAuthenticatorType")
        .and_then(Value::as_str)
        .unwrap_or("client-secret");
    let mut jwks = None;
    let auth_method = if public {
        AuthMethod::None
    } else {
        match authenticator {
            "client-secret" => AuthMethod::ClientSecretBasic,
            "client-secret-jwt" => AuthMethod::ClientSecretJwt,
            "client-jwt" => {
                if attribute("use.jwks.string").as_deref() == Some("true") {
                    match attribute("jwks.string").map(|s| serde_json::from_str::<Value>(&s)) {
                        Some(Ok(set)) => jwks = Some(set),
                        _ => note(
                            "attributes.jwks.string",
                            json!(attribute("jwks.string")),
                            "not a JSON JWK Set",
                        ),
                    }
                } else if attribute("use.jwks.url").as_deref() == Some("true") {
                    note(
                        "attributes.jwks.url",
                        json!(attribute("jwks.url")),
                        "meshgate keeps client keys inline: fetch the JWKS and register it with `client add --jwks-file`",
                    );
                } else if let Some(cert) = attribute("jwt.credential.certificate") {
                    note(
                        "attributes.jwt.credential.certificate",
                        json!(format!("{}…", cert.chars().take(16).collect::<String>())),
                        "a certificate, not a JWK Set: register the public key as a JWKS with `client add --jwks-file`",
                    );
                }
                AuthMethod::PrivateKeyJwt
            }
            other => {
                note(
                    "clientAuthenticatorType",
                    json!(other),
                    "no equivalent client authentication in meshgate",
                );
                AuthMethod::ClientSecretBasic
            }
        }
    };

    let mut grants = Vec::new();
    if flag("serviceAccountsEnabled") {
        grants.push("client_credentials".to_owned());
    }
    if flag("standardFlowEnabled") {
        grants.push("authorization_code".to_owned());
        if attribute("use.refresh.tokens").as_deref() != Some("false") {
            grants.push("refresh_token".to_owned());
        }
    }
    if flag("directAccessGrantsEnabled") {
        grants.push("password".to_owned());
    }
    if flag("implicitFlowEnabled") {
        grants.push("implicit".to_owned());
    }
    if attribute("oauth2.device.authorization.grant.enabled").as_deref() == Some("true") {
        grants.push("urn:ietf:params:oauth:grant-type:device_code".to_owned());
    }
    if attribute("standard.token.exchange.enabled").as_deref() == Some("true") {
        grants.push(crate::node::TOKEN_EXCHANGE.to_owned());
    }

    let mut scopes = strings(client, "defaultClientScopes");
    for scope in strings(client, "optionalClientScopes") {
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }

    let mut audiences = Vec::new();
    for mapper in client
        .get("protocolMappers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = mapper.get("protocolMapper").and_then(Value::as_str).unwrap_or("");
        let mapper_name = mapper.get("name").and_then(Value::as_str).unwrap_or("?");
        let config = mapper.get("config").cloned().unwrap_or(json!({}));
        let in_access_token = config.get("access.token.claim").and_then(Value::as_str) != Some("false");
        match kind {
            "oidc-audience-mapper" if in_access_token => {
                for key in ["included.custom.audience", "included.client.audience"] {
                    if let Some(aud) = config.get(key).and_then(Value::as_str).filter(|a| !a.is_empty())
                        && !audiences.iter().any(|a| a == aud)
                    {
                        audiences.push(aud.to_owned());
                    }
                }
            }
            _ => note(
                &format!("protocolMappers[{mapper_name}]"),
                json!(kind),
                "claim mappers are not carried over (meshgate's tokens carry the RFC 9068 claims)",
            ),
        }
    }

    let token_alg = attribute("access.token.signed.response.alg").filter(|a| !a.is_empty());
    let redirect_uris = strings(client, "redirectUris");
    for uri in &redirect_uris {
        if uri.contains('*') {
            note(
                "redirectUris",
                json!(uri),
                "wildcard redirect URIs are compared literally by meshgate (exact match)",
            );
        }
    }
    if let Some(uris) = attribute("post.logout.redirect.uris").filter(|u| !u.is_empty()) {
        note("attributes.post.logout.redirect.uris", json!(uris), "not carried over");
    }
    if let Some(method) = attribute("pkce.code.challenge.method").filter(|m| !m.is_empty() && m != "S256") {
        note(
            "attributes.pkce.code.challenge.method",
            json!(method),
            "meshgate always requires PKCE S256",
        );
    }
    if let Some(Value::Object(map)) = client.as_object().map(|o| Value::Object(o.clone())) {
        for (key, value) in &map {
            let ignored_default = matches!(key.as_str(), "bearerOnly" | "consentRequired")
                || (key == "webOrigins" && value.as_array().is_some_and(|a| a.iter().all(|o| o == "+")));
            if HANDLED.contains(&key.as_str()) || ignored_default && !is_set(value) {
                continue;
            }
            if is_set(value) {
                note(key, value.clone(), "no equivalent in meshgate");
            }
        }
    }
    if let Value::Object(map) = &attributes {
        for (key, value) in map {
            if HANDLED_ATTRIBUTES.contains(&key.as_str()) || key.starts_with("jwt.credential") || key == "jwks.url" {
                continue;
            }
            if is_set(value) && value != "false" {
                note(&format!("attributes.{key}"), value.clone(), "no equivalent in meshgate");
            }
        }
    }

    ImportedClient {
        client_id: id.to_owned(),
        name: string(client, "name")
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| id.to_owned()),
        auth_method: Some(auth_method),
        secret: string(client, "secret").filter(|s| !s.is_empty() && !s.starts_with("**")),
        redirect_uris,
        grant_types: grants,
        scopes,
        audiences,
        jwks,
        token_alg,
        ..Default::default()
    }
}

fn user_of(user: &Value, unmapped: &mut Vec<Unmapped>) -> Option<ImportedUser> {
    let username = string(user, "username")?;
    let who = format!("user:{username}");
    let mut password = None;
    for credential in user.get("credentials").and_then(Value::as_array).into_iter().flatten() {
        let kind = credential.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "password" {
            unmapped.push(Unmapped::field(
                &who,
                "credentials[].type",
                json!(kind),
                "only password credentials are imported",
            ));
            continue;
        }
        let secret = string(credential, "secretData").unwrap_or_default();
        let data = string(credential, "credentialData").unwrap_or_default();
        match PasswordHash::from_keycloak(&secret, &data) {
            Ok(hash) => password = Some(hash),
            Err(e) => unmapped.push(Unmapped::field(&who, "credentials[password]", json!("(not shown)"), e)),
        }
    }
    for key in ["requiredActions", "federationLink", "totp"] {
        if let Some(value) = user.get(key).filter(|v| is_set(v)) {
            unmapped.push(Unmapped::field(&who, key, value.clone(), "not carried over"));
        }
    }
    Some(ImportedUser {
        username,
        email: string(user, "email"),
        email_verified: user.get("emailVerified") == Some(&Value::Bool(true)),
        given_name: string(user, "firstName"),
        family_name: string(user, "lastName"),
        enabled: user.get("enabled") != Some(&Value::Bool(false)),
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../compat-tests/fixtures/keycloak-realm-export.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn users_keep_their_keycloak_password_hashes() {
        let parsed = parse(&fixture()).unwrap();
        let names: Vec<&str> = parsed.users.iter().map(|u| u.username.as_str()).collect();
        assert_eq!(names, ["alice", "bob"], "service accounts are not people");
        let alice = &parsed.users[0];
        assert_eq!(alice.email.as_deref(), Some("alice@corp.example"));
        let hash = alice.password.as_ref().unwrap();
        assert!(matches!(hash, PasswordHash::Pbkdf2 { iterations: 27_500, .. }));
        assert!(hash.verify("wonderland-27500"));
        assert!(!hash.verify("wonderland"));
        let bob = parsed.users[1].password.as_ref().unwrap();
        assert!(bob.verify("builder-210000"));
    }

    #[test]
    fn client_fields_map_or_are_reported() {
        let parsed = parse(&fixture()).unwrap();
        let billing = parsed.clients.iter().find(|c| c.client_id == "billing-agent").unwrap();
        assert_eq!(billing.grant_types, ["client_credentials"]);
        assert_eq!(billing.audiences, ["https://billing.corp/api"]);
        assert!(billing.scopes.contains(&"invoices:write".to_owned()));
        let signer = parsed.clients.iter().find(|c| c.client_id == "report-signer").unwrap();
        assert_eq!(signer.auth_method, Some(AuthMethod::ClientSecretJwt));
        let portal = parsed.clients.iter().find(|c| c.client_id == "web-portal").unwrap();
        assert_eq!(
            portal.redirect_uris,
            ["https://portal.corp/callback", "http://127.0.0.1/callback"]
        );
        assert!(
            parsed
                .unmapped
                .iter()
                .any(|u| u.client_id.as_deref() == Some("web-portal") && u.field == "webOrigins")
        );
        assert!(parse(&serde_json::json!({"clients": []})).is_err(), "no realm name");
    }
}
