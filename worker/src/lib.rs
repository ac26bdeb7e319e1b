//! The worker side of a node: what runs the tasks the managers assign to it.
//!
//! [`agent::Agent`] keeps the node's session with the leader's dispatcher (registration,
//! heartbeats, chained assignment increments, secrets and configs once per node, the node's
//! network state, status reports, log subscriptions) and keeps the node's certificate
//! current. [`executor::Executor`] drives each assigned task through its states with the pure
//! `next_step`, records them in its versioned task table, and restores after a restart.
//! [`runtime::Runtime`] is the container runtime it drives: [`oci`] (runc or crun, images
//! from [`image`] on overlayfs, limits in cgroups) or the in-memory fake of tests and
//! benchmarks. [`logs`] keeps the tasks' output.

pub mod agent;
pub mod executor;
pub mod image;
pub mod logs;
pub mod oci;
pub mod runtime;
