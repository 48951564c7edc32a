//! Two properties of user grants: a code replay racing its first redemption revokes the tokens it
//! minted, and removing a user revokes their refresh-token families.

use axum::http::{StatusCode, header};
use bridge::node::AdminRequest;
use bridge::users::UserRequest;
use sha2::Digest;

use super::device::*;
use super::harness::*;

#[tokio::test]
async fn removing_a_user_revokes_their_refresh_tokens() {
    let s = setup();
    let started = approved(&s).await;
    let tokens = poll(&s.h, &s.client_id, started["device_code"].as_str().unwrap()).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.json);
    let refresh_token = tokens.json["refresh_token"].as_str().unwrap();
    let rotated = refresh(&s.h, &s.client_id, refresh_token).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.json);
    let access = rotated.json["access_token"].as_str().unwrap();
    let (id, secret) = s.h.client("read", &[], None);
    assert_eq!(s.h.introspect(&id, &secret, access).await["active"], true);
    let pending = authorize_device(&s, "read").await;
    let mut browser = Browser::default();
    let page = browser.sign_in(&s.h, "/device").await;

    s.h.admin(AdminRequest::User(UserRequest::Remove {
        username: "alice".into(),
    }))
    .unwrap();
    assert_eq!(s.h.introspect(&id, &secret, access).await["active"], false);
    // Their browser session no longer approves anything: the page asks to sign in.
    let again = browser.enter(&s.h, &page, pending["user_code"].as_str().unwrap()).await;
    assert!(again.text.contains("id=\"username\""), "{}", again.text);
    // A new user of the same name does not inherit the old grants.
    add_user(&s.h, "alice", "other");
    let answer = refresh(&s.h, &s.client_id, rotated.json["refresh_token"].as_str().unwrap()).await;
    assert_eq!(answer.error(), "invalid_grant", "{}", answer.json);
}

#[tokio::test(flavor = "current_thread")]
async fn a_code_replay_racing_its_redemption_revokes_the_tokens() {
    let h = Harness::new();
    add_user(&h, "alice", "wonderland");
    let (client_id, _) = device_client(&h, true, &["http://127.0.0.1/callback"]);
    let verifier = "dBjftJeZ4CK-P-0hXpq9k1M6RAxzW1T2XzY3kLmNoPq";
    let challenge = b64(&sha2::Sha256::digest(verifier.as_bytes()));
    let query = form(&[
        ("response_type", "code"),
        ("client_id", &client_id),
        ("redirect_uri", "http://127.0.0.1/callback"),
        ("scope", "openid read"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]);
    let mut browser = Browser::default();
    let login = browser.get(&h, &format!("/authorize?{query}")).await;
    let consent = browser
        .post(
            &h,
            "/login",
            &[
                ("csrf_token", &field(&login.text, "csrf_token")),
                ("request", &field(&login.text, "request")),
                ("username", "alice"),
                ("password", "wonderland"),
            ],
        )
        .await;
    let back = browser
        .post(
            &h,
            "/consent",
            &[
                ("csrf_token", &field(&consent.text, "csrf_token")),
                ("request", &field(&consent.text, "request")),
                ("decision", "allow"),
            ],
        )
        .await;
    let location = url::Url::parse(back.headers[header::LOCATION].to_str().unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let body = form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", "http://127.0.0.1/callback"),
        ("client_id", &client_id),
        ("code_verifier", verifier),
    ]);

    // Hold the node lock, so both redemptions pass the code check and wait to write.
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let (held, is_held) = std::sync::mpsc::channel::<()>();
    let state = h.state.clone();
    let blocker = std::thread::spawn(move || {
        state
            .with_node(|_| {
                held.send(()).unwrap();
                wait.recv().unwrap();
                Ok(((), vec![]))
            })
            .unwrap();
    });
    is_held.recv().unwrap();
    let h = std::sync::Arc::new(h);
    let first = tokio::spawn({
        let (h, body) = (h.clone(), body.clone());
        async move { h.post_form("/token", None, &body).await }
    });
    let second = tokio::spawn({
        let (h, body) = (h.clone(), body.clone());
        async move { h.post_form("/token", None, &body).await }
    });
    // On this single-threaded runtime, yielding runs both requests up to the locked node.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(!first.is_finished() && !second.is_finished(), "both wait for the node");
    release.send(()).unwrap();
    blocker.join().unwrap();
    let answers = [first.await.unwrap(), second.await.unwrap()];
    let issued: Vec<&Answer> = answers.iter().filter(|a| a.status == StatusCode::OK).collect();
    assert_eq!(issued.len(), 1, "one redemption wins");
    assert!(answers.iter().any(|a| a.error() == "invalid_grant"));
    let tokens = &issued[0].json;
    let (id, secret) = h.client("read", &[], None);
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        h.introspect(&id, &secret, access).await["active"],
        false,
        "the racing replay revoked it"
    );
    let refreshed = refresh(&h, &client_id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refreshed.error(), "invalid_grant", "{}", refreshed.json);
}
