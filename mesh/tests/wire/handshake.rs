//! The handshake between two identities, and every refusal.

use super::*;

type Outcome = Result<(DidKey, u16), Error>;

/// One end of an in-memory stream: its handshake, its decoder and how it ended.
struct End<'a> {
    handshake: Handshake<'a>,
    decoder: FrameDecoder,
    outcome: Option<Outcome>,
    admit: &'a dyn Peers,
}

impl<'a> End<'a> {
    fn new((handshake, _): (Handshake<'a>, Vec<Frame>), admit: &'a dyn Peers) -> Self {
        Self {
            handshake,
            decoder: FrameDecoder::new(HANDSHAKE_MAX_PAYLOAD),
            outcome: None,
            admit,
        }
    }

    /// Reads `inbox`, writes what the handshake answers to `outbox`; on a refusal sends `Bye` with
    /// the error, as the driver does.
    fn receive(&mut self, inbox: &mut Vec<u8>, outbox: &mut Vec<u8>) {
        self.decoder.push(&std::mem::take(inbox));
        while self.outcome.is_none() {
            let Some(frame) = self.decoder.next().unwrap() else {
                return;
            };
            match self.handshake.handle(frame, self.admit) {
                Ok(Step::Send(frames)) => outbox.extend(encode_all(&frames)),
                Ok(Step::Done { peer, peer_minor, send }) => {
                    outbox.extend(encode_all(&send));
                    self.outcome = Some(Ok((peer, peer_minor)));
                }
                Ok(other) => panic!("unknown step {other:?}"),
                Err(error) => {
                    outbox.extend(
                        Frame::Bye {
                            reason: error.to_string(),
                        }
                        .encode(),
                    );
                    self.outcome = Some(Err(error));
                }
            }
        }
    }
}

/// Runs a handshake between two ends over in-memory byte pipes; returns (initiator, responder).
fn connect(
    initiator: (Handshake<'_>, Vec<Frame>),
    responder: (Handshake<'_>, Vec<Frame>),
    admit_initiator: &dyn Peers,
    admit_responder: &dyn Peers,
) -> (Option<Outcome>, Option<Outcome>) {
    let mut to_responder = encode_all(&initiator.1);
    let mut to_initiator = encode_all(&responder.1);
    let mut i = End::new(initiator, admit_initiator);
    let mut r = End::new(responder, admit_responder);
    for _ in 0..4 {
        r.receive(&mut to_responder, &mut to_initiator);
        i.receive(&mut to_initiator, &mut to_responder);
    }
    (i.outcome, r.outcome)
}

#[test]
fn two_nodes_authenticate_each_other() {
    let (alice, bob) = (alice(), bob());
    let (initiator, hello) = Handshake::initiator(&alice, [10; 32]);
    let (responder, nothing) = Handshake::responder(&bob, [11; 32]);
    assert_eq!(initiator.role(), Role::Initiator);
    assert!(
        matches!(&hello[..], [Frame::Hello { major: MAJOR, minor: MINOR, did, nonce: [10, ..], rotation: None }] if *did == alice.did())
    );
    assert!(nothing.is_empty(), "the responder speaks second");
    let only = |did: DidKey| move |d: &DidKey| *d == did;
    let (i, r) = connect(
        (initiator, hello),
        (responder, nothing),
        &only(bob.did()),
        &only(alice.did()),
    );
    assert_eq!(i.unwrap().unwrap(), (bob.did(), MINOR));
    assert_eq!(r.unwrap().unwrap(), (alice.did(), MINOR));
}

#[test]
fn the_flights_are_hello_then_hello_and_auth_then_auth() {
    let (alice, bob) = (alice(), bob());
    let (mut initiator, hello) = Handshake::initiator(&alice, [10; 32]);
    let (mut responder, _) = Handshake::responder(&bob, [11; 32]);
    let Ok(Step::Send(reply)) = responder.handle(hello[0].clone(), &admit_all) else {
        panic!()
    };
    assert!(matches!(&reply[..], [Frame::Hello { .. }, Frame::Auth { .. }]));
    assert_eq!(
        initiator.handle(reply[0].clone(), &admit_all).unwrap(),
        Step::Send(Vec::new())
    );
    let Ok(Step::Done { peer, send, .. }) = initiator.handle(reply[1].clone(), &admit_all) else {
        panic!()
    };
    assert_eq!(peer, bob.did());
    assert!(matches!(&send[..], [Frame::Auth { .. }]));
    let Ok(Step::Done { peer, send, .. }) = responder.handle(send[0].clone(), &admit_all) else {
        panic!()
    };
    assert_eq!(peer, alice.did());
    assert!(send.is_empty());
    // Nothing more is accepted once finished.
    assert!(matches!(
        responder.handle(Frame::Ping(1), &admit_all),
        Err(Error::UnexpectedFrame { .. })
    ));
}

#[test]
fn a_node_that_is_not_admitted_is_refused() {
    let (alice, bob) = (alice(), bob());
    let nobody = |_: &DidKey| false;
    // The responder refuses the initiator before it signs anything.
    let (i, r) = connect(
        Handshake::initiator(&alice, [1; 32]),
        Handshake::responder(&bob, [2; 32]),
        &admit_all,
        &nobody,
    );
    assert!(matches!(r, Some(Err(Error::NotAdmitted(did))) if did == alice.did()));
    let Some(Err(Error::PeerClosed { reason })) = i else {
        panic!("{i:?}")
    };
    assert!(reason.contains("not admitted"), "{reason}");
    // The initiator refuses the responder and never sends its Auth.
    let (i, r) = connect(
        Handshake::initiator(&alice, [1; 32]),
        Handshake::responder(&bob, [2; 32]),
        &nobody,
        &admit_all,
    );
    assert!(matches!(i, Some(Err(Error::NotAdmitted(did))) if did == bob.did()));
    assert!(matches!(r, Some(Err(Error::PeerClosed { .. }))), "{r:?}");
}

#[test]
fn another_major_version_is_refused_naming_both_versions() {
    let (alice, bob) = (alice(), bob());
    let hello = Frame::Hello {
        major: MAJOR + 1,
        minor: 3,
        did: alice.did(),
        nonce: [1; 32],
        rotation: None,
    };
    let (mut responder, _) = Handshake::responder(&bob, [2; 32]);
    let error = responder.handle(hello.clone(), &admit_all).unwrap_err();
    assert!(
        matches!(
            error,
            Error::IncompatibleVersion {
                peer_major: 2,
                peer_minor: 3,
                ..
            }
        ),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("2.3") && message.contains(&format!("{MAJOR}.{MINOR}")),
        "{message}"
    );
    let (mut initiator, _) = Handshake::initiator(&bob, [2; 32]);
    let old = Frame::Hello {
        major: 0,
        minor: 9,
        did: alice.did(),
        nonce: [1; 32],
        rotation: None,
    };
    assert!(matches!(
        initiator.handle(old, &admit_all),
        Err(Error::IncompatibleVersion { peer_major: 0, .. })
    ));
}

#[test]
fn other_minors_of_the_same_major_interoperate() {
    let (alice, bob) = (alice(), bob());
    // A newer node (minor + 1) and this build, in both roles.
    let newer = |role, nonce| Handshake::with_minor(role, &alice, nonce, MINOR + 1);
    let (i, r) = connect(
        newer(Role::Initiator, [1; 32]),
        Handshake::responder(&bob, [2; 32]),
        &admit_all,
        &admit_all,
    );
    assert_eq!(i.unwrap().unwrap(), (bob.did(), MINOR));
    assert_eq!(r.unwrap().unwrap(), (alice.did(), MINOR + 1));
    let (i, r) = connect(
        Handshake::initiator(&bob, [3; 32]),
        newer(Role::Responder, [4; 32]),
        &admit_all,
        &admit_all,
    );
    assert_eq!(i.unwrap().unwrap(), (alice.did(), MINOR + 1));
    assert_eq!(r.unwrap().unwrap(), (bob.did(), MINOR));
    // A newer build (this major, minor 5) still accepts a node of the previous minors.
    let current = Handshake::with_minor(Role::Responder, &bob, [6; 32], 5);
    let previous = Handshake::with_minor(Role::Initiator, &alice, [5; 32], 4);
    let (i, r) = connect(previous, current, &admit_all, &admit_all);
    assert_eq!(i.unwrap().unwrap(), (bob.did(), 5));
    assert_eq!(r.unwrap().unwrap(), (alice.did(), 4));
}

#[test]
fn a_tampered_signature_is_refused() {
    let (alice, bob) = (alice(), bob());
    // Tampered responder Auth, seen by the initiator.
    let (mut initiator, hello) = Handshake::initiator(&alice, [1; 32]);
    let (mut responder, _) = Handshake::responder(&bob, [2; 32]);
    let Ok(Step::Send(reply)) = responder.handle(hello[0].clone(), &admit_all) else {
        panic!()
    };
    initiator.handle(reply[0].clone(), &admit_all).unwrap();
    let Frame::Auth { mut signature } = reply[1].clone() else {
        panic!()
    };
    signature[10] ^= 1;
    let error = initiator.handle(Frame::Auth { signature }, &admit_all).unwrap_err();
    assert!(
        matches!(&error, Error::BadSignature { what } if what.contains(&bob.did().to_string())),
        "{error}"
    );
    // A failed handshake accepts nothing more, not even the genuine Auth.
    assert!(matches!(
        initiator.handle(reply[1].clone(), &admit_all),
        Err(Error::UnexpectedFrame { .. })
    ));
    // A tampered Hello (the nonce changed in flight) breaks the initiator's signature.
    let (mut initiator, hello) = Handshake::initiator(&alice, [1; 32]);
    let (mut responder, _) = Handshake::responder(&bob, [2; 32]);
    let Frame::Hello { major, minor, did, .. } = hello[0].clone() else {
        panic!()
    };
    let Ok(Step::Send(reply)) = responder.handle(
        Frame::Hello {
            major,
            minor,
            did,
            nonce: [0; 32],
            rotation: None,
        },
        &admit_all,
    ) else {
        panic!()
    };
    initiator.handle(reply[0].clone(), &admit_all).unwrap();
    // The initiator refuses the responder's Auth: it signed another nonce.
    assert!(matches!(
        initiator.handle(reply[1].clone(), &admit_all),
        Err(Error::BadSignature { .. })
    ));
}

#[test]
fn a_reflected_signature_or_hello_is_refused() {
    let (alice, bob) = (alice(), bob());
    // The responder's own Auth sent back to it as the initiator's.
    let (_, hello) = Handshake::initiator(&alice, [1; 32]);
    let (mut responder, _) = Handshake::responder(&bob, [2; 32]);
    let Ok(Step::Send(reply)) = responder.handle(hello[0].clone(), &admit_all) else {
        panic!()
    };
    assert!(matches!(
        responder.handle(reply[1].clone(), &admit_all),
        Err(Error::BadSignature { .. })
    ));
    // The initiator's own Hello reflected back to it.
    let (mut initiator, hello) = Handshake::initiator(&alice, [1; 32]);
    let error = initiator.handle(hello[0].clone(), &admit_all).unwrap_err();
    assert!(matches!(error, Error::OwnDid(did) if did == alice.did()), "{error}");
    // A responder seeing its own DID (a node dialing itself).
    let (_, hello) = Handshake::initiator(&bob, [1; 32]);
    let (mut responder, _) = Handshake::responder(&bob, [2; 32]);
    assert!(matches!(
        responder.handle(hello[0].clone(), &admit_all),
        Err(Error::OwnDid(_))
    ));
}

#[test]
fn a_hello_and_auth_replayed_from_another_session_are_refused() {
    let (alice, bob) = (alice(), bob());
    // A recorded genuine session from alice to bob.
    let (mut initiator, hello) = Handshake::initiator(&alice, [1; 32]);
    let (mut responder, _) = Handshake::responder(&bob, [2; 32]);
    let Ok(Step::Send(reply)) = responder.handle(hello[0].clone(), &admit_all) else {
        panic!()
    };
    initiator.handle(reply[0].clone(), &admit_all).unwrap();
    let Ok(Step::Done { send: auth, .. }) = initiator.handle(reply[1].clone(), &admit_all) else {
        panic!()
    };
    // An attacker replays alice's Hello and Auth to bob; bob's new session has a fresh nonce.
    let (mut replayed, _) = Handshake::responder(&bob, [3; 32]);
    replayed.handle(hello[0].clone(), &admit_all).unwrap();
    let error = replayed.handle(auth[0].clone(), &admit_all).unwrap_err();
    assert!(matches!(error, Error::BadSignature { .. }), "{error}");
}

#[test]
fn frames_out_of_order_are_refused() {
    let (alice, bob) = (alice(), bob());
    let (mut responder, _) = Handshake::responder(&bob, [2; 32]);
    let error = responder
        .handle(Frame::Auth { signature: [0; 64] }, &admit_all)
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::UnexpectedFrame {
                expected: "Hello",
                received: "Auth"
            }
        ),
        "{error}"
    );
    for early in [Frame::Sync(vec![1]), Frame::Ping(1), Frame::Pong(1)] {
        let (mut initiator, _) = Handshake::initiator(&alice, [1; 32]);
        assert!(matches!(
            initiator.handle(early, &admit_all),
            Err(Error::UnexpectedFrame { .. })
        ));
    }
    // A second Hello instead of the Auth.
    let (_, hello) = Handshake::initiator(&alice, [1; 32]);
    let (mut responder, _) = Handshake::responder(&bob, [2; 32]);
    responder.handle(hello[0].clone(), &admit_all).unwrap();
    let error = responder.handle(hello[0].clone(), &admit_all).unwrap_err();
    assert!(
        matches!(
            error,
            Error::UnexpectedFrame {
                expected: "Auth",
                received: "Hello"
            }
        ),
        "{error}"
    );
    // A Bye during the handshake carries the peer's reason.
    let (mut initiator, _) = Handshake::initiator(&alice, [1; 32]);
    let bye = Frame::Bye { reason: "busy".into() };
    assert!(matches!(initiator.handle(bye, &admit_all), Err(Error::PeerClosed { reason }) if reason == "busy"));
}

#[test]
fn a_rotated_node_authenticates_with_its_current_key_once_the_peer_knows_the_event() {
    let ((alice, unaware, aware), bob) = (rotated_alice(), bob());
    // Bob knows the rotation: they authenticate each other, alice in either role.
    let (i, r) = connect(
        Handshake::initiator(&alice, [1; 32]),
        Handshake::responder(&bob, [2; 32]),
        &aware,
        &aware,
    );
    assert_eq!((i.unwrap().unwrap().0, r.unwrap().unwrap().0), (bob.did(), alice.did()));
    let (i, r) = connect(
        Handshake::initiator(&bob, [1; 32]),
        Handshake::responder(&alice, [2; 32]),
        &aware,
        &aware,
    );
    assert_eq!((i.unwrap().unwrap().0, r.unwrap().unwrap().0), (alice.did(), bob.did()));
    // Bob has not learned the rotation: he expects the inception key and refuses the new one.
    let (_, r) = connect(
        Handshake::initiator(&alice, [1; 32]),
        Handshake::responder(&bob, [2; 32]),
        &unaware,
        &unaware,
    );
    assert!(matches!(r.unwrap(), Err(Error::BadSignature { .. })));
    // Once the rotation is known, the old key no longer authenticates the DID.
    let before_rotation = NodeIdentity::from_seed([1; 32]);
    assert_eq!(before_rotation.did(), alice.did());
    let (i, _) = connect(
        Handshake::initiator(&bob, [1; 32]),
        Handshake::responder(&before_rotation, [2; 32]),
        &aware,
        &aware,
    );
    assert!(matches!(i.unwrap(), Err(Error::BadSignature { .. })));
}

/// Peers that also accept a rotation shown in a `Hello` if it extends the chain `.0` holds.
struct Learns(State);

impl Peers for Learns {
    fn is_admitted(&self, _: &DidKey) -> bool {
        true
    }

