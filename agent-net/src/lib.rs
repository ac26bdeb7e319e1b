//! Container networking on a node.
//!
//! Today: [`local::LocalNet`], a node-local bridge (`shoal0`, 172.30.0.0/24, as Docker's
//! default bridge) that gives every container its own network namespace with an address on
//! it, reachable from the node. The overlay networks, service discovery, VIPs and the ingress
//! mesh come with the networking issue and build on the same per-task namespaces.

pub mod local;
pub mod nft;
