//! `shoal service logs [-f] [--tail N] [-t] SERVICE|TASK`, printed as Docker prints it:
//! `web.1.abc123def456@w1    | line`; warnings (a node that cannot answer) go to stderr.

use std::io::Write;

use crate::client::Client;
use crate::commands::CliError;
use clap::Args;
use proto::pb;

#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// Service (id, name or prefix) or task (id or prefix).
    pub target: String,
    /// Follow log output.
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs of each task, or `all`.
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show timestamps.
    #[arg(short, long)]
    pub timestamps: bool,
    /// Do not truncate task ids.
    #[arg(long)]
    pub no_trunc: bool,
    /// Show logs since a timestamp (e.g. 2026-12-07T10:00:00Z) or relative (e.g. 42m).
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub since: Option<std::time::SystemTime>,
    /// Show logs before a timestamp (e.g. 2026-12-07T10:00:00Z) or relative (e.g. 42m).
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub until: Option<std::time::SystemTime>,
    /// Do not neatly format logs: the lines alone.
    #[arg(long)]
    pub raw: bool,
    /// Do not include task IDs in the output.
    #[arg(long)]
    pub no_task_ids: bool,
    /// Do not map IDs to names in the output.
    #[arg(long)]
    pub no_resolve: bool,
    /// Show extra details provided to logs (none are recorded: the same lines).
    #[arg(long)]
    pub details: bool,
}

/// `--since`/`--until`: an RFC 3339 time, Unix seconds, or a duration back from now.
pub fn parse_time(s: &str) -> Result<std::time::SystemTime, String> {
    let t = s.trim();
    if let Ok(ts) = humantime::parse_rfc3339_weak(t) {
        return Ok(ts);
    }
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() && (0.0..4e9).contains(&secs) {
            return Ok(std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs));
        }
    }
    let d = crate::units::parse_duration(t).map_err(|_| {
        format!("invalid time {s:?}: use e.g. 2026-12-07T10:00:00Z, 1733565600 or 42m")
    })?;
    std::time::SystemTime::now()
        .checked_sub(d)
        .ok_or_else(|| format!("invalid time {s:?}: too far back"))
}

/// How the context column is written.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context<'a> {
    pub no_trunc: bool,
    pub no_task_ids: bool,
    /// `--no-resolve`: the service's id (instead of its name) and node ids.
    pub service_id: Option<&'a str>,
}

/// `all` → -1 (everything), else a count.
pub fn parse_tail(s: &str) -> Result<i64, String> {
    match s.trim() {
        "all" | "" => Ok(-1),
        n => n
            .parse::<u32>()
            .map(i64::from)
            .map_err(|_| format!("invalid --tail {s:?}: use a number of lines or \"all\"")),
    }
}

/// The context column: `service.slot.task@node` (global tasks: the node id for the slot).
pub fn context(m: &pb::LogMessage, c: Context<'_>) -> String {
    let task: String = if c.no_trunc {
        m.task_id.clone()
    } else {
        m.task_id.chars().take(12).collect()
    };
    let slot = if m.slot == 0 {
        m.node_id.clone()
    } else {
        m.slot.to_string()
    };
    let (service, node) = match c.service_id {
        Some(id) => (id, m.node_id.as_str()),
        None => (m.service_name.as_str(), m.node_hostname.as_str()),
    };
    if c.no_task_ids {
        format!("{service}.{slot}@{node}")
    } else {
        format!("{service}.{slot}.{task}@{node}")
    }
}

/// One output line (without the newline).
pub fn format_line(m: &pb::LogMessage, timestamps: bool, c: Context<'_>) -> String {
    let ctx = context(m, c);
    if timestamps && !m.timestamp.is_empty() {
        format!("{} {ctx}    | {}", m.timestamp, m.line)
    } else {
        format!("{ctx}    | {}", m.line)
    }
}

pub async fn run_logs(c: &Client, a: LogsArgs) -> Result<(), CliError> {
    let tail = parse_tail(&a.tail).map_err(|e| CliError(format!("Error: {e}")))?;
    let req = pb::ServiceLogsRequest {
        target: a.target.clone(),
        follow: a.follow,
        tail,
        timestamps: a.timestamps,
    };
    // `--no-resolve`: the service's id in place of its name (a task target: its service's).
    let service_id = match a.no_resolve {
        true => c.get_service(&a.target).await.ok().map(|v| v.id),
        false => None,
    };
    let ctx = Context {
        no_trunc: a.no_trunc,
        no_task_ids: a.no_task_ids,
        service_id: service_id.as_deref(),
    };
    let mut stream = c.service_logs(req).await?;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    while let Some(m) = stream.message().await? {
        if !m.warning.is_empty() {
            let _ = writeln!(stderr.lock(), "Warning: {}", m.warning);
            continue;
        }
        if a.since.is_some() || a.until.is_some() {
            let at = humantime::parse_rfc3339_weak(&m.timestamp).ok();
            if at.is_some_and(|t| a.since.is_some_and(|s| t < s) || a.until.is_some_and(|u| t >= u))
            {
                continue;
            }
        }
        let line = if a.raw {
            m.line.clone()
        } else {
            format_line(&m, a.timestamps, ctx)
        };
        let res = if m.stream == "stderr" {
            writeln!(stderr.lock(), "{line}")
        } else {
            writeln!(stdout.lock(), "{line}")
        };
        if res.is_err() {
            // Output closed (e.g. piped into head): stop quietly.
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_as_docker_prints_them() {
        let m = pb::LogMessage {
            task_id: "abc123def456ghi789".into(),
            node_id: "n1".into(),
            slot: 1,
            stream: "stdout".into(),
            timestamp: "2026-01-01T00:00:00.000000001Z".into(),
            line: "hello".into(),
            service_name: "web".into(),
            node_hostname: "w1".into(),
            warning: String::new(),
        };
        let c = Context::default();
        assert_eq!(
            format_line(&m, false, c),
            "web.1.abc123def456@w1    | hello"
        );
        assert_eq!(
            format_line(&m, true, c),
            "2026-01-01T00:00:00.000000001Z web.1.abc123def456@w1    | hello"
        );
        let no_ids = Context {
            no_task_ids: true,
            ..c
        };
        assert_eq!(context(&m, no_ids), "web.1@w1");
        let ids = Context {
            service_id: Some("svc9"),
            ..c
        };
        assert_eq!(context(&m, ids), "svc9.1.abc123def456@n1");
        let g = pb::LogMessage { slot: 0, ..m };
        let full = Context {
            no_trunc: true,
            ..c
        };
        assert_eq!(context(&g, full), "web.n1.abc123def456ghi789@w1");
        let t = parse_time("2026-01-01T00:00:01Z").unwrap();
        assert_eq!(
            t,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_601)
        );
        assert_eq!(
            parse_time("10").unwrap(),
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(10)
        );
        let back = parse_time("10m").unwrap();
        let ago = std::time::SystemTime::now().duration_since(back).unwrap();
        assert!(
            ago >= std::time::Duration::from_secs(600) && ago < std::time::Duration::from_secs(660)
        );
        assert!(parse_time("soon").is_err());
        assert_eq!(parse_tail("all"), Ok(-1));
        assert_eq!(parse_tail("10"), Ok(10));
        assert!(parse_tail("-3").is_err());
    }
}
