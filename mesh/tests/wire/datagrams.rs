//! Signed datagrams: round trips, replay window, tampering, skew, sizes.

use super::*;

fn open(bytes: &[u8], now: u64, window: &mut ReplayWindow) -> Result<(DidKey, Vec<u8>), Error> {
    Datagram::open(bytes, now, 30, window, &admit_all)
}

proptest! {
    #[test]
    fn datagrams_round_trip(
        seed in any::<[u8; 32]>(),
        seq in any::<u64>(),
        now in any::<u64>(),
        payload in prop::collection::vec(any::<u8>(), 0..=MAX_DATAGRAM_PAYLOAD),
    ) {
        let identity = NodeIdentity::from_seed(seed);
        let bytes = Datagram::seal(&identity, seq, now, &payload).unwrap();
        prop_assert!(bytes.len() <= MAX_DATAGRAM_LEN);
        let mut window = ReplayWindow::new();
        prop_assert_eq!(open(&bytes, now, &mut window).unwrap(), (identity.did(), payload));
    }

    #[test]
    fn any_changed_byte_is_refused(
        payload in prop::collection::vec(any::<u8>(), 0..64),
        position in any::<prop::sample::Index>(),
        flip in 1..=255u8,
    ) {
        let mut bytes = Datagram::seal(&alice(), 7, NOW, &payload).unwrap();
        let position = position.index(bytes.len());
        bytes[position] ^= flip;
        prop_assert!(open(&bytes, NOW, &mut ReplayWindow::new()).is_err());
    }

    #[test]
    fn random_bytes_never_panic_datagram_open(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        prop_assert!(!harness::datagram_open(&bytes));
    }

    #[test]
    fn random_bytes_with_a_valid_header_never_panic_datagram_open(
        tail in prop::collection::vec(any::<u8>(), 0..1500),
        length in any::<u16>(),
    ) {
        let mut bytes = Datagram::seal(&alice(), 1, harness::DATAGRAM_NOW, b"")
            .unwrap()[..49].to_vec();
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(&tail);
        prop_assert!(!harness::datagram_open(&bytes));
    }
}

#[test]
fn a_replayed_datagram_is_refused() {
    let alice = alice();
    let mut window = ReplayWindow::new();
    let first = Datagram::seal(&alice, 1000, NOW, b"ping").unwrap();
    open(&first, NOW, &mut window).unwrap();
    let error = open(&first, NOW + 1, &mut window).unwrap_err();
    assert!(matches!(error, Error::ReplayedDatagram { seq: 1000, .. }), "{error}");
    // Out-of-order delivery within the window is fine, once.
    let later = Datagram::seal(&alice, 1005, NOW, b"b").unwrap();
    let earlier = Datagram::seal(&alice, 1003, NOW, b"a").unwrap();
    open(&later, NOW, &mut window).unwrap();
    open(&earlier, NOW, &mut window).unwrap();
    assert!(matches!(
        open(&earlier, NOW, &mut window),
        Err(Error::ReplayedDatagram { .. })
    ));
    // Far below the window: stale.
    let old = Datagram::seal(&alice, 1005 - 128, NOW, b"old").unwrap();
    assert!(matches!(
        open(&old, NOW, &mut window),
        Err(Error::StaleDatagram { newest: 1005, .. })
    ));
    // Windows are per sender.
    let bob = bob();
    open(&Datagram::seal(&bob, 100, NOW, b"ping").unwrap(), NOW, &mut window).unwrap();
    assert_eq!(window.senders(), 2);
    window.forget(&bob.did());
    assert_eq!(window.senders(), 1);
}

#[test]
fn a_restarted_sender_is_accepted_without_persisted_state() {
    let alice = alice();
    let mut window = ReplayWindow::new();
    let first = Datagram::first_seq(NOW);
    for seq in first..first + 1000 {
        open(&Datagram::seal(&alice, seq, NOW, b"x").unwrap(), NOW, &mut window).unwrap();
    }
    let restarted = Datagram::first_seq(NOW + 1);
    open(
        &Datagram::seal(&alice, restarted, NOW + 1, b"x").unwrap(),
        NOW + 1,
        &mut window,
    )
    .unwrap();
}

