//! `shoal stack …`: compose files deployed as services, networks, secrets and configs named
//! `STACK_name` and labelled with the stack's namespace — a client-side translation, as in
//! Docker.

pub mod compose;
pub mod interp;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use proto::api::ServiceView;
use proto::pb;
use proto::spec::NetworkSpec;

use crate::client::{Client, FileKind};
use crate::commands::CliError;
use crate::output::{print_rows, Format};
use compose::{Condition, Stack, NAMESPACE_LABEL};

#[derive(Subcommand, Debug)]
pub enum StackCmd {
    /// Deploy a new stack or update an existing stack.
    #[command(alias = "up")]
    Deploy(DeployArgs),
    /// List stacks.
    #[command(alias = "list")]
    Ls {
        /// Format output: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// List the tasks in the stack.
    Ps {
        /// Do not truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// Filter output based on conditions provided (desired-state=running|shutdown|accepted).
        #[arg(short, long, value_name = "FILTER")]
        filter: Vec<String>,
        /// Format output: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
        /// Only display task IDs.
        #[arg(short, long)]
        quiet: bool,
        /// The stack.
        stack: String,
    },
    /// List the services in the stack.
    Services {
        /// Format output: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
        /// Only display IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Filter output based on conditions provided (id=, name=, label=, mode=).
        #[arg(short, long, value_name = "FILTER")]
        filter: Vec<String>,
        /// The stack.
        stack: String,
    },
    /// Remove one or more stacks.
    #[command(alias = "remove", alias = "down")]
    Rm {
        /// Stacks to remove.
        #[arg(required = true, value_name = "STACK")]
        stacks: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Path to a Compose file, or "-" to read from stdin; repeat to merge several.
    #[arg(
        short = 'c',
        long = "compose-file",
        required = true,
        value_name = "FILE"
    )]
    pub files: Vec<PathBuf>,
    /// Prune services that are no longer referenced.
    #[arg(long)]
    pub prune: bool,
    /// Send registry authentication details to Swarm agents (accepted; shoal's nodes use
    /// their own registry settings).
    #[arg(long)]
    pub with_registry_auth: bool,
    /// Query the registry to resolve image digest and supported platforms: always, changed
    /// or never (accepted; images are resolved by the nodes that pull them).
    #[arg(long, default_value = "always", value_parser = ["always", "changed", "never"])]
    pub resolve_image: String,
    /// Exit immediately instead of waiting for the stack services to converge
    /// (`--detach=false`: wait).
    #[arg(short, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = true)]
    pub detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    pub quiet: bool,
    /// The stack's name.
    pub stack: String,
}

pub async fn run(c: Client, cmd: StackCmd) -> Result<(), CliError> {
    match cmd {
        StackCmd::Deploy(a) => deploy(&c, a).await,
        StackCmd::Ls { format } => ls(&c, format).await,
        StackCmd::Ps {
            no_trunc,
            filter,
            format,
            quiet,
            stack,
        } => ps(&c, &stack, no_trunc, &filter, format, quiet).await,
        StackCmd::Services {
            format,
            quiet,
            filter,
            stack,
        } => services(&c, &stack, format, quiet, &filter).await,
        StackCmd::Rm { stacks } => {
            let mut errs = Vec::new();
            for s in &stacks {
                if let Err(e) = rm(&c, s).await {
                    errs.push(e.0);
                }
            }
            match errs.is_empty() {
                true => Ok(()),
                false => Err(CliError(errs.join("; "))),
            }
        }
    }
}

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError(format!("Error: {e}"))
}

/// Read and check everything before the first change: a bad file creates nothing.
pub fn load(a: &DeployArgs) -> Result<Stack, CliError> {
    let files: Vec<PathBuf> = a
        .files
        .iter()
        .map(|f| {
            if f.as_os_str() == "-" {
                stdin_file()
            } else {
                Ok(f.clone())
            }
        })
        .collect::<Result<_, _>>()?;
    compose::load(&files, &a.stack).map_err(fail)
}

