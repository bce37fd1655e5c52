//! Where a config file went wrong: every problem names the offending key and
//! the line it sits on, as `FILE:LINE: key `name`: what is wrong`.
//!
//! Three kinds of problem, each located differently:
//! - TOML syntax: the parser's span gives the line.
//! - Shape (unknown key, wrong type, missing key): `serde_path_to_error` gives
//!   the key's path, `KeyLines` (spans from `toml_edit`) its line. An offending
//!   key is removed and the rest deserialised again, so one run reports every
//!   unknown or mistyped key, not only the first.
//! - Semantics (`EdgeConfig::validate`): its messages name the key they are
//!   about, and quote the bad value where there is one; `KeyLines::locate`
//!   finds the line of that value, else of the first key the message names.
//!   New checks get located as long as their message follows that habit.
//!
//! A key set by a flag is reported as that flag (`--upstream: ...`), not as a
//! line of the file.

use std::ops::Range;
use std::path::Path;

use crate::config::{EdgeConfig, ServeArgs};
use crate::error::EdgeError;

/// Where a problem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The config file, at this line (1-based) when known.
    File { line: Option<usize> },
    /// A command-line flag (the key's name with dashes).
    Flag,
}

/// One thing wrong with a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Path of the offending key (`upstream`, `token_keys[1].id`, `bgp.peer`), when known.
    pub key: Option<String>,
    /// File line or flag.
    pub source: Source,
    /// What is wrong.
    pub message: String,
}

impl ConfigProblem {
    /// One line: `FILE:LINE: key `k`: message`, `FILE: message` or `--flag: message`.
    pub fn render(&self, file: &str) -> String {
        match (&self.source, &self.key) {
            (Source::Flag, Some(k)) => format!("--{}: {}", top_level(k).replace('_', "-"), self.message),
            (Source::Flag, None) => self.message.clone(),
            (Source::File { line: Some(l) }, Some(k)) => format!("{file}:{l}: key `{k}`: {}", self.message),
            (Source::File { line: Some(l) }, None) => format!("{file}:{l}: {}", self.message),
            (Source::File { line: None }, Some(k)) => format!("{file}: key `{k}`: {}", self.message),
            (Source::File { line: None }, None) => format!("{file}: {}", self.message),
        }
    }
}

/// A flag the config could not take (`--ram-bytes is too large`): its message names the flag.
impl From<EdgeError> for Vec<ConfigProblem> {
    fn from(e: EdgeError) -> Self {
        let message = match e {
            EdgeError::Config(m) => m,
            other => other.to_string(),
        };
        vec![ConfigProblem { key: None, source: Source::Flag, message }]
    }
}

/// Every problem, one per line.
pub fn render_all(problems: &[ConfigProblem], file: &str) -> String {
    problems.iter().map(|p| p.render(file)).collect::<Vec<_>>().join("\n")
}

/// `edge config check FILE`: the config the file alone makes, or every problem rendered as a line.
pub fn check_file(path: &Path) -> Result<EdgeConfig, Vec<String>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{shown}: cannot read: {e}")])?;
    let args = ServeArgs { config: Some(path.to_owned()), ..Default::default() };
    args.merge_located(Some(&text)).map_err(|problems| problems.iter().map(|p| p.render(&shown)).collect())
}

/// The line of every key (and of every string value) in a TOML text.
#[derive(Debug, Default)]
pub struct KeyLines {
    /// Key paths in file order, with their lines.
    keys: Vec<(String, usize)>,
    /// String values (also inside arrays) with the path of their key and their line.
    strings: Vec<(String, String, usize)>,
}

