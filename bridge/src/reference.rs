//! The configuration reference, generated from the configuration types themselves.
//!
//! [`keys`] walks a `Deserialize` type with a probing deserializer: every run follows one key path
//! and records what the type asks for there (a struct and its fields, a list, a map, an optional
//! value, an enum and its variants, or a scalar), so every key of [`crate::config::Config`] is
//! found, new ones included, without a hand-kept list. [`markdown`] renders the keys as the table
//! in `docs/operations.md`, with each field's doc comment and its default; a test fails when the
//! document drifts from the types.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};

/// What the type asks for at one key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A struct (a YAML mapping with fixed keys).
    Struct {
        /// The Rust type's name, to find its doc comments.
        name: &'static str,
        /// Its keys.
        fields: Vec<&'static str>,
    },
    /// A list; its entries are at `path[]`.
    List,
    /// A mapping with free keys; its values are at `path.<key>`.
    Map,
    /// An enum: one of these strings.
    Enum(Vec<&'static str>),
    /// A scalar, with the deserializer hint (`string`, `bool`, `integer`, `number`).
    Scalar(&'static str),
}

/// One configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// Segments: field names, `[]` for list entries, `<key>` for map keys.
    pub path: Vec<String>,
    /// What is there.
    pub kind: Kind,
    /// Whether the value may be left out / null (an `Option`).
    pub optional: bool,
    /// The struct this key is a field of, and the field's name (to find its doc comment).
    pub parent: Option<(&'static str, String)>,
}

impl Key {
    /// The dotted path as operators write it: `bridge.listen`, `upstreams[].issuer`.
    pub fn dotted(&self) -> String {
        let mut out = String::new();
        for segment in &self.path {
            if segment == "[]" {
                out.push_str("[]");
            } else {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(segment);
            }
        }
        out
    }
}

/// Every key path of `T`, depth first in declaration order.
pub fn keys<T: DeserializeOwned>() -> Vec<Key> {
    let mut out = Vec::new();
    explore::<T>(Vec::new(), None, &mut out);
    out
}

fn explore<T: DeserializeOwned>(path: Vec<String>, parent: Option<(&'static str, String)>, out: &mut Vec<Key>) {
    let record = RefCell::new(None);
    let probe = Probe {
        focus: &path,
        depth: 0,
        record: &record,
        optional: false,
    };
    let _ = T::deserialize(probe);
    let Some((kind, optional)) = record.into_inner() else {
        return;
    };
    let key = Key {
        path: path.clone(),
        kind: kind.clone(),
        optional,
        parent,
    };
    if !path.is_empty() {
        out.push(key);
    }
    if path.len() > 12 {
        return; // a recursive type; the configuration has none
    }
    match kind {
        Kind::Struct { name, fields } => {
            for field in fields {
                let mut child = path.clone();
                child.push(field.to_owned());
                explore::<T>(child, Some((name, field.to_owned())), out);
            }
        }
        Kind::List => {
            let mut child = path.clone();
            child.push("[]".into());
            explore_inner::<T>(child, out);
        }
        Kind::Map => {
            let mut child = path.clone();
            child.push("<key>".into());
            explore_inner::<T>(child, out);
        }
        Kind::Enum(_) | Kind::Scalar(_) => {}
    }
}

/// List entries and map values: their fields are listed, the entry itself is not a key.
fn explore_inner<T: DeserializeOwned>(path: Vec<String>, out: &mut Vec<Key>) {
    let before = out.len();
    explore::<T>(path.clone(), None, out);
    if let Some(entry) = out.get(before)
        && entry.path == path
        && matches!(entry.kind, Kind::Struct { .. })
    {
        out.remove(before);
    }
}

#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probe stopped")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Stop
    }
}

/// Follows `focus`; at its end records what the type asks for.
struct Probe<'a> {
    focus: &'a [String],
    depth: usize,
    record: &'a RefCell<Option<(Kind, bool)>>,
    optional: bool,
}

impl<'a> Probe<'a> {
    fn at_focus(&self) -> bool {
        self.depth == self.focus.len()
    }