/// `-c -`: the file on stdin, kept in a temporary file for the reader (bounded).
fn stdin_file() -> Result<PathBuf, CliError> {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin()
        .take(yaml::MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(format!("stdin: {e}")))?;
    let path = std::env::temp_dir().join(format!("shoal-stack-{}.yml", std::process::id()));
    std::fs::write(&path, text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    Ok(path)
}

fn in_stack(labels: &BTreeMap<String, String>, stack: &str) -> bool {
    labels.get(NAMESPACE_LABEL).is_some_and(|s| s == stack)
}

async fn stack_services(c: &Client, stack: &str) -> Result<Vec<ServiceView>, CliError> {
    Ok(c.list_services()
        .await?
        .into_iter()
        .filter(|s| in_stack(&s.spec.labels, stack))
        .collect())
}

async fn deploy(c: &Client, a: DeployArgs) -> Result<(), CliError> {
    let st = load(&a)?;
    for w in &st.warnings {
        eprintln!("Warning: {w}");
    }
    // External objects must exist before anything is made.
    let networks = c.list_networks().await?;
    let net_names: BTreeSet<&str> = networks.iter().map(|n| n.spec.name.as_str()).collect();
    for n in st.networks.iter().filter(|n| n.external) {
        if !net_names.contains(n.name.as_str()) {
            return Err(fail(format!(
                "{}: networks.{}: external network {:?} not found",
                n.at, n.key, n.name
            )));
        }
    }
    let mut file_names: [BTreeSet<String>; 2] = Default::default();
    for (i, kind) in [FileKind::Secret, FileKind::Config].into_iter().enumerate() {
        file_names[i] = c
            .list_file_objects(kind)
            .await?
            .into_iter()
            .map(|o| o.name)
            .collect();
    }
    for (i, (what, defs)) in [("secrets", &st.secrets), ("configs", &st.configs)]
        .into_iter()
        .enumerate()
    {
        for d in defs.iter().filter(|d| d.external) {
            if !file_names[i].contains(&d.name) {
                return Err(fail(format!(
                    "{}: {what}.{}: external {} {:?} not found",
                    d.at,
                    d.key,
                    &what[..what.len() - 1],
                    d.name
                )));
            }
        }
    }
    // Files of secrets and configs are read before anything is created.
    let mut file_data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for d in st.secrets.iter().chain(&st.configs).filter(|d| !d.external) {
        if let Some(f) = &d.file {
            let data = crate::secret::read_content(&f.display().to_string()).map_err(|e| {
                CliError(format!(
                    "Error: {}: {}",
                    d.at,
                    e.0.trim_start_matches("Error: ")
                ))
            })?;
            file_data.insert(d.name.clone(), data);
        }
    }
    let ns = |mut l: BTreeMap<String, String>| {
        l.insert(NAMESPACE_LABEL.to_string(), a.stack.clone());
        l
    };
    for n in st.networks.iter().filter(|n| !n.external) {
        if net_names.contains(n.name.as_str()) {
            continue;
        }
        println!("Creating network {}", n.name);
        let spec = NetworkSpec {
            name: n.name.clone(),
            driver: n.driver.clone(),
            subnet: n.subnet.clone(),
            attachable: n.attachable,
            internal: n.internal,
            labels: ns(n.labels.clone()),
            ..Default::default()
        };
        c.create_network(&spec).await?;
    }
    for (i, (kind, word, defs)) in [
        (FileKind::Secret, "secret", &st.secrets),
        (FileKind::Config, "config", &st.configs),
    ]
    .into_iter()
    .enumerate()
    {
        for d in defs.iter().filter(|d| !d.external) {
            // Secrets and configs cannot change; one of that name stays as it is.
            if file_names[i].contains(&d.name) {
                continue;
            }
            println!("Creating {word} {}", d.name);
            c.create_file_object(
                kind,
                pb::CreateFileObjectRequest {
                    name: d.name.clone(),
                    data: file_data.get(&d.name).cloned().unwrap_or_default(),
                    labels: ns(d.labels.clone()).into_iter().collect(),
                },
            )
            .await?;
        }
    }
    // The manager keeps network ids in a spec: so does the spec compared with it.
    let net_ids: BTreeMap<String, String> = c
        .list_networks()
        .await?
        .into_iter()
        .map(|n| (n.spec.name, n.id))
        .collect();
    let mut st = st;
    for s in &mut st.services {
        for n in &mut s.spec.task.networks {
            if let Some(id) = net_ids.get(&n.target) {
                n.target = id.clone();
            }
        }
    }
    let existing: BTreeMap<String, ServiceView> = c
        .list_services()
        .await?
        .into_iter()
        .map(|s| (s.spec.name.clone(), s))
        .collect();
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for s in &st.services {
        // Beyond Swarm: wait for what this service depends on.
        for (dep, cond) in &s.depends_on {
            if let Some(id) = ids.get(dep) {
                if !a.quiet {
                    println!(
                        "Waiting for service {}_{dep} ({}) before {}",
                        a.stack,
                        match cond {
                            Condition::Started => "running",
                            Condition::Healthy => "healthy",
                            Condition::Completed => "completed",
                        },
                        s.spec.name
                    );
                }
                crate::service::progress::wait(c, id, false, None, true).await?;
            }
        }
        let id = match existing.get(&s.spec.name) {
            Some(cur) if cur.spec == s.spec => cur.id.clone(),
            Some(cur) => {
                println!("Updating service {} (id: {})", s.spec.name, cur.id);
                c.update_service(&cur.id, cur.version, Some(&s.spec))
                    .await?
                    .id
            }
            None => {
                println!("Creating service {}", s.spec.name);
                c.create_service(&s.spec).await?.id
            }
        };
        ids.insert(s.key.clone(), id);
    }
    if a.prune {
        let keep: BTreeSet<&str> = st.services.iter().map(|s| s.spec.name.as_str()).collect();
        for s in existing.values() {
            if in_stack(&s.spec.labels, &a.stack) && !keep.contains(s.spec.name.as_str()) {
                println!("Removing service {}", s.spec.name);
                c.remove_service(&s.id).await?;
            }
        }
    }
    if !a.detach {
        for s in &st.services {
            if let Some(id) = ids.get(&s.key) {
                crate::service::progress::wait(c, id, false, None, a.quiet).await?;
            }
        }
    }
    Ok(())
}

async fn ls(c: &Client, format: Format) -> Result<(), CliError> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for s in c.list_services().await? {
        if let Some(st) = s.spec.labels.get(NAMESPACE_LABEL) {
            *counts.entry(st.clone()).or_default() += 1;
        }
    }
    let rows = counts
        .into_iter()
        .map(|(name, n)| {
            let j = serde_json::json!({"Name": name, "Services": n.to_string()});
            (vec![name, n.to_string()], j.to_string())
        })
        .collect();
    print_rows(&["NAME", "SERVICES"], rows, format);
    Ok(())
}