impl KeyLines {
    /// Parses `text`; a syntax error comes back located.
    pub fn parse(text: &str) -> Result<Self, ConfigProblem> {
        let doc = toml_edit::ImDocument::parse(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigProblem {
                key: None,
                source: Source::File { line },
                message: format!("TOML syntax: {}", e.message().trim_end()),
            }
        })?;
        let mut lines = KeyLines::default();
        lines.walk_table(doc.as_table(), "", text);
        Ok(lines)
    }

    fn walk_table(&mut self, table: &toml_edit::Table, prefix: &str, text: &str) {
        for (name, item) in table.iter() {
            let path = join(prefix, name);
            let key_span = table.key(name).and_then(toml_edit::Key::span);
            self.walk_item(item, path, key_span, text);
        }
    }

    fn walk_item(&mut self, item: &toml_edit::Item, path: String, key_span: Option<Range<usize>>, text: &str) {
        let line = key_span.or_else(|| item.span()).map(|s| line_of(text, s.start));
        match item {
            toml_edit::Item::None => {}
            toml_edit::Item::Value(v) => {
                if let Some(l) = line {
                    self.keys.push((path.clone(), l));
                }
                self.walk_value(v, &path, line, text);
            }
            toml_edit::Item::Table(t) => {
                if let Some(l) = line.or_else(|| t.span().map(|s| line_of(text, s.start))) {
                    self.keys.push((path.clone(), l));
                }
                self.walk_table(t, &path, text);
            }
            toml_edit::Item::ArrayOfTables(tables) => {
                for (i, t) in tables.iter().enumerate() {
                    if let Some(l) = t.span().map(|s| line_of(text, s.start)).or(line) {
                        if i == 0 {
                            self.keys.push((path.clone(), l));
                        }
                        self.keys.push((format!("{path}[{i}]"), l));
                    }
                    self.walk_table(t, &format!("{path}[{i}]"), text);
                }
            }
        }
    }

    fn walk_value(&mut self, value: &toml_edit::Value, path: &str, key_line: Option<usize>, text: &str) {
        let line = value.span().map(|s| line_of(text, s.start)).or(key_line);
        match value {
            toml_edit::Value::String(s) => {
                if let Some(l) = line {
                    self.strings.push((s.value().clone(), path.to_owned(), l));
                }
            }
            toml_edit::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    let elem = format!("{path}[{i}]");
                    if let Some(l) = v.span().map(|s| line_of(text, s.start)).or(line) {
                        self.keys.push((elem.clone(), l));
                    }
                    self.walk_value(v, &elem, line, text);
                }
            }
            toml_edit::Value::InlineTable(t) => {
                for (name, v) in t.iter() {
                    let elem = join(path, name);
                    let l = t.key(name).and_then(toml_edit::Key::span).map(|s| line_of(text, s.start)).or(line);
                    if let Some(l) = l {
                        self.keys.push((elem.clone(), l));
                    }
                    self.walk_value(v, &elem, l, text);
                }
            }
            _ => {}
        }
    }

    /// The line of the key at `path` (`token_keys[1].id`), if the file has it.
    pub fn line(&self, path: &str) -> Option<usize> {
        self.keys.iter().find(|(p, _)| p == path).map(|(_, l)| *l)
    }

    /// The key a validation message is about, with its line. Messages start with
    /// their key (`max_connections must be ...`) and may quote the bad value
    /// (`upstream "https://b" must be ...`, `token key id "k2" is listed twice`):
    /// a quoted value held by that key, or by a key whose name extends it
    /// (`upstreams[1]`, `token_keys[1].id`), wins, the last one when several
    /// hold it (a duplicate's second occurrence); a quoted value elsewhere
    /// (`edge_secret (with name "e")`) does not. Without a leading key: the
    /// quoted value's key, else the first word of the message that is a key.
    pub fn locate(&self, message: &str) -> Option<(String, usize)> {
        let first = message.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')).next();
        let leading = first.and_then(|w| self.keys.iter().find(|(p, _)| p == w.trim_end_matches('.')));
        let quoted = quoted_strings(message)
            .iter()
            .rev()
            .find_map(|q| self.strings.iter().rev().find(|(v, _, _)| v == q))
            .map(|(_, path, line)| (path.clone(), *line));
        match (leading, quoted) {
            (Some((k, _)), Some((q, ql))) if top_level(&q).starts_with(top_level(k)) => return Some((q, ql)),
            (Some((k, l)), _) => return Some((k.clone(), *l)),
            (None, Some(q)) => return Some(q),
            (None, None) => {}
        }
        for word in message.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')) {
            let word = word.trim_matches('.');
            if word.is_empty() {
                continue;
            }
            let found = self.keys.iter().find(|(p, _)| p == word).or_else(|| {
                self.keys.iter().find(|(p, _)| p.rsplit('.').next().is_some_and(|leaf| leaf == word) && p.contains('.'))
            });
            if let Some((p, l)) = found {
                return Some((p.clone(), *l));
            }
        }
        None
    }

    /// The key a validation message names, located in the file or among the flags.
    fn problem_for(&self, message: String, flag_keys: &[String]) -> ConfigProblem {
        if let Some((key, line)) = self.locate(&message) {
            if flag_keys.iter().any(|f| f == top_level(&key)) {
                return ConfigProblem { key: Some(key), source: Source::Flag, message };
            }
            return ConfigProblem { key: Some(key), source: Source::File { line: Some(line) }, message };
        }
        // Not in the file: a flag the message names, else the file as a whole.
        let flag = message
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| flag_keys.iter().any(|f| f == w))
            .map(str::to_owned);
        match flag {
            Some(k) => ConfigProblem { key: Some(k), source: Source::Flag, message },
            None => ConfigProblem { key: None, source: Source::File { line: None }, message },
        }
    }
}

