//! Optional peer discovery on the local network with mDNS / DNS-SD (`mdns-sd`).
//!
//! A node registers itself as an instance of [`SERVICE_TYPE`] — instance name a short form of its
//! DID, port its sync port, TXT `did=<did>` and `v=<wire MAJOR.MINOR>` — and browses for the same
//! type. What it finds is only a proposal: a `(DID, address)` pair the driver adds to its dial and
//! announce targets. Admission does not change: the handshake and datagram opening still refuse
//! anyone who is not a member, whatever mDNS said (and the driver only proposes members).
//!
//! Turning a resolved record into a peer ([`parse_record`]) and building this node's record
//! ([`ServiceRecord::for_node`]) are pure functions; [`Discovery`] is the thin part that runs the
//! `mdns-sd` daemon (its own thread, no async runtime).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::did::DidKey;
use crate::wire;

/// The DNS-SD service type meshgate nodes register and browse for.
pub const SERVICE_TYPE: &str = "_meshgate._udp.local.";

/// TXT key of the node's DID.
pub const TXT_DID: &str = "did";

/// TXT key of the node's wire protocol version, `MAJOR.MINOR`.
pub const TXT_VERSION: &str = "v";

/// How many trailing characters of the DID name the instance (and its host name).
const SHORT_DID_LEN: usize = 16;

/// This node's DNS-SD record, before it is handed to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// The instance name: `meshgate-` + the last characters of the DID.
    pub instance: String,
    /// The host name the SRV record points at: the instance under `.local.`.
    pub host: String,
    /// The sync port.
    pub port: u16,
    /// TXT properties: the DID and the wire version.
    pub txt: Vec<(String, String)>,
}

impl ServiceRecord {
    /// The record of the node `did` whose sync listener is on `port`.
    pub fn for_node(did: &DidKey, port: u16) -> Self {
        let did = did.to_string();
        let short = &did[did.len().saturating_sub(SHORT_DID_LEN)..];
        let instance = format!("meshgate-{short}");
        Self {
            host: format!("{}.local.", instance.to_ascii_lowercase()),
            instance,
            port,
            txt: vec![
                (TXT_DID.to_owned(), did),
                (TXT_VERSION.to_owned(), format!("{}.{}", wire::MAJOR, wire::MINOR)),
            ],
        }
    }
}

/// A peer proposed by a resolved record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discovered {
    /// The DID its TXT record claims (unverified: the handshake checks it).
    pub did: DidKey,
    /// Where to dial and announce.
    pub addr: SocketAddr,
    /// Its wire version (`MAJOR` equals this build's).
    pub version: (u16, u16),
}

/// Why a resolved record proposes no peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No `did` TXT property, or one without a value.
    #[error("no did")]
    MissingDid,
    /// The `did` value is not a valid `did:key`.
    #[error("invalid did")]
    InvalidDid,
    /// No `v` TXT property, or one without a value.
    #[error("no version")]
    MissingVersion,
    /// The `v` value is not `MAJOR.MINOR`.
    #[error("invalid version")]
    InvalidVersion,
    /// A wire major this build does not speak.
    #[error("wire major {0} (this node speaks {major})", major = wire::MAJOR)]
    IncompatibleVersion(u16),
    /// Port 0.
    #[error("no port")]
    NoPort,
    /// No address one can dial (none at all, or only unspecified, multicast, broadcast or IPv6
    /// link-local ones).
    #[error("no usable address")]
    NoAddress,
}