async fn services(
    c: &Client,
    stack: &str,
    format: Format,
    quiet: bool,
    filter: &[String],
) -> Result<(), CliError> {
    let f = crate::filter::Filters::parse(filter, &crate::service::render::LS_FILTERS)?;
    let views = stack_services(c, stack).await?;
    if views.is_empty() {
        return Err(fail(format!("Nothing found in stack: {stack}")));
    }
    let views: Vec<ServiceView> = views
        .into_iter()
        .filter(|v| crate::service::render::service_matches(&f, v))
        .collect();
    crate::service::render::print_ls(&views, format, quiet);
    Ok(())
}

async fn ps(
    c: &Client,
    stack: &str,
    no_trunc: bool,
    filter: &[String],
    format: Format,
    quiet: bool,
) -> Result<(), CliError> {
    let (states, node) = crate::service::ps::parse_ps_filters(filter).map_err(fail)?;
    let states = if states.is_empty() {
        vec![String::new()]
    } else {
        states
    };
    let views = stack_services(c, stack).await?;
    if views.is_empty() {
        return Err(fail(format!("Nothing found in stack: {stack}")));
    }
    let mut tasks = Vec::new();
    for v in &views {
        for st in &states {
            tasks.extend(c.list_tasks(&v.id, &node, st).await?);
        }
    }
    tasks.retain(|t| crate::service::ps::keep_task(filter, t));
    crate::service::ps::print_tasks(&tasks, no_trunc, quiet, format);
    Ok(())
}

/// Remove the stack's services, then its networks, secrets and configs.
async fn rm(c: &Client, stack: &str) -> Result<(), CliError> {
    let mut found = false;
    let mut errs: Vec<String> = Vec::new();
    for s in stack_services(c, stack).await? {
        found = true;
        println!("Removing service {}", s.spec.name);
        if let Err(e) = c.remove_service(&s.id).await {
            errs.push(CliError::from(e).0);
        }
    }
    for (kind, word) in [(FileKind::Secret, "secret"), (FileKind::Config, "config")] {
        for o in c.list_file_objects(kind).await? {
            if in_stack(&o.labels.clone().into_iter().collect(), stack) {
                found = true;
                println!("Removing {word} {}", o.name);
                if let Err(e) = c.remove_file_object(kind, &o.id).await {
                    errs.push(CliError::from(e).0);
                }
            }
        }
    }
    for n in c.list_networks().await? {
        if in_stack(&n.spec.labels, stack) {
            found = true;
            println!("Removing network {}", n.spec.name);
            // The services' tasks let go of the network as they stop: try for a while.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                match c.remove_network(&n.id).await {
                    Ok(()) => break,
                    Err(e)
                        if std::time::Instant::now() < deadline
                            && e.code() == Some(tonic::Code::FailedPrecondition) =>
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await
                    }
                    Err(e) => {
                        errs.push(CliError::from(e).0);
                        break;
                    }
                }
            }
        }
    }
    if !found {
        return Err(fail(format!("Nothing found in stack: {stack}")));
    }
    match errs.is_empty() {
        true => Ok(()),
        false => Err(CliError(errs.join("; "))),
    }
}
