//! The `shoal` binary's library: the CLI commands and the node daemon.
//!
//! `main` parses flags and calls [`commands::run`]; `shoal daemon` runs [`daemon::run`].

pub mod api_fields;
pub mod bench;
pub mod bench_chaos;
pub mod bench_containers;
pub mod bench_failover;
pub mod bench_net;
pub mod bench_raft;
pub mod bench_update;
pub mod bench_wire;
pub mod client;
pub mod commands;
pub mod daemon;
pub mod filter;
pub mod image;
pub mod limits;
pub mod logs;
pub mod manual;
pub mod network;
pub mod node_runtime;
pub mod output;
pub mod secret;
pub mod service;
pub mod stack;
pub mod template;
pub mod units;