/// Turns a resolved record (SRV port, A/AAAA addresses, TXT properties as key and optional
/// value) into a peer. Pure; never panics. TXT keys match case-insensitively and the first
/// occurrence of a key wins (RFC 6763 §6.4). Of the addresses, IPv4 ones are preferred, then the
/// smallest, so the choice does not depend on the order they came in.
pub fn parse_record<'a>(
    port: u16,
    addresses: impl IntoIterator<Item = IpAddr>,
    txt: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Result<Discovered, RecordError> {
    let mut did = None;
    let mut version = None;
    for (key, value) in txt {
        let slot = if key.eq_ignore_ascii_case(TXT_DID) {
            &mut did
        } else if key.eq_ignore_ascii_case(TXT_VERSION) {
            &mut version
        } else {
            continue;
        };
        if slot.is_none() {
            *slot = Some(value);
        }
    }
    let did = did.flatten().ok_or(RecordError::MissingDid)?;
    let did: DidKey = std::str::from_utf8(did)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RecordError::InvalidDid)?;
    let version = version.flatten().ok_or(RecordError::MissingVersion)?;
    let version = std::str::from_utf8(version)
        .ok()
        .and_then(parse_version)
        .ok_or(RecordError::InvalidVersion)?;
    if version.0 != wire::MAJOR {
        return Err(RecordError::IncompatibleVersion(version.0));
    }
    if port == 0 {
        return Err(RecordError::NoPort);
    }
    let ip = addresses
        .into_iter()
        .filter(usable)
        .min_by_key(|ip| (ip.is_ipv6(), *ip))
        .ok_or(RecordError::NoAddress)?;
    Ok(Discovered {
        did,
        addr: SocketAddr::new(ip, port),
        version,
    })
}

fn parse_version(s: &str) -> Option<(u16, u16)> {
    let (major, minor) = s.split_once('.')?;
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(major) || !digits(minor) {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Whether `ip` can be dialed as it is (an IPv6 link-local address would need its scope).
fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local()),
    }
}

/// The running mDNS side of a node: its registration, its browse and what it found. Stopped by
/// [`Discovery::stop`] (or, without waiting, when dropped).
pub struct Discovery {
    daemon: Option<ServiceDaemon>,
    fullname: String,
    own: DidKey,
    events: mdns_sd::Receiver<ServiceEvent>,
    /// Resolved instances by full name (lower-cased: DNS names match case-insensitively).
    found: HashMap<String, Discovered>,
}

impl Discovery {
    /// Starts the daemon (a thread of its own), registers `did` at `sync_addr` and browses for
    /// other nodes. With an unspecified IP (`0.0.0.0`, `::`) every address of the host's
    /// interfaces is advertised, and kept up to date; otherwise only `sync_addr`'s.
    pub fn start(did: DidKey, sync_addr: SocketAddr) -> std::io::Result<Self> {
        let record = ServiceRecord::for_node(&did, sync_addr.port());
        let txt: Vec<(&str, &str)> = record.txt.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let ip = sync_addr.ip();
        let info = if ip.is_unspecified() {
            ServiceInfo::new(SERVICE_TYPE, &record.instance, &record.host, (), record.port, &txt[..])
                .map(ServiceInfo::enable_addr_auto)
        } else {
            ServiceInfo::new(SERVICE_TYPE, &record.instance, &record.host, ip, record.port, &txt[..])
        }
        .map_err(std::io::Error::other)?;
        let fullname = info.get_fullname().to_owned();
        let daemon = ServiceDaemon::new().map_err(std::io::Error::other)?;
        let started = daemon
            .register(info)
            .and_then(|()| daemon.browse(SERVICE_TYPE))
            .map_err(std::io::Error::other);
        let events = match started {
            Ok(events) => events,
            Err(e) => {
                let _ = daemon.shutdown();
                return Err(e);
            }
        };
        tracing::info!(instance = %record.instance, %sync_addr, "mDNS discovery started");
        Ok(Self {
            daemon: Some(daemon),
            fullname,
            own: did,
            events,
            found: HashMap::new(),
        })
    }

