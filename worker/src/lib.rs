//! The worker side of a node: the agent that keeps a session with the managers.
//!
//! Issue-by-issue this grows into the task executor; today it registers the node, heartbeats,
//! follows the manager set and the leader, and keeps the node's certificate current (renewal
//! before expiry, and the role change that promotion or demotion asks for).

pub mod agent;
pub mod executor;
pub mod image;
pub mod logs;
pub mod oci;
pub mod runtime;
