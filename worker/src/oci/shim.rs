//! The per-container monitor ("shim"), one per container, forked from a monitor server
//! (`shoal shim serve`: the node's own binary, executed once per daemon).
//!
//! ```text
//!  daemon ──spawn once──▶ shim serve (single-threaded; reads requests on its stdin)
//!  daemon ──request──────▶  │ fork (no exec: the pages of the binary stay shared)
//!                           └─▶ monitor (own process group, child subreaper)
//!                                ├─ runtime run --detach (stdout/stderr: pipes the monitor holds)
//!                                │    writes <task>/started and <task>/created (init pid),
//!                                │    or <task>/create-error
//!                                ├─ copies the pipes, line by line, into <task>/container.log
//!                                └─ reaps the init (re-parented to it), writes <task>/exit
//! ```
//!
//! The monitors outlive the daemon (and the server, which ends when the daemon's end of its
//! stdin closes), so a killed and restarted daemon finds the container running and its log
//! still written, or the exit status waiting in the task directory. They are plain std and
//! libc — no async runtime — and, forked rather than executed, each costs only the pages it
//! writes itself (a few dozen KiB).
//!
//! `shoal shim run …` is the same monitor started on its own (the fallback when the server
//! cannot be reached): it forks once, the first process exits at once.
//!
//! `shoal shim exec-ns -- PROGRAM ARGS…` runs a program in a private mount namespace with the
//! cgroup2 mount of a hybrid host hidden (what crun needs there; see [`mask_cgroup2`]).
//!
//! The shim must be entered before the process starts any thread (the daemon's CLI calls
//! [`shim_main`] from `main` before it builds its tokio runtime).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// What the shim leaves in `<task dir>/exit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, or 128 + signal for a process killed by a signal (as shells say it).
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The cgroup recorded an OOM kill.
    pub oom_killed: bool,
    /// RFC 3339, UTC.
    pub finished_at: String,
}

/// Task-directory file names shared by the shim and the daemon.
pub mod files {
    pub const CREATED: &str = "created";
    pub const STARTED: &str = "started";
    pub const CREATE_ERROR: &str = "create-error";
    pub const EXIT: &str = "exit";
    pub const SHIM_PID: &str = "shim.pid";
    pub const INIT_PID: &str = "pid";
    pub const LOG: &str = "container.log";
}

/// Entry point of `shoal shim …`; returns the process exit code.
pub fn shim_main(args: Vec<String>) -> i32 {
    match args.first().map(String::as_str) {
        Some("run") => match RunArgs::parse(&args[1..]) {
            Ok(run) => run_shim(run),
            Err(e) => {
                eprintln!("shoal shim: {e}");
                2
            }
        },
        Some("serve") => match args.get(1..) {
            Some([flag, tasks]) if flag == "--tasks" => serve(Path::new(tasks)),
            _ => {
                eprintln!("usage: shoal shim serve --tasks DIR");
                2
            }
        },
        Some("exec-ns") => {
            let rest: Vec<&String> = args[1..].iter().skip_while(|a| *a == "--").collect();
            let Some((program, rest)) = rest.split_first() else {
                eprintln!("shoal shim exec-ns: missing program");
                return 2;
            };
            if let Err(e) = mask_cgroup2() {
                eprintln!("shoal shim exec-ns: {e}");
                return 1;
            }
            let err = Command::new(program).args(rest).exec();
            eprintln!("shoal shim exec-ns: {program}: {err}");
            127
        }
        _ => {
            eprintln!("usage: shoal shim run --task-dir DIR --runtime BIN --root DIR --id ID [--mask-cgroup2] | shoal shim serve --tasks DIR | shoal shim exec-ns -- PROGRAM ARGS...");
            2
        }
    }
}

/// Enter a private mount namespace where mounts of the host still show up (rslave) and the
/// cgroup2 mount of a hybrid host is gone: crun refuses hybrid hosts otherwise. Called in a
/// child between fork and exec, so it only makes system calls.
pub fn mask_cgroup2() -> std::io::Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )?;
    // Absent on pure v1 or pure v2 hosts: nothing to hide then.
    let _ = umount2("/sys/fs/cgroup/unified", MntFlags::MNT_DETACH);
    Ok(())
}

struct RunArgs {
    task_dir: PathBuf,
    runtime: String,
    root: String,
    id: String,
    mask: bool,
    /// The log's rotation: bytes per file (0: never rotated) and files kept; `None`: the
    /// output is discarded (`--log-driver none`).
    log: Option<(u64, u32)>,
}

