//! Ranges the control API enforces on numbers users send: cluster settings, the durations of a
//! service spec, and the cluster's task limits.
//!
//! Everything here runs on the manager, so a client that skips the CLI gets the same refusal.
//! Durations are bounded both ways: a too-short one would spin a loop, a too-long one would
//! overflow the time arithmetic that adds it to a timestamp (and means nothing useful anyway).

use std::time::Duration;

use proto::spec::{ServiceMode, ServiceSpec};

use crate::error::ApiError;
use crate::store::{ClusterLimits, StoreData};

/// `heartbeat_period_ms` (`swarm init/update --dispatcher-heartbeat`): 100ms to 24h.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(24 * 3600);
/// `cert_expiry_ms`: 30s (tests renew quickly; Docker says 1h) to 10 years.
pub const MIN_CERT_EXPIRY: Duration = Duration::from_secs(30);
pub const MAX_CERT_EXPIRY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The largest value `max_replicas` and `max_tasks` may be set to: beyond it a manager
/// could not hold the tasks in memory whatever the limits say.
pub const MAX_TASKS_CEILING: u64 = 10_000_000;
/// The longest duration a service spec may carry (restart delay and window, update and
/// rollback delay, monitor and deadline, stop grace period, healthcheck timings): one year.
pub const MAX_SPEC_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// `WatchService` streams one manager serves at once: each reads every committed change.
pub const MAX_SERVICE_WATCHES: usize = 256;

/// A duration in one unit, as people write it: `100ms`, `30s`, `24h`, `87600h`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// One duration setting of a cluster request (0 means unchanged or default). The error
/// names the request field; its reason starts with the value.
fn check_range(field: &str, ms: u64, min: Duration, max: Duration) -> Result<(), ApiError> {
    if ms == 0 {
        return Ok(());
    }
    let d = Duration::from_millis(ms);
    if d < min {
        return Err(ApiError::invalid(
            field,
            format!(
                "{} is too short: it must be at least {}",
                human(d),
                human(min)
            ),
        ));
    }
    if d > max {
        return Err(ApiError::invalid(
            field,
            format!(
                "{} is too long: it must be at most {}",
                human(d),
                human(max)
            ),
        ));
    }
    Ok(())
}

/// Validate the cluster settings of a `SwarmInit` or `UpdateCluster` request (0: unchanged
/// or the default).
pub fn validate_settings(heartbeat_ms: u64, cert_expiry_ms: u64) -> Result<(), ApiError> {
    check_range(
        "heartbeat_period_ms",
        heartbeat_ms,
        MIN_HEARTBEAT,
        MAX_HEARTBEAT,
    )?;
    check_range(
        "cert_expiry_ms",
        cert_expiry_ms,
        MIN_CERT_EXPIRY,
        MAX_CERT_EXPIRY,
    )
}

/// The task limits after an `UpdateCluster` request (0: unchanged).
pub fn updated_limits(
    current: ClusterLimits,
    max_replicas: u64,
    max_tasks: u64,
) -> Result<ClusterLimits, ApiError> {
    let mut l = current;
    for (field, v) in [("max_replicas", max_replicas), ("max_tasks", max_tasks)] {
        if v > MAX_TASKS_CEILING {
            return Err(ApiError::invalid(
                field,
                format!("{v} is out of range: use a value from 1 to {MAX_TASKS_CEILING}"),
            ));
        }
    }
    if max_replicas != 0 {
        l.max_replicas = max_replicas;
    }
    if max_tasks != 0 {
        l.max_tasks = max_tasks;
    }
    if l.max_replicas > l.max_tasks {
        return Err(ApiError::invalid(
            "max_replicas",
            format!(
                "{} is above the cluster's task limit ({}): a service could never reach it",
                l.max_replicas, l.max_tasks
            ),
        ));
    }
    Ok(l)
}

