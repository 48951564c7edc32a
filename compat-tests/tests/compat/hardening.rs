//! Hostile clients against a real `meshgate serve`: credential guessing is throttled (429 with
//! `Retry-After`, counted in `/metrics`) per source address and per client id, while a well-behaved
//! client from another budget is still served; slow clients (slowloris headers, dribbled bodies)
//! are cut off by the read timeouts and the connection cap does not starve legitimate clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use compat_tests::Meshgate;
use reqwest::StatusCode;

use super::support::{self, basic, form, post_form};

async fn guess(server: &Meshgate, client_id: &str) -> support::Answer {
    post_form(
        &server.url("/token"),
        Some(&basic(client_id, &support::unique("wrong"))),
        form(&[("grant_type", "client_credentials")]),
    )
    .await
}

fn assert_throttled(answer: &support::Answer, what: &str) {
    if let Some(problem) = answer.oauth_error_mismatch(429, "temporarily_unavailable") {
        panic!("{what}: {problem}");
    }
    let retry: u64 = answer
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no numeric Retry-After in {:?}", answer.headers));
    assert!(retry >= 1, "{what}: Retry-After {retry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_guessing_is_throttled_per_client_and_per_source() {
    let dir = support::temp_dir();
    // Defaults: 10 failures per client id, 20 per source, refilling one every 2 s.
    let server = Meshgate::spawn(dir.path());
    let victim = server.client_add("victim", "read");
    let bystander = server.client_add("bystander", "read");

    for attempt in 1..=10 {
        let answer = guess(&server, &victim.client_id).await;
        assert!(
            answer.oauth_error_mismatch(401, "invalid_client").is_none(),
            "guess {attempt} before the client's budget is spent: {} {:?}",
            answer.status,
            answer.text
        );
    }
    // The client's failure budget is spent: even the right secret waits (nothing more is checked).
    assert_throttled(&guess(&server, &victim.client_id).await, "11th guess at one client");
    let right = post_form(
        &server.url("/token"),
        Some(&basic(&victim.client_id, &victim.client_secret)),
        form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_throttled(&right, "the throttled client's own secret");
    // Another client from the same source still has its budget, as does the source.
    support::token(&server, &bystander, &[]).await;

    // Guessing across many client ids spends the source's budget (20, 10 already used).
    let mut throttled = None;
    for attempt in 0..20 {
        let answer = guess(&server, &support::unique("guessed-id")).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some((attempt, answer));
            break;
        }
        assert!(
            answer.oauth_error_mismatch(401, "invalid_client").is_none(),
            "guess {attempt}: {} {:?}",
            answer.status,
            answer.text
        );
    }
    let (attempt, answer) = throttled.expect("20 more failures from one source were never throttled");
    assert!(
        attempt >= 9,
        "the source was throttled after only {attempt} more failures"
    );
    assert_throttled(&answer, "guessing from one source");
    let right = post_form(
        &server.url("/token"),
        Some(&basic(&bystander.client_id, &bystander.client_secret)),
        form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_throttled(&right, "a good client behind a guessing source");

    let metrics = support::get(&server.metrics_url("/metrics")).await.text;
    for needle in [
        "meshgate_rate_limited_total{limit=\"auth_failures_client\"}",
        "meshgate_rate_limited_total{limit=\"auth_failures_source\"}",
        "meshgate_http_requests_total{endpoint=\"token\",status=\"429\"}",
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle} missing from /metrics:\n{metrics}"));
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(value >= 1.0, "{line}");
    }
}

/// Reads until the server closes the connection (or `limit` passes); returns what it sent.
fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let start = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while start.elapsed() < limit {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(String::from_utf8_lossy(&received).into_owned()),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(String::from_utf8_lossy(&received).into_owned()),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_do_not_starve_legitimate_ones() {
    const SLOW: usize = 96;
    let dir = support::temp_dir();
    let server = Meshgate::spawn_with_env(
        dir.path(),
        &[
            ("MESHGATE_BRIDGE__CONNECTIONS__MAX", "32"),
            ("MESHGATE_BRIDGE__CONNECTIONS__HEADER_READ_TIMEOUT", "2s"),
            ("MESHGATE_BRIDGE__CONNECTIONS__BODY_READ_TIMEOUT", "2s"),
        ],
    );
    let client = server.client_add("patient", "read");
    let addr = server.info().listen.clone();

    // Slowloris: many connections sending a header byte now and then, never finishing.
    let slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| {
            let mut stream = TcpStream::connect(&addr).expect("connect");
            stream
                .write_all(b"POST /token HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            stream
        })
        .collect();
    let dribbler = {
        let mut slow: Vec<TcpStream> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(8) {
                for stream in &mut slow {
                    let _ = stream.write_all(b"a");
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    // A slow body: headers complete, the body never does.
    let mut slow_body = TcpStream::connect(&addr).expect("connect");
    slow_body
        .write_all(
            format!(
                "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Authorization: {}\r\nContent-Length: 100\r\n\r\ngrant_type=",
                basic(&client.client_id, &client.client_secret)
            )
            .as_bytes(),
        )
        .unwrap();

    // A legitimate client is served while the slow ones are still dribbling.
    let start = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(60), support::token(&server, &client, &[]))
        .await
        .expect("a legitimate client was not served within 60 s behind slow clients");
    assert!(answer["access_token"].is_string());
    eprintln!(
        "legitimate request served after {:?} behind {SLOW} slowloris connections (cap 32)",
        start.elapsed()
    );

    // Every slow connection is closed by the server, the slow body with a 408.
    let body_answer = read_to_close(&mut slow_body, Duration::from_secs(30)).expect("the slow body was never cut off");
    assert!(body_answer.starts_with("HTTP/1.1 408"), "{body_answer:?}");
    dribbler.join().unwrap();
    for (i, mut stream) in slow.into_iter().enumerate() {
        let answer = read_to_close(&mut stream, Duration::from_secs(30));
        assert!(answer.is_some(), "slowloris connection {i} was never closed");
    }
    // And the server still answers.
    support::token(&server, &client, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn_with_env(
        dir.path(),
        &[("MESHGATE_BRIDGE__CONNECTIONS__HEADER_READ_TIMEOUT", "1s")],
    );
    let mut stream = TcpStream::connect(&server.info().listen).expect("connect");
    stream.write_all(b"GET /jwks.json HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = read_to_close(&mut stream, Duration::from_secs(30)).expect("the idle connection stayed open");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}
