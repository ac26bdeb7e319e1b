//! Real containers through `worker::oci::OciRuntime`, with runc and with crun; need root.
//!
//! The per-container monitor is this test binary itself: `OciConfig::shim_command` points at
//! it and `SHOAL_TEST_SHIM=1` is set in the monitor's environment. A function in
//! `.init_array` (run by the loader before `main`, hence before the test harness and any
//! thread) sees that variable and runs `worker::oci::shim::shim_main` instead of the tests,
//! exactly as `shoal shim …` does in the real binary.
//!
//! Every test uses its own data directory and task ids with a per-process prefix; a guard
//! deletes the containers, unmounts and removes the cgroups even when an assertion fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::spec::{Assignment, FileData, HealthCheck, Resources, TaskSpec, TaskState};
use worker::image::{Image, ImageConfig, ImageStore, RegistryOptions};
use worker::oci::{OciConfig, OciRuntime};
use worker::runtime::{RestoredState, Runtime};

const SHIM_ENV: &str = "SHOAL_TEST_SHIM";

#[used]
#[link_section = ".init_array"]
static SHIM_HOOK: extern "C" fn() = shim_hook;

extern "C" fn shim_hook() {
    if std::env::var_os(SHIM_ENV).is_none() {
        return;
    }
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // argv: <test binary> shim <args…>
    let code = worker::oci::shim::shim_main(args.into_iter().skip(2).collect());
    // SAFETY: ends the process without running the test harness.
    unsafe { libc::_exit(code) };
}

const APPLETS: [&str; 12] = [
    "sh", "sleep", "true", "cat", "echo", "ls", "test", "seq", "id", "hostname", "kill", "touch",
];

/// A test's world: data dir, image and runtime, cleaned up on drop.
struct Env {
    runtime_name: &'static str,
    rt: OciRuntime,
    dir: tempfile::TempDir,
    prefix: String,
    ids: std::sync::Mutex<Vec<String>>,
}

impl Env {
    fn new(runtime_name: &'static str, test: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix(&format!("shoal-oci-{test}-"))
            .tempdir()
            .unwrap();
        let layer = dir.path().join("layer");
        std::fs::create_dir_all(layer.join("bin")).unwrap();
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::create_dir_all(layer.join("tmp")).unwrap();
        std::fs::copy("/bin/busybox", layer.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).unwrap();
        }
        std::fs::write(
            layer.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:33:33::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(layer.join("etc/group"), "root:x:0:\nweb:x:33:\n").unwrap();
        let data = dir.path().join("data");
        let rt = runtime(runtime_name, &data, &layer);
        Env {
            runtime_name,
            rt,
            prefix: format!("t{}{}", std::process::id(), test.replace('_', "")),
            dir,
            ids: Default::default(),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn layer(&self) -> PathBuf {
        self.dir.path().join("layer")
    }

    fn id(&self, name: &str) -> String {
        let id = format!("{}{}{}", self.prefix, self.runtime_name, name);
        self.ids.lock().unwrap().push(id.clone());
        id
    }

    fn task(&self, name: &str, command: &[&str]) -> Assignment {
        Env::assignment(self.id(name), command)
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.rt.log_path(id).unwrap()).unwrap_or_default()
    }
}

fn runtime(name: &str, data: &Path, layer: &Path) -> OciRuntime {
    let images =
        Arc::new(ImageStore::open(&data.join("images"), RegistryOptions::default()).unwrap());
    let mut config = OciConfig::new(data, images);
    config.runtime = name.to_string();
    config.shim_command = vec![
        std::env::current_exe()
            .unwrap()
            .to_string_lossy()
            .into_owned(),
        "shim".into(),
    ];
    config.shim_env = vec![(SHIM_ENV.into(), "1".into())];
    let rt = OciRuntime::new(config).unwrap();
    rt.pin_image(
        "test-image",
        Image {
            reference: "test-image".into(),
            id: "sha256:test".into(),
            config: ImageConfig {
                env: vec!["FROM_IMAGE=1".into()],
                cmd: vec!["/bin/sh".into()],
                ..Default::default()
            },
            layers: vec![layer.to_path_buf()],
        },
    );
    rt
}

impl Drop for Env {
    fn drop(&mut self) {
        self.rt.detach();
        let ids = std::mem::take(&mut *self.ids.lock().unwrap());
        let rt = self.rt.clone();
        // `remove` is async; run it on a runtime of its own (we may be inside a test's).
        std::thread::spawn(move || {
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tokio.block_on(async {
                for id in ids {
                    if let Err(e) = rt.remove(&id).await {
                        eprintln!("cleanup of {id}: {e}");
                    }
                }
            });
        })
        .join()
        .unwrap();
        // Volumes made with volume options stay mounted after their tasks: unmounted here,
        // also when the test failed before it did so itself.
        let data = self.data().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for point in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if point.starts_with(&data) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(point)
                    .status();
            }
        }
    }
}

/// Poll `check` until it holds or `within` passes.
async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

macro_rules! both_runtimes {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn runc() {
                super::$name("runc").await
            }
            #[tokio::test]
            async fn crun() {
                super::$name("crun").await
            }
        }
    };
}