impl RunArgs {
    fn parse(args: &[String]) -> Result<RunArgs, String> {
        let mut run = RunArgs {
            task_dir: PathBuf::new(),
            runtime: String::new(),
            root: String::new(),
            id: String::new(),
            mask: false,
            log: Some((0, 1)),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().ok_or(format!("{flag}: missing value"));
            match flag.as_str() {
                "--task-dir" => run.task_dir = PathBuf::from(value()?),
                "--runtime" => run.runtime = value()?,
                "--root" => run.root = value()?,
                "--id" => run.id = value()?,
                "--mask-cgroup2" => run.mask = true,
                "--log-none" => run.log = None,
                "--log-rotate" => {
                    let v = value()?;
                    let (size, files) = v
                        .split_once(':')
                        .and_then(|(s, f)| Some((s.parse().ok()?, f.parse().ok()?)))
                        .ok_or(format!("--log-rotate {v}: expected BYTES:FILES"))?;
                    run.log = Some((size, files));
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if run.task_dir.as_os_str().is_empty() || run.runtime.is_empty() || run.id.is_empty() {
            return Err("--task-dir, --runtime and --id are required".into());
        }
        Ok(run)
    }
}

fn run_shim(run: RunArgs) -> i32 {
    // Detach: the process the daemon spawned exits at once (the daemon reaps it), the child
    // lives on, re-parented to init.
    // SAFETY: the shim is entered before any thread is started.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => 0,
        Ok(nix::unistd::ForkResult::Child) => become_monitor(&run),
        Err(e) => {
            eprintln!("shoal shim: fork: {e}");
            1
        }
    }
}

/// The monitor proper, in a freshly forked single-threaded process: its own process group,
/// the subreaper of the container, until the container's exit is recorded.
fn become_monitor(run: &RunArgs) -> i32 {
    // A process group of its own (signals to the daemon's group do not reach it), in the
    // daemon's session: `setsid` would put it in a scheduler autogroup of its own, where the
    // runtime's `run` took 15-20 ms longer on a loaded machine.
    let _ = nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
    // SAFETY: plain prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let dir = &run.task_dir;
    let _ = write_quick(
        &dir.join(files::SHIM_PID),
        std::process::id().to_string().as_bytes(),
    );
    match monitor(run) {
        Ok(()) => 0,
        Err(e) => {
            let _ = write_quick(&dir.join(files::CREATE_ERROR), e.as_bytes());
            1
        }
    }
}

/// Longest request the monitor server reads (a task directory, a runtime path, an id).
const MAX_REQUEST: usize = 64 * 1024;

/// `shoal shim serve --tasks DIR`: the monitor server. Reads requests on stdin — a
/// little-endian `u32` length, then the arguments of `shim run` separated by NUL bytes — forks
/// a monitor for each task directory under `DIR` and answers with its pid (`i32`,
/// little-endian; negative: the request was refused). Ends when stdin reaches end of file
/// (the daemon went away); the monitors live on. `DIR` also names the node in the command
/// line the monitors inherit (labs recognise their processes by it).
fn serve(tasks: &Path) -> i32 {
    // Monitors end on their own; nobody waits for them but the kernel.
    // SAFETY: setting a signal disposition in a single-threaded process.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    loop {
        let mut len = [0u8; 4];
        if input.read_exact(&mut len).is_err() {
            return 0;
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_REQUEST {
            return 2;
        }
        let mut body = vec![0u8; len];
        if input.read_exact(&mut body).is_err() {
            return 0;
        }
        let args: Vec<String> = body
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let reply = match RunArgs::parse(&args) {
            Err(_) => -libc::EINVAL,
            Ok(run) if run.task_dir.parent() != Some(tasks) => -libc::EPERM,
            // SAFETY: the server is single-threaded.
            Ok(run) => match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Parent { child }) => child.as_raw(),
                Ok(nix::unistd::ForkResult::Child) => {
                    // SAFETY: back to the default disposition (the monitor waits for its
                    // children), and the request pipe closed: only system calls.
                    unsafe {
                        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
                        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                        if null >= 0 {
                            libc::dup2(null, 0);
                            libc::dup2(null, 1);
                            if null > 2 {
                                libc::close(null);
                            }
                        }
                    }
                    let code = become_monitor(&run);
                    // SAFETY: ends the forked process without running the server's exit path.
                    unsafe { libc::_exit(code) }
                }
                Err(e) => -(e as i32),
            },
        };
        if output
            .write_all(&reply.to_le_bytes())
            .and_then(|_| output.flush())
            .is_err()
        {
            return 0;
        }
    }
}