    /// Takes in what the daemon found since the last call, without waiting. Returns whether the
    /// set of peers changed.
    pub fn poll(&mut self) -> bool {
        let mut changed = false;
        for event in self.events.try_iter() {
            match event {
                ServiceEvent::ServiceResolved(service) => {
                    let addresses = service.get_addresses().iter().map(|ip| ip.to_ip_addr());
                    let txt = service.get_properties().iter().map(|p| (p.key(), p.val()));
                    match parse_record(service.get_port(), addresses, txt) {
                        Ok(peer) if peer.did != self.own => {
                            let previous = self.found.insert(service.get_fullname().to_ascii_lowercase(), peer);
                            if previous != Some(peer) {
                                tracing::debug!(did = %peer.did, addr = %peer.addr, "mDNS found a node");
                                changed = true;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(instance = service.get_fullname(), error = %e, "mDNS record ignored");
                        }
                    }
                }
                ServiceEvent::ServiceRemoved(_, fullname) => {
                    changed |= self.found.remove(&fullname.to_ascii_lowercase()).is_some();
                }
                _ => {}
            }
        }
        changed
    }

    /// The peers found so far (one per DID), sorted.
    pub fn peers(&self) -> Vec<(DidKey, SocketAddr)> {
        let mut peers: Vec<(DidKey, SocketAddr)> = self.found.values().map(|p| (p.did, p.addr)).collect();
        peers.sort();
        peers.dedup_by_key(|(did, _)| *did);
        peers
    }

    /// Whether the daemon runs (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.daemon.is_some()
    }

    /// Unregisters this node (a goodbye on the network) and shuts the daemon down, waiting up to a
    /// second for each. Blocks: call it where blocking is allowed.
    pub fn stop(&mut self) {
        self.stop_with(Some(Duration::from_secs(1)));
    }

