//! Task logs on this node: read the runtime's log files (the last N lines, then what gets
//! appended) and answer the leader's log requests on the session stream.
//!
//! A log file holds one line per line the container wrote:
//! `<RFC 3339 UTC timestamp with nanoseconds> <stdout|stderr> <text>` (see
//! [`crate::runtime::Runtime::log_path`]). A runtime without log files (the fake one) answers
//! every request with nothing.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proto::pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::runtime::Runtime;

/// How often followed files are checked for appended data.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);
/// Upper bound of the text carried by one chunk (well under gRPC's 4 MiB message limit).
const CHUNK_BYTES: usize = 256 * 1024;
const READ_BLOCK: u64 = 64 * 1024;

/// One parsed line of a log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub timestamp: String,
    pub stream: String,
    pub text: String,
}

/// Parse `<timestamp> <stream> <text>`; a line that does not have that shape is kept whole as
/// stdout text without a timestamp.
pub fn parse_line(line: &str) -> LogLine {
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ts), Some(stream @ ("stdout" | "stderr")), rest) if ts.contains('T') => LogLine {
            timestamp: ts.to_string(),
            stream: stream.to_string(),
            text: rest.unwrap_or_default().to_string(),
        },
        _ => LogLine {
            timestamp: String::new(),
            stream: "stdout".into(),
            text: line.to_string(),
        },
    }
}

/// The last `tail` complete lines of `path` (all of them if `tail` is negative), and the
/// offset just past the last complete line (where following goes on). Reads backwards from
/// the end, so a long file costs only what is asked for. A missing file has no lines.
pub fn read_tail(path: &Path, tail: i64) -> std::io::Result<(Vec<String>, u64)> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    if tail < 0 {
        start = 0;
        f.read_to_end(&mut buf)?;
    } else {
        // Enough newlines to bound `tail` lines, also when the last line is still partial.
        let want = tail as usize + 1;
        while start > 0 && buf.iter().filter(|b| **b == b'\n').count() < want + 1 {
            let n = READ_BLOCK.min(start);
            start -= n;
            f.seek(SeekFrom::Start(start))?;
            let mut block = vec![0u8; n as usize];
            f.read_exact(&mut block)?;
            block.extend_from_slice(&buf);
            buf = block;
        }
    }
    let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else {
        return Ok((Vec::new(), start));
    };
    let complete = &buf[..last_nl];
    let mut lines: Vec<String> = complete
        .split(|b| *b == b'\n')
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    // The first piece may be cut in the middle when we did not read from the start.
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    if tail >= 0 && lines.len() > tail as usize {
        lines.drain(..lines.len() - tail as usize);
    }
    Ok((lines, start + last_nl as u64 + 1))
}

/// Follows one file from an offset: each poll returns the complete lines appended since.
pub struct Follower {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl Follower {
    pub fn new(path: PathBuf, offset: u64) -> Follower {
        Follower {
            path,
            offset,
            partial: Vec::new(),
        }
    }