/// A request of [`serve`] for `args` (the arguments of `shim run`).
pub fn serve_request(args: &[String]) -> Vec<u8> {
    let body = args.join("\0");
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body.as_bytes());
    out
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

/// Create and start the container in one call of the runtime (`run --detach`), copy its
/// output and wait for it. An `Err` is a create failure, in the runtime's words.
fn monitor(run: &RunArgs) -> Result<(), String> {
    let dir = &run.task_dir;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mut create = Command::new(&run.runtime);
    if !run.root.is_empty() {
        create.arg("--root").arg(&run.root);
    }
    create
        .arg("run")
        .arg("--detach")
        .arg("--bundle")
        .arg(dir)
        .arg("--pid-file")
        .arg(dir.join(files::INIT_PID))
        .arg(&run.id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    if run.mask {
        // SAFETY: mask_cgroup2 only makes system calls.
        unsafe { create.pre_exec(mask_cgroup2) };
    }
    let status = create
        .status()
        .map_err(|e| format!("{}: {e}", run.runtime))?;
    drop(create);
    // `create` held the write ends; with it dropped: once the runtime
    // and the container are gone, the pipes reach end of file.
    if !status.success() {
        let mut text = String::new();
        let mut err = File::from(err_r);
        let _ = err.read_to_string(&mut text);
        let mut out_text = String::new();
        let _ = File::from(out_r).read_to_string(&mut out_text);
        text.push_str(&out_text);
        return Err(if text.trim().is_empty() {
            format!("{} run: {status}", run.runtime)
        } else {
            text
        });
    }
    let pid: i32 = std::fs::read_to_string(dir.join(files::INIT_PID))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("{} run: no pid file", run.runtime))?;
    // Started as well as created: `run` did both (the daemon waits for `created`).
    let _ = write_quick(&dir.join(files::STARTED), b"");
    let _ = write_quick(&dir.join(files::CREATED), pid.to_string().as_bytes());

    let (wake_r, wake_w) = pipe()?;
    let waiter = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || reap_until(pid, wake_w))
        .map_err(|e| format!("thread: {e}"))?;
    let log = run.log.and_then(|(max_bytes, max_files)| {
        LogFile::open(dir.join(files::LOG), max_bytes, max_files)
    });
    copy_logs(log, out_r, err_r, &wake_r);
    let raw = waiter.join().unwrap_or(0);
    let (code, signal) = if libc::WIFSIGNALED(raw) {
        let sig = libc::WTERMSIG(raw);
        (128 + sig, Some(sig))
    } else {
        (libc::WEXITSTATUS(raw), None)
    };
    let exit = ExitStatus {
        code,
        signal,
        oom_killed: oom_killed(&run.id),
        finished_at: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
    };
    let json = serde_json::to_vec(&exit).unwrap_or_default();
    let _ = write_quick(&dir.join(files::EXIT), &json);
    Ok(())
}

/// Reap every child (the shim is a subreaper) until `pid` exits; returns its wait status and
/// wakes the log copier.
fn reap_until(pid: i32, wake: OwnedFd) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut status, 0) };
        if reaped == pid {
            let _ = File::from(wake).write_all(b"x");
            return status;
        }
        if reaped < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // No child at all: the init is not ours (cannot happen after a good create).
            let _ = File::from(wake).write_all(b"x");
            return 0;
        }
    }
}

struct Stream {
    fd: Option<OwnedFd>,
    name: &'static str,
    pending: Vec<u8>,
}

