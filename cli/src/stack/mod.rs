//! `shoal stack …`: compose files deployed as services, networks, secrets and configs named
//! `STACK_name` and labelled with the stack's namespace — a client-side translation, as in
//! Docker.

pub mod compose;
pub mod interp;
pub mod yaml;
