//! Go-template `--format` strings, as Docker's CLI takes them, evaluated over the JSON
//! object a command prints for each row (`--format json`): `{{.Name}}`, `{{.Spec.Name}}`,
//! `{{json .}}`, `{{index .Labels "k"}}`, `{{join .List ","}}`, `{{upper .X}}`,
//! `{{lower .X}}`, `{{title .X}}`, `{{len .X}}`, `{{printf "%s-%d" .A .B}}`, pipes
//! (`{{.X | json}}`), `{{range .List}}…{{end}}`, `{{if .X}}…{{else}}…{{end}}`, trim markers
//! (`{{- … -}}`), and a leading `table` for aligned columns under headers.

use serde_json::Value;

/// Most nodes one template may have, and most times a `range` may repeat in one row (a
/// bound on the work one command line asks for).
const MAX_NODES: usize = 1000;
const MAX_OUTPUT: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq)]
enum Arg {
    /// `.`, `.A.B`
    Field(Vec<String>),
    Str(String),
    Num(f64),
    /// `$` (the row)
    Root,
}

#[derive(Clone, Debug, PartialEq)]
struct Call {
    func: Option<String>,
    args: Vec<Arg>,
}

/// `a | b | c`: each call after the first gets the previous value as its last argument.
type Pipeline = Vec<Call>;

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Text(String),
    Print(Pipeline),
    Range(Pipeline, Vec<Node>, Vec<Node>),
    If(Pipeline, Vec<Node>, Vec<Node>),
}

/// A parsed `--format` template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    /// `table …`: columns aligned, under headers named after the fields.
    pub table: bool,
    nodes: Vec<Node>,
    headers: Vec<String>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let (table, body) = match text.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => {
                (true, rest.trim_start())
            }
            _ => (false, text),
        };
        // Docker takes `\t` and `\n` written out in a format as the characters.
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let tokens = lex(&body)?;
        if tokens.len() > MAX_NODES {
            return Err("template too long".into());
        }
        let mut pos = 0;
        let (nodes, end) = parse_list(&tokens, &mut pos)?;
        if let Some(e) = end {
            return Err(format!("template: unexpected {{{{{e}}}}}"));
        }
        let headers = if table {
            body.split('\t').map(header_of).collect()
        } else {
            Vec::new()
        };
        Ok(Template {
            table,
            nodes,
            headers,
        })
    }

    /// The template applied to one row.
    pub fn render(&self, row: &Value) -> Result<String, String> {
        let mut out = String::new();
        exec(&self.nodes, row, row, &mut out)?;
        Ok(out)
    }

    /// Rows rendered; under `table`, aligned in columns under their headers.
    pub fn render_all(&self, rows: &[Value]) -> Result<String, String> {
        let mut lines: Vec<String> = Vec::with_capacity(rows.len() + 1);
        if self.table {
            lines.push(self.headers.join("\t"));
        }
        for r in rows {
            lines.push(self.render(r)?);
        }
        if !self.table {
            return Ok(lines.into_iter().map(|l| l + "\n").collect());
        }
        Ok(align(&lines))
    }
}

/// The header of a table column: its first field's name in capitals, words split
/// (`{{.CreatedAt}}` → `CREATED AT`), or the text as written.
fn header_of(cell: &str) -> String {
    let Some(start) = cell.find("{{") else {
        return cell.trim().to_string();
    };
    let inner = &cell[start + 2..];
    let inner = &inner[..inner.find("}}").unwrap_or(inner.len())];
    let field = inner
        .split_whitespace()
        .find(|w| w.starts_with('.') && w.len() > 1)
        .map(|w| w.rsplit('.').next().unwrap_or(w).to_string());
    match field {
        Some(f) => {
            let mut h = String::new();
            let chars: Vec<char> = f.chars().collect();
            for (i, c) in chars.iter().enumerate() {
                let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
                let prev_lower = i > 0 && chars[i - 1].is_lowercase();
                if i > 0 && c.is_uppercase() && (prev_lower || next_lower) {
                    h.push(' ');
                }
                h.extend(c.to_uppercase());
            }
            h
        }
        None => inner.trim().to_uppercase(),
    }
}

