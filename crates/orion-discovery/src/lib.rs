//! Service discovery: the endpoint view every node builds for itself (`view`), the health
//! each node announces about its own endpoints by gossip (`health`), and the DNS server that
//! answers from the view (`dns`).
//!
//! The view is a pure function of the replicated state, the announcements and the nodes'
//! addresses; the agent owns the IO (gossip, the watch channel that publishes the view).

pub mod dns;
pub mod dns_server;
pub mod health;
pub mod view;

pub use health::NodeHealth;
pub use view::{NodeAddrs, build, node_addrs};
