//! The simulated transport: connections between two nodes' sessions over links with a latency
//! that can be cut and healed, and dialing with backoff.

use std::time::Duration;

use super::{Action, ConnId, NodeId, World};

/// A connection: side 0 opened it, side 1 accepted it.
pub(super) struct Conn {
    pub(super) ends: [NodeId; 2],
    pub(super) open: [bool; 2],
}

#[derive(Default)]
pub(super) struct Link {
    pub(super) cut: bool,
    pub(super) latency: Option<Duration>,
    pub(super) held: Vec<(ConnId, usize, Payload)>,
}

pub(super) enum Payload {
    Bytes(Vec<u8>),
    Eof,
}

impl World<'_> {
    /// Dials every peer on `node`'s list that has no session, no dial in progress and no backoff.
    pub(super) fn dial_tick(&mut self, node: NodeId, epoch: u64) {
        if self.nodes[node].epoch != epoch || !self.nodes[node].alive {
            return;
        }
        let now = self.now;
        let peers = self.nodes[node].peers.clone();
        for peer in peers {
            let did = self.nodes[peer].identity.did();
            let n = &mut self.nodes[node];
            if n.registry.contains_key(&did) || n.backoff.get(&peer).is_some_and(|(at, _)| *at > now) {
                continue;
            }
            if !n.dialing.insert(peer) {
                continue;
            }
            let wait = n.backoff.get(&peer).map_or(self.config.first_backoff, |(_, d)| {
                (*d * 2).min(self.config.max_backoff)
            });
            n.backoff.insert(peer, (now + wait, wait));
            self.dial(node, peer);
        }
        self.schedule(self.config.dial_interval, Action::DialTick { node, epoch });
    }

    pub(super) fn dial(&mut self, node: NodeId, peer: NodeId) {
        let epoch = self.nodes[node].epoch;
        let latency = self.latency(node, peer);
        if self.is_cut(node, peer) {
            let after = self.config.connect_timeout;
            self.schedule(after, Action::DialFailed { node, epoch, peer });
            return;
        }
        if !self.nodes[peer].alive {
            self.schedule(latency * 2, Action::DialFailed { node, epoch, peer });
            return;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            conn,
            Conn {
                ends: [node, peer],
                open: [true, true],
            },
        );
        self.schedule(latency, Action::Accept { conn });
    }

    /// The SYN arrives: the responder's session starts.
    pub(super) fn accept(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else { return };
        let [initiator, responder] = c.ends;
        let latency = self.latency(initiator, responder);
        if !c.open[0] {
            self.conns.remove(&conn);
            return;
        }
        if !c.open[1] || !self.nodes[responder].alive || self.is_cut(initiator, responder) {
            let epoch = self.nodes[initiator].epoch;
            let after = if self.is_cut(initiator, responder) {
                self.config.connect_timeout
            } else {
                latency
            };
            self.conns.remove(&conn);
            self.schedule(
                after,
                Action::DialFailed {
                    node: initiator,
                    epoch,
                    peer: responder,
                },
            );
            return;
        }
        self.start_endpoint(responder, conn, initiator, false);
        self.schedule(latency, Action::Open { conn });
    }

    /// The SYN-ACK arrives: the initiator's session starts.
    pub(super) fn open(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else { return };
        let [initiator, responder] = c.ends;
        if !c.open[0] || !self.nodes[initiator].alive {
            self.close_side(conn, 0);
            return;
        }
        if self.is_cut(initiator, responder) {
            // The SYN-ACK is lost: the dial times out; the responder's handshake times out.
            self.close_side(conn, 0);
            let epoch = self.nodes[initiator].epoch;
            let after = self.config.connect_timeout;
            self.schedule(
                after,
                Action::DialFailed {
                    node: initiator,
                    epoch,
                    peer: responder,
                },
            );
            return;
        }
        self.start_endpoint(initiator, conn, responder, true);
    }

    /// Closes `node`'s end of `conn`: the session is dropped, the peer sees the stream end.
    pub(super) fn close_end(&mut self, node: NodeId, conn: ConnId) {
        let n = &mut self.nodes[node];
        if let Some(endpoint) = n.endpoints.remove(&conn) {
            if let Some(peer) = endpoint.registered
                && n.registry.get(&peer).is_some_and(|(c, _)| *c == conn)
            {
                n.registry.remove(&peer);
            }
            if endpoint.initiator {
                n.dialing.remove(&endpoint.peer);
            }
        }
        let Some(c) = self.conns.get(&conn) else { return };
        let side = if c.ends[0] == node { 0 } else { 1 };
        if c.open[side] {
            self.send(conn, node, Payload::Eof);
        }
        self.close_side(conn, side);
    }

    pub(super) fn close_side(&mut self, conn: ConnId, side: usize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.open[side] = false;
            if !c.open[0] && !c.open[1] {
                self.conns.remove(&conn);
            }
        }
    }

    /// Sends `payload` from `from`'s end of `conn` to the other end, through their link.
    pub(super) fn send(&mut self, conn: ConnId, from: NodeId, payload: Payload) {
        let Some(c) = self.conns.get(&conn) else { return };
        let side = if c.ends[0] == from { 1 } else { 0 };
        let to = c.ends[side];
        if let Payload::Bytes(bytes) = &payload {
            self.stats.bytes += bytes.len() as u64;
        }
        if let Some(link) = self.links.get_mut(&key(from, to))
            && link.cut
        {
            link.held.push((conn, side, payload));
            return;
        }
        let latency = self.latency(from, to);
        self.schedule(latency, Action::Deliver { conn, side, payload });
    }

    pub(super) fn latency(&self, a: NodeId, b: NodeId) -> Duration {
        self.links
            .get(&key(a, b))
            .and_then(|l| l.latency)
            .unwrap_or(self.config.latency)
    }

    pub(super) fn is_cut(&self, a: NodeId, b: NodeId) -> bool {
        self.links.get(&key(a, b)).is_some_and(|l| l.cut)
    }
}

pub(super) fn key(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}
