use super::*;

#[test]
fn converges_when_all_tasks_run_the_current_spec() {
    let v = view("web", ServiceMode::Replicated { replicas: 2 }, 1, 2);
    let spec = v.spec.task.clone();
    let mut w = Watch::new(false, None);
    let mut pending = running(2, &spec);
    pending.status.state = TaskState::Pending;
    let s = w.observe(&v, &[running(1, &spec), pending]);
    assert_eq!(s.verdict, Verdict::Waiting);
    assert_eq!(s.overall_line(), "overall progress: 1 out of 2 tasks");
    assert_eq!(s.slots[1].label, "2/2");
    assert_eq!(s.slots[1].state, TaskState::Pending);
    let mut v2 = v.clone();
    v2.running = 2;
    let s = w.observe(&v2, &[running(1, &spec), running(2, &spec)]);
    assert_eq!(s.verdict, Verdict::Converged);
    // An old-spec task keeps it waiting, and so does an update in progress.
    let mut old = running(2, &spec);
    old.spec.image = "old".into();
    let s = w.observe(&v2, &[running(1, &spec), old]);
    assert_eq!(s.verdict, Verdict::Waiting);
    assert_eq!(s.done, 1);
    v2.update_status = status("updating", 5);
    let s = w.observe(&v2, &[running(1, &spec), running(2, &spec)]);
    assert_eq!(s.verdict, Verdict::Waiting);
    v2.update_status = status("completed", 5);
    let s = w.observe(&v2, &[running(1, &spec), running(2, &spec)]);
    assert_eq!(s.verdict, Verdict::Converged);
}

#[test]
fn paused_and_rolled_back_updates_fail() {
    let mut v = view("web", ServiceMode::Replicated { replicas: 1 }, 1, 1);
    let spec = v.spec.task.clone();
    let mut w = Watch::new(false, status("updating", 5));
    v.update_status = status("paused", 5);
    match w.observe(&v, &[running(1, &spec)]).verdict {
        Verdict::Failed(m) => assert_eq!(m, "update paused: paused msg"),
        other => panic!("{other:?}"),
    }
    v.update_status = status("rollback_started", 5);
    let s = w.observe(&v, &[running(1, &spec)]);
    assert_eq!(s.note.as_deref(), Some("rollback: rollback_started msg"));
    assert_eq!(s.verdict, Verdict::Waiting);
    assert_eq!(w.observe(&v, &[running(1, &spec)]).note, None);
    v.update_status = status("rollback_completed", 5);
    // Told only once the rollback converged: not while a slot has no running task.
    let mut gap = v.clone();
    gap.running = 0;
    let mut starting = running(1, &spec);
    starting.status.state = TaskState::Starting;
    assert_eq!(w.observe(&gap, &[starting]).verdict, Verdict::Waiting);
    match w.observe(&v, &[running(1, &spec)]).verdict {
        Verdict::Failed(m) => assert_eq!(m, "update rolled back: rollback_completed msg"),
        other => panic!("{other:?}"),
    }
    v.update_status = status("rollback_paused", 5);
    assert!(matches!(
        w.observe(&v, &[running(1, &spec)]).verdict,
        Verdict::Failed(m) if m.starts_with("update paused:")
    ));
    // A rollback we asked for converges when it completes.
    let mut w = Watch::new(true, status("rollback_started", 5));
    v.update_status = status("rollback_completed", 5);
    assert_eq!(
        w.observe(&v, &[running(1, &spec)]).verdict,
        Verdict::Converged
    );
}

#[test]
fn a_stale_rollback_is_no_failure_but_a_stale_pause_is() {
    // Scaling a service that was rolled back earlier converges as usual…
    let mut v = view("web", ServiceMode::Replicated { replicas: 1 }, 1, 1);
    v.update_status = status("rollback_completed", 1);
    let spec = v.spec.task.clone();
    let mut w = Watch::new(false, v.update_status.clone());
    assert_eq!(
        w.observe(&v, &[running(1, &spec)]).verdict,
        Verdict::Converged
    );
    // …but a new automatic rollback (a different status) fails.
    v.update_status = status("rollback_completed", 2);
    assert!(matches!(
        w.observe(&v, &[running(1, &spec)]).verdict,
        Verdict::Failed(m) if m.starts_with("update rolled back:")
    ));
    // A paused update never converges: say so at once, as Docker does.
    v.update_status = status("paused", 1);
    let mut w = Watch::new(false, v.update_status.clone());
    assert!(matches!(
        w.observe(&v, &[running(1, &spec)]).verdict,
        Verdict::Failed(m) if m.starts_with("update paused:")
    ));
}

