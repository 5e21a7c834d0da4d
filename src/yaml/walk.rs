//! Helpers to read the positioned YAML tree while collecting every error.
//!
//! Each getter records its own error (with the node's position) and returns `None`,
//! so decoding continues past a bad field and `portcullis check` lists them all.

use super::raw::{Key, Node, Pos, Value};
use std::fmt;

/// One config error: where and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.pos, self.message)
    }
}

/// Every error found while loading one file, in file order.
#[derive(Clone, Debug, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Looks up environment variables for `$NAME` substitution (injectable for tests).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The decoding context: the file name, the error sink and the environment.
pub struct Ctx<'a> {
    pub file: String,
    pub errors: Vec<ConfigError>,
    pub env: EnvLookup<'a>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: impl Into<String>, env: EnvLookup<'a>) -> Self {
        Ctx {
            file: file.into(),
            errors: Vec::new(),
            env,
        }
    }

    pub fn err(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            pos,
            message: message.into(),
        });
    }

    /// `$NAME`, `${NAME}` → environment value; `$$` → `$`; any other `$` is literal
    /// (so request-transformer templates such as `$(headers.x)` pass through).
    /// Done on parsed scalars, never on the raw text, so a value cannot change the
    /// YAML structure whatever quotes it contains.
    pub fn substitute(&mut self, s: &str, pos: Pos) -> String {
        if !s.contains('$') {
            return s.to_owned();
        }
        let bytes = s.as_bytes();
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        let mut last = 0;
        while i < bytes.len() {
            if bytes[i] != b'$' {
                i += 1;
                continue;
            }
            out.push_str(&s[last..i]);
            let rest = &s[i + 1..];
            let is_start = |b: u8| b.is_ascii_alphabetic() || b == b'_';
            let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
            if rest.starts_with('$') {
                out.push('$');
                i += 2;
            } else if let Some(inner) = rest.strip_prefix('{') {
                match inner.find('}') {
                    Some(end)
                        if end > 0
                            && is_start(inner.as_bytes()[0])
                            && inner.as_bytes()[..end].iter().all(|&b| is_name(b)) =>
                    {
                        let name = &inner[..end];
                        out.push_str(&self.env_value(name, pos));
                        i += 1 + 1 + end + 1;
                    }
                    _ => {
                        self.err(
                            pos,
                            format!("invalid variable reference in '{s}': expected ${{NAME}}"),
                        );
                        out.push('$');
                        i += 1;
                    }
                }
            } else if !rest.is_empty() && is_start(rest.as_bytes()[0]) {
                let len = rest.bytes().take_while(|&b| is_name(b)).count();
                let name = &rest[..len];
                out.push_str(&self.env_value(name, pos));
                i += 1 + len;
            } else {
                out.push('$');
                i += 1;
            }
            last = i;
        }
        out.push_str(&s[last..]);
        out
    }

    fn env_value(&mut self, name: &str, pos: Pos) -> String {
        match (self.env)(name) {
            Some(v) => v,
            None => {
                self.err(
                    pos,
                    format!(
                        "environment variable '{name}' is not set (write $${name} for a literal '$')"
                    ),
                );
                String::new()
            }
        }
    }

    // ----- typed getters -----

    pub fn string(&mut self, n: &Node, what: &str) -> Option<String> {
        match &n.value {
            Value::Str(s) => Some(self.substitute(s, n.pos)),
            // Kong's schema coerces nothing, but YAML turns `port: 80` style values
            // into numbers; strings that look numeric are accepted as text.
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            other => {
                self.err(
                    n.pos,
                    format!("{what}: expected a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    pub fn opt_string(&mut self, n: Option<&Node>, what: &str) -> Option<String> {
        match n {
            None => None,
            Some(Node {
                value: Value::Null, ..
            }) => None,
            Some(n) => self.string(n, what),
        }
    }

    pub fn bool(&mut self, n: &Node, what: &str) -> Option<bool> {
        match &n.value {
            Value::Bool(b) => Some(*b),
            // YAML 1.1 spellings, as Kong's YAML loader accepts them.
            Value::Str(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "y" => Some(true),
                "false" | "no" | "off" | "n" => Some(false),
                _ => {
                    self.err(n.pos, format!("{what}: expected a boolean, found '{s}'"));
                    None
                }
            },
            other => {
                self.err(
                    n.pos,
                    format!("{what}: expected a boolean, found {}", other.kind()),
                );
                None
            }
        }
    }

    pub fn opt_bool(&mut self, n: Option<&Node>, what: &str, default: bool) -> bool {
        match n {
            None
            | Some(Node {
                value: Value::Null, ..
            }) => default,
            Some(n) => self.bool(n, what).unwrap_or(default),
        }
    }

    pub fn int(&mut self, n: &Node, what: &str, min: i64, max: i64) -> Option<i64> {
        let v = match &n.value {
            Value::Int(i) => *i,
            Value::Float(f) if f.fract() == 0.0 && f.is_finite() => *f as i64,
            Value::Str(s) => match self.substitute(s, n.pos).trim().parse::<i64>() {
                Ok(i) => i,
                Err(_) => {
                    self.err(n.pos, format!("{what}: expected an integer, found '{s}'"));
                    return None;
                }
            },
            other => {
                self.err(
                    n.pos,
                    format!("{what}: expected an integer, found {}", other.kind()),
                );
                return None;
            }
        };
        if v < min || v > max {
            self.err(
                n.pos,
                format!("{what}: value should be between {min} and {max}"),
            );
            return None;
        }
        Some(v)
    }

    pub fn opt_int(&mut self, n: Option<&Node>, what: &str, min: i64, max: i64) -> Option<i64> {
        match n {
            None
            | Some(Node {
                value: Value::Null, ..
            }) => None,
            Some(n) => self.int(n, what, min, max),
        }
    }

    pub fn number(&mut self, n: &Node, what: &str) -> Option<f64> {
        match &n.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            other => {
                self.err(
                    n.pos,
                    format!("{what}: expected a number, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A list of nodes; `null` is an empty list.
    pub fn seq<'n>(&mut self, n: Option<&'n Node>, what: &str) -> &'n [Node] {
        match n {
            None => &[],
            Some(n) => match &n.value {
                Value::Seq(items) => items,
                Value::Null => &[],
                other => {
                    self.err(
                        n.pos,
                        format!("{what}: expected an array, found {}", other.kind()),
                    );
                    &[]
                }
            },
        }
    }

    /// A list of strings with their positions.
    pub fn strings(&mut self, n: Option<&Node>, what: &str) -> Vec<(String, Pos)> {
        let items = self.seq(n, what);
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if let Some(s) = self.string(item, what) {
                out.push((s, item.pos));
            }
        }
        out
    }

    /// Opens a map for field-by-field reading; an error if `n` is not a map.
    pub fn fields<'n>(&mut self, n: &'n Node, what: &str) -> Option<Fields<'n>> {
        match &n.value {
            Value::Map(entries) => Some(Fields {
                pos: n.pos,
                entries,
                used: vec![false; entries.len()],
            }),
            other => {
                self.err(
                    n.pos,
                    format!("{what}: expected a map, found {}", other.kind()),
                );
                None
            }
        }
    }
}

/// A map being read; `finish` reports the keys nobody asked for.
pub struct Fields<'n> {
    pub pos: Pos,
    entries: &'n [(Key, Node)],
    used: Vec<bool>,
}

impl<'n> Fields<'n> {
    pub fn get(&mut self, name: &str) -> Option<&'n Node> {
        let entries = self.entries;
        for (i, (k, v)) in entries.iter().enumerate() {
            if k.name == name {
                self.used[i] = true;
                return Some(v);
            }
        }
        None
    }

    /// The key's own position (for errors about the field as a whole).
    pub fn key_pos(&self, name: &str) -> Option<Pos> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, _)| k.pos)
    }

    /// Unknown fields are errors; `_comment` and `_ignore` are allowed everywhere.
    pub fn finish(self, ctx: &mut Ctx<'_>, what: &str) {
        let mut seen: Vec<&str> = Vec::new();
        for (i, (k, _)) in self.entries.iter().enumerate() {
            if seen.contains(&k.name.as_str()) {
                ctx.err(k.pos, format!("{what}: duplicate field '{}'", k.name));
                continue;
            }
            seen.push(&k.name);
            if !self.used[i] && k.name != "_comment" && k.name != "_ignore" {
                ctx.err(k.pos, format!("{what}: unknown field '{}'", k.name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(s: &str) -> (String, Vec<String>) {
        let env = |n: &str| match n {
            "A" => Some("x'y\"z".to_string()),
            "EMPTY" => Some(String::new()),
            "LUA" => Some("$(headers.apikey)".to_string()),
            _ => None,
        };
        let mut c = Ctx::new("f.yml", &env);
        let out = c.substitute(s, Pos { line: 3, col: 7 });
        (out, c.errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn substitution_rules() {
        assert_eq!(sub("$A").0, "x'y\"z");
        assert_eq!(sub("pre-${A}-post").0, "pre-x'y\"z-post");
        assert_eq!(sub("$$A").0, "$A");
        assert_eq!(sub("cost: 5$").0, "cost: 5$");
        assert_eq!(sub("$(headers.x)").0, "$(headers.x)");
        assert_eq!(
            sub("Authorization: $LUA").0,
            "Authorization: $(headers.apikey)"
        );
        assert_eq!(sub("[$EMPTY]").0, "[]");
        let (_, errs) = sub("key: $MISSING_VAR");
        assert_eq!(
            errs,
            vec![
                "f.yml:3:7: environment variable 'MISSING_VAR' is not set (write $$MISSING_VAR for a literal '$')"
            ]
        );
    }
}
