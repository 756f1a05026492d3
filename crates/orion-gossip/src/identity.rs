//! The foca identity of one Orion node: node id, generation and gossip address
//! (about 30 bytes on the wire). Equality and conflict resolution live here; the
//! wire form lives in `codec`.
//!
//! Two identities are the same member iff node id, generation and address are
//! equal. The node's metadata is not part of the identity: it is fixed for the
//! life of one generation, so the engine fetches it once per identity, straight
//! from the member (see the crate doc, "Metadata travels beside the identity"). foca keys its member table on [`foca::Identity::addr`], which is
//! the gossip socket address: a process restarting on the same address with a
//! higher generation replaces its old self (foca's `Rename`). A process that
//! claims a node id already live at another address is not foca's business;
//! the engine refuses it before foca sees the packet.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

/// One member as foca sees it. Cheap to clone (one `Arc` and a few words),
/// because foca clones identities freely. `M` (the metadata type) only ties
/// the identity to its cluster's codec; no metadata is held here.
pub(crate) struct NodeIdentity<M> {
    pub(crate) node_id: Arc<str>,
    pub(crate) generation: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) _meta: PhantomData<fn() -> M>,
}

impl<M> NodeIdentity<M> {
    pub(crate) fn new(node_id: Arc<str>, generation: u64, addr: SocketAddr) -> Self {
        Self {
            node_id,
            generation,
            addr,
            _meta: PhantomData,
        }
    }
}

impl<M> Clone for NodeIdentity<M> {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.node_id), self.generation, self.addr)
    }
}

impl<M> std::hash::Hash for NodeIdentity<M> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.node_id.hash(h);
        self.generation.hash(h);
        self.addr.hash(h);
    }
}

impl<M> NodeIdentity<M> {
    /// The same node under its next generation. Used by foca's auto-rejoin when
    /// the cluster declared us down while we are in fact alive.
    fn next_generation(&self) -> Self {
        let mut next = self.clone();
        next.generation = self.generation.saturating_add(1);
        next
    }
}

impl<M> PartialEq for NodeIdentity<M> {
    fn eq(&self, other: &Self) -> bool {
        self.generation == other.generation
            && self.addr == other.addr
            && self.node_id == other.node_id
    }
}

impl<M> Eq for NodeIdentity<M> {}

impl<M> std::fmt::Debug for NodeIdentity<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}#{}", self.node_id, self.addr, self.generation)
    }
}

impl<M> foca::Identity for NodeIdentity<M> {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(self.next_generation())
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // A higher generation is a later start of the process on this address,
        // so it wins. Equal generations at one address can only come from a
        // misconfiguration; break the tie on the node id so every member
        // decides the same way and the conflict cannot loop.
        match self.generation.cmp(&adversary.generation) {
            std::cmp::Ordering::Equal => self.node_id > adversary.node_id,
            ord => ord == std::cmp::Ordering::Greater,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn ident(id: &str, generation: u64, port: u16) -> NodeIdentity<()> {
        NodeIdentity::new(
            id.into(),
            generation,
            SocketAddr::from(([127, 0, 0, 1], port)),
        )
    }

    #[test]
    fn higher_generation_wins_and_renew_wins() {
        let old = ident("a", 5, 1);
        let new = ident("a", 6, 1);
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        let renewed = old.renew().expect("renew is always offered");
        assert!(renewed.win_addr_conflict(&old));
        assert_ne!(renewed, old);
    }
}