/// Copy both pipes line by line into the log until they close, or shortly after the init
/// exited (a process that escaped the pid namespace could hold a pipe open for ever).
fn copy_logs(mut log: Option<LogFile>, out: OwnedFd, err: OwnedFd, wake: &OwnedFd) {
    let mut streams = [
        Stream {
            fd: Some(out),
            name: "stdout",
            pending: Vec::new(),
        },
        Stream {
            fd: Some(err),
            name: "stderr",
            pending: Vec::new(),
        },
    ];
    let mut exited_at: Option<Instant> = None;
    let mut buf = [0u8; 8192];
    loop {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
        let mut which: Vec<usize> = Vec::with_capacity(3);
        for (i, s) in streams.iter().enumerate() {
            if let Some(fd) = &s.fd {
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                which.push(i);
            }
        }
        if fds.is_empty() {
            break;
        }
        let timeout = match exited_at {
            None => {
                fds.push(libc::pollfd {
                    fd: wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                -1
            }
            Some(at) => {
                let left = Duration::from_millis(500).saturating_sub(at.elapsed());
                if left.is_zero() {
                    break;
                }
                left.as_millis() as i32
            }
        };
        // SAFETY: fds is a valid array of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if exited_at.is_none() && fds.len() > which.len() && fds[which.len()].revents != 0 {
            exited_at = Some(Instant::now());
        }
        for (slot, &i) in which.iter().enumerate() {
            if fds[slot].revents == 0 {
                continue;
            }
            let stream = &mut streams[i];
            let fd = stream.fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
            // SAFETY: reading into a stack buffer from an fd we own.
            let got = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if got <= 0 {
                if got < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                stream.fd = None;
                flush_partial(&mut log, stream);
                continue;
            }
            stream.pending.extend_from_slice(&buf[..got as usize]);
            while let Some(pos) = stream.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = stream.pending.drain(..=pos).collect();
                write_line(&mut log, stream.name, &line[..line.len() - 1]);
            }
            if stream.pending.len() > 16 * 1024 {
                flush_partial(&mut log, stream);
            }
        }
    }
    for stream in &mut streams {
        flush_partial(&mut log, stream);
    }
}

fn flush_partial(log: &mut Option<LogFile>, stream: &mut Stream) {
    if !stream.pending.is_empty() {
        let line = std::mem::take(&mut stream.pending);
        write_line(log, stream.name, &line);
    }
}

fn write_line(log: &mut Option<LogFile>, stream: &str, text: &[u8]) {
    let Some(log) = log else { return };
    let now = humantime::format_rfc3339_nanos(SystemTime::now());
    let mut line = Vec::with_capacity(text.len() + 48);
    let _ = write!(line, "{now} {stream} ");
    line.extend_from_slice(text);
    line.push(b'\n');
    log.write(&line);
}

/// The container's log file, rotated as `--log-opt max-size`/`max-file` ask: past
/// `max_bytes` the file becomes `container.log.1` (and `.1` becomes `.2` …), the oldest
/// past `max_files` goes; with one file kept, it starts again empty.
pub struct LogFile {
    file: File,
    path: PathBuf,
    size: u64,
    max_bytes: u64,
    max_files: u32,
}

impl LogFile {
    pub fn open(path: PathBuf, max_bytes: u64, max_files: u32) -> Option<LogFile> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok()?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Some(LogFile {
            file,
            path,
            size,
            max_bytes,
            max_files: max_files.max(1),
        })
    }

    pub fn write(&mut self, line: &[u8]) {
        if self.max_bytes > 0 && self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate();
        }
        if self.file.write_all(line).is_ok() {
            self.size += line.len() as u64;
        }
    }

    fn rotate(&mut self) {
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.max_files <= 1 {
            let _ = self.file.set_len(0);
            self.size = 0;
            return;
        }
        let _ = std::fs::remove_file(numbered(self.max_files - 1));
        for n in (1..self.max_files - 1).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        let _ = std::fs::rename(&self.path, numbered(1));
        if let Ok(f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            self.file = f;
            self.size = 0;
        }
    }
}

/// Whether the container's memory cgroup recorded an OOM kill (v1, then v2 layouts).
pub fn oom_killed(id: &str) -> bool {
    let candidates = [
        format!("/sys/fs/cgroup/memory/shoal/{id}/memory.oom_control"),
        format!("/sys/fs/cgroup/shoal/{id}/memory.events"),
    ];
    candidates.iter().any(|path| {
        std::fs::read_to_string(path)
            .map(|text| {
                text.lines().any(|line| {
                    let mut words = line.split_whitespace();
                    words.next() == Some("oom_kill")
                        && words
                            .next()
                            .and_then(|n| n.parse::<u64>().ok())
                            .is_some_and(|n| n > 0)
                })
            })
            .unwrap_or(false)
    })
}

/// Write through a temporary file and a rename, so readers see all or nothing, and the data
/// on disk before the name (the node's records, which must survive a power loss).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_renamed(path, data, true)
}

/// [`write_atomic`] without the sync: the monitor's files (pids, created, exit) describe
/// processes that a power loss ends anyway; other processes see them whole all the same.
pub fn write_quick(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_renamed(path, data, false)
}

fn write_renamed(path: &Path, data: &[u8], sync: bool) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(OsStr::new(".tmp"));
    let tmp = PathBuf::from(tmp);
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The node's own records (task.json holds the task's spec): not for other users.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(data)?;
        if sync {
            file.sync_all()?;
        }
    }
    std::fs::rename(&tmp, path)
}