async fn lifecycle(runtime: &'static str) {
    let env = Env::new(runtime, "life");
    let task = env.task(
        "a",
        &[
            "/bin/sh",
            "-c",
            "echo out-one; echo err-one >&2; echo \"host=$(hostname) env=$FROM_IMAGE\"; \
             echo \"net=$(ls /sys/class/net) lo=$(cat /sys/class/net/lo/operstate)\"; \
             cat /etc/hosts; exit 3",
        ],
    );
    let mut task = task;
    task.spec.hosts = vec!["10.1.2.3 db db.local".into()];
    env.rt.prepare(&task).await.unwrap();
    env.rt.start(&task.task_id).await.unwrap();
    assert_eq!(env.rt.wait(&task.task_id).await.unwrap(), 3);
    // The same answer again, at once.
    assert_eq!(env.rt.wait(&task.task_id).await.unwrap(), 3);
    assert_eq!(env.rt.exit_detail(&task.task_id).await, None);
    let log = env.log(&task.task_id);
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout out-one")),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stderr err-one")),
        "{log}"
    );
    let hostname: String = task.task_id.chars().take(12).collect();
    assert!(
        log.contains(&format!("stdout host={hostname} env=1")),
        "{log}"
    );
    // A network namespace of its own, with only the loopback, up.
    assert!(log.contains("stdout net=lo lo=unknown"), "{log}");
    // `--host` entries follow the task's own in /etc/hosts.
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(" stdout 10.1.2.3\tdb db.local")),
        "{log}"
    );
    // `<RFC 3339 nanos> <stream> <text>`
    let stamp = lines[0].split(' ').next().unwrap();
    assert!(stamp.ends_with('Z') && stamp.len() == 30, "{stamp}");
    env.rt.remove(&task.task_id).await.unwrap();
    assert!(!env.rt.task_dir(&task.task_id).exists());

    // A missing executable fails start in plain words.
    let bad = env.task("b", &["nope"]);
    env.rt.prepare(&bad).await.unwrap();
    let err = env.rt.start(&bad.task_id).await.unwrap_err().to_string();
    assert!(err.contains("starting container: "), "{err}");
    assert!(err.contains("nope"), "{err}");
    if runtime == "runc" {
        assert!(
            err.ends_with("starting container: exec: \"nope\": executable file not found in $PATH"),
            "{err}"
        );
    }
}
both_runtimes!(lifecycle);

/// `--read-only`, `--sysctl`, `--ulimit` and `--cap-drop` as the container sees them.
async fn hardening(runtime: &'static str) {
    let env = Env::new(runtime, "hard");
    let mut task = env.task(
        "h",
        &[
            "/bin/sh",
            "-c",
            "touch /written 2>/dev/null && echo rw=yes || echo rw=no; \
             echo somaxconn=$(cat /proc/sys/net/core/somaxconn); \
             echo nofile=$(ulimit -n); \
             cat /proc/self/status",
        ],
    );
    task.spec.read_only = true;
    task.spec.sysctls = [("net.core.somaxconn".to_string(), "777".to_string())]
        .into_iter()
        .collect();
    task.spec.ulimits = vec![proto::spec::Ulimit {
        name: "nofile".into(),
        soft: 333,
        hard: 444,
    }];
    task.spec.cap_drop = vec!["ALL".into()];
    task.spec.cap_add = vec!["CAP_KILL".into()];
    env.rt.prepare(&task).await.unwrap();
    env.rt.start(&task.task_id).await.unwrap();
    assert_eq!(env.rt.wait(&task.task_id).await.unwrap(), 0);
    let log = env.log(&task.task_id);
    for want in ["stdout rw=no", "stdout somaxconn=777", "stdout nofile=333"] {
        assert!(log.contains(want), "{want}: {log}");
    }
    // CAP_KILL alone: bit 5.
    assert!(log.contains("stdout CapBnd:\t0000000000000020"), "{log}");
    env.rt.remove(&task.task_id).await.unwrap();
}
both_runtimes!(hardening);

