//! The driver's half of mDNS discovery ([`crate::discovery`]): polls what the daemon found,
//! publishes it for the dialer and the membership announces, and stops the daemon on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Driver, flipped};
use crate::did::DidKey;
use crate::discovery::Discovery;

/// How often the daemon's findings are taken in.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Runs until shutdown, then unregisters this node and shuts the daemon down.
pub(super) async fn run(driver: Driver, mut discovery: Discovery) {
    let mut shutdown = driver.0.shutdown.clone();
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = flipped(&mut shutdown) => break,
            _ = poll.tick() => {}
        }
        if discovery.poll() {
            *driver.0.discovered.lock().unwrap_or_else(|e| e.into_inner()) = discovery.peers();
        }
    }
    driver.0.discovered.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let _ = tokio::task::spawn_blocking(move || discovery.stop()).await;
    driver.0.mdns_running.store(false, Ordering::SeqCst);
}

impl Driver {
    /// Whether mDNS discovery runs (configured, started and not yet stopped).
    pub fn mdns_running(&self) -> bool {
        self.0.mdns_running.load(Ordering::SeqCst)
    }

    /// The members mDNS proposes, other than this node: extra dial and announce targets.
    pub(super) fn discovered(&self) -> Vec<(DidKey, SocketAddr)> {
        let found = self.0.discovered.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let own = self.0.identity.did();
        found
            .into_iter()
            .filter(|(did, _)| *did != own && self.0.replica.is_member(did))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::watch;

    use super::super::{DriverConfig, Replica};
    use super::*;
    use crate::doc::PeerSync;
    use crate::identity::NodeIdentity;

    /// A mesh of one.
    struct Alone;

    impl Replica for Alone {
        fn is_member(&self, _: &DidKey) -> bool {
            false
        }
        fn peer_addresses(&self) -> Vec<(DidKey, String)> {
            Vec::new()
        }
        fn generate(&self, _: &DidKey, _: &mut PeerSync) -> Option<Vec<u8>> {
            None
        }
        fn receive(&self, _: &DidKey, _: &mut PeerSync, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
    }

    /// Off by default, and then no daemon starts (this test sends no multicast).
    #[tokio::test]
    async fn off_by_default_starts_no_daemon() {
        let config = DriverConfig {
            membership: None,
            ..DriverConfig::default()
        };
        assert!(!config.mdns);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let identity = Arc::new(NodeIdentity::from_seed([9; 32]));
        let (stop, shutdown) = watch::channel(false);
        let driver = Driver::start(listener, identity, Arc::new(Alone), config, shutdown).unwrap();
        assert!(!driver.mdns_running());
        assert!(driver.discovered().is_empty());
        let _ = stop.send(true);
    }
}