    fn leaf<V>(self, kind: Kind) -> Result<V, Stop> {
        if self.at_focus() {
            *self.record.borrow_mut() = Some((kind, self.optional));
        }
        Err(Stop)
    }

    fn child(&self) -> Probe<'a> {
        Probe {
            focus: self.focus,
            depth: self.depth + 1,
            record: self.record,
            optional: false,
        }
    }
}

macro_rules! scalar {
    ($($method:ident => $hint:literal),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            self.leaf(Kind::Scalar($hint))
        })*
    };
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    scalar! {
        deserialize_any => "value", deserialize_bool => "bool",
        deserialize_i8 => "integer", deserialize_i16 => "integer", deserialize_i32 => "integer",
        deserialize_i64 => "integer", deserialize_i128 => "integer",
        deserialize_u8 => "integer", deserialize_u16 => "integer", deserialize_u32 => "integer",
        deserialize_u64 => "integer", deserialize_u128 => "integer",
        deserialize_f32 => "number", deserialize_f64 => "number",
        deserialize_char => "string", deserialize_str => "string", deserialize_string => "string",
        deserialize_bytes => "bytes", deserialize_byte_buf => "bytes",
        deserialize_unit => "null", deserialize_identifier => "string",
        deserialize_ignored_any => "value",
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(Probe { optional: true, ..self })
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, _: V) -> Result<V::Value, Stop> {
        self.leaf(Kind::Scalar("null"))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        if self.at_focus() {
            return self.leaf(Kind::List);
        }
        visitor.visit_seq(One(Some(self.child())))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Stop> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        if self.at_focus() {
            return self.leaf(Kind::Map);
        }
        visitor.visit_map(Entry {
            key: Some("key".to_owned()),
            value: Some(self.child()),
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        if self.at_focus() {
            return self.leaf(Kind::Struct {
                name,
                fields: fields.to_vec(),
            });
        }
        let key = self.focus[self.depth].clone();
        visitor.visit_map(Entry {
            key: Some(key),
            value: Some(self.child()),
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.leaf(Kind::Enum(variants.to_vec()))
    }
}

/// A sequence of one probed entry.
struct One<'a>(Option<Probe<'a>>);

impl<'de> de::SeqAccess<'de> for One<'_> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Stop> {
        match self.0.take() {
            Some(probe) => seed.deserialize(probe).map(Some),
            None => Ok(None),
        }
    }
}

/// A mapping of one key to a probed value.
struct Entry<'a> {
    key: Option<String>,
    value: Option<Probe<'a>>,
}

impl<'de> de::MapAccess<'de> for Entry<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Stop> {
        match self.key.take() {
            Some(key) => seed
                .deserialize(de::value::StringDeserializer::<Stop>::new(key))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        seed.deserialize(self.value.take().ok_or(Stop)?)
    }
}

/// The doc comments of `pub` struct fields in Rust source: (struct, field) → text.
pub fn field_docs(source: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    let mut doc: Vec<String> = Vec::new();
    for line in source.lines() {
        let line = line.trim();
        if let Some(text) = line.strip_prefix("///") {
            doc.push(text.trim().to_owned());
            continue;
        }
        if line.starts_with("#[") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("pub struct ") {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            current = line.ends_with('{').then_some(name);
        } else if line == "}" {
            current = None;
        } else if let (Some(name), Some(rest)) = (&current, line.strip_prefix("pub "))
            && let Some((field, _)) = rest.split_once(':')
            && field.chars().all(|c| c.is_alphanumeric() || c == '_')
        {
            out.push((name.clone(), field.to_owned(), doc.join(" ")));
        }
        doc.clear();
    }
    out
}

