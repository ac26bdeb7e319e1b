//! `shoal secret …` and `shoal config …`, shaped like Docker's, and the parser of the
//! `--secret` / `--config` flags of `service create/update`.

use std::io::Read;

use clap::Subcommand;
use proto::pb;
use proto::pb::control_client::ControlClient;
use proto::spec::FileRef;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::commands::{retry, CliError};
use crate::output::human_duration;
use crate::output::{json_line, table, title, Format};

type Client = ControlClient<Channel>;

#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Create a secret from a file or STDIN as content.
    Create(CreateArgs),
    /// List secrets.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more secrets (never their data).
    Inspect(InspectArgs),
    /// Remove one or more secrets.
    #[command(alias = "remove")]
    Rm(RmArgs),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Create a config from a file or STDIN.
    Create(CreateArgs),
    /// List configs.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more configs.
    Inspect(InspectArgs),
    /// Remove one or more configs.
    #[command(alias = "remove")]
    Rm(RmArgs),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    /// File to read the content from; `-` reads STDIN.
    pub file: String,
    /// Label (key=value); repeatable.
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// Output format: table (default) or json (one object per line).
    #[arg(long, default_value = "table")]
    pub format: Format,
    /// Only display IDs.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Output format: json (Docker's default, a JSON array).
    #[arg(short, long, default_value = "json")]
    pub format: String,
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Secret,
    Config,
}

/// `--secret NAME` or `--secret source=NAME,target=PATH` (`src`, `target`/`dst`); `flag` is
/// `secret` or `config`, for the error messages.
pub fn parse_file_ref(flag: &str, s: &str) -> Result<FileRef, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err(format!("--{flag}: a {flag} name is required"));
    }
    if !s.contains('=') {
        if s.contains(',') {
            return Err(format!(
                "--{flag} {s:?}: expected NAME or source=NAME,target=PATH"
            ));
        }
        return Ok(FileRef {
            name: s.to_string(),
            target: String::new(),
        });
    }
    let mut r = FileRef::default();
    for field in s.split(',') {
        let (k, v) = field.split_once('=').ok_or_else(|| {
            format!("--{flag} {s:?}: invalid field {field:?}: expected key=value")
        })?;
        match k.trim().to_ascii_lowercase().as_str() {
            "source" | "src" => r.name = v.trim().to_string(),
            "target" | "dst" | "destination" => r.target = v.trim().to_string(),
            "uid" | "gid" | "mode" => {
                return Err(format!("--{flag} {s:?}: {k} is not supported"));
            }
            other => {
                return Err(format!(
                    "--{flag} {s:?}: invalid field {other:?}: use source and target"
                ))
            }
        }
    }
    if r.name.is_empty() {
        return Err(format!("--{flag} {s:?}: source is required"));
    }
    Ok(r)
}

/// The content of FILE, or of STDIN for `-`.
pub fn read_content(file: &str) -> Result<Vec<u8>, CliError> {
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| CliError(format!("Error: reading STDIN: {e}")))?;
    } else {
        data = std::fs::read(file).map_err(|e| CliError(format!("Error: {file}: {e}")))?;
    }
    Ok(data)
}

fn parse_labels(labels: &[String]) -> Result<std::collections::HashMap<String, String>, CliError> {
    labels
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            if k.is_empty() {
                Err(CliError(format!(
                    "Error: invalid label {l:?}: expected key=value"
                )))
            } else {
                Ok((k.to_string(), v.to_string()))
            }
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_nanos(t).to_string()
}

fn ago(ms: i64) -> String {
    format!("{} ago", title(&human_duration(now_ms() - ms)))
}

/// Standard base64 (Docker shows a config's data that way).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn inspect_json(kind: Kind, o: &pb::FileObject) -> Value {
    let labels: serde_json::Map<String, Value> = o
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut spec = json!({ "Name": o.name, "Labels": labels });
    if kind == Kind::Config {
        spec["Data"] = Value::String(base64(&o.data));
    }
    json!({
        "ID": o.id,
        "Version": { "Index": o.version },
        "CreatedAt": rfc3339(o.created_at_ms),
        "UpdatedAt": rfc3339(o.updated_at_ms),
        "Spec": spec,
    })
}

pub async fn run_secret(c: Client, cmd: SecretCmd) -> Result<(), CliError> {
    match cmd {
        SecretCmd::Create(a) => create(c, Kind::Secret, a).await,
        SecretCmd::Ls(a) => ls(c, Kind::Secret, a).await,
        SecretCmd::Inspect(a) => inspect(c, Kind::Secret, a).await,
        SecretCmd::Rm(a) => rm(c, Kind::Secret, a).await,
    }
}

pub async fn run_config(c: Client, cmd: ConfigCmd) -> Result<(), CliError> {
    match cmd {
        ConfigCmd::Create(a) => create(c, Kind::Config, a).await,
        ConfigCmd::Ls(a) => ls(c, Kind::Config, a).await,
        ConfigCmd::Inspect(a) => inspect(c, Kind::Config, a).await,
        ConfigCmd::Rm(a) => rm(c, Kind::Config, a).await,
    }
}

