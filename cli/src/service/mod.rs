//! `shoal service …`: Docker's service verbs, flags and output shapes, cut as docker/cli cuts
//! `cli/command/service/`.
//!
//! The flags ([`flags`]) and their value parsers ([`parse`], [`ports`]), the flag → spec
//! conversion ([`spec`], [`apply`]), the renderings ([`render`], [`ps`], [`inspect`]) and the
//! convergence decision ([`watch`]) are pure; the verbs ([`create`], [`update`], [`ps`]) and
//! the converge display ([`progress`]) talk to the daemon and print.

pub mod apply;
pub mod create;
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
use proto::api::{ServiceView, TaskView};
use proto::pb;
use proto::pb::control_client::ControlClient;
use serde_json::Value;
use tonic::transport::Channel;
use tonic::Status;

use crate::commands::{retry, CliError};
use crate::output::{table, Format};

use self::create::create;
use self::inspect::pretty_service;
use self::parse::parse_scale;
use self::progress::wait;
use self::ps::ps;
use self::render::{inspect_service_json, ls_rows, LS_HEADERS};
use self::spec::{scale_spec, update_needs_networks, update_spec};
use self::update::{edit_service, rollback};

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Create a new service.
    Create(Box<CreateArgs>),
    /// Fetch the logs of a service or task.
    Logs(crate::logs::LogsArgs),
    /// List services.
    #[command(alias = "list")]
    Ls {
        /// Format output: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
        /// Only display IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List the tasks of one or more services.
    Ps(Box<PsArgs>),
    /// Display detailed information on one or more services.
    Inspect {
        /// Print the information in a human friendly format.
        #[arg(long)]
        pretty: bool,
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
    },
    /// Scale one or multiple replicated services.
    Scale {
        /// Exit immediately instead of waiting for the service to converge.
        #[arg(short, long)]
        detach: bool,
        #[arg(required = true, value_name = "SERVICE=REPLICAS")]
        scales: Vec<String>,
    },
    /// Update a service.
    Update(Box<UpdateArgs>),
    /// Revert changes to a service's configuration.
    Rollback {
        /// Exit immediately instead of waiting for the service to converge.
        #[arg(short, long)]
        detach: bool,
        /// Suppress progress output.
        #[arg(short, long)]
        quiet: bool,
        service: String,
    },
    /// Remove one or more services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
    },
}

type Client = ControlClient<Channel>;

fn decode<T: serde::de::DeserializeOwned>(doc: pb::JsonDoc) -> Result<T, CliError> {
    serde_json::from_str(&doc.json)
        .map_err(|e| CliError(format!("Error: malformed reply from the daemon: {e}")))
}

async fn get_service_doc(c: &Client, id: &str) -> Result<pb::JsonDoc, Status> {
    retry(|| {
        let mut c = c.clone();
        let id = id.to_string();
        async move {
            c.get_service(pb::GetServiceRequest { id })
                .await
                .map(|r| r.into_inner())
        }
    })
    .await
}

async fn get_service(c: &Client, id: &str) -> Result<ServiceView, CliError> {
    decode(get_service_doc(c, id).await?)
}

async fn list_tasks(
    c: &Client,
    service: &str,
    node: &str,
    desired_state: &str,
) -> Result<Vec<TaskView>, CliError> {
    let req = pb::ListTasksRequest {
        service: service.to_string(),
        node: node.to_string(),
        desired_state: desired_state.to_string(),
    };
    let doc = retry(|| {
        let mut c = c.clone();
        let req = req.clone();
        async move { c.list_tasks(req).await.map(|r| r.into_inner()) }
    })
    .await?;
    decode(doc)
}

