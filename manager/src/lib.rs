//! The manager: the replicated store and the components that run on it.
//!
//! Cut as swarmkit cuts it: [`store`] (typed tables changed only through Raft), [`raft`]
//! (openraft, on disk, over gRPC), [`ca`] (certificates and join tokens), [`controlapi`]
//! (validated CRUD for the CLI, served through [`controlapi_server`], where a follower forwards
//! every call to the leader, and refusing with [`error::ApiError`]), [`bootstrap`] (a new
//! cluster's first objects), [`dispatcher`] (the session every node holds with the
//! leader), [`membership`] (raft voters follow the nodes' roles). Components talk only through
//! the store. Leader-only loops start when this node gains leadership and stop when it loses
//! it ([`manager::Manager`]).

pub mod allocator;
pub mod auth;
pub mod bootstrap;
pub mod ca;
pub mod clock;
pub mod controlapi;
pub mod controlapi_keys;
pub mod controlapi_logs;
pub mod controlapi_networks;
pub mod controlapi_secrets;
pub mod controlapi_server;
pub mod controlapi_services;
pub mod controlapi_watch;
pub mod dispatcher;
pub mod error;
pub mod keys;
pub mod limits;
pub mod manager;
pub mod membership;
pub mod orchestrator;
pub mod raft;
pub mod recovery;
pub mod scheduler;
pub mod secrets;
pub mod store;
pub mod supervise;

pub use manager::{Manager, ManagerConfig};