/// The Debug text of the value at `path` in `{:#?}` output of the defaults, if it is there.
pub fn default_of(debug: &str, path: &[String]) -> Option<String> {
    let lines: Vec<&str> = debug.lines().collect();
    let mut start = 0;
    let mut indent = 0;
    let mut found = None;
    for segment in path {
        let prefix = format!("{}{segment}: ", " ".repeat(indent + 4));
        let at = lines[start..].iter().position(|l| l.starts_with(&prefix))? + start;
        let value = lines[at][prefix.len()..].trim_end_matches(',').to_owned();
        found = Some((at, value));
        start = at;
        indent += 4;
    }
    let (at, value) = found?;
    if value.ends_with('{') || value.ends_with('[') || value.ends_with('(') {
        // Nested: a struct (its fields are keys of their own), or a non-empty list or option.
        let close = format!(
            "{}{}",
            " ".repeat(indent),
            &value[value.len() - 1..]
                .replace('{', "}")
                .replace('[', "]")
                .replace('(', ")")
        );
        let end = lines[at..].iter().position(|l| l.starts_with(&close))? + at;
        if value.ends_with('{') {
            return None;
        }
        let inner: Vec<String> = lines[at + 1..end]
            .iter()
            .map(|l| l.trim().trim_end_matches(',').to_owned())
            .collect();
        return Some(format!("{}{}{}", &value, inner.join(", "), &close.trim()));
    }
    Some(value)
}

/// `600s` (a `Duration`'s Debug) as `10m`; anything else as it is.
fn human_duration(debug: &str) -> String {
    match debug.strip_suffix('s').and_then(|n| n.parse::<u64>().ok()) {
        Some(secs) if secs > 0 && secs % 86_400 == 0 => format!("{}d", secs / 86_400),
        Some(secs) if secs > 0 && secs % 3_600 == 0 => format!("{}h", secs / 3_600),
        Some(secs) if secs > 0 && secs % 60 == 0 => format!("{}m", secs / 60),
        Some(secs) => format!("{secs}s"),
        None => debug.to_owned(),
    }
}

/// The reference as Markdown: one table row per key, with its doc comment and default.
pub fn markdown(keys: &[Key], defaults: &str, docs: &[(String, String, String)]) -> String {
    let mut out = String::from("| Key | Type | Default | Description |\n|---|---|---|---|\n");
    for key in keys {
        let kind = match &key.kind {
            Kind::Struct { .. } => "section".to_owned(),
            Kind::List => "list".to_owned(),
            Kind::Map => "map".to_owned(),
            Kind::Enum(variants) => format!("one of {}", variants.join(", ")),
            Kind::Scalar(hint) => (*hint).to_owned(),
        };
        let kind = if key.optional {
            format!("{kind} (optional)")
        } else {
            kind
        };
        let description = key
            .parent
            .as_ref()
            .and_then(|(name, field)| {
                docs.iter()
                    .find(|(s, f, _)| s == name && f == field)
                    .map(|(_, _, d)| d.clone())
            })
            .unwrap_or_default();
        let default = if matches!(key.kind, Kind::Struct { .. }) || key.path.iter().any(|s| s == "[]" || s == "<key>") {
            String::new()
        } else {
            default_of(defaults, &key.path)
                .map(|d| format!("`{}`", human_duration(&d).replace('|', "\\|")))
                .unwrap_or_default()
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            key.dotted(),
            kind,
            default,
            description.replace("[`", "`").replace("`]", "`").replace('|', "\\|")
        ));
    }
    out
}

