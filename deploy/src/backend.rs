//! Fast benchmark backends: small C servers compiled with `gcc -static -O2` when an image
//! needs them, so the network benchmarks measure the network and not a slow server.
//!
//! - [`Program::Http`] (`shoal-http [PORT [WORKERS]]`): answers every HTTP/1.1 request with
//!   `<hostname>\n`, keep-alive and pipelining included, from one epoll loop per worker
//!   process on a shared listening socket;
//! - [`Program::UdpEcho`] (`shoal-udpecho [PORT]`): answers each datagram with
//!   `<hostname> <the datagram>`.
//!
//! Binaries are cached by a hash of their source under the Cargo target directory
//! (`<target>/shoal-backends/`), so gcc runs once per source change.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// One of the C programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Http,
    UdpEcho,
}

const HTTP_SOURCE: &str = include_str!("backend/http.c");
const UDPECHO_SOURCE: &str = include_str!("backend/udpecho.c");
const CFLAGS: &[&str] = &["-static", "-O2", "-Wall", "-Werror"];

impl Program {
    /// The binary's name (and its name under `/bin` in an image).
    pub fn name(self) -> &'static str {
        match self {
            Program::Http => "shoal-http",
            Program::UdpEcho => "shoal-udpecho",
        }
    }

    pub fn source(self) -> &'static str {
        match self {
            Program::Http => HTTP_SOURCE,
            Program::UdpEcho => UDPECHO_SOURCE,
        }
    }

    /// Source and flags hashed: the cache key of the binary.
    fn key(self) -> String {
        let mut h = Sha256::new();
        h.update(self.source());
        for f in CFLAGS {
            h.update(f);
        }
        hex::encode(&h.finalize()[..8])
    }
}

/// Where compiled backends are kept: `$CARGO_TARGET_DIR` (as seen when this crate was built)
/// or the workspace's `target/`, under `shoal-backends/`.
pub fn cache_dir() -> PathBuf {
    let target = option_env!("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("shoal-backends")
}

/// The path of `program`'s static binary, compiled into [`cache_dir`] unless already there
/// (falling back to a directory under the system's temp dir when the target dir is not
/// writable).
pub fn compile(program: Program) -> Result<PathBuf> {
    match compile_in(&cache_dir(), program) {
        Ok(p) => Ok(p),
        Err(first) => compile_in(&std::env::temp_dir().join("shoal-backends"), program)
            .with_context(|| format!("{first:#}")),
    }
}

/// [`compile`] into `dir`: `<dir>/<name>-<hash of source and flags>`.
pub fn compile_in(dir: &Path, program: Program) -> Result<PathBuf> {
    let out = dir.join(format!("{}-{}", program.name(), program.key()));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Unique names for the source and the half-written binary: two builds racing each end
    // with a complete file renamed into place.
    let tag = format!("{}.{}", std::process::id(), rand_suffix());
    let src = dir.join(format!("{}.{tag}.c", program.name()));
    let tmp = dir.join(format!("{}.{tag}.tmp", program.name()));
    std::fs::write(&src, program.source()).with_context(|| format!("writing {}", src.display()))?;
    let result = Command::new("gcc")
        .args(CFLAGS)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .output()
        .context("running gcc (install gcc and libc6-dev: deploy/install-deps.sh)");
    let _ = std::fs::remove_file(&src);
    let output = result?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "gcc {} for {} failed: {}",
            CFLAGS.join(" "),
            program.name(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    std::fs::rename(&tmp, &out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(out)
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

/// The bytes of `program`'s static binary (compiled if needed).
pub fn binary(program: Program) -> Result<Vec<u8>> {
    let path = compile(program)?;
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpStream, UdpSocket};
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};

    /// Kills (by pid) and reaps the server it holds.
    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn start(program: Program, args: &[&str]) -> Server {
        let bin = compile_in(&cache_dir(), program).expect("compile");
        Server(
            Command::new(bin)
                .args(args)
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn"),
        )
    }

    fn free_port() -> u16 {
        crate::images::free_port().unwrap()
    }

    fn hostname() -> String {
        let out = Command::new("hostname").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Connect, retrying until the server listens (bounded).
    fn connect(port: u16, server: &mut Server) -> TcpStream {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                return s;
            }
            assert!(server.0.try_wait().unwrap().is_none(), "server exited");
            assert!(Instant::now() < deadline, "server not listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Read from `s` until `n` complete responses arrived; returns the text.
    fn read_responses(s: &mut TcpStream, n: usize, body: &str) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while String::from_utf8_lossy(&got).matches(body).count() < n {
            let r = s.read(&mut buf).unwrap();
            assert!(r > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..r]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[test]
    fn http_server_keeps_alive_pipelines_and_closes_on_request() {
        let port = free_port();
        let mut server = start(Program::Http, &[&port.to_string(), "2"]);
        let body = format!("\r\n\r\n{}\n", hostname());
        let mut s = connect(port, &mut server);
        // Two requests on one connection, the second pipelined after a third in one write.
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let first = read_responses(&mut s, 1, &body);
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
        let len = format!("Content-Length: {}\r\n", hostname().len() + 1);
        assert!(first.contains(&len), "{first}");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let two = read_responses(&mut s, 2, &body);
        assert_eq!(two.matches("HTTP/1.1 200 OK").count(), 2, "{two}");
        // The fixture's one-shot client (Connection: close) gets the body and an EOF.
        let (code, text) =
            crate::images::http_get(&format!("127.0.0.1:{port}"), "/").expect("http_get");
        assert_eq!((code, text), (200, format!("{}\n", hostname())));
    }

    #[test]
    fn udp_echo_prefixes_the_hostname() {
        let port = free_port();
        let mut server = start(Program::UdpEcho, &[&port.to_string()]);
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 1024];
        // Datagrams sent before the server binds are lost: resend until one is answered.
        let n = loop {
            sock.send_to(b"ping 1", ("127.0.0.1", port)).unwrap();
            if let Ok(n) = sock.recv(&mut buf) {
                break n;
            }
            assert!(server.0.try_wait().unwrap().is_none(), "server exited");
            assert!(Instant::now() < deadline, "no answer");
        };
        assert_eq!(
            String::from_utf8_lossy(&buf[..n]),
            format!("{} ping 1", hostname())
        );
    }

    #[test]
    fn compiled_binaries_are_static_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let a = compile_in(dir.path(), Program::UdpEcho).unwrap();
        let modified = std::fs::metadata(&a).unwrap().modified().unwrap();
        let b = compile_in(dir.path(), Program::UdpEcho).unwrap();
        assert_eq!(a, b);
        assert_eq!(std::fs::metadata(&b).unwrap().modified().unwrap(), modified);
        // Static: no program header of type PT_INTERP (3) in the ELF64 file.
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(&bytes[..5], b"\x7fELF\x02");
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
        let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
        assert!(phnum > 0);
        for i in 0..phnum {
            let o = phoff + i * phentsize;
            let p_type = u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
            assert_ne!(p_type, 3, "dynamically linked");
        }
        // Only the binary is left in the cache dir.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