/// `--log-opt max-size=1k --log-opt max-file=2`: the log is rotated, two files at most;
/// `--log-driver none`: no log at all.
async fn log_rotation(runtime: &'static str) {
    let env = Env::new(runtime, "logrot");
    let mut task = env.task(
        "l",
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); done",
        ],
    );
    task.spec.log_driver = Some(proto::spec::LogDriver {
        name: "json-file".into(),
        options: [("max-size", "1k"), ("max-file", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    });
    env.rt.prepare(&task).await.unwrap();
    env.rt.start(&task.task_id).await.unwrap();
    assert_eq!(env.rt.wait(&task.task_id).await.unwrap(), 0);
    let log = env.rt.log_path(&task.task_id).unwrap();
    let rotated = log.with_extension("log.1");
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    assert!(size(&log) > 0 && size(&log) <= 1024, "{}", size(&log));
    assert!(
        size(&rotated) > 0 && size(&rotated) <= 1024,
        "{}",
        size(&rotated)
    );
    assert!(!log.with_extension("log.2").exists(), "two files at most");
    assert!(env.log(&task.task_id).contains("stdout line-199"));
    env.rt.remove(&task.task_id).await.unwrap();

    let mut quiet = env.task("q", &["/bin/sh", "-c", "echo nobody-reads-this"]);
    quiet.spec.log_driver = Some(proto::spec::LogDriver {
        name: "none".into(),
        options: Default::default(),
    });
    env.rt.prepare(&quiet).await.unwrap();
    env.rt.start(&quiet.task_id).await.unwrap();
    assert_eq!(env.rt.wait(&quiet.task_id).await.unwrap(), 0);
    assert!(!env.log(&quiet.task_id).contains("nobody-reads-this"));
    env.rt.remove(&quiet.task_id).await.unwrap();
}
both_runtimes!(log_rotation);

/// `--init`: tini is PID 1 and the task's process its child; a TERM reaches the process.
async fn init_process(runtime: &'static str) {
    let env = Env::new(runtime, "init");
    let mut task = env.task(
        "i",
        &[
            "/bin/sh",
            "-c",
            "echo pid=$$; echo one=$(cat /proc/1/cmdline | tr '\\0' ' ')",
        ],
    );
    task.spec.init = true;
    env.rt.prepare(&task).await.unwrap();
    env.rt.start(&task.task_id).await.unwrap();
    assert_eq!(env.rt.wait(&task.task_id).await.unwrap(), 0);
    let log = env.log(&task.task_id);
    assert!(!log.contains("pid=1\n"), "the process is not PID 1: {log}");
    assert!(log.contains("one=/sbin/docker-init -- /bin/sh"), "{log}");
    env.rt.remove(&task.task_id).await.unwrap();
}
both_runtimes!(init_process);

async fn limits_and_oom(runtime: &'static str) {
    let env = Env::new(runtime, "limits");
    let mut task = env.task("a", &["sleep", "1000"]);
    task.spec.resources = Resources {
        limit_memory: 64 << 20,
        limit_nano_cpus: 500_000_000,
        limit_pids: 20,
        ..Default::default()
    };
    env.rt.prepare(&task).await.unwrap();
    env.rt.start(&task.task_id).await.unwrap();
    let cg = |ctrl: &str, file: &str| {
        std::fs::read_to_string(format!(
            "/sys/fs/cgroup/{ctrl}/shoal/{}/{file}",
            task.task_id
        ))
        .unwrap_or_else(|e| panic!("{ctrl}/{file}: {e}"))
        .trim()
        .to_string()
    };
    assert_eq!(cg("memory", "memory.limit_in_bytes"), "67108864");
    assert_eq!(cg("pids", "pids.max"), "20");
    assert_eq!(cg("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(cg("cpu", "cpu.cfs_period_us"), "100000");
    env.rt
        .stop(&task.task_id, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(env.rt.wait(&task.task_id).await.unwrap(), 137);
    env.rt.remove(&task.task_id).await.unwrap();
    assert!(
        !Path::new(&format!("/sys/fs/cgroup/memory/shoal/{}", task.task_id)).exists(),
        "cgroup removed"
    );

    // The pids limit holds: forking past it fails.
    let mut forks = env.task(
        "p",
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 30 ]; do sleep 30 & i=$((i+1)); done; echo forked-all; exit 0",
        ],
    );
    forks.spec.resources.limit_pids = 10;
    env.rt.prepare(&forks).await.unwrap();
    env.rt.start(&forks.task_id).await.unwrap();
    env.rt.wait(&forks.task_id).await.unwrap();
    let log = env.log(&forks.task_id);
    assert!(log.contains("can't fork"), "{log}");

    // Memory: a shell doubling a string is OOM killed, and says so.
    let mut hog = env.task(
        "o",
        &["/bin/sh", "-c", "s=xxxxxxxx; while true; do s=$s$s; done"],
    );
    hog.spec.resources.limit_memory = 64 << 20;
    env.rt.prepare(&hog).await.unwrap();
    env.rt.start(&hog.task_id).await.unwrap();
    assert_eq!(env.rt.wait(&hog.task_id).await.unwrap(), 137);
    assert_eq!(
        env.rt.exit_detail(&hog.task_id).await.as_deref(),
        Some("OOM killed: memory limit 64MiB exceeded (exit 137)")
    );
}
both_runtimes!(limits_and_oom);

async fn stop_signals(runtime: &'static str) {
    let env = Env::new(runtime, "stop");
    let trapped = env.task(
        "t",
        &[
            "/bin/sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    let stubborn = env.task("k", &["sleep", "1000"]);
    let mut int = env.task(
        "i",
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 9' INT; echo ready; while true; do sleep 0.1; done",
        ],
    );
    int.spec.stop_signal = "INT".into();
    for task in [&trapped, &stubborn, &int] {
        env.rt.prepare(task).await.unwrap();
        env.rt.start(&task.task_id).await.unwrap();
    }
    for task in [&trapped, &int] {
        eventually(Duration::from_secs(10), "ready", || {
            env.log(&task.task_id).contains("ready")
        })
        .await;
    }
    let t0 = Instant::now();
    env.rt
        .stop(&trapped.task_id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(env.rt.wait(&trapped.task_id).await.unwrap(), 7);
    assert!(t0.elapsed() < Duration::from_secs(10), "no grace needed");
    assert!(env.log(&trapped.task_id).contains("stdout got-term"));

    env.rt
        .stop(&int.task_id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(env.rt.wait(&int.task_id).await.unwrap(), 9);

    // `sleep` as the init ignores SIGTERM: killed after the grace period.
    let t0 = Instant::now();
    let grace = Duration::from_millis(700);
    env.rt.stop(&stubborn.task_id, grace).await.unwrap();
    assert_eq!(env.rt.wait(&stubborn.task_id).await.unwrap(), 137);
    assert!(t0.elapsed() >= grace, "{:?}", t0.elapsed());
    // Stopping what has ended is fine.
    env.rt.stop(&stubborn.task_id, grace).await.unwrap();
}
both_runtimes!(stop_signals);

fn contains_bytes(dir: &Path, needle: &[u8], skip: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if skip.contains(&path) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(contains_bytes(&path, needle, skip));
        } else if meta.is_file() {
            if let Ok(data) = std::fs::read(&path) {
                if data.windows(needle.len()).any(|w| w == needle) {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// A volume mount with the local driver's options (`volume-opt=K=V`).
fn volume_with(name: &str, target: &str, opts: &[(&str, &str)]) -> proto::spec::Mount {
    proto::spec::Mount {
        kind: proto::spec::MountKind::Volume,
        source: name.into(),
        target: target.into(),
        readonly: false,
        volume_options: opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

async fn secrets_and_mounts(runtime: &'static str) {
    let env = Env::new(runtime, "secrets");
    let bind_src = env.dir.path().join("bind");
    std::fs::create_dir_all(&bind_src).unwrap();
    std::fs::write(bind_src.join("f"), "bound").unwrap();
    let mut task = env.task(
        "s",
        &[
            "/bin/sh",
            "-c",
            "[ \"$(cat /run/secrets/x)\" = sup3r\"\"s3cret ] && echo secret-ok; \
             ls -l /run/secrets/x; cat /etc/app.conf; echo; cat /data/f; echo; \
             echo vol > /vol/v && echo vol-ok; id -u; touch /data/g || echo ro-ok; \
             echo owned $(stat -c %u:%g:%a /run/secrets/owned); \
             grep -q ' /tv tmpfs ' /proc/mounts && echo tv > /tv/t && echo tmpfs-volume-ok; \
             grep -q ' /anon tmpfs ' /proc/mounts && echo anon-tmpfs-ok; \
             [ \"$(cat /bv/f)\" = bound ] && ! touch /bv/g 2>/dev/null && echo bind-volume-ok",
        ],
    );
    task.spec.user = "web".into();
    task.spec.mounts = vec![
        proto::spec::Mount {
            kind: proto::spec::MountKind::Bind,
            source: bind_src.to_string_lossy().into_owned(),
            target: "/data".into(),
            readonly: true,
            ..Default::default()
        },
        proto::spec::Mount {
            kind: proto::spec::MountKind::Volume,
            source: "named1".into(),
            target: "/vol".into(),
            readonly: false,
            ..Default::default()
        },
        // --mount type=volume,source=…,volume-opt=type=tmpfs,volume-opt=o=size=1m
        volume_with(
            "named-tmpfs",
            "/tv",
            &[("type", "tmpfs"), ("o", "size=1m,mode=1777")],
        ),
        volume_with("", "/anon", &[("type", "tmpfs")]),
        // volume-opt=type=none,volume-opt=o=bind,ro,volume-opt=device=…
        volume_with(
            "named-bind",
            "/bv",
            &[
                ("type", "none"),
                ("o", "bind,ro"),
                ("device", &bind_src.to_string_lossy()),
            ],
        ),
    ];
    task.secrets = vec![
        FileData {
            name: "x".into(),
            target: String::new(),
            data: b"sup3rs3cret".to_vec(),
            ..Default::default()
        },
        // --secret source=o,target=owned,uid=1234,gid=4321,mode=0440
        FileData {
            name: "o".into(),
            target: "owned".into(),
            data: b"theirs".to_vec(),
            uid: Some(1234),
            gid: Some(4321),
            mode: Some(0o440),
        },
    ];
    task.configs = vec![FileData {
        name: "c".into(),
        target: "/etc/app.conf".into(),
        data: b"conf-data".to_vec(),
        ..Default::default()
    }];
    // The volume belongs to root; let user 33 write to it.
    let volume = env.data().join("volumes/named1/_data");
    std::fs::create_dir_all(&volume).unwrap();
    std::os::unix::fs::chown(&volume, Some(33), Some(33)).unwrap();
    env.rt.prepare(&task).await.unwrap();
    env.rt.start(&task.task_id).await.unwrap();
    assert_eq!(
        env.rt.wait(&task.task_id).await.unwrap(),
        0,
        "{}",
        env.log(&task.task_id)
    );
    let log = env.log(&task.task_id);
    for expected in [
        "secret-ok",
        "-r--------",
        "conf-data",
        "bound",
        "vol-ok",
        "stdout 33",
        "ro-ok",
        "owned 1234:4321:440",
        "tmpfs-volume-ok",
        "anon-tmpfs-ok",
        "bind-volume-ok",
    ] {
        assert!(log.contains(expected), "{expected} missing in {log}");
    }
    let secrets_mount = env.rt.task_dir(&task.task_id).join("secrets");
    let leaks = contains_bytes(&env.data(), b"sup3rs3cret", &[secrets_mount]);
    assert!(leaks.is_empty(), "secret on disk: {leaks:?}");
    let task_dir = env.rt.task_dir(&task.task_id);
    env.rt.remove(&task.task_id).await.unwrap();
    assert!(
        !task_dir.exists(),
        "secrets unmounted, task directory removed"
    );
    // The log outlives the task (`service logs` of a finished task).
    let kept = env.rt.log_path(&task.task_id).unwrap();
    assert!(!kept.starts_with(&task_dir), "{}", kept.display());
    let text = std::fs::read_to_string(&kept).unwrap();
    assert!(text.contains("secret-ok"), "{text}");
    // Until the managers forget the task.
    env.rt.forget(&task.task_id);
    assert!(!kept.exists(), "{}", kept.display());
    assert!(volume.join("v").exists(), "named volumes outlive the task");
    // The tmpfs volume too, still mounted with what the task wrote; the anonymous one went
    // with the task (its mount included, or the directory could not have been removed).
    let tv = env.data().join("volumes/named-tmpfs/_data");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let tv_line = format!(" {} tmpfs ", tv.display());
    assert!(mounts.contains(&tv_line), "{mounts}");
    assert_eq!(std::fs::read_to_string(tv.join("t")).unwrap(), "tv\n");
    assert!(
        !mounts.contains(&task_dir.display().to_string()),
        "{mounts}"
    );
    let bv = env.data().join("volumes/named-bind/_data");
    for dir in [&tv, &bv] {
        let status = std::process::Command::new("umount")
            .arg("-l")
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "umount {}", dir.display());
    }

    // A bind mount of a missing path is refused in plain words.
    let mut bad = env.task("b", &["true"]);
    bad.spec.mounts = vec![proto::spec::Mount {
        kind: proto::spec::MountKind::Bind,
        source: "/nonexistent/shoal".into(),
        target: "/x".into(),
        readonly: false,
        ..Default::default()
    }];
    let err = env.rt.prepare(&bad).await.unwrap_err().to_string();
    assert!(
        err.contains("bind source path does not exist: /nonexistent/shoal"),
        "{err}"
    );
}
both_runtimes!(secrets_and_mounts);

async fn restore(runtime: &'static str) {
    let env = Env::new(runtime, "restore");
    let mut runs = env.task("r", &["sleep", "1000"]);
    runs.spec.stop_grace_period_ms = 200;
    let exits = env.task("e", &["/bin/sh", "-c", "sleep 0.5; exit 5"]);
    let fresh = env.task("f", &["true"]);
    // The "daemon" is a child process (this test binary, see `daemon_child`): it prepares the
    // three tasks, starts two, and is then killed with SIGKILL.
    let plan = env.dir.path().join("plan.json");
    let ready = env.dir.path().join("daemon-ready");
    std::fs::write(
        &plan,
        serde_json::to_vec(&(
            env.runtime_name,
            env.data(),
            env.layer(),
            vec![
                (runs.clone(), true),
                (exits.clone(), true),
                (fresh.clone(), false),
            ],
        ))
        .unwrap(),
    )
    .unwrap();
    let mut daemon = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "daemon_child", "--ignored", "--nocapture"])
        .env(DAEMON_PLAN, &plan)
        .env(DAEMON_READY, &ready)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let daemon_pid = daemon.id() as i32;
    let guard = KillOnDrop(daemon_pid);
    eventually(Duration::from_secs(20), "the daemon child", || {
        ready.exists() || daemon.try_wait().unwrap().is_some()
    })
    .await;
    assert!(ready.exists(), "the daemon child failed");
    let pid: i32 = std::fs::read_to_string(env.rt.task_dir(&runs.task_id).join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(daemon_pid, libc::SIGKILL) };
    daemon.wait().unwrap();
    drop(guard);
    // Meanwhile one container exits, with nobody but its monitor to see it.
    let exit_file = env.rt.task_dir(&exits.task_id).join("exit");
    eventually(Duration::from_secs(10), "exit file", || exit_file.exists()).await;

    let second = runtime_for(&env);
    let restored = second.restore().await;
    let state = |id: &str| restored.iter().find(|r| r.task_id == id).map(|r| r.state);
    assert_eq!(state(&runs.task_id), Some(RestoredState::Running { pid }));
    assert_eq!(state(&exits.task_id), Some(RestoredState::Exited(5)));
    assert_eq!(state(&fresh.task_id), Some(RestoredState::Created));
    let r = restored.iter().find(|r| r.task_id == runs.task_id).unwrap();
    assert_eq!(r.assignment.spec.command, runs.spec.command);
    assert_eq!(second.wait(&exits.task_id).await.unwrap(), 5);
    // A restored, never started task can still start.
    second.start(&fresh.task_id).await.unwrap();
    assert_eq!(second.wait(&fresh.task_id).await.unwrap(), 0);

    // Through the executor: the running one is adopted (not started again), the others are
    // not assigned any more and get removed.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let executor = worker::executor::Executor::new(Arc::new(second.clone()), tx);
    assert_eq!(executor.restore().await, 3);
    executor.apply(true, vec![runs.clone()], vec![]);
    let report = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.task_id, runs.task_id);
    assert_eq!(report.status.state, TaskState::Running);
    assert_eq!(report.status.message, "adopted after restart");
    eventually(
        Duration::from_secs(10),
        "unassigned restored tasks removed",
        || !env.rt.task_dir(&exits.task_id).exists() && !env.rt.task_dir(&fresh.task_id).exists(),
    )
    .await;
    let still: i32 = std::fs::read_to_string(env.rt.task_dir(&runs.task_id).join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(still, pid, "not restarted");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let mut shutdown = runs.clone();
    shutdown.desired_state = TaskState::Shutdown;
    executor.apply(false, vec![shutdown], vec![]);
    let report = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.status.state, TaskState::Shutdown);
    assert_eq!(report.status.exit_code, Some(137));
    executor.shutdown().await;
}
both_runtimes!(restore);

fn runtime_for(env: &Env) -> OciRuntime {
    runtime(env.runtime_name, &env.data(), &env.layer())
}

async fn healthchecks(runtime: &'static str) {
    let env = Env::new(runtime, "health");
    let mut healthy = env.task("h", &["sleep", "1000"]);
    healthy.spec.healthcheck = Some(HealthCheck {
        test: vec!["CMD-SHELL".into(), "test -e /tmp/ready".into()],
        // --health-interval 60s --health-start-period 60s --health-start-interval 150ms:
        // healthy within the start period's quick probes, not after a minute.
        interval_ms: 60_000,
        timeout_ms: 5_000,
        retries: 100,
        start_period_ms: 60_000,
        start_interval_ms: 150,
    });
    env.rt.prepare(&healthy).await.unwrap();
    let rt = env.rt.clone();
    let id = healthy.task_id.clone();
    let started = tokio::spawn(async move { rt.start(&id).await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!started.is_finished(), "start waits for healthy");
    let exec = env
        .rt
        .exec_argv(&healthy.task_id, &["touch".into(), "/tmp/ready".into()])
        .unwrap();
    let status = std::process::Command::new(&exec[0])
        .args(&exec[1..])
        .env(SHIM_ENV, "1")
        .status()
        .unwrap();
    assert!(status.success(), "{exec:?}");
    tokio::time::timeout(Duration::from_secs(10), started)
        .await
        .expect("healthy in time")
        .unwrap()
        .unwrap();

    let mut sick = env.task("u", &["sleep", "1000"]);
    sick.spec.healthcheck = Some(HealthCheck {
        test: vec!["CMD-SHELL".into(), "echo bad-health; exit 1".into()],
        interval_ms: 150,
        timeout_ms: 5_000,
        retries: 2,
        start_period_ms: 0,
        start_interval_ms: 0,
    });
    env.rt.prepare(&sick).await.unwrap();
    env.rt.start(&sick.task_id).await.unwrap();
    assert_eq!(env.rt.wait(&sick.task_id).await.unwrap(), 137);
    assert_eq!(
        env.rt.exit_detail(&sick.task_id).await.as_deref(),
        Some("container unhealthy: exit 1: bad-health")
    );
}
both_runtimes!(healthchecks);

/// `cargo nextest run -p shoal-tests --run-ignored only bench_runtime --no-capture`: the
/// life cycle of `true` through `OciRuntime` vs bare `runc run` / `crun run`.
#[tokio::test]
#[ignore]
async fn bench_runtime() {
    for name in ["runc", "crun"] {
        let env = Env::new(name, "bench");
        let images = Arc::new(
            ImageStore::open(&env.data().join("images"), RegistryOptions::default()).unwrap(),
        );
        let mut config = OciConfig::new(env.data(), images);
        config.shim_command = vec![
            std::env::current_exe()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            "shim".into(),
        ];
        config.shim_env = vec![(SHIM_ENV.into(), "1".into())];
        let image = Image {
            reference: "bench".into(),
            id: "sha256:bench".into(),
            config: ImageConfig::default(),
            layers: vec![env.layer()],
        };
        let figures = worker::oci::bench::bench_lifecycle(name, 20, config, image)
            .await
            .unwrap();
        println!("{figures}");
    }
}

/// The monitor's memory: private (unshared) bytes of a monitor watching an idle container
/// (forked by the monitor server, it shares the pages of the binary with it).
async fn shim_memory(runtime: &'static str) {
    let env = Env::new(runtime, "mem");
    let task = env.task("m", &["sleep", "1000"]);
    env.rt.prepare(&task).await.unwrap();
    env.rt.start(&task.task_id).await.unwrap();
    let shim: i32 = std::fs::read_to_string(env.rt.task_dir(&task.task_id).join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let rollup = std::fs::read_to_string(format!("/proc/{shim}/smaps_rollup")).unwrap();
    let kib = |key: &str| -> u64 {
        rollup
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let private = kib("Private_Clean:") + kib("Private_Dirty:");
    println!(
        "{runtime} shim: Rss {} KiB, private {private} KiB",
        kib("Rss:")
    );
    // About 0.2 MiB measured (debug test binary); a monitor executed on its own costs
    // 0.7 MiB here, 2.7 MiB from the debug node binary.
    assert!(private < 512, "shim private memory {private} KiB");
}
both_runtimes!(shim_memory);

/// The pids of this process's children whose command line is `… shim serve …`.
fn monitor_servers() -> Vec<i32> {
    let own = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if parent.as_deref() == Some(own.as_str()) && args.get(2) == Some(&&b"serve"[..]) {
            found.push(pid);
        }
    }
    found
}

/// A monitor server that went away is replaced with the next container; the monitors it
/// forked live on without it.
async fn monitor_server_replaced(runtime: &'static str) {
    let env = Env::new(runtime, "server");
    let first = env.task("a", &["sleep", "1000"]);
    env.rt.prepare(&first).await.unwrap();
    env.rt.start(&first.task_id).await.unwrap();
    let servers = monitor_servers();
    assert_eq!(servers.len(), 1, "one monitor server: {servers:?}");
    // SAFETY: signalling the child this runtime started.
    unsafe { libc::kill(servers[0], libc::SIGKILL) };
    eventually(Duration::from_secs(10), "the server gone", || {
        !monitor_servers().contains(&servers[0])
    })
    .await;
    let second = env.task("b", &["/bin/sh", "-c", "echo second; exit 4"]);
    env.rt.prepare(&second).await.unwrap();
    env.rt.start(&second.task_id).await.unwrap();
    assert_eq!(env.rt.wait(&second.task_id).await.unwrap(), 4);
    assert!(env.log(&second.task_id).contains(" stdout second"));
    // The first container and its monitor still run; stopping it still reports its end (a
    // `sleep` as the pid 1 of its namespace ignores SIGTERM: killed after the grace period).
    let mut waiting = Box::pin(env.rt.wait(&first.task_id));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut waiting)
            .await
            .is_err(),
        "the first container ended with its server"
    );
    env.rt
        .stop(&first.task_id, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(waiting.await.unwrap(), 137);
}
both_runtimes!(monitor_server_replaced);

const DAEMON_PLAN: &str = "SHOAL_TEST_DAEMON_PLAN";
const DAEMON_READY: &str = "SHOAL_TEST_DAEMON_READY";

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signalling a child this test started (harmless if it is gone).
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// Not a test: the daemon of `restore`, run in a child process that the test kills. Does
/// nothing unless the test set its environment.
#[tokio::test]
#[ignore]
async fn daemon_child() {
    let (Some(plan), Some(ready)) = (
        std::env::var_os(DAEMON_PLAN),
        std::env::var_os(DAEMON_READY),
    ) else {
        return;
    };
    type Plan = (String, PathBuf, PathBuf, Vec<(Assignment, bool)>);
    let (name, data, layer, tasks): Plan =
        serde_json::from_slice(&std::fs::read(plan).unwrap()).unwrap();
    let name: &'static str = if name == "crun" { "crun" } else { "runc" };
    let rt = runtime(name, &data, &layer);
    for (task, start) in &tasks {
        rt.prepare(task).await.unwrap();
        if *start {
            rt.start(&task.task_id).await.unwrap();
        }
    }
    std::fs::write(ready, b"").unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
}

// ---------------------------------------------------------------------------------------
// Runtime conformance: the same bodies on `FakeRuntime` (which the executor's unit tests and
// the lab rely on), runc and crun. A task carries the fake's knobs in its environment
// (`SHOAL_FAKE_*`, ignored by real containers) so one assignment means the same on all three.

use worker::runtime::{
    FakeRuntime, RuntimeError, FAKE_EXIT_AFTER_MS, FAKE_EXIT_CODE, FAKE_GRACEFUL,
};

/// A runtime under test and its world.
enum Rig {
    Fake(Arc<FakeRuntime>),
    Oci(Env),
}

impl Rig {
    fn new(kind: &'static str, test: &str) -> Rig {
        match kind {
            "fake" => Rig::Fake(Arc::new(FakeRuntime::new(Duration::from_millis(5)))),
            oci => Rig::Oci(Env::new(oci, test)),
        }
    }

    fn rt(&self) -> Arc<dyn Runtime> {
        match self {
            Rig::Fake(f) => f.clone(),
            Rig::Oci(env) => Arc::new(env.rt.clone()),
        }
    }

    fn task(&self, name: &str, command: &[&str], env: &[String]) -> Assignment {
        let mut a = match self {
            Rig::Fake(_) => Env::assignment(format!("fake{name}"), command),
            Rig::Oci(e) => e.task(name, command),
        };
        a.spec.env = env.to_vec();
        a
    }

    /// A second runtime over what the first left, as a restarted daemon gets; None for a
    /// runtime that keeps nothing across a restart.
    fn restart(&self) -> Option<Arc<dyn Runtime>> {
        match self {
            Rig::Fake(_) => None,
            Rig::Oci(env) => {
                env.rt.detach();
                Some(Arc::new(runtime_for(env)))
            }
        }
    }
}

impl Env {
    fn assignment(task_id: String, command: &[&str]) -> Assignment {
        Assignment {
            task_id,
            service_id: "svc".into(),
            service_name: "web".into(),
            slot: 1,
            spec: TaskSpec {
                image: "test-image".into(),
                command: command.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            desired_state: TaskState::Running,
            node_hostname: "node1".into(),
            node_id: String::new(),
            service_labels: Default::default(),
            secrets: vec![],
            configs: vec![],
            networks: vec![],
        }
    }
}

fn exits(after_ms: u64, code: i32) -> Vec<String> {
    vec![
        format!("{FAKE_EXIT_AFTER_MS}={after_ms}"),
        format!("{FAKE_EXIT_CODE}={code}"),
    ]
}

macro_rules! every_runtime {
    ($name:ident, $tag:literal) => {
        mod $name {
            #[tokio::test]
            async fn fake() {
                super::$name(super::Rig::new("fake", $tag)).await
            }
            #[tokio::test]
            async fn runc() {
                super::$name(super::Rig::new("runc", $tag)).await
            }
            #[tokio::test]
            async fn crun() {
                super::$name(super::Rig::new("crun", $tag)).await
            }
        }
    };
}

async fn conformance_exit_codes(rig: Rig) {
    let rt = rig.rt();
    let three = rig.task("three", &["/bin/sh", "-c", "exit 3"], &exits(20, 3));
    let zero = rig.task("zero", &["true"], &exits(20, 0));
    for (task, code) in [(&three, 3), (&zero, 0)] {
        rt.prepare(task).await.expect("prepare");
        rt.start(&task.task_id).await.expect("start");
        assert_eq!(rt.wait(&task.task_id).await.unwrap(), code);
        // Again, at once, the same.
        assert_eq!(rt.wait(&task.task_id).await.unwrap(), code);
        rt.remove(&task.task_id).await.expect("remove");
        rt.remove(&task.task_id).await.expect("remove again");
        assert!(rt.wait(&task.task_id).await.is_err(), "removed: unknown");
    }
}
every_runtime!(conformance_exit_codes, "cexit");

async fn conformance_stop(rig: Rig) {
    let rt = rig.rt();
    // Ignores SIGTERM (PID 1 without a handler): killed after the grace period.
    let stubborn = rig.task("stubborn", &["sleep", "1000"], &[]);
    rt.prepare(&stubborn).await.unwrap();
    rt.start(&stubborn.task_id).await.unwrap();
    rt.stop(&stubborn.task_id, Duration::from_millis(300))
        .await
        .expect("stop");
    assert_eq!(rt.wait(&stubborn.task_id).await.unwrap(), 137);
    // Stopping a stopped task changes nothing.
    rt.stop(&stubborn.task_id, Duration::from_millis(300))
        .await
        .expect("stop of a stopped task");
    assert_eq!(rt.wait(&stubborn.task_id).await.unwrap(), 137);
    // One that exits on SIGTERM reports its own code.
    let polite = rig.task(
        "polite",
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM; touch /tmp/trapped; while :; do sleep 0.05; done",
        ],
        &[format!("{FAKE_GRACEFUL}=1")],
    );
    rt.prepare(&polite).await.unwrap();
    rt.start(&polite.task_id).await.unwrap();
    if let Rig::Oci(env) = &rig {
        // The trap is set once the shell has run its first command.
        let marker = env.rt.task_dir(&polite.task_id).join("rootfs/tmp/trapped");
        eventually(Duration::from_secs(10), "the trap set", || marker.exists()).await;
    }
    rt.stop(&polite.task_id, Duration::from_secs(10))
        .await
        .expect("stop");
    assert_eq!(rt.wait(&polite.task_id).await.unwrap(), 0);
    // A task prepared and never started: stop leaves it as it is, and it can still start.
    let created = rig.task("created", &["true"], &exits(20, 0));
    rt.prepare(&created).await.unwrap();
    rt.stop(&created.task_id, Duration::from_millis(100))
        .await
        .expect("stop of a created task");
    rt.start(&created.task_id).await.expect("start after stop");
    assert_eq!(rt.wait(&created.task_id).await.unwrap(), 0);
    for t in [&stubborn, &polite, &created] {
        rt.remove(&t.task_id).await.expect("remove");
    }
}
every_runtime!(conformance_stop, "cstop");

async fn conformance_unknown_tasks(rig: Rig) {
    let rt = rig.rt();
    let id = rig.task("ghost", &["true"], &[]).task_id;
    rt.remove(&id)
        .await
        .expect("remove of an unknown task succeeds");
    let unknown = |r: Result<(), RuntimeError>| {
        assert!(matches!(r, Err(RuntimeError::UnknownTask { .. })), "{r:?}")
    };
    unknown(rt.start(&id).await);
    unknown(rt.stop(&id, Duration::from_millis(100)).await);
    unknown(rt.wait(&id).await.map(|_| ()));
}
every_runtime!(conformance_unknown_tasks, "cunknown");

async fn conformance_restore(rig: Rig) {
    let rt = rig.rt();
    let runs = rig.task("runs", &["sleep", "1000"], &[]);
    let exited = rig.task("exited", &["/bin/sh", "-c", "exit 5"], &exits(20, 5));
    let created = rig.task("created", &["true"], &exits(20, 0));
    for t in [&runs, &exited, &created] {
        rt.prepare(t).await.unwrap();
    }
    rt.start(&runs.task_id).await.unwrap();
    rt.start(&exited.task_id).await.unwrap();
    assert_eq!(rt.wait(&exited.task_id).await.unwrap(), 5);
    let Some(second) = rig.restart() else {
        // Nothing survives this runtime's restart: nothing to restore.
        assert!(rt.restore().await.is_empty());
        return;
    };
    let restored = second.restore().await;
    let state = |id: &str| restored.iter().find(|r| r.task_id == id).map(|r| r.state);
    assert!(
        matches!(state(&runs.task_id), Some(RestoredState::Running { .. })),
        "{restored:?}"
    );
    assert_eq!(state(&exited.task_id), Some(RestoredState::Exited(5)));
    assert_eq!(state(&created.task_id), Some(RestoredState::Created));
    let ids: Vec<&str> = restored.iter().map(|r| r.task_id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "ordered by task id");
    // The restarted runtime drives them on.
    assert_eq!(second.wait(&exited.task_id).await.unwrap(), 5);
    second
        .stop(&runs.task_id, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(second.wait(&runs.task_id).await.unwrap(), 137);
    second.start(&created.task_id).await.unwrap();
    assert_eq!(second.wait(&created.task_id).await.unwrap(), 0);
    for t in [&runs, &exited, &created] {
        second.remove(&t.task_id).await.unwrap();
    }
}
every_runtime!(conformance_restore, "crestore");
