//! Registration floods: open dynamic registration (RFC 7591, as MCP clients use it) is charged to
//! a per-source budget (`bridge.rate_limits.registrations_per_source`); once it is spent, a
//! registration is refused with 429, `Retry-After` and `temporarily_unavailable`, counted in
//! `/metrics`, and nothing is registered.

use compat_tests::Meshgate;
use reqwest::StatusCode;
use serde_json::json;

use super::support::{self, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_flood_from_one_source_is_throttled() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn_with_env(
        dir.path(),
        &[
            ("MESHGATE_BRIDGE__RATE_LIMITS__REGISTRATIONS_PER_SOURCE__BURST", "3"),
            ("MESHGATE_BRIDGE__RATE_LIMITS__REGISTRATIONS_PER_SOURCE__RATE", "0.01"),
        ],
    );
    let http = support::http();
    let body = json!({
        "client_name": "flood",
        "redirect_uris": ["http://127.0.0.1/callback"],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
    });
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..6 {
        let response = http.post(server.url("/register")).json(&body).send().await.unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS && refused.is_none() {
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            refused = Some((retry_after, response.text().await.unwrap()));
        }
    }
    assert_eq!(
        statuses,
        [
            StatusCode::CREATED,
            StatusCode::CREATED,
            StatusCode::CREATED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
        ]
    );
    let (retry_after, text) = refused.unwrap();
    assert!(
        retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)),
        "Retry-After"
    );
    assert!(text.contains("temporarily_unavailable"), "{text}");
    let list: serde_json::Value = serde_json::from_str(&server.cli(&["client", "list", "--json"])).unwrap();
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(3),
        "only the admitted registrations exist: {list}"
    );
    let metrics = get(&server.metrics_url("/metrics")).await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meshgate_rate_limited_total{limit=\"registration\"} 3")),
        "{metrics}"
    );
}