/// Tab-separated lines in columns three spaces apart, as Docker's tabwriter.
fn align(lines: &[String]) -> String {
    let cells: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let cols = cells.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in &cells {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &cells {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                let pad = widths[i] - c.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Text(String),
    Action(String),
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("{{") {
        let mut text = rest[..i].to_string();
        let after = &rest[i + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "template: unclosed action (no }})".to_string())?;
        let mut inner = &after[..end];
        if let Some(t) = inner.strip_prefix('-') {
            if t.starts_with(char::is_whitespace) {
                text = text.trim_end().to_string();
                inner = t;
            }
        }
        let mut trim_next = false;
        if let Some(t) = inner.strip_suffix('-') {
            if t.ends_with(char::is_whitespace) {
                trim_next = true;
                inner = t;
            }
        }
        if !text.is_empty() {
            out.push(Tok::Text(text));
        }
        out.push(Tok::Action(inner.trim().to_string()));
        rest = &after[end + 2..];
        if trim_next {
            rest = rest.trim_start();
        }
    }
    if !rest.is_empty() {
        out.push(Tok::Text(rest.to_string()));
    }
    Ok(out)
}

/// Nodes up to an `{{end}}` or `{{else}}` (returned) or the end.
fn parse_list(toks: &[Tok], pos: &mut usize) -> Result<(Vec<Node>, Option<String>), String> {
    let mut nodes = Vec::new();
    while *pos < toks.len() {
        let t = toks[*pos].clone();
        *pos += 1;
        match t {
            Tok::Text(s) => nodes.push(Node::Text(s)),
            Tok::Action(a) => {
                let (word, rest) = match a.split_once(char::is_whitespace) {
                    Some((w, r)) => (w, r.trim()),
                    None => (a.as_str(), ""),
                };
                match word {
                    "end" | "else" => return Ok((nodes, Some(word.to_string()))),
                    "range" | "if" => {
                        let p = pipeline(rest)?;
                        let (body, end) = parse_list(toks, pos)?;
                        let (alt, end) = match end.as_deref() {
                            Some("else") => parse_list(toks, pos)?,
                            _ => (Vec::new(), end),
                        };
                        if end.as_deref() != Some("end") {
                            return Err(format!("template: {{{{{word}}}}} without {{{{end}}}}"));
                        }
                        nodes.push(match word {
                            "range" => Node::Range(p, body, alt),
                            _ => Node::If(p, body, alt),
                        });
                    }
                    _ if a.starts_with("/*") => {}
                    _ => nodes.push(Node::Print(pipeline(&a)?)),
                }
            }
        }
    }
    Ok((nodes, None))
}

fn pipeline(s: &str) -> Result<Pipeline, String> {
    let words = split_words(s)?;
    let mut calls = Vec::new();
    for part in words.split(|w| w == "|") {
        if part.is_empty() {
            return Err(format!("template: empty command in {s:?}"));
        }
        let (func, args) =
            match part[0].starts_with(['.', '"', '$']) || part[0].parse::<f64>().is_ok() {
                true => (None, part),
                false => (Some(part[0].clone()), &part[1..]),
            };
        if let Some(f) = &func {
            if !FUNCS.contains(&f.as_str()) {
                return Err(format!("template: function {f:?} not defined"));
            }
        }
        let args = args.iter().map(|w| arg(w)).collect::<Result<_, _>>()?;
        calls.push(Call { func, args });
    }
    if calls.is_empty() {
        return Err("template: empty action".into());
    }
    Ok(calls)
}

const FUNCS: &[&str] = &[
    "json", "index", "join", "upper", "lower", "title", "len", "printf", "print", "println",
    "split", "truncate", "pad",
];

fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut w = String::from("\"");
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => w.push('\n'),
                        Some('t') => w.push('\t'),
                        Some(o) => w.push(o),
                        None => return Err("template: unterminated string".into()),
                    },
                    Some(o) => w.push(o),
                    None => return Err("template: unterminated string".into()),
                }
            }
            out.push(w);
        } else if c == '|' {
            chars.next();
            out.push("|".into());
        } else {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '|' {
                    break;
                }
                w.push(c);
                chars.next();
            }
            out.push(w);
        }
    }
    Ok(out)
}

fn arg(w: &str) -> Result<Arg, String> {
    if let Some(s) = w.strip_prefix('"') {
        return Ok(Arg::Str(s.to_string()));
    }
    if w == "$" {
        return Ok(Arg::Root);
    }
    if w == "." {
        return Ok(Arg::Field(Vec::new()));
    }
    if let Some(f) = w.strip_prefix('.') {
        return Ok(Arg::Field(f.split('.').map(str::to_string).collect()));
    }
    if let Some(f) = w.strip_prefix("$.") {
        let mut p = vec!["$".to_string()];
        p.extend(f.split('.').map(str::to_string));
        return Ok(Arg::Field(p));
    }
    w.parse::<f64>()
        .map(Arg::Num)
        .map_err(|_| format!("template: unexpected {w:?}"))
}

