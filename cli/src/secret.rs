//! `shoal secret …` and `shoal config …`, shaped like Docker's, and the parser of the
//! `--secret` / `--config` flags of `service create/update`.

use std::io::Read;
use std::marker::PhantomData;

use clap::{FromArgMatches, Subcommand};
use proto::pb;
use proto::spec::FileRef;
use serde_json::{json, Value};

use crate::client::{Client, FileKind};
use crate::commands::{last_error, CliError};
use crate::output::{human_duration, json_line, table, title, Format};
use crate::units::now_ms;

/// `shoal secret …` (`K` = [`Secrets`]) and `shoal config …` (`K` = [`Configs`]): one set of
/// verbs, the kind naming the objects in the help and choosing the calls.
#[derive(Debug)]
pub struct FileObjectCmd<K> {
    pub verb: Verb,
    kind: PhantomData<K>,
}

/// The verbs both kinds have; their help is the kind's ([`ObjectKind::ABOUT`]).
#[derive(Subcommand, Debug)]
pub enum Verb {
    Create(CreateArgs),
    #[command(alias = "list")]
    Ls(LsArgs),
    Inspect(InspectArgs),
    #[command(alias = "remove")]
    Rm(RmArgs),
}

/// What tells secrets and configs apart in the CLI.
pub trait ObjectKind {
    const KIND: FileKind;
    /// The help of create, ls, inspect and rm.
    const ABOUT: [&'static str; 4];
}

#[derive(Debug)]
pub struct Secrets;

#[derive(Debug)]
pub struct Configs;

impl ObjectKind for Secrets {
    const KIND: FileKind = FileKind::Secret;
    const ABOUT: [&'static str; 4] = [
        "Create a secret from a file or STDIN as content",
        "List secrets",
        "Display detailed information on one or more secrets (never their data)",
        "Remove one or more secrets",
    ];
}

impl ObjectKind for Configs {
    const KIND: FileKind = FileKind::Config;
    const ABOUT: [&'static str; 4] = [
        "Create a config from a file or STDIN",
        "List configs",
        "Display detailed information on one or more configs",
        "Remove one or more configs",
    ];
}

fn with_about<K: ObjectKind>(mut cmd: clap::Command) -> clap::Command {
    for (verb, about) in ["create", "ls", "inspect", "rm"].into_iter().zip(K::ABOUT) {
        cmd = cmd.mut_subcommand(verb, |c| c.about(about));
    }
    cmd
}

impl<K: ObjectKind> FromArgMatches for FileObjectCmd<K> {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(FileObjectCmd {
            verb: Verb::from_arg_matches(m)?,
            kind: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.verb.update_from_arg_matches(m)
    }
}

impl<K: ObjectKind> Subcommand for FileObjectCmd<K> {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        with_about::<K>(Verb::augment_subcommands(cmd))
    }

    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        with_about::<K>(Verb::augment_subcommands_for_update(cmd))
    }