/// Every duration in a service spec, within `[0, MAX_SPEC_DURATION]` (0 keeps its meaning of
/// "default" or "none" where the field has one). The error names the spec field.
pub fn validate_spec_durations(spec: &ServiceSpec) -> Result<(), ApiError> {
    let t = &spec.task;
    let mut fields: Vec<(String, u64)> = vec![
        ("spec.task.restart.delay_ms".into(), t.restart.delay_ms),
        ("spec.task.restart.window_ms".into(), t.restart.window_ms),
        (
            "spec.task.stop_grace_period_ms".into(),
            t.stop_grace_period_ms,
        ),
    ];
    for (which, u) in [("update", &spec.update), ("rollback", &spec.rollback)] {
        fields.push((format!("spec.{which}.delay_ms"), u.delay_ms));
        fields.push((format!("spec.{which}.monitor_ms"), u.monitor_ms));
        fields.push((format!("spec.{which}.task_deadline_ms"), u.task_deadline_ms));
    }
    if let Some(h) = &t.healthcheck {
        fields.push(("spec.task.healthcheck.interval_ms".into(), h.interval_ms));
        fields.push(("spec.task.healthcheck.timeout_ms".into(), h.timeout_ms));
        fields.push((
            "spec.task.healthcheck.start_period_ms".into(),
            h.start_period_ms,
        ));
        fields.push((
            "spec.task.healthcheck.start_interval_ms".into(),
            h.start_interval_ms,
        ));
    }
    for (field, ms) in fields {
        if Duration::from_millis(ms) > MAX_SPEC_DURATION {
            return Err(ApiError::invalid(
                field,
                format!(
                    "{} is too long: the limit is {}",
                    human(Duration::from_millis(ms)),
                    human(MAX_SPEC_DURATION)
                ),
            ));
        }
    }
    Ok(())
}

/// Tasks a service asks to run at once: replicas, one per node for global services, the
/// concurrency of a replicated job.
pub fn wanted_tasks(spec: &ServiceSpec, nodes: u64) -> u64 {
    match spec.mode {
        ServiceMode::Replicated { replicas } => replicas,
        ServiceMode::ReplicatedJob { max_concurrent, .. } => max_concurrent,
        ServiceMode::Global | ServiceMode::GlobalJob => nodes,
    }
}

fn completions(spec: &ServiceSpec) -> u64 {
    match spec.mode {
        ServiceMode::ReplicatedJob {
            total_completions, ..
        } => total_completions,
        _ => 0,
    }
}