fn exec(nodes: &[Node], dot: &Value, root: &Value, out: &mut String) -> Result<(), String> {
    for n in nodes {
        if out.len() > MAX_OUTPUT {
            return Err("template: output too large".into());
        }
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Print(p) => out.push_str(&show(&eval(p, dot, root)?)),
            Node::If(p, body, alt) => {
                let v = eval(p, dot, root)?;
                exec(if truthy(&v) { body } else { alt }, dot, root, out)?;
            }
            Node::Range(p, body, alt) => {
                let v = eval(p, dot, root)?;
                let items: Vec<Value> = match v {
                    Value::Array(a) => a,
                    Value::Object(m) => m.into_iter().map(|(_, v)| v).collect(),
                    _ => Vec::new(),
                };
                if items.is_empty() {
                    exec(alt, dot, root, out)?;
                }
                for it in items.iter().take(MAX_NODES * 10) {
                    exec(body, it, root, out)?;
                }
            }
        }
    }
    Ok(())
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// A value as Go's templates print it.
fn show(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => format!(
            "map[{}]",
            m.iter()
                .map(|(k, v)| format!("{k}:{}", show(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

fn lookup(dot: &Value, root: &Value, path: &[String]) -> Value {
    let (mut v, path) = match path.first().map(String::as_str) {
        Some("$") => (root, &path[1..]),
        _ => (dot, path),
    };
    for k in path {
        match v.get(k) {
            Some(x) => v = x,
            None => return Value::Null,
        }
    }
    v.clone()
}

fn value_of(a: &Arg, dot: &Value, root: &Value) -> Value {
    match a {
        Arg::Field(p) => lookup(dot, root, p),
        Arg::Str(s) => Value::String(s.clone()),
        Arg::Num(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Arg::Root => root.clone(),
    }
}

fn eval(p: &Pipeline, dot: &Value, root: &Value) -> Result<Value, String> {
    let mut prev: Option<Value> = None;
    for c in p {
        let mut args: Vec<Value> = c.args.iter().map(|a| value_of(a, dot, root)).collect();
        if let Some(v) = prev.take() {
            args.push(v);
        }
        prev = Some(match &c.func {
            None => match args.len() {
                1 => args.remove(0),
                _ => return Err("template: a value cannot take arguments".into()),
            },
            Some(f) => call(f, &args)?,
        });
    }
    Ok(prev.unwrap_or(Value::Null))
}

fn call(f: &str, a: &[Value]) -> Result<Value, String> {
    let need = |n: usize| {
        if a.len() < n {
            Err(format!("template: {f} needs {n} argument(s)"))
        } else {
            Ok(())
        }
    };
    Ok(match f {
        "json" => {
            need(1)?;
            Value::String(serde_json::to_string(&a[0]).unwrap_or_default())
        }
        "index" => {
            need(2)?;
            let mut v = a[0].clone();
            for k in &a[1..] {
                v = match (&v, k) {
                    (Value::Object(m), Value::String(s)) => {
                        m.get(s).cloned().unwrap_or(Value::Null)
                    }
                    (Value::Array(l), Value::Number(n)) => n
                        .as_u64()
                        .and_then(|i| l.get(i as usize))
                        .cloned()
                        .unwrap_or(Value::Null),
                    _ => Value::Null,
                };
            }
            v
        }
        "join" => {
            need(2)?;
            let sep = show(&a[1]);
            match &a[0] {
                Value::Array(l) => Value::String(l.iter().map(show).collect::<Vec<_>>().join(&sep)),
                other => Value::String(show(other)),
            }
        }
        "split" => {
            need(2)?;
            let sep = show(&a[1]);
            Value::Array(
                show(&a[0])
                    .split(sep.as_str())
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            )
        }
        "upper" => {
            need(1)?;
            Value::String(show(&a[0]).to_uppercase())
        }
        "lower" => {
            need(1)?;
            Value::String(show(&a[0]).to_lowercase())
        }
        "title" => {
            need(1)?;
            Value::String(crate::output::title(&show(&a[0])))
        }
        "len" => {
            need(1)?;
            Value::from(match &a[0] {
                Value::Array(l) => l.len(),
                Value::Object(m) => m.len(),
                Value::String(s) => s.chars().count(),
                _ => 0,
            })
        }
        "truncate" => {
            need(2)?;
            let n = a[1].as_u64().unwrap_or(0) as usize;
            Value::String(show(&a[0]).chars().take(n).collect())
        }
        "pad" => {
            need(3)?;
            let (l, r) = (a[1].as_u64().unwrap_or(0), a[2].as_u64().unwrap_or(0));
            let l = " ".repeat(l.min(256) as usize);
            let r = " ".repeat(r.min(256) as usize);
            Value::String(format!("{l}{}{r}", show(&a[0])))
        }
        "print" => Value::String(a.iter().map(show).collect::<Vec<_>>().join(" ")),
        "println" => Value::String(a.iter().map(show).collect::<Vec<_>>().join(" ") + "\n"),
        "printf" => {
            need(1)?;
            Value::String(printf(&show(&a[0]), &a[1..]))
        }
        _ => return Err(format!("template: function {f:?} not defined")),
    })
}

/// Go's `printf` for the verbs scripts use: %s %d %v %q %%.
fn printf(fmt: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut it = args.iter();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('q') => out.push_str(&format!("{:?}", it.next().map(show).unwrap_or_default())),
            Some(_) => out.push_str(&it.next().map(show).unwrap_or_else(|| "%!v(MISSING)".into())),
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row() -> Value {
        json!({
            "ID": "abc123", "Name": "web", "Replicas": "3/3",
            "Labels": {"tier": "front", "com.docker.stack.namespace": "shop"},
            "Ports": ["*:8080->80/tcp", "*:8443->443/tcp"],
            "Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": 3}}},
            "Count": 0, "Empty": "",
        })
    }

    fn r(t: &str) -> String {
        Template::parse(t).unwrap().render(&row()).unwrap()
    }

    #[test]
    fn docker_style_formats_render() {
        assert_eq!(r("{{.Name}}"), "web");
        assert_eq!(r("{{.ID}}: {{.Replicas}}"), "abc123: 3/3");
        assert_eq!(
            r("{{.Spec.Name}} {{.Spec.Mode.Replicated.Replicas}}"),
            "web 3"
        );
        assert_eq!(r("{{ .Name }}"), "web");
        assert_eq!(
            r("{{json .Labels}}"),
            r#"{"com.docker.stack.namespace":"shop","tier":"front"}"#
        );
        assert_eq!(
            r("{{.Labels | json}}"),
            r#"{"com.docker.stack.namespace":"shop","tier":"front"}"#
        );
        assert_eq!(
            r(r#"{{index .Labels "com.docker.stack.namespace"}}"#),
            "shop"
        );
        assert_eq!(
            r(r#"{{join .Ports ", "}}"#),
            "*:8080->80/tcp, *:8443->443/tcp"
        );
        assert_eq!(
            r("{{upper .Name}} {{lower .ID}} {{title .Name}}"),
            "WEB abc123 Web"
        );
        assert_eq!(r("{{len .Ports}}"), "2");
        assert_eq!(
            r("{{range .Ports}}[{{.}}]{{end}}"),
            "[*:8080->80/tcp][*:8443->443/tcp]"
        );
        assert_eq!(r("{{range .Ports}}{{$.Name}} {{end}}"), "web web ");
        assert_eq!(r("{{if .Empty}}yes{{else}}no{{end}}"), "no");
        assert_eq!(r("{{if .Name}}yes{{end}}"), "yes");
        assert_eq!(r(r#"{{printf "%s=%v" .Name .Count}}"#), "web=0");
        assert_eq!(r("{{.Missing}}"), "<no value>");
        assert_eq!(r("a {{- .Name -}} b"), "awebb");
        assert_eq!(r(r"{{.Name}}\t{{.ID}}"), "web\tabc123");
    }

    #[test]
    fn table_formats_align_under_field_headers() {
        let t = Template::parse(r"table {{.ID}}\t{{.Name}}\t{{.CreatedAt}}").unwrap();
        let rows = [
            json!({"ID": "a1", "Name": "web", "CreatedAt": "now"}),
            json!({"ID": "b22222", "Name": "db", "CreatedAt": "then"}),
        ];
        assert_eq!(
            t.render_all(&rows).unwrap(),
            "ID       NAME   CREATED AT\na1       web    now\nb22222   db     then\n"
        );
    }

    #[test]
    fn bad_templates_are_one_line_errors() {
        for bad in [
            "{{.Name",
            "{{range .X}}",
            "{{nosuch .X}}",
            "{{end}}",
            "{{\"x}}",
        ] {
            let e = Template::parse(bad).unwrap_err();
            assert!(
                e.starts_with("template:") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
    }
}
