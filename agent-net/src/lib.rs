//! Container networking on a node.
//!
//! [`local::LocalNet`]: a node-local bridge (`shoal0`, 172.30.0.0/24, as Docker's default
//! bridge) that gives every container its own network namespace with an address on it,
//! reachable from the node; it holds the container's default route.
//! [`overlay::Overlay`]: the VXLAN overlay networks, one namespace with a bridge per network,
//! a veth per task and network (`eth0..ethN-1`), and the node's ingress sandbox.
//! [`node::NodeNet`]: the node's network controller, which decides what these should be and
//! acts through a [`dataplane::Dataplane`]: [`dataplane::KernelDataplane`] (the two above,
//! nftables and the DNS sockets) or the in-memory [`dataplane::fake::FakeDataplane`].

pub mod dataplane;
pub mod dns;
pub mod local;
pub mod nft;
pub mod node;
pub mod overlay;