/// The metrics reference as Markdown, from what `/metrics` exposes (its HELP and TYPE lines).
pub fn metrics_markdown() -> String {
    let text = crate::metrics::Metrics::default().render(&[], 0, &crate::metrics::MeshGauges::default(), &[]);
    let mut out = String::from("| Metric | Type | Description |\n|---|---|---|\n");
    let mut help = std::collections::BTreeMap::new();
    let mut types = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ")
            && let Some((name, text)) = rest.split_once(' ')
        {
            help.insert(name.to_owned(), text.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            types.push((name.to_owned(), kind.to_owned()));
        }
    }
    types.sort();
    for (name, kind) in types {
        let exposed = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.clone()
        };
        out.push_str(&format!(
            "| `{exposed}` | {kind} | {} |\n",
            help.get(&name).map(String::as_str).unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn every_key_is_found_with_its_kind() {
        let keys = keys::<Config>();
        let find = |dotted: &str| {
            keys.iter().find(|k| k.dotted() == dotted).unwrap_or_else(|| {
                panic!(
                    "{dotted} missing from {:#?}",
                    keys.iter().map(Key::dotted).collect::<Vec<_>>()
                )
            })
        };
        assert_eq!(find("bridge.listen").kind, Kind::Scalar("string"));
        assert!(matches!(
            find("bridge").kind,
            Kind::Struct {
                name: "BridgeConfig",
                ..
            }
        ));
        assert!(find("bridge.issuer").optional);
        assert_eq!(find("upstreams").kind, Kind::List);
        assert!(matches!(find("node.identity.did_method").kind, Kind::Enum(_)));
        find("upstreams[].issuer");
        find("federation.clients");
        find("observability.log_file.max_files");
        find("audit.retention");
    }

    #[test]
    fn defaults_are_read_from_debug_output() {
        let debug = format!("{:#?}", Config::default());
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            default_of(&debug, &path("bridge.listen")).as_deref(),
            Some("127.0.0.1:8700")
        );
        assert_eq!(default_of(&debug, &path("bridge.issuer")).as_deref(), Some("None"));
        assert_eq!(
            default_of(&debug, &path("node.sync.gossip_peers")).as_deref(),
            Some("[]")
        );
        assert_eq!(default_of(&debug, &path("bridge")), None);
    }

    /// The configuration and metrics references in `docs/operations.md` are generated: this test
    /// fails when they drift from the types and from `/metrics`, and rewrites them when run with
    /// `MESHGATE_UPDATE_DOCS=1`.
    #[test]
    fn operations_doc_matches_the_types_and_metrics() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut sources = String::new();
        for dir in ["bridge/src", "adapters/src"] {
            collect_sources(&root.join(dir), &mut sources);
        }
        let docs = field_docs(&sources);
        let config = markdown(&keys::<Config>(), &format!("{:#?}", Config::default()), &docs);
        let metrics = metrics_markdown();
        let path = root.join("docs/operations.md");
        let text = std::fs::read_to_string(&path).expect("docs/operations.md");
        let updated = replace_between(&text, "config-reference", &config);
        let updated = replace_between(&updated, "metrics-reference", &metrics);
        if std::env::var_os("MESHGATE_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &updated).unwrap();
            return;
        }
        assert!(
            updated == text,
            "docs/operations.md's generated references drifted from the configuration types or \
             /metrics; regenerate with `MESHGATE_UPDATE_DOCS=1 cargo test -p bridge --lib \
             operations_doc` and commit the result"
        );
    }

    /// The systemd unit's command lines are ones `meshgate` accepts.
    #[test]
    fn the_systemd_unit_runs_valid_commands() {
        use clap::Parser;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let unit = std::fs::read_to_string(root.join("docs/meshgate.service")).expect("docs/meshgate.service");
        let mut commands = 0;
        for line in unit.lines() {
            let Some(command) = line
                .strip_prefix("ExecStart=")
                .or_else(|| line.strip_prefix("ExecStartPre="))
            else {
                continue;
            };
            let args: Vec<&str> = command.split_whitespace().collect();
            assert!(args[0].ends_with("/meshgate"), "{line}");
            crate::cli::Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{line}: {e}"));
            commands += 1;
        }
        assert_eq!(commands, 2, "ExecStartPre (config check) and ExecStart (serve)");
        assert!(unit.contains("StateDirectoryMode=0700"));
    }

    fn collect_sources(dir: &std::path::Path, out: &mut String) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                collect_sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
                out.push('\n');
            }
        }
    }

    fn replace_between(text: &str, marker: &str, body: &str) -> String {
        let begin = format!("<!-- BEGIN {marker} (generated) -->\n");
        let end = format!("<!-- END {marker} -->");
        let start = text
            .find(&begin)
            .unwrap_or_else(|| panic!("docs/operations.md lacks `{}`", begin.trim()))
            + begin.len();
        let stop = text[start..]
            .find(&end)
            .unwrap_or_else(|| panic!("docs/operations.md lacks `{end}`"))
            + start;
        format!("{}{body}{}", &text[..start], &text[stop..])
    }
}