#[test]
fn datagrams_after_a_rotation_name_the_did_and_verify_with_the_current_key() {
    let (alice, unaware, aware) = rotated_alice();
    let bytes = Datagram::seal(&alice, 1, NOW, b"ping").unwrap();
    assert_eq!(&bytes[1..33], &alice.did().public_key());
    let opened = Datagram::open(&bytes, NOW, 30, &mut ReplayWindow::new(), &aware).unwrap();
    assert_eq!(opened, (alice.did(), b"ping".to_vec()));
    assert!(matches!(
        Datagram::open(&bytes, NOW, 30, &mut ReplayWindow::new(), &unaware),
        Err(Error::BadSignature { .. })
    ));
    // The inception key no longer speaks for alice once the rotation is known.
    let old = Datagram::seal(&NodeIdentity::from_seed([1; 32]), 2, NOW, b"ping").unwrap();
    assert!(matches!(
        Datagram::open(&old, NOW, 30, &mut ReplayWindow::new(), &aware),
        Err(Error::BadSignature { .. })
    ));
}

#[test]
fn a_tampered_datagram_is_refused() {
    let mut bytes = Datagram::seal(&alice(), 1, NOW, b"suspect bob").unwrap();
    let at = bytes.len() - 64 - 3;
    bytes[at] = b'X';
    let mut window = ReplayWindow::new();
    let error = open(&bytes, NOW, &mut window).unwrap_err();
    assert!(
        matches!(&error, Error::BadSignature { what } if what.contains("datagram")),
        "{error}"
    );
    assert_eq!(window.senders(), 0, "a refused datagram is not recorded");
}

#[test]
fn a_datagram_signed_by_another_node_is_refused() {
    // Bob signs, then claims to be alice.
    let mut bytes = Datagram::seal(&bob(), 1, NOW, b"alice is dead").unwrap();
    bytes[1..33].copy_from_slice(&alice().did().public_key());
    assert!(matches!(
        open(&bytes, NOW, &mut ReplayWindow::new()),
        Err(Error::BadSignature { .. })
    ));
    // A signature made over a handshake transcript (or anything not in datagram form) does not fit.
    let mut forged = Datagram::seal(&alice(), 1, NOW, b"hi").unwrap();
    let len = forged.len();
    let signature = alice().sign(&forged[..len - 64]); // no datagram domain
    forged[len - 64..].copy_from_slice(&signature);
    assert!(matches!(
        open(&forged, NOW, &mut ReplayWindow::new()),
        Err(Error::BadSignature { .. })
    ));
}

#[test]
fn a_datagram_outside_the_clock_skew_is_refused() {
    let mut window = ReplayWindow::new();
    let sealed = |seq, at| Datagram::seal(&alice(), seq, at, b"x").unwrap();
    assert!(matches!(
        open(&sealed(1, NOW - 31), NOW, &mut window),
        Err(Error::DatagramSkew { .. })
    ));
    assert!(matches!(
        open(&sealed(2, NOW + 31), NOW, &mut window),
        Err(Error::DatagramSkew { .. })
    ));
    open(&sealed(3, NOW - 30), NOW, &mut window).unwrap();
    open(&sealed(4, NOW + 30), NOW, &mut window).unwrap();
    let error = open(&sealed(5, 0), NOW, &mut window).unwrap_err();
    assert!(error.to_string().contains("allowed skew is 30 s"), "{error}");
}

#[test]
fn a_datagram_from_a_node_not_admitted_is_refused_and_not_remembered() {
    let bytes = Datagram::seal(&alice(), 1, NOW, b"x").unwrap();
    let mut window = ReplayWindow::new();
    let only_bob = |did: &DidKey| *did == bob().did();
    let result = Datagram::open(&bytes, NOW, 30, &mut window, &only_bob);
    assert!(matches!(result, Err(Error::NotAdmitted(_))));
    assert_eq!(window.senders(), 0);
}

#[test]
fn datagram_sizes_are_bounded() {
    let alice = alice();
    let full = Datagram::seal(&alice, 1, NOW, &[0; MAX_DATAGRAM_PAYLOAD]).unwrap();
    assert_eq!(full.len(), MAX_DATAGRAM_LEN);
    assert!(matches!(
        Datagram::seal(&alice, 1, NOW, &[0; MAX_DATAGRAM_PAYLOAD + 1]),
        Err(Error::DatagramTooLarge { .. })
    ));
    let mut window = ReplayWindow::new();
    assert!(matches!(
        open(&[0; MAX_DATAGRAM_LEN + 1], NOW, &mut window),
        Err(Error::DatagramTooLarge { .. })
    ));
    let sealed = Datagram::seal(&alice, 2, NOW, b"abc").unwrap();
    for end in 0..sealed.len() {
        assert!(open(&sealed[..end], NOW, &mut window).is_err(), "truncated to {end}");
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert!(matches!(
        open(&longer, NOW, &mut window),
        Err(Error::MalformedDatagram(_))
    ));
    let mut version = sealed;
    version[0] = 2;
    assert!(matches!(
        open(&version, NOW, &mut window),
        Err(Error::MalformedDatagram(_))
    ));
}