    pub fn poll(&mut self) -> std::io::Result<Vec<String>> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if len < self.offset {
            // Truncated or replaced: start over.
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset {
            return Ok(Vec::new());
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut data = Vec::with_capacity((len - self.offset) as usize);
        (&mut f).take(len - self.offset).read_to_end(&mut data)?;
        self.offset += data.len() as u64;
        self.partial.extend_from_slice(&data);
        let Some(last_nl) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Ok(Vec::new());
        };
        let rest = self.partial.split_off(last_nl + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        Ok(complete[..complete.len() - 1]
            .split(|b| *b == b'\n')
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect())
    }
}

fn entries(task_id: &str, lines: Vec<String>) -> Vec<pb::LogEntry> {
    lines
        .into_iter()
        .map(|l| {
            let p = parse_line(&l);
            pb::LogEntry {
                task_id: task_id.to_string(),
                stream: p.stream,
                timestamp: p.timestamp,
                line: p.text,
            }
        })
        .collect()
}

/// Send `entries` in chunks of bounded size; false if the session is gone.
async fn send(
    out: &mpsc::Sender<pb::SessionRequest>,
    subscription: u64,
    entries: Vec<pb::LogEntry>,
    done: bool,
    error: String,
) -> bool {
    let mut chunk = Vec::new();
    let mut bytes = 0;
    let mut it = entries.into_iter().peekable();
    loop {
        let last = it.peek().is_none();
        if last || bytes >= CHUNK_BYTES {
            let msg = pb::SessionRequest {
                msg: Some(pb::session_request::Msg::Logs(pb::LogChunk {
                    subscription,
                    entries: std::mem::take(&mut chunk),
                    done: done && last,
                    error: if last { error.clone() } else { String::new() },
                })),
            };
            if out.send(msg).await.is_err() {
                return false;
            }
            bytes = 0;
            if last {
                return true;
            }
        }
        if let Some(e) = it.next() {
            bytes += e.line.len() + 64;
            chunk.push(e);
        }
    }
}

/// Answer one log request: the tail of each task's log (merged by time), then, with follow,
/// what gets appended until `cancel` fires or the session goes away.
pub async fn serve(
    runtime: Arc<dyn Runtime>,
    req: pb::LogRequest,
    out: mpsc::Sender<pb::SessionRequest>,
    cancel: CancellationToken,
) {
    let sub = req.subscription;
    let files: Vec<(String, PathBuf)> = req
        .task_ids
        .iter()
        .filter_map(|t| runtime.log_path(t).map(|p| (t.clone(), p)))
        .collect();
    let tail = req.tail;
    let read = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        let mut followers = Vec::new();
        for (task, path) in files {
            let (lines, offset) = read_tail(&path, tail)?;
            all.extend(entries(&task, lines));
            followers.push((task, Follower::new(path, offset)));
        }
        // Lines of several tasks in time order (the timestamps have a fixed width).
        all.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
        Ok::<_, std::io::Error>((all, followers))
    })
    .await;
    let (initial, mut followers) = match read {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            send(&out, sub, Vec::new(), true, format!("reading logs: {e}")).await;
            return;
        }
        Err(e) => {
            send(&out, sub, Vec::new(), true, format!("reading logs: {e}")).await;
            return;
        }
    };
    if !send(&out, sub, initial, !req.follow, String::new()).await || !req.follow {
        return;
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = out.closed() => return,
            _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
        }
        let mut new = Vec::new();
        for (task, f) in &mut followers {
            match f.poll() {
                Ok(lines) => new.extend(entries(task, lines)),
                Err(e) => tracing::debug!(%task, error = %e, "log follow"),
            }
        }
        if !new.is_empty() && !send(&out, sub, new, false, String::new()).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(i: usize) -> String {
        format!(
            "2026-01-01T00:00:{:02}.000000000Z stdout line {i}\n",
            i % 60
        )
    }

    #[test]
    fn parse_the_runtime_format() {
        let p = parse_line("2026-01-01T00:00:00.123456789Z stderr oops: a b");
        assert_eq!(p.timestamp, "2026-01-01T00:00:00.123456789Z");
        assert_eq!(p.stream, "stderr");
        assert_eq!(p.text, "oops: a b");
        let p = parse_line("2026-01-01T00:00:00Z stdout ");
        assert_eq!(p.text, "");
        let p = parse_line("garbage here");
        assert_eq!(
            (p.timestamp.as_str(), p.text.as_str()),
            ("", "garbage here")
        );
    }

    #[test]
    fn tail_reads_the_last_lines_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut f = std::fs::File::create(&path).unwrap();
        // Long enough to span several read blocks.
        let n = 5000;
        for i in 0..n {
            f.write_all(line(i).as_bytes()).unwrap();
        }
        f.write_all(b"2026-01-01T00:00:00Z stdout partial").unwrap();
        f.flush().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();

        let (lines, off) = read_tail(&path, 3).unwrap();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].ends_with(&format!("line {}", n - 1)));
        assert!(lines[0].ends_with(&format!("line {}", n - 3)));
        assert_eq!(
            off,
            len - "2026-01-01T00:00:00Z stdout partial".len() as u64
        );

        let (all, off_all) = read_tail(&path, -1).unwrap();
        assert_eq!(all.len(), n);
        assert_eq!(off_all, off);
        let (none, _) = read_tail(&path, 0).unwrap();
        assert!(none.is_empty());
        let (more, _) = read_tail(&path, 100_000).unwrap();
        assert_eq!(more.len(), n);
        assert!(more[0].ends_with("line 0"));
        let (missing, off) = read_tail(&dir.path().join("nope"), 5).unwrap();
        assert!(missing.is_empty() && off == 0);
    }

    #[test]
    fn follower_returns_appended_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut fl = Follower::new(path.clone(), 0);
        assert!(fl.poll().unwrap().is_empty(), "no file yet");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(line(1).as_bytes()).unwrap();
        f.write_all(b"2026-01-01T00:00:02Z stdout half").unwrap();
        f.flush().unwrap();
        let got = fl.poll().unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].ends_with("line 1"));
        f.write_all(b" done\n").unwrap();
        f.flush().unwrap();
        assert_eq!(
            fl.poll().unwrap(),
            vec!["2026-01-01T00:00:02Z stdout half done".to_string()]
        );
        assert!(fl.poll().unwrap().is_empty());
        // Truncation starts over.
        std::fs::write(&path, line(7)).unwrap();
        let got = fl.poll().unwrap();
        assert!(got.len() == 1 && got[0].ends_with("line 7"), "{got:?}");
    }

    /// A runtime that keeps log files in a directory.
    struct FileLogs(PathBuf);

    #[async_trait::async_trait]
    impl Runtime for FileLogs {
        fn forget(&self, _: &str) {}
        async fn prepare(
            &self,
            _: &proto::spec::Assignment,
        ) -> Result<(), crate::runtime::RuntimeError> {
            Ok(())
        }
        async fn start(&self, _: &str) -> Result<(), crate::runtime::RuntimeError> {
            Ok(())
        }
        async fn wait(&self, _: &str) -> Result<i32, crate::runtime::RuntimeError> {
            Ok(0)
        }
        async fn stop(&self, _: &str, _: Duration) -> Result<(), crate::runtime::RuntimeError> {
            Ok(())
        }
        async fn remove(&self, _: &str) -> Result<(), crate::runtime::RuntimeError> {
            Ok(())
        }
        fn log_path(&self, task_id: &str) -> Option<PathBuf> {
            Some(self.0.join(format!("{task_id}.log")))
        }
    }

    fn chunk(m: pb::SessionRequest) -> pb::LogChunk {
        match m.msg {
            Some(pb::session_request::Msg::Logs(c)) => c,
            other => panic!("not a log chunk: {other:?}"),
        }
    }

    #[tokio::test]
    async fn serve_tails_merges_and_follows_until_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.log"),
            "2026-01-01T00:00:01.000000000Z stdout a1\n2026-01-01T00:00:03.000000000Z stdout a3\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.log"),
            "2026-01-01T00:00:02.000000000Z stderr b2\n",
        )
        .unwrap();
        let rt: Arc<dyn Runtime> = Arc::new(FileLogs(dir.path().to_path_buf()));
        let (tx, mut rx) = mpsc::channel(16);

        // Without follow: everything, in time order, then done.
        let req = pb::LogRequest {
            subscription: 7,
            task_ids: vec!["a".into(), "b".into(), "gone".into()],
            follow: false,
            tail: -1,
            cancel: false,
        };
        serve(
            rt.clone(),
            req.clone(),
            tx.clone(),
            CancellationToken::new(),
        )
        .await;
        let c = chunk(rx.recv().await.unwrap());
        assert_eq!(c.subscription, 7);
        assert!(c.done && c.error.is_empty());
        let lines: Vec<&str> = c.entries.iter().map(|e| e.line.as_str()).collect();
        assert_eq!(lines, ["a1", "b2", "a3"]);
        assert_eq!(c.entries[1].stream, "stderr");

        // With follow and tail 1: the last line of each, then appended lines, until cancelled.
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(
            rt,
            pb::LogRequest {
                follow: true,
                tail: 1,
                ..req
            },
            tx,
            cancel.clone(),
        ));
        let c = chunk(rx.recv().await.unwrap());
        assert!(!c.done);
        let lines: Vec<&str> = c.entries.iter().map(|e| e.line.as_str()).collect();
        assert_eq!(lines, ["b2", "a3"]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("b.log"))
            .unwrap();
        f.write_all(b"2026-01-01T00:00:04.000000000Z stdout b4\n")
            .unwrap();
        let c = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("appended line within 10 s")
            .map(chunk)
            .unwrap();
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.entries[0].line, "b4");
        assert_eq!(c.entries[0].task_id, "b");
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("serve stops when cancelled")
            .unwrap();
    }
}
