//! `shoal image …`: this node's images, through the daemon's node-local service (`image
//! load` reads a tarball on this machine; `image ls` lists what this node holds).
//!
//! The renderings ([`ls_rows`], [`split_reference`], [`human_size`], [`since`]) are pure;
//! [`run`] only talks to the daemon and prints.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Subcommand;
use proto::pb;
use proto::pb::node_local_client::NodeLocalClient;
use serde_json::json;
use tonic::transport::Channel;
use worker::image::ImageSummary;

use crate::commands::CliError;
use crate::output::{table, Format};

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Load an image from a tar archive (OCI layout or `docker save` format).
    Load {
        /// Read from tar archive file (default: stdin).
        #[arg(short = 'i', long = "input", value_name = "FILE")]
        input: Option<PathBuf>,
        /// The tar archive (same as --input).
        #[arg(value_name = "FILE", conflicts_with = "input")]
        file: Option<PathBuf>,
        /// Suppress the load output.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List images on this node.
    #[command(alias = "list")]
    Ls {
        /// Format output: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
        /// Only show image IDs.
        #[arg(short, long)]
        quiet: bool,
    },
}

/// The node-local client over the daemon socket's channel.
pub fn client(ch: Channel) -> NodeLocalClient<Channel> {
    NodeLocalClient::new(ch).max_decoding_message_size(64 << 20)
}

pub const LS_HEADERS: [&str; 5] = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"];

pub async fn run(cmd: ImageCmd, mut c: NodeLocalClient<Channel>) -> Result<(), CliError> {
    match cmd {
        ImageCmd::Load { input, file, quiet } => {
            // No file: the archive comes on stdin (`shoal image load < img.tar`), kept in a
            // temporary file the daemon reads, on this machine as the daemon is.
            let mut _stdin_copy = None;
            let path = match input.or(file) {
                Some(p) => p,
                None => {
                    use std::io::IsTerminal;
                    if std::io::stdin().is_terminal() {
                        return Err(CliError(
                            "Error: requires a tar archive: shoal image load -i FILE, or the archive on stdin"
                                .into(),
                        ));
                    }
                    let mut tmp = tempfile::Builder::new()
                        .prefix("shoal-image-load-")
                        .tempfile()
                        .map_err(|e| CliError(format!("Error: temporary file: {e}")))?;
                    std::io::copy(&mut std::io::stdin().lock(), &mut tmp)
                        .map_err(|e| CliError(format!("Error: reading stdin: {e}")))?;
                    let p = tmp.path().to_path_buf();
                    _stdin_copy = Some(tmp);
                    p
                }
            };
            let path = std::path::absolute(&path)
                .map_err(|e| CliError(format!("Error: {}: {e}", path.display())))?;
            if !path.is_file() {
                return Err(CliError(format!(
                    "Error: open {}: no such file",
                    path.display()
                )));
            }
            let loaded = c
                .image_load(pb::ImageLoadRequest {
                    path: path.to_string_lossy().into_owned(),
                })
                .await?
                .into_inner();
            if !quiet {
                for r in loaded.references {
                    println!("{}", loaded_line(&r));
                }
            }
            Ok(())
        }
        ImageCmd::Ls { format, quiet } => {
            let reply = c.image_list(pb::Empty {}).await?.into_inner();
            let images: Vec<ImageSummary> = reply.images.into_iter().map(summary).collect();
            let now = SystemTime::now();
            if quiet {
                let mut seen = std::collections::HashSet::new();
                for i in &images {
                    let id = short_id(&i.id);
                    if seen.insert(id.clone()) {
                        println!("{id}");
                    }
                }
                return Ok(());
            }
            match format {
                Format::Json => {
                    for i in &images {
                        println!("{}", json_row(i, now));
                    }
                }
                Format::Table => print!("{}", table(&LS_HEADERS, &ls_rows(&images, now))),
                Format::Template(t) => crate::output::print_template(
                    t,
                    &images.iter().map(|i| json_row(i, now)).collect::<Vec<_>>(),
                ),
            }
            Ok(())
        }
    }
}

/// An image summary in its wire form (the daemon's `image_list`).
pub fn summary_to_wire(i: &ImageSummary) -> pb::ImageSummary {
    pb::ImageSummary {
        reference: i.reference.clone(),
        id: i.id.clone(),
        size: i.size,
        created: i.created.clone(),
    }
}

/// The image summary a wire message carries.
fn summary(i: pb::ImageSummary) -> ImageSummary {
    ImageSummary {
        reference: i.reference,
        id: i.id,
        size: i.size,
        created: i.created,
    }
}

/// `Loaded image: busybox:latest`, or `Loaded image ID: sha256:…` for an untagged image.
pub fn loaded_line(reference: &str) -> String {
    if reference.starts_with("sha256:") {
        format!("Loaded image ID: {reference}")
    } else {
        format!("Loaded image: {}", familiar(reference))
    }
}

/// Docker's short form: `docker.io/library/busybox:latest` → `busybox:latest`.
pub fn familiar(reference: &str) -> String {
    if let Some(rest) = reference.strip_prefix("docker.io/library/") {
        rest.to_string()
    } else if let Some(rest) = reference.strip_prefix("docker.io/") {
        rest.to_string()
    } else {
        reference.to_string()
    }
}

/// (repository, tag) as `image ls` shows them; `<none>` where there is none.
pub fn split_reference(reference: &str) -> (String, String) {
    if reference.starts_with("sha256:") {
        return ("<none>".into(), "<none>".into());
    }
    let name = familiar(reference);
    let without_digest = name.split('@').next().unwrap_or_default();
    let slash = without_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    match without_digest[slash..].rfind(':') {
        Some(i) => (
            without_digest[..slash + i].to_string(),
            without_digest[slash + i + 1..].to_string(),
        ),
        None => (without_digest.to_string(), "<none>".into()),
    }
}