async fn create(c: Client, kind: Kind, a: CreateArgs) -> Result<(), CliError> {
    let data = read_content(&a.file)?;
    let req = pb::CreateFileObjectRequest {
        name: a.name,
        data,
        labels: parse_labels(&a.labels)?,
    };
    let o = retry(|| {
        let mut c = c.clone();
        let req = req.clone();
        async move {
            match kind {
                Kind::Secret => c.create_secret(req).await,
                Kind::Config => c.create_config(req).await,
            }
        }
    })
    .await?
    .into_inner();
    println!("{}", o.id);
    Ok(())
}

async fn list(c: &Client, kind: Kind) -> Result<Vec<pb::FileObject>, CliError> {
    let mut objs = retry(|| {
        let mut c = c.clone();
        async move {
            match kind {
                Kind::Secret => c.list_secrets(pb::Empty {}).await,
                Kind::Config => c.list_configs(pb::Empty {}).await,
            }
        }
    })
    .await?
    .into_inner()
    .objects;
    objs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(objs)
}

async fn ls(c: Client, kind: Kind, a: LsArgs) -> Result<(), CliError> {
    let objs = list(&c, kind).await?;
    if a.quiet {
        for o in &objs {
            println!("{}", o.id);
        }
        return Ok(());
    }
    match a.format {
        Format::Json => {
            for o in &objs {
                let labels = o
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                println!(
                    "{}",
                    json_line(vec![
                        ("ID", json!(o.id)),
                        ("Name", json!(o.name)),
                        ("CreatedAt", json!(rfc3339(o.created_at_ms))),
                        ("UpdatedAt", json!(rfc3339(o.updated_at_ms))),
                        ("Labels", json!(labels)),
                    ])
                );
            }
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = objs
                .iter()
                .map(|o| {
                    vec![
                        o.id.clone(),
                        o.name.clone(),
                        ago(o.created_at_ms),
                        ago(o.updated_at_ms),
                    ]
                })
                .collect();
            print!("{}", table(&["ID", "NAME", "CREATED", "UPDATED"], &rows));
        }
    }
    Ok(())
}

async fn get(c: &Client, kind: Kind, id: &str) -> Result<pb::FileObject, tonic::Status> {
    let req = pb::GetFileObjectRequest { id: id.into() };
    retry(|| {
        let mut c = c.clone();
        let req = req.clone();
        async move {
            match kind {
                Kind::Secret => c.get_secret(req).await,
                Kind::Config => c.get_config(req).await,
            }
        }
    })
    .await
    .map(|r| r.into_inner())
}

async fn inspect(c: Client, kind: Kind, a: InspectArgs) -> Result<(), CliError> {
    if a.format != "json" && !a.format.is_empty() {
        return Err(CliError(format!(
            "Error: unsupported format {:?}: use json",
            a.format
        )));
    }
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for n in &a.names {
        match get(&c, kind, n).await {
            Ok(o) => out.push(inspect_json(kind, &o)),
            Err(e) => errs.push(format!("Error: {}", e.message())),
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Array(out)).unwrap_or_default()
    );
    if errs.is_empty() {
        Ok(())
    } else {
        Err(CliError(errs.join("; ")))
    }
}

async fn rm(c: Client, kind: Kind, a: RmArgs) -> Result<(), CliError> {
    let mut errs = Vec::new();
    for n in &a.names {
        let req = pb::GetFileObjectRequest { id: n.clone() };
        let r = retry(|| {
            let mut c = c.clone();
            let req = req.clone();
            async move {
                match kind {
                    Kind::Secret => c.remove_secret(req).await,
                    Kind::Config => c.remove_config(req).await,
                }
            }
        })
        .await;
        match r {
            Ok(_) => println!("{n}"),
            Err(e) => errs.push(format!("Error response from daemon: {}", e.message())),
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        for e in &errs[..errs.len() - 1] {
            eprintln!("{e}");
        }
        Err(CliError(errs.pop().unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_refs_as_docker_writes_them() {
        assert_eq!(
            parse_file_ref("secret", "db").unwrap(),
            FileRef {
                name: "db".into(),
                target: String::new()
            }
        );
        assert_eq!(
            parse_file_ref("secret", "source=db,target=pw").unwrap(),
            FileRef {
                name: "db".into(),
                target: "pw".into()
            }
        );
        assert_eq!(
            parse_file_ref("config", "src=nginx,target=/etc/nginx.conf")
                .unwrap()
                .target,
            "/etc/nginx.conf"
        );
        assert!(parse_file_ref("secret", "")
            .unwrap_err()
            .contains("name is required"));
        assert!(parse_file_ref("secret", "target=x")
            .unwrap_err()
            .contains("source is required"));
        assert!(parse_file_ref("secret", "source=a,mode=0400")
            .unwrap_err()
            .contains("not supported"));
        assert!(parse_file_ref("secret", "source=a,foo=b")
            .unwrap_err()
            .contains("invalid field"));
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn secret_inspect_has_no_data() {
        let o = pb::FileObject {
            id: "x".into(),
            name: "db".into(),
            data: b"leak".to_vec(),
            ..Default::default()
        };
        let v = inspect_json(Kind::Secret, &o);
        assert!(v["Spec"].get("Data").is_none());
        assert_eq!(inspect_json(Kind::Config, &o)["Spec"]["Data"], "bGVhaw==");
    }
}