async fn update_service(
    c: &Client,
    req: pb::UpdateServiceRequest,
) -> Result<ServiceView, CliError> {
    let doc = retry(|| {
        let mut c = c.clone();
        let req = req.clone();
        async move { c.update_service(req).await.map(|r| r.into_inner()) }
    })
    .await?;
    decode(doc)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn first_error(errs: Vec<CliError>) -> Result<(), CliError> {
    if errs.is_empty() {
        return Ok(());
    }
    let msgs: Vec<String> = errs.into_iter().map(|e| e.0).collect();
    Err(CliError(msgs.join("; ")))
}

pub async fn run(c: Client, cmd: ServiceCmd) -> Result<(), CliError> {
    match cmd {
        ServiceCmd::Create(a) => create(&c, *a).await,
        ServiceCmd::Logs(a) => crate::logs::run_logs(c, a).await,
        ServiceCmd::Ls { format, quiet } => {
            let doc = retry(|| {
                let mut c = c.clone();
                async move { c.list_services(pb::Empty {}).await.map(|r| r.into_inner()) }
            })
            .await?;
            let views: Vec<ServiceView> = decode(doc)?;
            let rows = ls_rows(&views);
            if quiet {
                for (cells, _) in &rows {
                    println!("{}", cells[0]);
                }
                return Ok(());
            }
            match format {
                Format::Json => {
                    for (_, j) in rows {
                        println!("{j}");
                    }
                }
                Format::Table => {
                    let cells: Vec<Vec<String>> = rows.into_iter().map(|(r, _)| r).collect();
                    print!("{}", table(&LS_HEADERS, &cells));
                }
            }
            Ok(())
        }
        ServiceCmd::Ps(a) => ps(&c, *a).await,
        ServiceCmd::Inspect { pretty, services } => {
            let mut docs = Vec::new();
            for s in &services {
                docs.push(get_service_doc(&c, s).await?);
            }
            if pretty {
                let views: Vec<ServiceView> =
                    docs.into_iter().map(decode).collect::<Result<_, _>>()?;
                // Network names are a nicety: without them (an older manager) show the ids.
                let nets = if views.iter().any(|v| !v.spec.task.networks.is_empty()) {
                    crate::network::list_networks(&c).await.unwrap_or_default()
                } else {
                    Vec::new()
                };
                let outs: Vec<String> = views.iter().map(|v| pretty_service(v, &nets)).collect();
                print!("{}", outs.join("\n\n"));
            } else {
                let mut arr = Vec::new();
                for d in docs {
                    let raw = decode::<Value>(d.clone())?;
                    let v: ServiceView = decode(d)?;
                    arr.push(inspect_service_json(raw, &v));
                }
                println!("{}", serde_json::to_string_pretty(&arr).unwrap_or_default());
            }
            Ok(())
        }
        ServiceCmd::Scale { detach, scales } => {
            let mut parsed = Vec::new();
            for s in &scales {
                parsed.push(parse_scale(s).map_err(|e| CliError(format!("Error: {e}")))?);
            }
            let mut errs = Vec::new();
            let mut done = Vec::new();
            for (name, n) in parsed {
                match edit_service(&c, &name, |spec| scale_spec(spec, n)).await {
                    Ok(v) => {
                        println!("{name} scaled to {n}");
                        done.push((v.id, v.update_status));
                    }
                    Err(e) => errs.push(e),
                }
            }
            if !detach {
                for (id, baseline) in done {
                    if let Err(e) = wait(&c, &id, false, baseline, false).await {
                        errs.push(e);
                    }
                }
            }
            first_error(errs)
        }
        ServiceCmd::Update(a) => {
            let v = if a.rollback {
                rollback(&c, &a.service).await?
            } else {
                let nets = if update_needs_networks(&a) {
                    crate::network::list_networks(&c).await?
                } else {
                    Vec::new()
                };
                edit_service(&c, &a.service, |spec| update_spec(spec, &a, &nets)).await?
            };
            println!("{}", a.service);
            if a.detach {
                return Ok(());
            }
            wait(&c, &v.id, a.rollback, v.update_status, a.quiet).await
        }
        ServiceCmd::Rollback {
            detach,
            quiet,
            service,
        } => {
            let v = rollback(&c, &service).await?;
            println!("{service}");
            if detach {
                return Ok(());
            }
            wait(&c, &v.id, true, v.update_status, quiet).await
        }
        ServiceCmd::Rm { services } => {
            let mut errs = Vec::new();
            for s in services {
                let r = retry(|| {
                    let mut c = c.clone();
                    let id = s.clone();
                    async move { c.remove_service(pb::GetServiceRequest { id }).await }
                })
                .await;
                match r {
                    Ok(_) => println!("{s}"),
                    Err(e) => errs.push(e.into()),
                }
            }
            first_error(errs)
        }
    }
}