/// The 12-hex-digit id Docker shows.
pub fn short_id(id: &str) -> String {
    id.strip_prefix("sha256:")
        .unwrap_or(id)
        .chars()
        .take(12)
        .collect()
}

/// go-units' HumanSize: decimal units, 4 significant digits (`4.26MB`, `532kB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    let int_digits = if v < 1.0 {
        1
    } else {
        (v.log10().floor() as i32) + 1
    };
    let decimals = (4 - int_digits).max(0) as usize;
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s}{}", UNITS[u])
}

/// Docker's "CREATED" column: `3 days ago`, `About an hour ago`; the raw text if it is not
/// an RFC 3339 time.
pub fn since(created: &str, now: SystemTime) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(created) else {
        return if created.is_empty() {
            "N/A".into()
        } else {
            created.to_string()
        };
    };
    let d = now.duration_since(t).unwrap_or(Duration::ZERO).as_secs();
    let ago = |n: u64, unit: &str| format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" });
    match d {
        0 => "Less than a second ago".into(),
        1..=59 => ago(d, "second"),
        60..=119 => "About a minute ago".into(),
        120..=3599 => ago(d / 60, "minute"),
        3600..=7199 => "About an hour ago".into(),
        7200..=172_799 => ago(d / 3600, "hour"),
        172_800..=1_209_599 => ago(d / 86_400, "day"),
        1_209_600..=5_183_999 => ago(d / 604_800, "week"),
        5_184_000..=63_071_999 => ago(d / 2_592_000, "month"),
        _ => ago(d / 31_536_000, "year"),
    }
}

pub fn ls_rows(images: &[ImageSummary], now: SystemTime) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            let (repo, tag) = split_reference(&i.reference);
            vec![
                repo,
                tag,
                short_id(&i.id),
                since(&i.created, now),
                human_size(i.size),
            ]
        })
        .collect();
    rows.sort();
    rows
}

fn json_row(i: &ImageSummary, now: SystemTime) -> String {
    let (repo, tag) = split_reference(&i.reference);
    json!({
        "Repository": repo,
        "Tag": tag,
        "ID": short_id(&i.id),
        "CreatedAt": i.created,
        "CreatedSince": since(&i.created, now),
        "Size": human_size(i.size),
        "Digest": "<none>",
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct T {
        #[command(subcommand)]
        cmd: ImageCmd,
    }

    #[test]
    fn load_takes_a_file_or_input_flag() {
        for args in [
            vec!["t", "load", "a.tar"],
            vec!["t", "load", "-i", "a.tar"],
            vec!["t", "load", "--input", "a.tar"],
        ] {
            let t = T::try_parse_from(&args).unwrap();
            let ImageCmd::Load { input, file, .. } = t.cmd else {
                panic!("not load")
            };
            assert_eq!(input.or(file), Some(PathBuf::from("a.tar")), "{args:?}");
        }
        assert!(T::try_parse_from(["t", "load", "-i", "a", "b"]).is_err());
        assert!(T::try_parse_from(["t", "ls", "--format", "yaml"]).is_err());
    }

    #[test]
    fn references_split_as_docker_shows_them() {
        let s = |r: &str| split_reference(r);
        assert_eq!(
            s("docker.io/library/busybox:latest"),
            ("busybox".into(), "latest".into())
        );
        assert_eq!(s("docker.io/me/app:1"), ("me/app".into(), "1".into()));
        assert_eq!(
            s("127.0.0.1:5000/web:v2"),
            ("127.0.0.1:5000/web".into(), "v2".into())
        );
        assert_eq!(
            s(&format!("host:5000/web@sha256:{}", "a".repeat(64))),
            ("host:5000/web".into(), "<none>".into())
        );
        assert_eq!(s("sha256:abc"), ("<none>".into(), "<none>".into()));
        assert_eq!(
            loaded_line("docker.io/library/web:v1"),
            "Loaded image: web:v1"
        );
    }

    #[test]
    fn sizes_and_ages_read_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(532_000), "532kB");
        assert_eq!(human_size(4_264_000), "4.264MB");
        assert_eq!(human_size(1_240_000), "1.24MB");
        let now = humantime::parse_rfc3339("2025-01-10T00:00:00Z").unwrap();
        assert_eq!(since("2025-01-07T00:00:00Z", now), "3 days ago");
        assert_eq!(since("2025-01-09T22:59:00.5Z", now), "About an hour ago");
        assert_eq!(since("", now), "N/A");
        let rows = ls_rows(
            &[ImageSummary {
                reference: "docker.io/library/web:v1".into(),
                id: format!("sha256:{}", "0123456789ab".repeat(5) + "cdef"),
                size: 1_240_000,
                created: "2025-01-09T00:00:00Z".into(),
            }],
            now,
        );
        assert_eq!(
            rows,
            vec![vec!["web", "v1", "0123456789ab", "24 hours ago", "1.24MB"]]
        );
        let text = table(&LS_HEADERS, &rows);
        assert!(text.starts_with("REPOSITORY   TAG   IMAGE ID"), "{text}");
    }

    proptest::proptest! {
        #[test]
        fn summaries_round_trip(
            reference in "[a-z0-9/:._-]{0,12}",
            id in "[a-z0-9:]{0,12}",
            size in proptest::prelude::any::<u64>(),
            created in "[0-9TZ:.-]{0,12}",
        ) {
            let i = ImageSummary { reference, id, size, created };
            proptest::prop_assert_eq!(summary(summary_to_wire(&i)), i);
        }
    }
}
