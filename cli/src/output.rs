//! Tables and `--format json` lines, shaped like Docker's.

use serde_json::{Map, Value};

/// Output formats every list command accepts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Format {
    Table,
    Json,
    /// A Go template over each row's JSON object (kept for the process's life: one per
    /// command line).
    Template(&'static crate::template::Template),
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" | "" => Ok(Format::Table),
            "json" | "{{json .}}" => Ok(Format::Json),
            t if t.contains("{{") || t.starts_with("table ") => Ok(Format::Template(Box::leak(
                Box::new(crate::template::Template::parse(t)?),
            ))),
            other => Err(format!(
                "unsupported format {other:?}: use \"table\", \"json\" or a Go template such as '{{{{.Name}}}}'"
            )),
        }
    }
}

/// `inspect` output: a JSON array (`json` or no format), or each object through a Go
/// template (`--format '{{.Spec.Name}}'`), one line each.
pub fn print_inspect(objects: Vec<Value>, format: &str) -> Result<(), String> {
    match format {
        "" | "json" => {
            println!(
                "{}",
                serde_json::to_string_pretty(&Value::Array(objects)).unwrap_or_default()
            );
            Ok(())
        }
        t => {
            let t = crate::template::Template::parse(t)?;
            for o in &objects {
                println!("{}", t.render(o)?);
            }
            Ok(())
        }
    }
}

/// Rows' JSON objects through a template, printed (an error in one row stops the output).
pub fn print_template(t: &crate::template::Template, rows: &[String]) {
    let values: Vec<Value> = rows
        .iter()
        .map(|j| serde_json::from_str(j).unwrap_or(Value::Null))
        .collect();
    match t.render_all(&values) {
        Ok(s) => print!("{s}"),
        Err(e) => eprintln!("{e}"),
    }
}

/// The flags of a list command.
#[derive(clap::Args, Debug, Clone)]
pub struct ListArgs {
    /// Format output: table or json.
    #[arg(long, default_value = "table")]
    pub format: Format,
    /// Only display IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter output based on conditions provided (KEY=VALUE; repeatable).
    #[arg(short, long, value_name = "FILTER")]
    pub filter: Vec<String>,
}

/// Docker capitalises state words in its tables: "ready" → "Ready".
pub fn title(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// A table with Docker's layout: upper-case headers, columns padded to the widest cell plus
/// three spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}", w = widths[i] + 3));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect(), &mut out);
    }
    out
}

/// One JSON object per line, keys in the order given.
pub fn json_line(fields: Vec<(&str, Value)>) -> String {
    let mut m = Map::new();
    for (k, v) in fields {
        m.insert(k.to_string(), v);
    }
    Value::Object(m).to_string()
}

/// Whether a panic is `print!`/`println!` (or their stderr twins) failing because the reader
/// went away, as in `shoal network inspect X | head -1`.
pub fn is_closed_output_panic(message: &str) -> bool {
    (message.starts_with("failed printing to stdout")
        || message.starts_with("failed printing to stderr"))
        && message.contains("Broken pipe")
}

/// Make a CLI command end as a C or Go tool does when its output pipe closes: killed by
/// SIGPIPE, silently, instead of a panic message and exit code 101. Rust ignores SIGPIPE so
/// that writes return EPIPE; that stays so (sockets to the daemon keep failing with an error
/// the command reports), and only a failed print to stdout or stderr ends the process.
pub fn exit_quietly_on_closed_output() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if is_closed_output_panic(info.payload_as_str().unwrap_or_default()) {
            // SAFETY: restoring a signal's default disposition and raising it has no memory
            // effects; the process ends here.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
            std::process::exit(128 + libc::SIGPIPE);
        }
        default(info);
    }));
}

/// A list command's rows (table cells and JSON line each) as `--format` asks: a table under
/// `headers`, or one JSON object a line.
pub fn print_rows(headers: &[&str], rows: Vec<(Vec<String>, String)>, format: Format) {
    match format {
        Format::Json => {
            for (_, j) in rows {
                println!("{j}");
            }
        }
        Format::Table => {
            let cells: Vec<Vec<String>> = rows.into_iter().map(|(r, _)| r).collect();
            print!("{}", table(headers, &cells));
        }
        Format::Template(t) => {
            let json: Vec<String> = rows.into_iter().map(|(_, j)| j).collect();
            print_template(t, &json);
        }
    }
}

/// Docker's humanized durations, lower case: "less than a second", "5 seconds",
/// "about a minute", "3 hours", "2 days" …
pub fn human_duration(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    if secs < 1 {
        return "less than a second".into();
    }
    if secs == 1 {
        return "1 second".into();
    }
    if secs < 60 {
        return format!("{secs} seconds");
    }
    let mins = secs / 60;
    if mins == 1 {
        return "about a minute".into();
    }
    if mins < 60 {
        return format!("{mins} minutes");
    }
    let hours = (ms as f64 / 3_600_000.0).round() as i64;
    if hours == 1 {
        "about an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", ms / 3_600_000 / 24 / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns() {
        let t = table(&["ID", "NAME"], &[vec!["abc".into(), "x".into()]]);
        assert_eq!(t, "ID    NAME\nabc   x\n");
    }

    #[test]
    fn formats_parse() {
        assert_eq!("json".parse::<Format>().unwrap(), Format::Json);
        assert!(matches!(
            "{{.ID}}".parse::<Format>(),
            Ok(Format::Template(_))
        ));
        assert!(matches!(
            "table {{.ID}}".parse::<Format>(),
            Ok(Format::Template(_))
        ));
        assert!("yaml".parse::<Format>().is_err());
        assert!("{{.ID".parse::<Format>().is_err());
    }

    #[test]
    fn only_a_closed_output_counts_as_one() {
        assert!(is_closed_output_panic(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(!is_closed_output_panic(
            "failed printing to stdout: No space left on device (os error 28)"
        ));
        assert!(!is_closed_output_panic("index out of bounds"));
    }
}
