//! The flags `create` and `update` share, applied to a spec.

use std::time::Duration;

use proto::spec::{
    FailureAction, HealthCheck, ServiceMode, ServiceSpec, TaskSpec, UpdateConfig, UpdateOrder,
};

use super::flags::SpecFlags;

fn ms(d: Duration) -> u64 {
    // Clamped, not truncated: the manager's range check must see a huge value as huge.
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct CfgFlags {
    parallelism: Option<u64>,
    delay: Option<Duration>,
    order: Option<UpdateOrder>,
    failure_action: Option<FailureAction>,
    monitor: Option<Duration>,
    max_failure_ratio: Option<f64>,
    task_deadline: Option<Duration>,
}

fn apply_cfg(c: &mut UpdateConfig, f: CfgFlags) {
    if let Some(v) = f.parallelism {
        c.parallelism = v;
    }
    if let Some(v) = f.delay {
        c.delay_ms = ms(v);
    }
    if let Some(v) = f.order {
        c.order = v;
    }
    if let Some(v) = f.failure_action {
        c.failure_action = v;
    }
    if let Some(v) = f.monitor {
        c.monitor_ms = ms(v);
    }
    if let Some(v) = f.max_failure_ratio {
        c.max_failure_ratio = v;
    }
    if let Some(v) = f.task_deadline {
        c.task_deadline_ms = ms(v);
    }
}

/// Apply the flags `create` and `update` share to a spec.
/// `--log-driver` and `--log-opt`: a driver given replaces the driver (its options too,
/// unless `--log-opt` are given as well); options alone replace the current driver's.
fn apply_log_flags(spec: &mut ServiceSpec, f: &SpecFlags) -> Result<(), String> {
    if f.log_driver.is_none() && f.log_opt.is_empty() {
        return Ok(());
    }
    let mut options = std::collections::BTreeMap::new();
    for o in &f.log_opt {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| format!("invalid --log-opt {o:?}: expected KEY=VALUE"))?;
        options.insert(k.trim().to_string(), v.trim().to_string());
    }
    let current = spec.task.log_driver.take();
    let d = proto::spec::LogDriver {
        name: f
            .log_driver
            .clone()
            .or_else(|| current.as_ref().map(|d| d.name.clone()))
            .unwrap_or_else(|| "json-file".into()),
        options: if f.log_opt.is_empty() && f.log_driver.is_none() {
            current.map(|d| d.options).unwrap_or_default()
        } else {
            options
        },
    };
    proto::limits::log_rotation(Some(&d))?;
    spec.task.log_driver = Some(d);
    Ok(())
}

