//! The control API's validation errors in the CLI's terms.
//!
//! The manager refuses a bad request field with a message that names the field as the API
//! knows it (`spec.task.restart.delay_ms: 1000000h is too long: …`) and carries that field in
//! the status metadata. A user of the CLI typed a flag, not a field: where the CLI knows which
//! flag sets the field, it names the flag instead.

use tonic::Status;

/// The metadata key the manager sets (`manager::error::FIELD_METADATA`).
const FIELD_METADATA: &str = "shoal-field";

/// How a flag goes into the message.
#[derive(Clone, Copy)]
enum Style {
    /// The reason starts with the value typed: `--restart-delay 1000000h is too long…`.
    Value,
    /// The reason is a sentence: `invalid signal "X" (--stop-signal)`.
    Hint,
}

/// Request fields (with every `[N]` index written `[]`) and the flags that set them.
const FLAGS: &[(&str, &str, Style)] = &[
    (
        "heartbeat_period_ms",
        "--dispatcher-heartbeat",
        Style::Value,
    ),
    ("cert_expiry_ms", "--cert-expiry", Style::Value),
    ("max_replicas", "--max-replicas", Style::Value),
    ("max_tasks", "--max-tasks", Style::Value),
    ("default_addr_pool", "--default-addr-pool", Style::Hint),
    (
        "spec.task.restart.delay_ms",
        "--restart-delay",
        Style::Value,
    ),
    (
        "spec.task.restart.window_ms",
        "--restart-window",
        Style::Value,
    ),
    (
        "spec.task.stop_grace_period_ms",
        "--stop-grace-period",
        Style::Value,
    ),
    ("spec.task.stop_signal", "--stop-signal", Style::Hint),
    ("spec.update.delay_ms", "--update-delay", Style::Value),
    ("spec.update.monitor_ms", "--update-monitor", Style::Value),
    (
        "spec.update.task_deadline_ms",
        "--update-task-deadline",
        Style::Value,
    ),
    (
        "spec.update.max_failure_ratio",
        "--update-max-failure-ratio",
        Style::Value,
    ),
    ("spec.rollback.delay_ms", "--rollback-delay", Style::Value),
    (
        "spec.rollback.monitor_ms",
        "--rollback-monitor",
        Style::Value,
    ),
    (
        "spec.rollback.task_deadline_ms",
        "--rollback-task-deadline",
        Style::Value,
    ),
    (
        "spec.rollback.max_failure_ratio",
        "--rollback-max-failure-ratio",
        Style::Value,
    ),
    (
        "spec.task.healthcheck.interval_ms",
        "--health-interval",
        Style::Value,
    ),
    (
        "spec.task.healthcheck.timeout_ms",
        "--health-timeout",
        Style::Value,
    ),
    (
        "spec.task.healthcheck.start_period_ms",
        "--health-start-period",
        Style::Value,
    ),
    (
        "spec.mode.replicated-job",
        "--max-concurrent, --replicas",
        Style::Hint,
    ),
    (
        "spec.endpoint.mode",
        "--publish mode=host, --endpoint-mode vip",
        Style::Hint,
    ),
    (
        "spec.endpoint.ports[].target_port",
        "--publish",
        Style::Hint,
    ),
    (
        "spec.endpoint.ports[].published_port",
        "--publish",
        Style::Hint,
    ),
    ("spec.task.networks[].target", "--network", Style::Hint),
    ("spec.task.mounts[].target", "--mount", Style::Hint),
    ("spec.task.mounts[].source", "--mount", Style::Hint),
    ("spec.driver", "--driver", Style::Hint),
];

/// `spec.task.mounts[3].target` → `spec.task.mounts[].target`.
fn without_indexes(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut in_index = false;
    for c in field.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// The status's message, with the request field it names replaced by the CLI's flag where
/// there is one; otherwise the message as it came.
pub fn message(s: &Status) -> String {
    let msg = s.message();
    let Some(field) = s
        .metadata()
        .get(FIELD_METADATA)
        .and_then(|v| v.to_str().ok())
    else {
        return msg.to_string();
    };
    let Some(reason) = msg.strip_prefix(field).and_then(|r| r.strip_prefix(": ")) else {
        return msg.to_string();
    };
    let key = without_indexes(field);
    match FLAGS.iter().find(|(f, _, _)| *f == key) {
        Some((_, flag, Style::Value)) => format!("{flag} {reason}"),
        Some((_, flag, Style::Hint)) => format!("{reason} ({flag})"),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(field: &str, msg: &str) -> Status {
        let mut s = Status::invalid_argument(msg);
        s.metadata_mut()
            .insert(FIELD_METADATA, field.parse().expect("ascii"));
        s
    }

    #[test]
    fn a_field_the_cli_sets_is_named_by_its_flag() {
        assert_eq!(
            message(&status(
                "spec.task.restart.delay_ms",
                "spec.task.restart.delay_ms: 1000000h is too long: the limit is 8760h"
            )),
            "--restart-delay 1000000h is too long: the limit is 8760h"
        );
        assert_eq!(
            message(&status(
                "spec.endpoint.ports[2].target_port",
                "spec.endpoint.ports[2].target_port: the target port must be between 1 and 65535"
            )),
            "the target port must be between 1 and 65535 (--publish)"
        );
    }

    #[test]
    fn other_messages_are_left_as_they_came() {
        // No field in the metadata.
        let plain = Status::invalid_argument("spec.task.stop_signal: invalid signal");
        assert_eq!(message(&plain), "spec.task.stop_signal: invalid signal");
        // A field the CLI has no flag for.
        let m = "spec.task.dns.options[0]: too long";
        assert_eq!(message(&status("spec.task.dns.options[0]", m)), m);
        // Metadata that does not match the message.
        let m = "something else";
        assert_eq!(message(&status("max_tasks", m)), m);
    }

    #[test]
    fn every_flag_in_the_table_exists() {
        use clap::CommandFactory;
        let cli = crate::commands::Cli::command();
        let mut longs = std::collections::BTreeSet::new();
        fn walk(c: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
            for a in c.get_arguments() {
                if let Some(l) = a.get_long() {
                    out.insert(format!("--{l}"));
                }
            }
            for s in c.get_subcommands() {
                walk(s, out);
            }
        }
        walk(&cli, &mut longs);
        for (_, flags, _) in FLAGS {
            for flag in flags.split(", ") {
                let name = flag.split([' ', '=']).next().unwrap_or(flag);
                assert!(longs.contains(name), "{name} is no flag of the CLI");
            }
        }
    }
}
