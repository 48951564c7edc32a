//! One session pair without the world: handshake, sync, pings, timeouts, refusals.
use std::time::Duration;

use mesh::Error;
use mesh::did::DidKey;
use mesh::doc::{Doc, PeerSync};
use mesh::identity::NodeIdentity;
use mesh::session::{CloseReason, Document, Event, Output, Session, SessionConfig, supersedes};
use mesh::state::{Change, ClientRecord};
use mesh::wire::{Frame, FrameDecoder, HANDSHAKE_MAX_PAYLOAD};

const T0: Duration = Duration::from_secs(100);

struct TestDoc {
    doc: Doc,
    members: Vec<DidKey>,
}

impl Document for TestDoc {
    fn is_member(&self, did: &DidKey) -> bool {
        self.members.contains(did)
    }

    fn generate(&mut self, _peer: &DidKey, sync: &mut PeerSync) -> Option<Vec<u8>> {
        self.doc.generate_sync_message(sync)
    }

    fn receive(&mut self, _peer: &DidKey, sync: &mut PeerSync, message: &[u8]) -> Result<(), String> {
        self.doc
            .receive_sync_message(sync, message)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

fn node(seed: u8) -> NodeIdentity {
    NodeIdentity::from_seed([seed; 32])
}

fn doc(actor: u8, members: &[&NodeIdentity]) -> TestDoc {
    TestDoc {
        doc: Doc::new([actor; 16]),
        members: members.iter().map(|m| m.did()).collect(),
    }
}

fn bytes(outputs: &[Output]) -> Vec<u8> {
    let mut all = Vec::new();
    for output in outputs {
        if let Output::Transmit { bytes, .. } = output {
            all.extend_from_slice(bytes);
        }
    }
    all
}

/// Shuttles bytes between `a` and `b` (one byte at a time towards `b`) until both are quiet;
/// returns everything each side output.
fn pump(
    (a, da): (&mut Session<'_>, &mut TestDoc),
    (b, db): (&mut Session<'_>, &mut TestDoc),
    first: Vec<Output>,
    now: Duration,
) -> (Vec<Output>, Vec<Output>) {
    let (mut all_a, mut all_b) = (Vec::new(), Vec::new());
    let mut to_b = bytes(&first);
    all_a.extend(first);
    while !to_b.is_empty() {
        let mut to_a = Vec::new();
        for byte in &to_b {
            let out = b.handle(Event::Bytes(std::slice::from_ref(byte)), now, db);
            to_a.extend(bytes(&out));
            all_b.extend(out);
        }
        let out = a.handle(Event::Bytes(&to_a), now, da);
        to_b = bytes(&out);
        all_a.extend(out);
    }
    (all_a, all_b)
}

fn connect<'a>(
    (a, da): (&mut Session<'a>, &mut TestDoc),
    (b, db): (&mut Session<'a>, &mut TestDoc),
) -> (Vec<Output>, Vec<Output>) {
    let out_b = b.handle(
        Event::Connected {
            initiator: false,
            nonce: [2; 32],
        },
        T0,
        db,
    );
    assert!(out_b.is_empty(), "the responder speaks second");
    let first = a.handle(
        Event::Connected {
            initiator: true,
            nonce: [1; 32],
        },
        T0,
        da,
    );
    pump((a, da), (b, db), first, T0)
}

fn client(id: &str) -> Change {
    Change::PutClient(ClientRecord {
        client_id: id.to_owned(),
        name: id.to_owned(),
        secrets: Vec::new(),
        grant_types: vec!["client_credentials".to_owned()],
        scopes: Vec::new(),
        audiences: Vec::new(),
        token_alg: "EdDSA".to_owned(),
        jwks: None,
        created_at: 1,
        degradation: None,
        dynamic_registration: None,
        redirect_uris: vec![],
        post_logout_redirect_uris: vec![],
        token_endpoint_auth_method: None,
        id_token_signed_response_alg: None,
        federation: None,
    })
}

#[test]
fn two_sessions_authenticate_and_sync_changes_both_ways() {
    let (alice, bob) = (node(1), node(2));
    let (mut da, mut db) = (doc(1, &[&bob]), doc(2, &[&alice]));
    da.doc.apply(&[client("from-alice")], 1).unwrap();
    let mut a = Session::new(&alice, SessionConfig::default());
    let mut b = Session::new(&bob, SessionConfig::default());
    let (out_a, out_b) = connect((&mut a, &mut da), (&mut b, &mut db));
    assert!(
        matches!(out_a.iter().find(|o| matches!(o, Output::Established { .. })), Some(Output::Established { peer }) if *peer == bob.did())
    );
    assert!(
        out_b
            .iter()
            .any(|o| matches!(o, Output::Established { peer } if *peer == alice.did()))
    );
    assert!(out_b.iter().any(|o| matches!(o, Output::Applied)));
    assert_eq!(da.doc.heads(), db.doc.heads());
    assert!(db.doc.state().clients.contains_key("from-alice"));

    db.doc.apply(&[client("from-bob")], 2).unwrap();
    let first = b.handle(Event::LocalChange, T0, &mut db);
    assert!(matches!(first[..], [Output::Transmit { sync_messages: 1, .. }]));
    pump((&mut b, &mut db), (&mut a, &mut da), first, T0);
    assert_eq!(da.doc.state(), db.doc.state());
    assert_eq!((a.peer(), b.peer()), (Some(bob.did()), Some(alice.did())));
}

#[test]
fn a_node_outside_the_mesh_is_refused_with_a_bye() {
    let (alice, outsider) = (node(1), node(9));
    let (mut da, mut dout) = (doc(1, &[]), doc(9, &[&alice]));
    let mut a = Session::new(&alice, SessionConfig::default());
    let mut o = Session::new(&outsider, SessionConfig::default());
    let (out_o, out_a) = connect((&mut o, &mut dout), (&mut a, &mut da));
    assert!(
        matches!(out_a.last(), Some(Output::Closed(CloseReason::Refused(Error::NotAdmitted(did)))) if *did == outsider.did())
    );
    assert!(matches!(
        out_o.last(),
        Some(Output::Closed(CloseReason::Refused(Error::PeerClosed { .. })))
    ));
    assert!(
        !out_o
            .iter()
            .chain(&out_a)
            .any(|o| matches!(o, Output::Established { .. }))
    );
    assert!(a.is_closed() && o.is_closed());
    assert!(
        a.handle(Event::Tick, T0, &mut da).is_empty(),
        "a closed session ignores events"
    );
}

#[test]
fn an_established_session_pings_and_drops_a_silent_peer() {
    let (alice, bob) = (node(1), node(2));
    let (mut da, mut db) = (doc(1, &[&bob]), doc(2, &[&alice]));
    let config = SessionConfig::default();
    let mut a = Session::new(&alice, config.clone());
    let mut b = Session::new(&bob, config.clone());
    connect((&mut a, &mut da), (&mut b, &mut db));
    assert_eq!(a.next_timeout(), Some(T0), "the first ping is due at once");
    let mut pings = 0;
    let closed_at = loop {
        let now = a.next_timeout().unwrap();
        let out = a.handle(Event::Tick, now, &mut da);
        match out.last() {
            Some(Output::Transmit { .. }) => pings += 1,
            Some(Output::Closed(CloseReason::PeerSilent)) => break now,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(closed_at - T0, config.dead_after + config.ping_interval);
    assert_eq!(pings, 5);
    // An answering peer keeps it open: a Pong is news enough.
    let pong = Frame::Pong(1).encode();
    let mut a = Session::new(&alice, config.clone());
    let mut b = Session::new(&bob, config.clone());
    connect((&mut a, &mut da), (&mut b, &mut db));
    for second in 1..60 {
        let now = T0 + Duration::from_secs(second);
        a.handle(Event::Bytes(&pong), now, &mut da);
        let out = a.handle(Event::Tick, now, &mut da);
        assert!(!out.iter().any(|o| matches!(o, Output::Closed(_))), "{out:?}");
    }
}

#[test]
fn the_handshake_times_out_and_shutdown_says_bye() {
    let alice = node(1);
    let mut da = doc(1, &[]);
    let config = SessionConfig::default();
    let mut a = Session::new(&alice, config.clone());
    a.handle(
        Event::Connected {
            initiator: true,
            nonce: [1; 32],
        },
        T0,
        &mut da,
    );
    assert!(a.handle(Event::Tick, T0 + Duration::from_secs(1), &mut da).is_empty());
    let out = a.handle(Event::Tick, T0 + config.handshake_timeout, &mut da);
    assert!(matches!(out[..], [Output::Closed(CloseReason::HandshakeTimedOut)]));

    let mut a = Session::new(&alice, config);
    a.handle(
        Event::Connected {
            initiator: false,
            nonce: [1; 32],
        },
        T0,
        &mut da,
    );
    let out = a.handle(Event::Shutdown, T0, &mut da);
    let mut decoder = FrameDecoder::new(1024);
    decoder.push(&bytes(&out));
    assert_eq!(
        decoder.next().unwrap(),
        Some(Frame::Bye {
            reason: "shutting down".into()
        })
    );
    assert!(matches!(out.last(), Some(Output::Closed(CloseReason::Shutdown))));
}

#[test]
fn an_unauthenticated_peer_cannot_send_large_frames() {
    let alice = node(1);
    let mut da = doc(1, &[]);
    let mut a = Session::new(&alice, SessionConfig::default());
    a.handle(
        Event::Connected {
            initiator: false,
            nonce: [1; 32],
        },
        T0,
        &mut da,
    );
    let big = Frame::Sync(vec![0; HANDSHAKE_MAX_PAYLOAD + 1]).encode();
    let out = a.handle(Event::Bytes(&big[..5]), T0, &mut da);
    assert!(matches!(
        out[..],
        [Output::Closed(CloseReason::Malformed(Error::FrameTooLarge { .. }))]
    ));
}

#[test]
fn both_ends_keep_the_same_of_two_crossing_sessions() {
    let (x, y) = (node(1).did(), node(2).did());
    // On x: the session y opened is established first, then the one x opened arrives.
    let on_x = supersedes(x, y, y, x);
    // On y: the one x opened is first, then the one y opened arrives.
    let on_y = supersedes(y, x, x, y);
    let kept_on_x = if on_x { x } else { y };
    let kept_on_y = if on_y { y } else { x };
    assert_eq!(kept_on_x, kept_on_y);
    assert_eq!(kept_on_x, x.min(y));
}
