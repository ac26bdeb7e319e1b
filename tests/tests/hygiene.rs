//! The binary's manners as a process: a CLI command whose output pipe is closed ends quietly
//! (no panic, no exit code 101), and the daemon writes plain text (or JSON lines) into a log
//! file, without terminal colour codes.
//!
//! Each test runs one `shoal daemon` of its own (fake runtime, not in a swarm) on a socket in
//! a temporary directory; nothing here needs a lab.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use harness::{eventually, SoloDaemon as Daemon};

const WAIT: Duration = Duration::from_secs(30);

/// The log once it holds the daemon's "listening" line.
fn log_with_listening(d: &Daemon) -> Result<Vec<u8>> {
    eventually("the daemon logged that it listens", WAIT, || {
        let log = std::fs::read(d.log_path())?;
        ensure!(
            String::from_utf8_lossy(&log).contains("listening"),
            "not yet"
        );
        Ok(log)
    })
}

fn no_escape_bytes(log: &[u8], what: &Path) -> Result<()> {
    ensure!(
        !log.contains(&0x1b),
        "{} holds terminal escape codes:\n{}",
        what.display(),
        String::from_utf8_lossy(log)
    );
    Ok(())
}

#[test]
fn a_closed_output_pipe_ends_a_command_quietly() -> Result<()> {
    let d = Daemon::start(&[])?;
    // `shoal info | head -0`, without the race: the reader is gone before the command runs.
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let out = d
        .cli()
        .arg("info")
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !stderr.contains("panicked"),
        "the command panicked: {stderr}"
    );
    ensure!(
        out.status.code() != Some(101),
        "exit code 101 (a panic): {stderr}"
    );
    ensure!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "expected success or death by SIGPIPE, got {:?}: {stderr}",
        out.status
    );
    Ok(())
}

#[test]
fn the_daemon_log_file_has_no_colour_codes() -> Result<()> {
    let d = Daemon::start(&[])?;
    let log = log_with_listening(&d)?;
    no_escape_bytes(&log, &d.log_path())
}

#[test]
fn log_format_json_writes_one_object_a_line() -> Result<()> {
    let d = Daemon::start(&["--log-format", "json"])?;
    let log = log_with_listening(&d)?;
    no_escape_bytes(&log, &d.log_path())?;
    let text = String::from_utf8(log)?;
    let mut listening = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow!("not JSON: {line:?}: {e}"))?;
        ensure!(v["level"].is_string(), "no level in {line}");
        listening |= v["fields"]["message"] == "listening";
    }
    ensure!(listening, "no \"listening\" record in:\n{text}");
    Ok(())
}
