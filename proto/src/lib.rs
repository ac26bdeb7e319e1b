//! The wire of shoal: what two shoal processes must agree on to talk at all.
//!
//! - [`pb`]: the protobuf messages and gRPC services generated from `proto/shoal.proto`.
//! - [`security`]: the cluster PKI as seen on the wire — join tokens that pin the root CA,
//!   node certificates that carry the node id (CN) and role (OU), key and CSR generation.
//! - [`transport`]: gRPC over mutual TLS (rustls with the ring provider) with certificates that
//!   can be swapped at run time (renewal, promotion), and gRPC over the local unix socket.
//! - [`limits`]: the size limits of requests and of the fields users write, shared by the CLI
//!   (early refusal) and the managers (the refusal that counts).
//! - [`reference`]: image references in Docker's grammar, with Docker's messages.

pub mod api;
pub mod convert;
pub mod convert_api;
pub mod limits;
pub mod reference;
pub mod security;
pub mod spec;
pub mod transport;

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("shoal.v1");
}
