//! `service ps`: the tasks of services, newest first per slot, as Docker lists them.

use std::collections::HashSet;

use proto::api::TaskView;
use proto::spec::TaskState;
use serde_json::json;

use crate::commands::CliError;
use crate::output::{human_duration, json_line, table, title, Format};

use super::flags::PsArgs;
use super::render::short_id;
use crate::client::Client;
use crate::units::now_ms;

/// CURRENT STATE of `service ps`: "Running 5 seconds ago".
pub fn current_state(t: &TaskView, now_ms: i64) -> String {
    let at = if t.status.timestamp_ms > 0 {
        t.status.timestamp_ms
    } else {
        t.created_at_ms
    };
    format!(
        "{} {} ago",
        title(t.status.state.as_str()),
        human_duration(now_ms - at)
    )
}

const MAX_ERR_LEN: usize = 30;

/// ERROR of `service ps`: the task's error (or why a pending task waits), quoted, truncated.
pub fn task_error(t: &TaskView, no_trunc: bool) -> String {
    let mut e = t.status.err.clone();
    if e.is_empty() && t.status.state == TaskState::Pending {
        e = t.status.message.clone();
    }
    if e.is_empty() {
        return e;
    }
    if !no_trunc && e.chars().count() > MAX_ERR_LEN {
        e = e.chars().take(MAX_ERR_LEN - 1).collect::<String>() + "…";
    }
    format!("\"{e}\"")
}

/// `service.slot`, or `service.nodeid` for global tasks.
pub fn task_name(t: &TaskView) -> String {
    if t.slot != 0 {
        format!("{}.{}", t.service_name, t.slot)
    } else {
        format!("{}.{}", t.service_name, t.node_id)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PsRow {
    pub id: String,
    pub name: String,
    /// An older task of the same slot than the row above it.
    pub history: bool,
    pub image: String,
    pub node: String,
    pub desired: String,
    pub current: String,
    pub error: String,
}

pub const PS_HEADERS: [&str; 8] = [
    "ID",
    "NAME",
    "IMAGE",
    "NODE",
    "DESIRED STATE",
    "CURRENT STATE",
    "ERROR",
    "PORTS",
];

impl PsRow {
    pub fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            if self.history {
                format!(" \\_ {}", self.name)
            } else {
                self.name.clone()
            },
            self.image.clone(),
            self.node.clone(),
            self.desired.clone(),
            self.current.clone(),
            self.error.clone(),
            String::new(),
        ]
    }

    pub fn json(&self) -> String {
        json_line(vec![
            ("ID", json!(self.id)),
            ("Name", json!(self.name)),
            ("Image", json!(self.image)),
            ("Node", json!(self.node)),
            ("DesiredState", json!(self.desired)),
            ("CurrentState", json!(self.current)),
            ("Error", json!(self.error)),
        ])
    }
}

/// Tasks in Docker's order: by service, slot (or node for global tasks), newest first.
pub fn sort_tasks(tasks: &mut [TaskView]) {
    tasks.sort_by(|a, b| {
        let key = |t: &TaskView| {
            (
                t.service_name.clone(),
                t.service_id.clone(),
                t.slot,
                if t.slot == 0 {
                    t.node_id.clone()
                } else {
                    String::new()
                },
            )
        };
        key(a)
            .cmp(&key(b))
            .then(b.created_at_ms.cmp(&a.created_at_ms))
            .then(a.id.cmp(&b.id))
    });
}

/// `service ps` rows: newest task of each slot first, its predecessors marked as history.
pub fn ps_rows(tasks: &[TaskView], now_ms: i64, no_trunc: bool) -> Vec<PsRow> {
    let mut ts = tasks.to_vec();
    sort_tasks(&mut ts);
    let mut prev = String::new();
    ts.iter()
        .map(|t| {
            let name = task_name(t);
            let history = name == prev;
            prev = name.clone();
            PsRow {
                id: if no_trunc {
                    t.id.clone()
                } else {
                    short_id(&t.id)
                },
                name,
                history,
                image: t.spec.image.clone(),
                node: t.node_hostname.clone(),
                desired: title(t.desired_state.as_str()),
                current: current_state(t, now_ms),
                error: task_error(t, no_trunc),
            }
        })
        .collect()
}

/// `--filter` of `service ps`: the desired states and the node asked for.
pub fn parse_ps_filters(filters: &[String]) -> Result<(Vec<String>, String), String> {
    let mut states = Vec::new();
    let mut node = String::new();
    for f in filters {
        match f.split_once('=') {
            Some(("desired-state", v)) => match v {
                "running" | "shutdown" | "accepted" => {
                    if !states.iter().any(|s| s == v) {
                        states.push(v.to_string());
                    }
                }
                _ => {
                    return Err(format!(
                        "invalid filter 'desired-state={v}': use running, shutdown or accepted"
                    ))
                }
            },
            Some(("node", v)) if !v.is_empty() => node = v.to_string(),
            // Applied to the tasks fetched ([`keep_task`]).
            Some(("id" | "name", _)) => {}
            _ => return Err(format!("invalid filter '{f}'")),
        }
    }
    Ok((states, node))
}

/// The `id=` (prefix of the task id) and `name=` (prefix of `service.slot`) filters of
/// `service ps`, `node ps` and `stack ps`; other keys are left to [`parse_ps_filters`].
pub fn keep_task(filters: &[String], t: &TaskView) -> bool {
    let f = |key: &str, v: &str| match key {
        "id" => t.id.starts_with(v),
        _ => task_name(t).starts_with(v),
    };
    ["id", "name"].iter().all(|key| {
        let vs: Vec<&str> = filters
            .iter()
            .filter_map(|x| x.split_once('=').filter(|(k, _)| k == key).map(|(_, v)| v))
            .collect();
        vs.is_empty() || vs.iter().any(|v| f(key, v))
    })
}

pub(super) async fn ps(c: &Client, a: PsArgs) -> Result<(), CliError> {
    let (states, node) =
        parse_ps_filters(&a.filter).map_err(|e| CliError(format!("Error: {e}")))?;
    let states = if states.is_empty() {
        vec![String::new()]
    } else {
        states
    };
    let mut tasks: Vec<TaskView> = Vec::new();
    let mut seen = HashSet::new();
    for s in &a.services {
        // Resolve first so an unknown service is an error even when filters match nothing.
        let view = c.get_service(s).await?;
        for st in &states {
            for t in c.list_tasks(&view.id, &node, st).await? {
                if seen.insert(t.id.clone()) {
                    tasks.push(t);
                }
            }
        }
    }
    tasks.retain(|t| keep_task(&a.filter, t));
    print_tasks(&tasks, a.no_trunc, a.quiet, a.format);
    Ok(())
}

/// Tasks as `service ps` and `node ps` print them: IDs (`quiet`), JSON lines or the table.
pub fn print_tasks(tasks: &[TaskView], no_trunc: bool, quiet: bool, format: Format) {
    let rows = ps_rows(tasks, now_ms(), no_trunc);
    if quiet {
        for r in &rows {
            println!("{}", r.id);
        }
        return;
    }
    match format {
        Format::Json => {
            for r in &rows {
                println!("{}", r.json());
            }
        }
        Format::Table => {
            let cells: Vec<Vec<String>> = rows.iter().map(PsRow::cells).collect();
            print!("{}", table(&PS_HEADERS, &cells));
        }
        Format::Template(t) => {
            crate::output::print_template(t, &rows.iter().map(|r| r.json()).collect::<Vec<_>>())
        }
    }
}