/// Deserialises the merged table, collecting every unknown, mistyped or missing key, in file order.
pub(crate) fn deserialize(
    table: toml::Table,
    lines: &KeyLines,
    flag_keys: &[String],
) -> Result<EdgeConfig, Vec<ConfigProblem>> {
    let (cfg, mut problems) = deserialize_unsorted(table, lines, flag_keys);
    match cfg {
        Some(cfg) if problems.is_empty() => return Ok(cfg),
        // What remains without the offending keys may have semantic problems too.
        Some(cfg) => problems.extend(validate(&cfg, lines, flag_keys).err().unwrap_or_default()),
        None => {}
    }
    problems.sort_by_key(|p| match p.source {
        Source::File { line: Some(l) } => (0, l),
        Source::File { line: None } => (1, 0),
        Source::Flag => (2, 0),
    });
    Err(problems)
}

/// The config without the offending keys (if the rest deserialises) and the problems found.
fn deserialize_unsorted(
    mut table: toml::Table,
    lines: &KeyLines,
    flag_keys: &[String],
) -> (Option<EdgeConfig>, Vec<ConfigProblem>) {
    let mut problems = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    // Each round removes one offending key; a config has a few dozen keys.
    for _ in 0..64 {
        let err = match serde_path_to_error::deserialize::<_, EdgeConfig>(toml::Value::Table(table.clone())) {
            Ok(cfg) => return (Some(cfg), problems),
            Err(e) => e,
        };
        let at = err.path().to_string();
        let parent = if at == "." { String::new() } else { at.clone() };
        let inner = err.into_inner();
        let message = inner.message().trim_end().to_owned();
        let (key, message, missing) = if let Some(name) = backticked_after(&message, "unknown field ") {
            let hint = closest(&name, &backticked_list(&message)).map(|c| format!(" (did you mean `{c}`?)"));
            // The path already ends at the unknown key itself.
            let key =
                if at.rsplit(['.', ']']).next() == Some(name.as_str()) { at.clone() } else { join(&parent, &name) };
            (key, format!("unknown key{}", hint.unwrap_or_default()), false)
        } else if let Some(name) = backticked_after(&message, "missing field ") {
            let key = join(&parent, &name);
            let how = if parent.is_empty() { format!(" (or --{})", name.replace('_', "-")) } else { String::new() };
            (key, format!("missing, and it has no default{how}"), true)
        } else {
            (at.clone(), message, false)
        };
        if removed.contains(&key) {
            // A key removed for being mistyped is now missing: reported already.
            return (None, problems);
        }
        let source = if flag_keys.iter().any(|f| f == top_level(&key)) {
            Source::Flag
        } else {
            Source::File { line: lines.line(&key) }
        };
        problems.push(ConfigProblem { key: Some(key.clone()), source, message });
        if missing || !remove_path(&mut table, &key) {
            return (None, problems);
        }
        removed.push(key);
    }
    (None, problems)
}

/// Runs `validate` and locates its complaint.
pub(crate) fn validate(cfg: &EdgeConfig, lines: &KeyLines, flag_keys: &[String]) -> Result<(), Vec<ConfigProblem>> {
    cfg.validate().map_err(|e| {
        let message = match e {
            EdgeError::Config(m) => m,
            other => other.to_string(),
        };
        vec![lines.problem_for(message, flag_keys)]
    })
}

/// A syntax error of `toml::from_str`, located.
pub(crate) fn syntax_problem(text: &str, e: &toml::de::Error) -> ConfigProblem {
    ConfigProblem {
        key: None,
        source: Source::File { line: e.span().map(|s| line_of(text, s.start)) },
        message: format!("TOML syntax: {}", e.message().trim_end()),
    }
}

