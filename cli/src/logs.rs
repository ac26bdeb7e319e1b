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
pub fn context(m: &pb::LogMessage, no_trunc: bool) -> String {
    let task: String = if no_trunc {
        m.task_id.clone()
    } else {
        m.task_id.chars().take(12).collect()
    };
    let slot = if m.slot == 0 {
        m.node_id.clone()
    } else {
        m.slot.to_string()
    };
    format!("{}.{slot}.{task}@{}", m.service_name, m.node_hostname)
}

/// One output line (without the newline).
pub fn format_line(m: &pb::LogMessage, timestamps: bool, no_trunc: bool) -> String {
    let ctx = context(m, no_trunc);
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
    let mut stream = c.service_logs(req).await?;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    while let Some(m) = stream.message().await? {
        if !m.warning.is_empty() {
            let _ = writeln!(stderr.lock(), "Warning: {}", m.warning);
            continue;
        }
        let line = format_line(&m, a.timestamps, a.no_trunc);
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
        assert_eq!(
            format_line(&m, false, false),
            "web.1.abc123def456@w1    | hello"
        );
        assert_eq!(
            format_line(&m, true, false),
            "2026-01-01T00:00:00.000000001Z web.1.abc123def456@w1    | hello"
        );
        let g = pb::LogMessage { slot: 0, ..m };
        assert_eq!(context(&g, true), "web.n1.abc123def456ghi789@w1");
        assert_eq!(parse_tail("all"), Ok(-1));
        assert_eq!(parse_tail("10"), Ok(10));
        assert!(parse_tail("-3").is_err());
    }
}
