//! `shoal service …`: Docker's service verbs, flags and output shapes, cut as docker/cli cuts
//! `cli/command/service/`.
//!
//! The flags ([`flags`]) and their value parsers ([`parse`], [`ports`]), the flag → spec
//! conversion ([`spec`], [`apply`]), the renderings ([`render`], [`ps`], [`inspect`]) and the
//! convergence decision ([`watch`]) are pure; the verbs ([`create`], [`update`], [`ps`]) and
//! the converge display ([`progress`]) talk to the daemon and print.

pub mod apply;
pub mod create;
pub mod docker_json;
pub mod flags;
pub mod inspect;
pub mod parse;
pub mod ports;
pub mod progress;
pub mod ps;
pub mod render;
pub mod spec;
pub mod update;
pub mod watch;

#[cfg(test)]
mod tests;

pub use flags::{CreateArgs, ModeFlag, PsArgs, SpecFlags, UpdateArgs};
pub use render::short_id;
pub use spec::build_spec;

use clap::Subcommand;

use crate::client::Client;
use crate::commands::CliError;
use crate::output::ListArgs;

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Create a new service.
    Create(Box<CreateArgs>),
    /// Fetch the logs of a service or task.
    Logs(crate::logs::LogsArgs),
    /// List services.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// List the tasks of one or more services.
    Ps(Box<PsArgs>),
    /// Display detailed information on one or more services.
    Inspect {
        /// Print the information in a human friendly format.
        #[arg(long)]
        pretty: bool,
        /// Format output: json (a JSON array) or a Go template (e.g. '{{.Spec.Name}}').
        #[arg(short, long, default_value = "json")]
        format: String,
        /// Services: id, unique id prefix or name.
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
    },
    /// Scale one or multiple replicated services.
    Scale {
        /// Exit immediately instead of waiting for the service to converge (`--detach=false`:
        /// wait).
        #[arg(short, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
        detach: bool,
        /// Services and their replica counts, e.g. web=5.
        #[arg(required = true, value_name = "SERVICE=REPLICAS")]
        scales: Vec<String>,
    },
    /// Update a service.
    Update(Box<UpdateArgs>),
    /// Revert changes to a service's configuration.
    Rollback {
        /// Exit immediately instead of waiting for the service to converge (`--detach=false`:
        /// wait).
        #[arg(short, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
        detach: bool,
        /// Suppress progress output.
        #[arg(short, long)]
        quiet: bool,
        /// The service: id, unique id prefix or name.
        service: String,
    },
    /// Remove one or more services.
    #[command(alias = "remove")]
    Rm {
        /// Services: id, unique id prefix or name.
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
    },
}

/// Every error, joined: the command's (exit 1).
fn first_error(errs: Vec<CliError>) -> Result<(), CliError> {
    if errs.is_empty() {
        return Ok(());
    }
    let msgs: Vec<String> = errs.into_iter().map(|e| e.0).collect();
    Err(CliError(msgs.join("; ")))
}

pub async fn run(c: Client, cmd: ServiceCmd) -> Result<(), CliError> {
    match cmd {
        ServiceCmd::Create(a) => create::create(&c, *a).await,
        ServiceCmd::Logs(a) => crate::logs::run_logs(&c, a).await,
        ServiceCmd::Ls(a) => render::ls(&c, a).await,
        ServiceCmd::Ps(a) => ps::ps(&c, *a).await,
        ServiceCmd::Inspect {
            pretty,
            format,
            services,
        } => inspect::inspect(&c, pretty, &format, &services).await,
        ServiceCmd::Scale { detach, scales } => update::scale(&c, detach, &scales).await,
        ServiceCmd::Update(a) => update::update(&c, *a).await,
        ServiceCmd::Rollback {
            detach,
            quiet,
            service,
        } => update::rollback(&c, &service, detach, quiet).await,
        ServiceCmd::Rm { services } => {
            let mut errs = Vec::new();
            for s in services {
                match c.remove_service(&s).await {
                    Ok(()) => println!("{s}"),
                    Err(e) => errs.push(e.into()),
                }
            }
            first_error(errs)
        }
    }
}