/// Removes `a.b[2].c` from the table; false if it is not there.
fn remove_path(table: &mut toml::Table, path: &str) -> bool {
    let mut parts = split_path(path);
    let Some(last) = parts.pop() else { return false };
    let mut cur: &mut toml::Value = match parts.first() {
        Some(PathPart::Key(k)) => match table.get_mut(*k) {
            Some(v) => v,
            None => return false,
        },
        Some(PathPart::Index(_)) => return false,
        None => {
            return match last {
                PathPart::Key(k) => table.remove(k).is_some(),
                PathPart::Index(_) => false,
            }
        }
    };
    for part in parts.iter().skip(1) {
        let next = match (part, cur) {
            (PathPart::Key(k), toml::Value::Table(t)) => t.get_mut(*k),
            (PathPart::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return false,
        }
    }
    match (last, cur) {
        (PathPart::Key(k), toml::Value::Table(t)) => t.remove(k).is_some(),
        (PathPart::Index(i), toml::Value::Array(a)) if i < a.len() => {
            a.remove(i);
            true
        }
        _ => false,
    }
}

enum PathPart<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<PathPart<'_>> {
    let mut out = Vec::new();
    for piece in path.split('.') {
        let (name, indices) = piece.split_once('[').map_or((piece, ""), |(n, rest)| (n, rest));
        if !name.is_empty() {
            out.push(PathPart::Key(name));
        }
        for idx in indices.split(['[', ']']).filter(|s| !s.is_empty()) {
            if let Ok(i) = idx.parse() {
                out.push(PathPart::Index(i));
            }
        }
    }
    out
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// `bgp` of `bgp.peer`, `token_keys` of `token_keys[1].id`.
fn top_level(path: &str) -> &str {
    path.split(['.', '[']).next().unwrap_or(path)
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len())).map_or(1, |before| before.matches('\n').count() + 1)
}