    fn current_key(&self, did: &DidKey) -> [u8; 32] {
        self.0.current_key(did)
    }

    fn extends_chain(&self, event: &mesh::kel::KeyEvent) -> bool {
        self.0.extends_chain(event)
    }
}

#[test]
fn a_node_that_rotated_while_offline_is_accepted_through_the_event_in_its_hello() {
    let ((alice, unaware, _), bob) = (rotated_alice(), bob());
    let unaware = Learns(unaware.0);
    // Bob only knows alice's inception event; her Hello carries the rotation, which extends it.
    for alice_initiates in [true, false] {
        let (i, r) = if alice_initiates {
            connect(
                Handshake::initiator(&alice, [1; 32]),
                Handshake::responder(&bob, [2; 32]),
                &unaware,
                &unaware,
            )
        } else {
            connect(
                Handshake::initiator(&bob, [1; 32]),
                Handshake::responder(&alice, [2; 32]),
                &unaware,
                &unaware,
            )
        };
        let (i, r) = (i.unwrap().unwrap().0, r.unwrap().unwrap().0);
        assert_eq!(if alice_initiates { (i, r) } else { (r, i) }, (bob.did(), alice.did()));
    }
    // Alice's inception identity shows no rotation: bob still expects that key and accepts it.
    let (_, r) = connect(
        Handshake::initiator(&NodeIdentity::from_seed([1; 32]), [1; 32]),
        Handshake::responder(&bob, [2; 32]),
        &unaware,
        &unaware,
    );
    assert!(
        r.unwrap().is_ok(),
        "without a rotation in its Hello the inception key is what bob expects"
    );
    // Two rotations while offline: the Hello shows only the last, which does not extend bob's
    // chain (the one between is missing), so bob refuses.
    alice.rotate_with_seed([8; 32]);
    let (_, r) = connect(
        Handshake::initiator(&alice, [1; 32]),
        Handshake::responder(&bob, [2; 32]),
        &unaware,
        &unaware,
    );
    assert!(matches!(r.unwrap(), Err(Error::BadSignature { .. })));
}

#[test]
fn the_rotation_in_a_hello_survives_the_wire_and_older_trailers_are_ignored() {
    let (alice, _, _) = rotated_alice();
    let (_, sent) = Handshake::initiator(&alice, [1; 32]);
    let bytes = encode_all(&sent);
    let frames = decode_all(&bytes);
    let [
        Frame::Hello {
            rotation: Some(event), ..
        },
    ] = &frames[..]
    else {
        panic!("{frames:?}")
    };
    assert_eq!(**event, alice.event());
    // A trailer of an unknown type (a later minor's) is ignored: the Hello still decodes.
    let mut unknown = bytes.clone();
    unknown[5 + 68] = 0xee;
    assert!(matches!(
        &decode_all(&unknown)[..],
        [Frame::Hello { rotation: None, .. }]
    ));
}
