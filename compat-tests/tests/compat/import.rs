//! `meshgate import` / `meshgate export`: clients from a Keycloak realm export, a Hydra client
//! list and an oidc-provider client array keep their ids and secrets (their old credentials get
//! tokens from meshgate), `client_secret_jwt` clients authenticate through openid-client, what
//! cannot be mapped is reported per client and field, and an export round-trips into a fresh node.

use std::path::{Path, PathBuf};

use compat_tests::{Meshgate, Registered, cli, node};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::support::{self, Jwt};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

fn import(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["import"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = cli(dir, &all);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("import printed no JSON ({e}): {out}"))
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or(&vec![])
        .iter()
        .map(|v| v.as_str().or_else(|| v["client_id"].as_str()).unwrap_or("").to_owned())
        .collect()
}

fn has_unmapped(report: &Value, client: &str, field: &str, value: &Value) -> bool {
    report["unmapped"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["client_id"] == client && u["field"] == field && (value.is_null() || &u["value"] == value))
}

fn registered(id: &str, secret: &str) -> Registered {
    Registered {
        client_id: id.into(),
        client_secret: secret.into(),
    }
}

const BILLING_SECRET: &str = "kc-billing-3f9a1c5e7b2d4f6a8c0e1b3d5f7a9c1e";
const SIGNER_SECRET: &str = "kc-hmac-9d8c7b6a5f4e3d2c1b0a99887766554433221100";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_clients_keep_ids_and_secrets_and_the_rest_is_reported() {
    let dir = support::temp_dir();
    let realm = fixture("keycloak-realm-export.json");
    let realm = realm.to_str().unwrap();

    let dry = import(dir.path(), &["keycloak", realm, "--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{dry:#}");
    let listed = cli(dir.path(), &["client", "list", "--json"]);
    assert_eq!(listed.trim(), "[]", "a dry run changed nothing");

    // Offline: no server runs, the CLI opens the store under its lock.
    let report = import(dir.path(), &["keycloak", realm]);
    let imported = ids(&report["imported"]);
    for id in ["billing-agent", "report-signer", "web-portal"] {
        assert!(imported.contains(&id.to_owned()), "{id} not imported: {report:#}");
    }
    let skipped = ids(&report["skipped"]);
    for id in ["account", "admin-cli", "legacy-saml"] {
        assert!(skipped.contains(&id.to_owned()), "{id} not skipped: {report:#}");
    }
    assert!(
        report["rotated"].as_array().unwrap().is_empty(),
        "Keycloak holds every secret: {report:#}"
    );
    for (client, field, value) in [
        ("web-portal", "grant_types", json!("password")),
        ("web-portal", "webOrigins", json!(["https://portal.corp"])),
        ("web-portal", "consentRequired", json!(true)),
        (
            "billing-agent",
            "protocolMappers[tenant]",
            json!("oidc-hardcoded-claim-mapper"),
        ),
        ("billing-agent", "attributes.access.token.lifespan", json!("600")),
    ] {
        assert!(
            has_unmapped(&report, client, field, &value),
            "{client} {field} {value} not reported: {report:#}"
        );
    }
    assert_eq!(report["users"]["parsed"], 2, "{report:#}");
    assert_eq!(report["users"]["imported"], 2, "{report:#}");
    assert_eq!(dry["users"]["imported"], 2, "{dry:#}");
    let users: Value = serde_json::from_str(&cli(dir.path(), &["user", "list", "--json"])).unwrap();
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert_eq!(names, ["alice", "bob"], "{users:#}");
    assert_eq!(users[0]["email"], "alice@corp.example");
    assert_eq!(users[0]["name"], "Alice Liddell");
    // A second import skips the users that exist.
    let again = import(dir.path(), &["keycloak", realm, "--dry-run"]);
    assert_eq!(again["users"]["imported"], 0, "{again:#}");
    assert!(
        report["methods"]["report-signer"] == json!(["client_secret_jwt"]),
        "{report:#}"
    );
    // The secrets themselves never appear in the report.
    let text = report.to_string();
    assert!(!text.contains(BILLING_SECRET) && !text.contains(SIGNER_SECRET));

    let shown: Value = serde_json::from_str(&cli(dir.path(), &["client", "show", "web-portal", "--json"])).unwrap();
    assert_eq!(shown["name"], "Web portal");

    let app = super::login::add_public_client(dir.path(), "openid profile");
    let server = Meshgate::spawn(dir.path());
    // The imported users sign in with their Keycloak passwords (PBKDF2-SHA256 and -SHA512 hashes
    // kept as they were).
    for (index, (username, password)) in [("alice", "wonderland-27500"), ("bob", "builder-210000")]
        .into_iter()
        .enumerate()
    {
        let tokens = super::login::log_in(server.issuer(), &app, username, password, "openid profile").await;
        let jwt = Jwt::parse(tokens["access_token"].as_str().unwrap());
        assert_eq!(jwt.payload["sub"], users[index]["sub"], "{username}");
    }
    // The Keycloak secret works unchanged; the audience mapper became the token's audience.
    let billing = registered("billing-agent", BILLING_SECRET);
    let token = support::access_token(&server, &billing, &[("scope", "invoices:read")]).await;
    let jwt = Jwt::parse(&token);
    assert_eq!(jwt.payload["client_id"], "billing-agent");
    assert!(
        jwt.payload["aud"].to_string().contains("https://billing.corp/api"),
        "{}",
        jwt.payload
    );
    let wrong = support::post_form(
        &server.url("/token"),
        Some(&support::basic("billing-agent", "not-the-secret")),
        support::form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    // client_secret_jwt through openid-client, keyed by the Keycloak secret.
    let result = node(
        "client-secret-jwt",
        &json!({"issuer": server.issuer(), "client_id": "report-signer", "client_secret": SIGNER_SECRET, "scope": "reports:sign"}),
    );
    assert!(result["token"]["access_token"].is_string(), "{result:#}");
    assert_eq!(result["introspected"]["active"], true, "{result:#}");
    // Its secret is not a basic/post secret.
    let basic = support::post_form(
        &server.url("/token"),
        Some(&support::basic("report-signer", SIGNER_SECRET)),
        support::form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED, "{:?}", basic.text);
    // A hand-made HS256 assertion works once; its replay and a wrong key are refused.
    let hs = |secret: &str, jti: &str| {
        node(
            "hs-assertion",
            &json!({"secret": secret, "client_id": "report-signer", "aud": server.issuer(), "jti": jti}),
        )["assertion"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let token_url = server.url("/token");
    let with_assertion = |assertion: String| {
        let url = token_url.clone();
        async move {
            support::post_form(
                &url,
                None,
                support::form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", "report-signer"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &assertion),
                ]),
            )
            .await
        }
    };
    let assertion = hs(SIGNER_SECRET, &support::unique("jti"));
    assert_eq!(with_assertion(assertion.clone()).await.status, StatusCode::OK);
    assert_eq!(
        with_assertion(assertion).await.status,
        StatusCode::UNAUTHORIZED,
        "replayed jti"
    );
    let forged = hs("some-other-secret-of-the-same-length-000000", &support::unique("jti"));
    assert_eq!(
        with_assertion(forged).await.status,
        StatusCode::UNAUTHORIZED,
        "wrong key"
    );

    // Importing again while the server runs goes through the admin socket; existing ids are
    // skipped unless --replace.
    let again = import(dir.path(), &["keycloak", realm]);
    assert!(ids(&again["imported"]).is_empty(), "{again:#}");
    assert!(again["skipped"].to_string().contains("exists"), "{again:#}");
    let replaced = import(dir.path(), &["keycloak", realm, "--replace"]);
    assert!(
        ids(&replaced["imported"]).contains(&"billing-agent".to_owned()),
        "{replaced:#}"
    );
    support::access_token(&server, &billing, &[]).await;
    let logs = server.stderr();
    for secret in [BILLING_SECRET, SIGNER_SECRET] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydra_and_oidc_provider_clients_and_an_export_round_trip() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    let hydra = fixture("hydra-clients.json");
    let secrets = fixture("hydra-secrets.json");
    let report = import(
        dir.path(),
        &["hydra", hydra.to_str().unwrap(), "--secrets", secrets.to_str().unwrap()],
    );
    assert_eq!(
        ids(&report["imported"]),
        ["inventory-sync", "shipping-bot"],
        "{report:#}"
    );
    // inventory-sync's secret came from --secrets; shipping-bot had none: rotated, shown once.
    let rotated = report["rotated"].as_array().unwrap();
    assert_eq!(rotated.len(), 1, "{report:#}");
    assert_eq!(rotated[0]["client_id"], "shipping-bot");
    let shipping_secret = rotated[0]["client_secret"].as_str().unwrap().to_owned();
    for (client, field) in [
        ("inventory-sync", "owner"),
        ("inventory-sync", "metadata"),
        ("inventory-sync", "response_types"),
        ("shipping-bot", "grant_types"),
    ] {
        assert!(
            has_unmapped(&report, client, field, &Value::Null),
            "{client} {field}: {report:#}"
        );
    }
    let inventory = registered("inventory-sync", "hydra-inventory-secret-7c5a3e1f9b8d");
    let token = support::access_token(&server, &inventory, &[("scope", "inventory.read")]).await;
    assert!(
        Jwt::parse(&token).payload["aud"]
            .to_string()
            .contains("https://inventory.corp")
    );
    let shipping = registered("shipping-bot", &shipping_secret);
    support::access_token(&server, &shipping, &[("scope", "shipping")]).await;

    let oidcp = fixture("oidc-provider-clients.json");
    let report = import(dir.path(), &["oidc-provider", oidcp.to_str().unwrap()]);
    assert!(
        ids(&report["imported"]).contains(&"docs-agent".to_owned()),
        "{report:#}"
    );
    assert!(
        has_unmapped(&report, "cli-tool", "token_endpoint_auth_method", &json!("none")),
        "{report:#}"
    );
    assert!(
        has_unmapped(&report, "cli-tool", "id_token_signed_response_alg", &json!("ES256")),
        "{report:#}"
    );
    let docs = registered("docs-agent", "oidcp-docs-secret-1b2c3d4e5f6a7b8c");
    support::access_token(&server, &docs, &[("scope", "docs:read")]).await;

    // meshgate's own format: hashes only, read back by a fresh node.
    let keycloak = fixture("keycloak-realm-export.json");
    import(dir.path(), &["keycloak", keycloak.to_str().unwrap()]);
    let out = support::temp_dir();
    let export_file = out.path().join("export.json");
    cli(dir.path(), &["export", "--output", export_file.to_str().unwrap()]);
    let text = std::fs::read_to_string(&export_file).unwrap();
    for secret in [
        "hydra-inventory-secret-7c5a3e1f9b8d",
        &shipping_secret,
        "oidcp-docs-secret-1b2c3d4e5f6a7b8c",
        BILLING_SECRET,
        SIGNER_SECRET,
    ] {
        assert!(!text.contains(secret), "a plaintext secret in the export");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&export_file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let exported: Value = serde_json::from_str(&text).unwrap();
    assert!(
        exported["omitted"].to_string().contains("report-signer"),
        "{exported:#}"
    );

    let fresh = support::temp_dir();
    let signer_secrets = out.path().join("signer.json");
    std::fs::write(&signer_secrets, json!({"report-signer": SIGNER_SECRET}).to_string()).unwrap();
    let report = import(
        fresh.path(),
        &[
            "meshgate",
            export_file.to_str().unwrap(),
            "--secrets",
            signer_secrets.to_str().unwrap(),
        ],
    );
    let mut expected = ids(&exported["clients"]);
    let mut got = ids(&report["imported"]);
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "{report:#}");
    assert!(report["rotated"].as_array().unwrap().is_empty(), "{report:#}");
    let second = Meshgate::spawn(fresh.path());
    for client in [
        &inventory,
        &shipping,
        &docs,
        &registered("billing-agent", BILLING_SECRET),
    ] {
        support::access_token(&second, client, &[]).await;
    }
    let result = node(
        "client-secret-jwt",
        &json!({"issuer": second.issuer(), "client_id": "report-signer", "client_secret": SIGNER_SECRET, "scope": "reports:sign"}),
    );
    assert!(result["token"]["access_token"].is_string(), "{result:#}");
}