#[test]
fn jobs_converge_when_completed() {
    let mut v = view(
        "batch",
        ServiceMode::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 2,
        },
        1,
        2,
    );
    let spec = v.spec.task.clone();
    let mut done = running(1, &spec);
    done.status.state = TaskState::Complete;
    v.completed = 1;
    let mut w = Watch::new(false, None);
    let s = w.observe(&v, &[done.clone(), running(2, &spec)]);
    assert_eq!(s.verdict, Verdict::Waiting);
    assert_eq!(s.overall_line(), "job progress: 1 out of 2 complete");
    v.completed = 2;
    v.running = 0;
    let mut done2 = running(2, &spec);
    done2.status.state = TaskState::Complete;
    assert_eq!(w.observe(&v, &[done, done2]).verdict, Verdict::Converged);
}

#[test]
fn stuck_and_failed_slots_say_why() {
    let v = view("web", ServiceMode::Replicated { replicas: 2 }, 0, 2);
    let spec = v.spec.task.clone();
    let mut p = running(1, &spec);
    p.status.state = TaskState::Pending;
    p.status.message = "no suitable node (1 node lacks memory)".into();
    let mut f = running(2, &spec);
    f.status.state = TaskState::Failed;
    f.status.err = "task: non-zero exit (1)".into();
    let s = Watch::new(false, None).observe(&v, &[p, f]);
    let lines: Vec<String> = s.slots.iter().map(SlotLine::text).collect();
    assert_eq!(
        lines,
        vec![
            "1/2: pending: no suitable node (1 node lacks memory)",
            "2/2: failed: task: non-zero exit (1)"
        ]
    );
}

#[test]
fn plain_render_prints_only_changes() {
    let v = view("web", ServiceMode::Replicated { replicas: 2 }, 0, 2);
    let spec = v.spec.task.clone();
    let mut w = Watch::new(false, None);
    let mut r = PlainRender::new(Vec::new());
    let mut p = running(2, &spec);
    p.status.state = TaskState::Pending;
    let s = w.observe(&v, &[running(1, &spec), p.clone()]);
    r.show(&s);
    r.show(&s);
    let mut v2 = v.clone();
    v2.running = 2;
    let s = w.observe(&v2, &[running(1, &spec), running(2, &spec)]);
    r.show(&s);
    r.finish(true);
    let out = String::from_utf8(r.into_inner()).unwrap();
    assert_eq!(
        out,
        "overall progress: 1 out of 2 tasks\n1/2: running\n2/2: pending\n\
         overall progress: 2 out of 2 tasks\n2/2: running\nverify: Service converged\n"
    );
}

#[tokio::test]
async fn watch_until_polls_until_converged_or_failed() {
    let v = view("web", ServiceMode::Replicated { replicas: 1 }, 0, 1);
    let spec = v.spec.task.clone();
    let mut v_ok = v.clone();
    v_ok.running = 1;
    let mut script = std::collections::VecDeque::from(vec![
        (v.clone(), vec![]),
        (v_ok.clone(), vec![running(1, &spec)]),
    ]);
    let mut r = PlainRender::new(Vec::new());
    let res = watch_until(
        || {
            let next = script.pop_front().expect("polled past convergence");
            async move { Ok(next) }
        },
        Watch::new(false, None),
        &mut r,
        Duration::from_millis(1),
        None,
    )
    .await;
    assert!(res.is_ok());
    assert!(String::from_utf8(r.into_inner())
        .unwrap()
        .ends_with("verify: Service converged\n"));

    let mut paused = v_ok;
    paused.update_status = status("paused", 9);
    let mut r = QuietRender;
    let res = watch_until(
        || {
            let p = paused.clone();
            async move { Ok((p, vec![])) }
        },
        Watch::new(false, status("updating", 9)),
        &mut r,
        Duration::from_millis(1),
        None,
    )
    .await;
    let e = res.unwrap_err().0;
    assert_eq!(e, "Error: update paused: paused msg");
}

/// A change the manager announces wakes the next poll at once (after the short gap), not
/// after the polling period.
#[tokio::test(start_paused = true)]
async fn a_change_wakes_the_next_poll_before_the_period() {
    let v = view("web", ServiceMode::Replicated { replicas: 1 }, 0, 1);
    let spec = v.spec.task.clone();
    let mut v_ok = v.clone();
    v_ok.running = 1;
    let mut script = std::collections::VecDeque::from(vec![
        (v.clone(), vec![]),
        (v.clone(), vec![]),
        (v_ok.clone(), vec![running(1, &spec)]),
    ]);
    let changed = tokio::sync::Notify::new();
    let t0 = tokio::time::Instant::now();
    let res = watch_until(
        || {
            // Each poll is followed by a change.
            changed.notify_one();
            let next = script.pop_front().expect("polled past convergence");
            async move { Ok(next) }
        },
        Watch::new(false, None),
        &mut QuietRender,
        Duration::from_secs(10),
        Some(&changed),
    )
    .await;
    assert!(res.is_ok());
    let waited = t0.elapsed();
    assert!(waited < Duration::from_secs(1), "waited {waited:?}");
    assert!(waited >= Duration::from_millis(20), "waited {waited:?}");
}
