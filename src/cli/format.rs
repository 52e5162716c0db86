//! `--format` for every listing command (`list`, `status`, `image list`, `trust --list`): one
//! vocabulary, podman's. `table` (the default; `text` is kept as its alias for older
//! scripts), `json`, or a Go-template-like string such as `'{{.UUID}} {{.State}}'`: each
//! `{{.Field}}` is replaced by that field of the item's JSON (matched ignoring case and `_`,
//! so `.CreatedAt` is `created_at`; `.A.B` reaches into an object); an unknown field is a
//! one-line error naming the fields there are. No functions or pipelines: a substitution.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    /// A template, rendered once per item, each followed by a newline.
    Template(String),
}

/// clap's value parser for `--format`.
pub fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "table" | "text" => Ok(Format::Table),
        "json" => Ok(Format::Json),
        t if t.contains("{{") => {
            Template::parse(t)?;
            Ok(Format::Template(t.to_string()))
        }
        other => Err(format!(
            "{other:?}: want table, json or a template such as '{{{{.UUID}}}}'"
        )),
    }
}

/// A parsed template: literal text and field paths, alternating.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Vec<String>),
}

#[derive(Debug)]
pub struct Template(Vec<Piece>);

impl Template {
    pub fn parse(t: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(unescape(&rest[..open])));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("template {t:?}: '{{{{' without '}}}}'"))?;
            let expr = after[..close].trim();
            let path = expr
                .strip_prefix('.')
                .filter(|p| {
                    !p.is_empty()
                        && p.split('.').all(|w| {
                            !w.is_empty()
                                && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        })
                })
                .ok_or_else(|| {
                    format!("template {t:?}: {expr:?} is not a field (want {{{{.Name}}}})")
                })?;
            pieces.push(Piece::Field(path.split('.').map(String::from).collect()));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(unescape(rest)));
        }
        Ok(Template(pieces))
    }

    /// One item's line (without its newline).
    pub fn render(&self, item: &serde_json::Value) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(path) => out.push_str(&field_text(lookup(item, path)?)),
            }
        }
        Ok(out)
    }
}

/// `\t` and `\n` as podman's templates take them.
fn unescape(s: &str) -> String {
    s.replace("\\t", "\t").replace("\\n", "\n")
}

fn key(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn lookup<'a>(
    item: &'a serde_json::Value,
    path: &[String],
) -> Result<&'a serde_json::Value, String> {
    let mut v = item;
    for (i, name) in path.iter().enumerate() {
        let obj = v
            .as_object()
            .ok_or_else(|| format!("template: .{} is not an object", path[..i].join(".")))?;
        v = obj
            .iter()
            .find(|(k, _)| key(k) == key(name))
            .map(|(_, v)| v)
            .ok_or_else(|| {
                let fields: Vec<&str> = obj.keys().map(String::as_str).collect();
                format!(
                    "template: no field .{} (there are: {})",
                    path[..=i].join("."),
                    fields.join(", ")
                )
            })?;
    }
    Ok(v)
}

/// A field as text: strings bare, null empty, everything else as JSON. Control characters
/// (from an image's name, say) are escaped so a line stays a line.
fn field_text(v: &serde_json::Value) -> String {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    ark::image::escape::controls_escaped(&s).into_owned()
}

/// Prints `items` as JSON (an array) or through a template (a line each); `None` for a table,
/// which the caller draws.
pub fn print_non_table<T: Serialize>(format: &Format, items: &[T]) -> anyhow::Result<Option<()>> {
    match format {
        Format::Table => Ok(None),
        Format::Json => {
            super::output::outln!("{}", serde_json::to_string_pretty(items)?);
            Ok(Some(()))
        }
        Format::Template(t) => {
            let t = Template::parse(t).map_err(anyhow::Error::msg)?;
            for item in items {
                let line = t
                    .render(&serde_json::to_value(item)?)
                    .map_err(anyhow::Error::msg)?;
                super::output::outln!("{line}");
            }
            Ok(Some(()))
        }
    }
}

/// Rows as aligned columns (two spaces apart, no trailing blanks), the header first unless
/// `no_legend`.
pub fn print_table<const N: usize>(
    header: [&str; N],
    rows: &[[String; N]],
    no_legend: bool,
) -> anyhow::Result<()> {
    let header = header.map(String::from);
    let mut widths = [0usize; N];
    for r in std::iter::once(&header).chain(rows) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let shown = (!no_legend).then_some(&header);
    for r in shown.into_iter().chain(rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        super::output::outln!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary() {
        assert_eq!(parse_format("table"), Ok(Format::Table));
        assert_eq!(parse_format("text"), Ok(Format::Table));
        assert_eq!(parse_format("json"), Ok(Format::Json));
        assert!(matches!(parse_format("{{.UUID}}"), Ok(Format::Template(_))));
        assert!(parse_format("yaml")
            .unwrap_err()
            .contains("want table, json"));
        assert!(parse_format("{{.UUID").is_err());
        assert!(parse_format("{{ json . }}").is_err());
    }

    #[test]
    fn templates_substitute_fields() {
        let item = serde_json::json!({
            "uuid": "ab12", "created_at": 5, "name": null,
            "apps": [{"name": "a"}], "net": {"ip": "10.0.0.2"}, "bad": "x\ny"
        });
        let t = Template::parse("{{.UUID}}\\t{{ .CreatedAt }}|{{.Name}}|{{.Net.IP}}").unwrap();
        assert_eq!(t.render(&item).unwrap(), "ab12\t5||10.0.0.2");
        assert_eq!(
            Template::parse("{{.Apps}}").unwrap().render(&item).unwrap(),
            r#"[{"name":"a"}]"#
        );
        assert_eq!(
            Template::parse("{{.Bad}}").unwrap().render(&item).unwrap(),
            "x\\ny"
        );
        let e = Template::parse("{{.Nope}}")
            .unwrap()
            .render(&item)
            .unwrap_err();
        assert!(e.contains("no field .Nope") && e.contains("uuid"), "{e}");
        let e = Template::parse("{{.UUID.X}}")
            .unwrap()
            .render(&item)
            .unwrap_err();
        assert!(e.contains("not an object"), "{e}");
    }
}