/// Refuse a service spec (new, or replacing service `replacing`) that would go beyond the
/// cluster's limits.
pub fn check_task_limits(
    d: &StoreData,
    spec: &ServiceSpec,
    replacing: Option<&str>,
) -> Result<(), ApiError> {
    let limits = d.cluster.as_ref().map(|c| c.limits).unwrap_or_default();
    let nodes = d.nodes.len() as u64;
    // An update that asks for no more tasks than the service had passes, so that lowering a
    // limit does not freeze the services already above it.
    if let Some(old) = replacing.and_then(|id| d.services.get(id)) {
        if wanted_tasks(spec, nodes) <= wanted_tasks(&old.spec, nodes)
            && completions(spec) <= completions(&old.spec)
        {
            return Ok(());
        }
    }
    let too_many = |what: &str, n: u64| {
        Err(ApiError::InvalidArgument(format!(
            "{what} {n} exceeds the cluster limit of {} (swarm update --max-replicas)",
            limits.max_replicas
        )))
    };
    match spec.mode {
        ServiceMode::Replicated { replicas } if replicas > limits.max_replicas => {
            return too_many("replicas", replicas)
        }
        ServiceMode::ReplicatedJob {
            max_concurrent,
            total_completions,
        } => {
            if max_concurrent > limits.max_replicas {
                return too_many("max_concurrent", max_concurrent);
            }
            // Completed tasks of a job stay in the store: they count as tasks.
            if total_completions > limits.max_tasks {
                return Err(ApiError::InvalidArgument(format!(
                    "replicas {total_completions} exceeds the cluster limit of {} (swarm update --max-tasks)",
                    limits.max_tasks
                )));
            }
        }
        _ => {}
    }
    let others = d
        .services
        .values()
        .filter(|s| Some(s.id.as_str()) != replacing)
        .fold(0u64, |n, s| n.saturating_add(wanted_tasks(&s.spec, nodes)));
    let total = others.saturating_add(wanted_tasks(spec, nodes));
    if total > limits.max_tasks {
        return Err(ApiError::InvalidArgument(format!(
            "the cluster would run {total} tasks, which exceeds the cluster limit of {} (swarm update --max-tasks)",
            limits.max_tasks
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Cluster, Service};
    use proto::spec::{HealthCheck, TaskSpec, UpdateConfig};

    fn spec(mode: ServiceMode) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            labels: Default::default(),
            mode,
            task: TaskSpec {
                image: "busybox".into(),
                ..Default::default()
            },
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
            endpoint: Default::default(),
        }
    }

    fn data_with_limits(limits: ClusterLimits) -> StoreData {
        let ca = proto::security::RootCa::generate("c").unwrap();
        StoreData {
            cluster: Some(Cluster {
                id: "c".into(),
                version: 1,
                created_at_ms: 0,
                root_ca: ca,
                worker_token: String::new(),
                manager_token: String::new(),
                heartbeat_period_ms: 5000,
                cert_expiry_ms: 3_600_000,
                removed_nodes: Default::default(),
                rebalance_on_join: false,
                unlock_key: None,
                default_addr_pool: crate::store::default_addr_pool(),
                default_addr_pool_mask_len: 24,
                limits,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn cluster_durations_have_a_range() {
        assert!(validate_settings(0, 0).is_ok());
        assert!(validate_settings(5000, 90 * 24 * 3_600_000).is_ok());
        // 2562047788015h: overflowed the certificate code.
        let e = validate_settings(0, 2_562_047_788_015 * 3_600_000).unwrap_err();
        assert!(e.to_string().starts_with("cert_expiry_ms: "), "{e}");
        assert!(e.to_string().contains("at most 87600h"), "{e}");
        let e = validate_settings(1_000_000 * 3_600_000, 0).unwrap_err();
        assert!(e.to_string().starts_with("heartbeat_period_ms: "), "{e}");
        assert!(validate_settings(50, 0).is_err());
        assert!(validate_settings(0, 1000).is_err());
        assert!(validate_settings(24 * 3_600_000, 10 * 365 * 24 * 3_600_000).is_ok());
        assert_eq!(
            e.to_string(),
            "heartbeat_period_ms: 1000000h is too long: it must be at most 24h"
        );
    }

    #[test]
    fn limits_update_is_checked() {
        let d = ClusterLimits::default();
        assert_eq!(updated_limits(d, 0, 0).unwrap(), d);
        let l = updated_limits(d, 10, 20).unwrap();
        assert_eq!((l.max_replicas, l.max_tasks), (10, 20));
        assert!(updated_limits(d, 0, MAX_TASKS_CEILING + 1).is_err());
        let e = updated_limits(d, 0, 10).unwrap_err();
        assert!(
            e.to_string().starts_with("max_replicas: 100000 is above"),
            "{e}"
        );
    }

    #[test]
    fn every_spec_duration_is_bounded() {
        let ok = spec(ServiceMode::Replicated { replicas: 1 });
        assert!(validate_spec_durations(&ok).is_ok());
        const NEAR_MAX: u64 = u64::MAX - 1;
        type Set = Box<dyn Fn(&mut ServiceSpec)>;
        let cases: Vec<(&str, Set)> = vec![
            (
                "spec.task.restart.delay_ms",
                Box::new(|s| s.task.restart.delay_ms = NEAR_MAX),
            ),
            (
                "spec.task.restart.window_ms",
                Box::new(|s| s.task.restart.window_ms = NEAR_MAX),
            ),
            (
                "spec.task.stop_grace_period_ms",
                Box::new(|s| s.task.stop_grace_period_ms = NEAR_MAX),
            ),
            (
                "spec.update.delay_ms",
                Box::new(|s| s.update.delay_ms = NEAR_MAX),
            ),
            (
                "spec.update.monitor_ms",
                Box::new(|s| s.update.monitor_ms = NEAR_MAX),
            ),
            (
                "spec.update.task_deadline_ms",
                Box::new(|s| s.update.task_deadline_ms = NEAR_MAX),
            ),
            (
                "spec.rollback.delay_ms",
                Box::new(|s| s.rollback.delay_ms = NEAR_MAX),
            ),
            (
                "spec.rollback.monitor_ms",
                Box::new(|s| s.rollback.monitor_ms = NEAR_MAX),
            ),
            (
                "spec.rollback.task_deadline_ms",
                Box::new(|s| s.rollback.task_deadline_ms = NEAR_MAX),
            ),
            (
                "spec.task.healthcheck.interval_ms",
                Box::new(|s| {
                    s.task.healthcheck = Some(HealthCheck {
                        interval_ms: NEAR_MAX,
                        ..Default::default()
                    })
                }),
            ),
            (
                "spec.task.healthcheck.timeout_ms",
                Box::new(|s| {
                    s.task.healthcheck = Some(HealthCheck {
                        timeout_ms: NEAR_MAX,
                        ..Default::default()
                    })
                }),
            ),
            (
                "spec.task.healthcheck.start_period_ms",
                Box::new(|s| {
                    s.task.healthcheck = Some(HealthCheck {
                        start_period_ms: NEAR_MAX,
                        ..Default::default()
                    })
                }),
            ),
        ];
        for (field, set) in cases {
            let mut s = ok.clone();
            set(&mut s);
            let e = validate_spec_durations(&s).unwrap_err();
            assert_eq!(e.field(), Some(field), "{e}");
            assert!(
                e.to_string().ends_with("is too long: the limit is 8760h"),
                "{e}"
            );
        }
        let mut s = ok.clone();
        s.task.restart.delay_ms = MAX_SPEC_DURATION.as_millis() as u64;
        assert!(validate_spec_durations(&s).is_ok());
    }

    #[test]
    fn a_billion_replicas_is_refused() {
        let d = data_with_limits(ClusterLimits::default());
        let e = check_task_limits(
            &d,
            &spec(ServiceMode::Replicated {
                replicas: 1_000_000_000,
            }),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "replicas 1000000000 exceeds the cluster limit of 100000 (swarm update --max-replicas)"
        );
        assert!(check_task_limits(
            &d,
            &spec(ServiceMode::Replicated { replicas: 100_000 }),
            None
        )
        .is_ok());
        let job = spec(ServiceMode::ReplicatedJob {
            max_concurrent: 200_000,
            total_completions: 1,
        });
        assert!(check_task_limits(&d, &job, None).is_err());
    }

    #[test]
    fn all_services_count_toward_max_tasks() {
        let mut d = data_with_limits(ClusterLimits {
            max_replicas: 10,
            max_tasks: 25,
        });
        for i in 0..2 {
            d.services.insert(
                format!("s{i}"),
                Service {
                    id: format!("s{i}"),
                    version: 1,
                    spec: spec(ServiceMode::Replicated { replicas: 10 }),
                    spec_version: 1,
                    previous_spec: None,
                    update_status: None,
                    created_at_ms: 0,
                    updated_at_ms: 0,
                    endpoint: Default::default(),
                },
            );
        }
        let five = spec(ServiceMode::Replicated { replicas: 5 });
        let six = spec(ServiceMode::Replicated { replicas: 6 });
        assert!(check_task_limits(&d, &five, None).is_ok());
        let e = check_task_limits(&d, &six, None).unwrap_err();
        assert!(e.to_string().contains("--max-tasks"), "{}", e.to_string());
        // Updating s0 replaces its 10: 10 + 6 + ... fits.
        assert!(check_task_limits(&d, &six, Some("s0")).is_ok());
        // Limits lowered below what runs: an update that asks for no more passes, more not.
        d.cluster.as_mut().unwrap().limits = ClusterLimits {
            max_replicas: 5,
            max_tasks: 8,
        };
        let ten = spec(ServiceMode::Replicated { replicas: 10 });
        let eleven = spec(ServiceMode::Replicated { replicas: 11 });
        assert!(check_task_limits(&d, &ten, Some("s0")).is_ok());
        assert!(check_task_limits(&d, &eleven, Some("s0")).is_err());
        d.cluster.as_mut().unwrap().limits = ClusterLimits {
            max_replicas: 10,
            max_tasks: 25,
        };
        // Global services count one task per node.
        for i in 0..6 {
            let n = crate::store::tests::node(&format!("n{i}"), &format!("h{i}"));
            d.nodes.insert(n.id.clone(), n);
        }
        assert!(check_task_limits(&d, &spec(ServiceMode::Global), None).is_err());
        assert!(check_task_limits(&d, &spec(ServiceMode::Global), Some("s0")).is_ok());
    }
}