/// `x` from "...`prefix``x`...".
fn backticked_after(message: &str, prefix: &str) -> Option<String> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    let rest = rest.strip_prefix('`')?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// Every `name` in backticks after "expected".
fn backticked_list(message: &str) -> Vec<String> {
    let Some(at) = message.find("expected") else { return Vec::new() };
    message[at..].split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// Strings in double quotes, as `{:?}` prints them.
fn quoted_strings(message: &str) -> Vec<String> {
    message.split('"').skip(1).step_by(2).map(|s| s.replace("\\\\", "\\")).collect()
}

/// The candidate within edit distance 2 of `name`, if any.
fn closest(name: &str, candidates: &[String]) -> Option<String> {
    candidates.iter().map(|c| (edit_distance(name, c), c)).filter(|(d, _)| *d <= 2).min().map(|(_, c)| c.clone())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(row[j]).min(row[j + 1]) };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(file: &str) -> Vec<String> {
        ServeArgs::default().merge_located(Some(file)).unwrap_err().iter().map(|p| p.render("edge.toml")).collect()
    }

    const BASE: &str = "# an edge\nupstream = \"http://origin:8080\"\nram_bytes = 1000\n";

    #[test]
    fn syntax_errors_name_their_line() {
        assert_eq!(problems(&format!("{BASE}name = \"unterminated\n"))[0].split(':').nth(1), Some("4"));
        let dup = problems(&format!("{BASE}ram_bytes = 5\n"));
        assert!(dup[0].starts_with("edge.toml:4: "), "{dup:?}");
    }

    #[test]
    fn every_unknown_and_mistyped_key_is_named_with_its_line() {
        let file = format!("{BASE}ram_byts = 6\n\n[[token_keys]]\nid = \"k2\"\nsecert = \"x\"\nlisten = \"nowhere\"\n");
        let p = problems(&file);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with("edge.toml:4: key `ram_byts`: unknown key (did you mean `ram_bytes`?)"), "{p:?}");
        assert!(p[1].starts_with("edge.toml:8: key `token_keys[0].secert`: unknown key (did you mean `secret`?)"));
        assert!(p[2].starts_with("edge.toml:9: key `token_keys[0].listen`: unknown key"), "{p:?}");
        assert_eq!(p[3], "edge.toml: key `token_keys[0].secret`: missing, and it has no default");
        let p = problems("upstream = \"http://o:1\"\nram_bytes = \"lots\"\ndisk_policy = \"lru\"\n");
        assert!(p[0].starts_with("edge.toml:2: key `ram_bytes`: invalid type"), "{p:?}");
        assert!(p[1].starts_with("edge.toml:3: key `disk_policy`: unknown variant `lru`"), "{p:?}");
        assert_eq!(p.len(), 2, "{p:?}");
        let p = problems("upstream = \"https://o:1\"\nram_bytes = 5\nlisten = 80\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("edge.toml:1: key `upstream`: upstream \"https://o:1\" must be an http:// URL"),
            "{p:?}"
        );
        assert!(p[1].starts_with("edge.toml:3: key `listen`: invalid type"), "{p:?}");
        let p = problems("ram_bytes = 5\n");
        assert_eq!(p, ["edge.toml: key `upstream`: missing, and it has no default (or --upstream)"]);
    }

    #[test]
    fn semantic_errors_point_at_the_key_or_the_value_they_are_about() {
        let cases: &[(&str, &str)] = &[
            ("upstreams = [\n  \"http://b:1\",\n  \"https://c:1\",\n]\n", "6: key `upstreams[1]`"),
            ("max_connections = 0\n", "4: key `max_connections`"),
            ("disk_path = \"/var/cache/vod\"\n", "4: key `disk_path`"),
            ("prefill_window = \"25:00-26:00\"\n", "4: key `prefill_window`"),
            ("steering = \"steer:1\"\n", "4: key `steering`"),
            ("heartbeat_interval_ms = 0\n", "4: key `heartbeat_interval_ms`"),
            ("name = \"\"\n", "4: key `name`"),
            (
                "[[token_keys]]\nid = \"k2\"\nsecret = \"a\"\n[[token_keys]]\nid = \"k2\"\nsecret = \"b\"\n",
                "8: key `token_keys[1].id`",
            ),
            ("static_prefixes = [\"10.0.0.0/8\", \"10.1.0.0/33\"]\n", "4: key `static_prefixes[1]`"),
            ("name = \"e1\"\nedge_secret = \"!\"\n", "5: key `edge_secret`"),
            (
                "[bgp]\npeer = \"192.0.2.1\"\nlocal_as = 64512\npeer_as = 64500\nrouter_id = \"192.0.2.10\"\nhold_time_s = 2\n",
                "9: key `bgp.hold_time_s`",
            ),
            ("[bgp]\nlocal_as = 1\npeer_as = 2\nrouter_id = \"192.0.2.10\"\n", "4: key `bgp`"),
            ("[bgp]\npeer = \"router\"\nlocal_as = 1\npeer_as = 2\nrouter_id = \"192.0.2.10\"\n", "5: key `bgp.peer`"),
        ];
        for (extra, want) in cases {
            let p = problems(&format!("{BASE}{extra}"));
            assert_eq!(p.len(), 1, "{extra}: {p:?}");
            assert!(p[0].starts_with(&format!("edge.toml:{want}: ")), "{extra}: {p:?}");
        }
    }

    #[test]
    fn a_bad_flag_is_reported_as_the_flag() {
        let args = ServeArgs { upstream: vec!["https://x:1".into()], ..Default::default() };
        let p = args.merge_located(Some(BASE)).unwrap_err();
        assert_eq!(p[0].render("edge.toml").split(':').next(), Some("--upstream"), "{p:?}");
        let args = ServeArgs { max_connections: Some(0), ..Default::default() };
        let p = args.merge_located(Some(BASE)).unwrap_err();
        assert!(p[0].render("edge.toml").starts_with("--max-connections: "), "{p:?}");
    }

    #[test]
    fn paths_are_removed_at_any_depth() {
        let mut t: toml::Table = toml::from_str("a = 1\n[[k]]\nid = 1\nx = 2\n[b]\nc = 3\n").unwrap();
        assert!(remove_path(&mut t, "k[0].x"));
        assert!(remove_path(&mut t, "b.c"));
        assert!(remove_path(&mut t, "a"));
        assert!(!remove_path(&mut t, "a"));
        assert!(!remove_path(&mut t, "k[3].id"));
        assert_eq!(t, toml::from_str::<toml::Table>("[[k]]\nid = 1\n[b]\n").unwrap());
        assert_eq!(edit_distance("ram_byts", "ram_bytes"), 1);
    }
}