    fn stop_with(&mut self, wait: Option<Duration>) {
        let Some(daemon) = self.daemon.take() else {
            return;
        };
        match daemon.unregister(&self.fullname) {
            Ok(status) => {
                if let Some(wait) = wait {
                    let _ = status.recv_timeout(wait);
                }
            }
            Err(e) => tracing::debug!(error = %e, "mDNS unregister failed"),
        }
        match daemon.shutdown() {
            Ok(status) => {
                if let Some(wait) = wait {
                    let _ = status.recv_timeout(wait);
                }
            }
            Err(e) => tracing::debug!(error = %e, "mDNS daemon shutdown failed"),
        }
        self.found.clear();
        tracing::info!("mDNS discovery stopped");
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop_with(None);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn did(seed: u8) -> DidKey {
        DidKey::from_public_key([seed; 32])
    }

    fn txt_of(record: &ServiceRecord) -> Vec<(&str, Option<&[u8]>)> {
        record
            .txt
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_bytes())))
            .collect()
    }

    #[test]
    fn record_carries_did_version_and_port() {
        let record = ServiceRecord::for_node(&did(7), 7946);
        let full = did(7).to_string();
        assert!(record.instance.starts_with("meshgate-"));
        assert!(full.ends_with(&record.instance["meshgate-".len()..]));
        assert!(record.instance.len() <= 63, "a DNS label");
        assert_eq!(record.host, format!("{}.local.", record.instance.to_ascii_lowercase()));
        assert_eq!(record.port, 7946);
        assert_eq!(
            record.txt,
            vec![
                ("did".to_owned(), full),
                ("v".to_owned(), format!("{}.{}", wire::MAJOR, wire::MINOR)),
            ]
        );
        // What mdns-sd accepts for a registration.
        let txt: Vec<(&str, &str)> = record.txt.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let info = ServiceInfo::new(SERVICE_TYPE, &record.instance, &record.host, ip, 7946, &txt[..]).unwrap();
        assert_eq!(info.get_property_val_str("did"), Some(did(7).to_string().as_str()));
        assert_eq!(info.get_fullname(), format!("{}.{SERVICE_TYPE}", record.instance));
    }

    #[test]
    fn own_record_parses_back() {
        let record = ServiceRecord::for_node(&did(3), 7000);
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
        let peer = parse_record(record.port, [ip], txt_of(&record)).unwrap();
        assert_eq!(peer.did, did(3));
        assert_eq!(peer.addr, SocketAddr::new(ip, 7000));
        assert_eq!(peer.version, (wire::MAJOR, wire::MINOR));
    }

    #[test]
    fn refusals() {
        let full = did(1).to_string();
        let ip = [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))];
        let v = format!("{}.{}", wire::MAJOR, wire::MINOR);
        let parse = |port, txt: &[(&str, Option<&str>)]| {
            parse_record(port, ip, txt.iter().map(|(k, v)| (*k, v.map(str::as_bytes))))
        };
        assert_eq!(parse(1, &[("v", Some(&v))]), Err(RecordError::MissingDid));
        assert_eq!(
            parse(1, &[("did", None), ("v", Some(&v))]),
            Err(RecordError::MissingDid)
        );
        assert_eq!(
            parse(1, &[("did", Some("did:key:zX")), ("v", Some(&v))]),
            Err(RecordError::InvalidDid)
        );
        assert_eq!(parse(1, &[("did", Some(&full))]), Err(RecordError::MissingVersion));
        for bad in ["1", "1.", ".0", "a.b", "1.0.0", "+1.0", "99999.0", " 1.0"] {
            assert_eq!(
                parse(1, &[("did", Some(&full)), ("v", Some(bad))]),
                Err(RecordError::InvalidVersion),
                "{bad}"
            );
        }
        let other = format!("{}.0", wire::MAJOR + 1);
        assert_eq!(
            parse(1, &[("did", Some(&full)), ("v", Some(&other))]),
            Err(RecordError::IncompatibleVersion(wire::MAJOR + 1))
        );
        assert_eq!(
            parse(0, &[("did", Some(&full)), ("v", Some(&v))]),
            Err(RecordError::NoPort)
        );
        // A newer minor of the same major is fine; keys match case-insensitively, first one wins.
        let newer = format!("{}.{}", wire::MAJOR, wire::MINOR + 7);
        let peer = parse(1, &[("DID", Some(&full)), ("did", Some("junk")), ("V", Some(&newer))]).unwrap();
        assert_eq!(peer.did, did(1));
        assert_eq!(peer.version, (wire::MAJOR, wire::MINOR + 7));
    }

    #[test]
    fn address_choice() {
        let record = ServiceRecord::for_node(&did(2), 9000);
        let parse = |ips: Vec<IpAddr>| parse_record(9000, ips, txt_of(&record)).map(|p| p.addr.ip());
        let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        let global6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let link_local6 = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));
        assert_eq!(parse(vec![]), Err(RecordError::NoAddress));
        assert_eq!(
            parse(vec![
                v4(0, 0, 0, 0),
                v4(224, 0, 0, 251),
                v4(255, 255, 255, 255),
                link_local6
            ]),
            Err(RecordError::NoAddress)
        );
        assert_eq!(parse(vec![link_local6, global6]), Ok(global6));
        assert_eq!(
            parse(vec![global6, v4(192, 0, 2, 7), v4(192, 0, 2, 3)]),
            Ok(v4(192, 0, 2, 3))
        );
        assert_eq!(
            parse(vec![v4(192, 0, 2, 3), v4(192, 0, 2, 7), global6]),
            Ok(v4(192, 0, 2, 3))
        );
    }

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("did".to_owned()),
            Just("v".to_owned()),
            Just("V".to_owned()),
            ".{0,8}"
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_records_never_panic(
            port in any::<u16>(),
            ips in proptest::collection::vec(ip(), 0..4),
            txt in proptest::collection::vec(
                (key(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80))),
                0..6,
            ),
        ) {
            let pairs = txt.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
            if let Ok(peer) = parse_record(port, ips.clone(), pairs) {
                prop_assert_eq!(peer.version.0, wire::MAJOR);
                prop_assert!(ips.contains(&peer.addr.ip()));
                prop_assert_eq!(peer.addr.port(), port);
            }
        }

        #[test]
        fn built_records_round_trip(key in any::<[u8; 32]>(), port in 1u16.., ip in any::<[u8; 4]>()) {
            let did = DidKey::from_public_key(key);
            let record = ServiceRecord::for_node(&did, port);
            let ip = IpAddr::V4(Ipv4Addr::from(ip));
            let parsed = parse_record(record.port, [ip], txt_of(&record));
            if usable(&ip) {
                prop_assert_eq!(parsed.map(|p| (p.did, p.addr)), Ok((did, SocketAddr::new(ip, port))));
            } else {
                prop_assert_eq!(parsed, Err(RecordError::NoAddress));
            }
        }
    }
}