pub fn apply_flags(spec: &mut ServiceSpec, f: &SpecFlags) -> Result<(), String> {
    apply_log_flags(spec, f)?;
    if let Some(n) = f.replicas {
        match &mut spec.mode {
            ServiceMode::Replicated { replicas } => *replicas = n,
            ServiceMode::ReplicatedJob {
                total_completions, ..
            } => *total_completions = n,
            _ => {
                return Err(
                    "--replicas can only be used with replicated or replicated-job mode".into(),
                )
            }
        }
    }
    if let Some(n) = f.max_concurrent {
        match &mut spec.mode {
            ServiceMode::ReplicatedJob { max_concurrent, .. } => *max_concurrent = n,
            _ => return Err("--max-concurrent can only be used with replicated-job mode".into()),
        }
    }
    if let Some(n) = f.max_replicas {
        if matches!(spec.mode, ServiceMode::Global | ServiceMode::GlobalJob) && n > 0 {
            return Err(
                "--max-replicas can only be used with replicated or replicated-job mode".into(),
            );
        }
        spec.task.placement.max_replicas = n;
    }
    let r = &mut spec.task.resources;
    if let Some(v) = f.reserve_cpu {
        r.reserve_nano_cpus = v;
    }
    if let Some(v) = f.reserve_memory {
        r.reserve_memory = v;
    }
    if let Some(v) = f.limit_cpu {
        r.limit_nano_cpus = v;
    }
    if let Some(v) = f.limit_memory {
        r.limit_memory = v;
    }
    if let Some(v) = f.limit_pids {
        r.limit_pids = v;
    }
    let rp = &mut spec.task.restart;
    if let Some(v) = f.restart_condition {
        rp.condition = v;
    }
    if let Some(v) = f.restart_delay {
        rp.delay_ms = ms(v);
    }
    if let Some(v) = f.restart_max_attempts {
        rp.max_attempts = v;
    }
    if let Some(v) = f.restart_window {
        rp.window_ms = ms(v);
    }
    apply_cfg(
        &mut spec.update,
        CfgFlags {
            parallelism: f.update_parallelism,
            delay: f.update_delay,
            order: f.update_order,
            failure_action: f.update_failure_action,
            monitor: f.update_monitor,
            max_failure_ratio: f.update_max_failure_ratio,
            task_deadline: f.update_task_deadline,
        },
    );
    apply_cfg(
        &mut spec.rollback,
        CfgFlags {
            parallelism: f.rollback_parallelism,
            delay: f.rollback_delay,
            order: f.rollback_order,
            failure_action: f.rollback_failure_action,
            monitor: f.rollback_monitor,
            max_failure_ratio: f.rollback_max_failure_ratio,
            task_deadline: f.rollback_task_deadline,
        },
    );
    if let Some(v) = f.stop_grace_period {
        spec.task.stop_grace_period_ms = ms(v);
    }
    if let Some(v) = &f.stop_signal {
        spec.task.stop_signal = v.clone();
    }
    let t = &mut spec.task;
    if let Some(v) = &f.hostname {
        t.hostname = v.clone();
    }
    if let Some(v) = &f.user {
        t.user = v.clone();
    }
    if let Some(v) = &f.workdir {
        if !v.is_empty() && !v.starts_with('/') {
            return Err(format!(
                "invalid argument \"{v}\" for \"--workdir\" flag: the working directory must be an absolute path"
            ));
        }
        t.workdir = v.clone();
    }
    if let Some(v) = &f.entrypoint {
        t.command = v.split_whitespace().map(String::from).collect();
    }
    apply_health(t, f)?;
    if let Some(m) = f.endpoint_mode {
        spec.endpoint.mode = m;
    }
    Ok(())
}

/// The healthcheck flags: `--no-healthcheck` disables the image's; any other flag edits the
/// service's own check, starting from the image's test when only timings are given.
fn apply_health(t: &mut TaskSpec, f: &SpecFlags) -> Result<(), String> {
    let timing = f.health_interval.is_some()
        || f.health_timeout.is_some()
        || f.health_retries.is_some()
        || f.health_start_period.is_some()
        || f.health_start_interval.is_some();
    if f.no_healthcheck {
        if f.health_cmd.is_some() || timing {
            return Err("--no-healthcheck conflicts with --health-* options".into());
        }
        t.healthcheck = Some(HealthCheck {
            test: vec!["NONE".into()],
            ..Default::default()
        });
        return Ok(());
    }
    if f.health_cmd.is_none() && !timing {
        return Ok(());
    }
    let mut h = t.healthcheck.take().unwrap_or_default();
    if h.test.first().map(String::as_str) == Some("NONE") {
        h.test.clear();
    }
    if let Some(cmd) = &f.health_cmd {
        h.test = if cmd.trim().is_empty() {
            Vec::new()
        } else {
            vec!["CMD-SHELL".into(), cmd.clone()]
        };
    }
    if let Some(v) = f.health_interval {
        if !v.is_zero() && v < Duration::from_millis(1) {
            return Err("--health-interval must be at least 1ms".into());
        }
        h.interval_ms = ms(v);
    }
    if let Some(v) = f.health_timeout {
        h.timeout_ms = ms(v);
    }
    if let Some(v) = f.health_retries {
        h.retries = v;
    }
    if let Some(v) = f.health_start_period {
        h.start_period_ms = ms(v);
    }
    if let Some(v) = f.health_start_interval {
        if !v.is_zero() && v < Duration::from_millis(1) {
            return Err("--health-start-interval must be at least 1ms".into());
        }
        h.start_interval_ms = ms(v);
    }
    t.healthcheck = Some(h);
    Ok(())
}