    fn has_subcommand(name: &str) -> bool {
        Verb::has_subcommand(name)
    }
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Name of the secret or config to create.
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
    /// Filter output based on conditions provided (id=, name=, label=).
    #[arg(short, long, value_name = "FILTER")]
    pub filter: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Names, ids or unique id prefixes.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Output format: json (Docker's default, a JSON array) or a Go template
    /// (e.g. '{{.Spec.Name}}').
    #[arg(short, long, default_value = "json")]
    pub format: String,
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// Names, ids or unique id prefixes.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `--secret NAME` or `--secret source=NAME,target=PATH` (`src`, `target`/`dst`); `flag` is
/// `secret` or `config`, for the error messages.
pub fn parse_file_ref(flag: &str, s: &str) -> Result<FileRef, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err(format!("{flag}: a {flag} name is required"));
    }
    if !s.contains('=') {
        if s.contains(',') {
            return Err(format!(
                "{flag} {s:?}: expected NAME or source=NAME,target=PATH"
            ));
        }
        return Ok(FileRef {
            name: s.to_string(),
            ..Default::default()
        });
    }
    let mut r = FileRef::default();
    for field in s.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| format!("{flag} {s:?}: invalid field {field:?}: expected key=value"))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "source" | "src" => r.name = v.trim().to_string(),
            "target" | "dst" | "destination" => r.target = v.trim().to_string(),
            "uid" | "gid" => {
                let id: u32 = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{flag} {s:?}: {k} must be a number, e.g. {k}=1000"))?;
                if k.trim().eq_ignore_ascii_case("uid") {
                    r.uid = Some(id);
                } else {
                    r.gid = Some(id);
                }
            }
            "mode" => {
                // Octal, as Docker reads it: 0400, 400, 0o644.
                let t = v.trim();
                let t = t.strip_prefix("0o").unwrap_or(t);
                r.mode = Some(
                    u32::from_str_radix(t, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| {
                            format!("{flag} {s:?}: mode must be an octal file mode, e.g. mode=0440")
                        })?,
                );
            }
            other => {
                return Err(format!(
                    "{flag} {s:?}: invalid field {other:?}: use source, target, uid, gid and mode"
                ))
            }
        }
    }
    if r.name.is_empty() {
        return Err(format!("{flag} {s:?}: source is required"));
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

pub(crate) fn inspect_json(kind: FileKind, o: &pb::FileObject) -> Value {
    let labels: serde_json::Map<String, Value> = o
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut spec = json!({ "Name": o.name, "Labels": labels });
    if kind == FileKind::Config {
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

/// Run a `secret` or `config` verb.
pub async fn run<K: ObjectKind>(c: Client, cmd: FileObjectCmd<K>) -> Result<(), CliError> {
    let kind = K::KIND;
    match cmd.verb {
        Verb::Create(a) => create(c, kind, a).await,
        Verb::Ls(a) => ls(c, kind, a).await,
        Verb::Inspect(a) => inspect(c, kind, a).await,
        Verb::Rm(a) => rm(c, kind, a).await,
    }
}

async fn create(c: Client, kind: FileKind, a: CreateArgs) -> Result<(), CliError> {
    let data = read_content(&a.file)?;
    let req = pb::CreateFileObjectRequest {
        name: a.name,
        data,
        labels: parse_labels(&a.labels)?,
    };
    let o = c.create_file_object(kind, req).await?;
    println!("{}", o.id);
    Ok(())
}

async fn list(c: &Client, kind: FileKind) -> Result<Vec<pb::FileObject>, CliError> {
    let mut objs = c.list_file_objects(kind).await?;
    objs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(objs)
}

async fn ls(c: Client, kind: FileKind, a: LsArgs) -> Result<(), CliError> {
    let f = crate::filter::Filters::parse(&a.filter, &["id", "name", "label"])?;
    let objs: Vec<pb::FileObject> = list(&c, kind)
        .await?
        .into_iter()
        .filter(|o| f.id(&o.id) && f.name(&o.name) && f.labels("label", &o.labels))
        .collect();
    if a.quiet {
        for o in &objs {
            println!("{}", o.id);
        }
        return Ok(());
    }
    let json_of = |o: &pb::FileObject| {
        let labels = o
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        json_line(vec![
            ("ID", json!(o.id)),
            ("Name", json!(o.name)),
            ("CreatedAt", json!(rfc3339(o.created_at_ms))),
            ("UpdatedAt", json!(rfc3339(o.updated_at_ms))),
            ("Labels", json!(labels)),
        ])
    };
    match a.format {
        Format::Template(t) => {
            crate::output::print_template(t, &objs.iter().map(json_of).collect::<Vec<_>>())
        }
        Format::Json => {
            for o in &objs {
                println!("{}", json_of(o));
            }
        }
        // Docker's secrets have a DRIVER column (empty: the swarm's own store); configs not.
        Format::Table => {
            let secret = kind == FileKind::Secret;
            let rows: Vec<Vec<String>> = objs
                .iter()
                .map(|o| {
                    let mut row = vec![o.id.clone(), o.name.clone()];
                    if secret {
                        row.push(String::new());
                    }
                    row.extend([ago(o.created_at_ms), ago(o.updated_at_ms)]);
                    row
                })
                .collect();
            let headers: &[&str] = if secret {
                &["ID", "NAME", "DRIVER", "CREATED", "UPDATED"]
            } else {
                &["ID", "NAME", "CREATED", "UPDATED"]
            };
            print!("{}", table(headers, &rows));
        }
    }
    Ok(())
}

async fn inspect(c: Client, kind: FileKind, a: InspectArgs) -> Result<(), CliError> {
    if !matches!(a.format.as_str(), "" | "json") {
        crate::template::Template::parse(&a.format).map_err(|e| CliError(format!("Error: {e}")))?;
    }
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for n in &a.names {
        match c.get_file_object(kind, n).await {
            Ok(o) => out.push(inspect_json(kind, &o)),
            Err(e) => errs.push(format!("Error: {e}")),
        }
    }
    crate::output::print_inspect(out, &a.format).map_err(|e| CliError(format!("Error: {e}")))?;
    if errs.is_empty() {
        Ok(())
    } else {
        Err(CliError(errs.join("; ")))
    }
}

async fn rm(c: Client, kind: FileKind, a: RmArgs) -> Result<(), CliError> {
    let mut errs = Vec::new();
    for n in &a.names {
        match c.remove_file_object(kind, n).await {
            Ok(()) => println!("{n}"),
            Err(e) => errs.push(CliError::from(e).0),
        }
    }
    last_error(errs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn file_refs_as_docker_writes_them() {
        assert_eq!(
            parse_file_ref("secret", "db").unwrap(),
            FileRef {
                name: "db".into(),
                ..Default::default()
            }
        );
        assert_eq!(
            parse_file_ref("secret", "source=db,target=pw").unwrap(),
            FileRef {
                name: "db".into(),
                target: "pw".into(),
                ..Default::default()
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
        let owned = parse_file_ref("--secret", "source=a,uid=1000,gid=33,mode=0440").unwrap();
        assert_eq!(
            (owned.uid, owned.gid, owned.mode),
            (Some(1000), Some(33), Some(0o440))
        );
        assert_eq!(
            parse_file_ref("--config", "source=a,mode=644")
                .unwrap()
                .mode,
            Some(0o644)
        );
        for (bad, want) in [
            (
                "source=a,mode=0999",
                "--secret \"source=a,mode=0999\": mode must be an octal",
            ),
            ("source=a,mode=17777", "mode must be an octal"),
            ("source=a,uid=bob", "uid must be a number"),
            ("source=a,gid=-1", "gid must be a number"),
        ] {
            let e = parse_file_ref("--secret", bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
            assert!(!e.contains("----"), "{e}");
        }
        assert!(parse_file_ref("secret", "source=a,foo=b")
            .unwrap_err()
            .contains("invalid field"));
    }

    #[test]
    fn secret_and_config_share_verbs_but_not_help() {
        use clap::CommandFactory;
        let cli = crate::commands::Cli::command();
        let about = |kind: &str, verb: &str| {
            let k = cli.find_subcommand(kind).expect("kind");
            let v = k.find_subcommand(verb).expect("verb");
            v.get_about().map(|a| a.to_string()).unwrap_or_default()
        };
        assert_eq!(
            about("secret", "create"),
            "Create a secret from a file or STDIN as content"
        );
        assert_eq!(
            about("config", "create"),
            "Create a config from a file or STDIN"
        );
        assert_eq!(about("secret", "ls"), "List secrets");
        assert_eq!(about("config", "rm"), "Remove one or more configs");
        let parse = |args: &[&str]| crate::commands::Cli::try_parse_from(args).map(|c| c.cmd);
        match parse(&["shoal", "config", "list", "--format", "json"]) {
            Ok(crate::commands::Cmd::Config(FileObjectCmd {
                verb: Verb::Ls(a), ..
            })) => assert_eq!(a.format, Format::Json),
            other => panic!("{other:?}"),
        }
        match parse(&["shoal", "secret", "remove", "a", "b"]) {
            Ok(crate::commands::Cmd::Secret(FileObjectCmd {
                verb: Verb::Rm(a), ..
            })) => assert_eq!(a.names, ["a", "b"]),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["shoal", "secret", "create", "only-name"]).is_err());
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
        let v = inspect_json(FileKind::Secret, &o);
        assert!(v["Spec"].get("Data").is_none());
        assert_eq!(
            inspect_json(FileKind::Config, &o)["Spec"]["Data"],
            "bGVhaw=="
        );
    }
}
