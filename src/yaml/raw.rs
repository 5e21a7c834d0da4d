//! Stage 1 of config loading: YAML (or JSON) text → a generic tree where every node
//! keeps its line and column.
//!
//! We deliberately do not deserialize straight into typed structs with
//! `deny_unknown_fields`: serde stops at the first error, and `portcullis check` must
//! report every error in the file at once. The typed decoding (with unknown-field and
//! type checks) happens in `decode.rs`, walking this tree. The YAML parser is the one
//! serde-saphyr is built on (granit-parser, re-exported by serde-saphyr).

use std::fmt;

use serde_saphyr::granit_parser::{Event, Marker, Parser, ScalarStyle};

/// A position in the config file, 1-based like every editor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: u64,
    pub col: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One YAML node with its position.
#[derive(Clone, Debug)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys keep their own positions so "unknown field" can point at the key.
    Map(Vec<(Key, Node)>),
}

#[derive(Clone, Debug)]
pub struct Key {
    pub pos: Pos,
    pub name: String,
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "an array",
            Value::Map(_) => "a map",
        }
    }
}

/// A YAML syntax error (the only kind of error this stage produces).
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses YAML (JSON is a subset) into a positioned tree.
///
/// Built straight from the YAML parser's events (granit-parser, the parser under
/// serde-saphyr): going through serde's data model with a span per node cost about
/// three times as much, and a 10k-route file must reload in well under 200 ms.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text.trim().is_empty() {
        return Err(SyntaxError {
            pos: Pos { line: 1, col: 1 },
            message: "the file is empty: expected a map with '_format_version'".into(),
        });
    }
    Builder::default().run(text)
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        key: Option<Key>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: std::collections::HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
}

fn marker_pos(m: &Marker) -> Pos {
    Pos {
        line: m.line() as u64,
        col: m.col() as u64 + 1,
    }
}

impl Builder {
    fn run(mut self, text: &str) -> Result<Node, SyntaxError> {
        for ev in Parser::new_from_str(text) {
            let (event, span) = ev.map_err(|e| SyntaxError {
                pos: marker_pos(e.marker()),
                message: e.info(),
            })?;
            let pos = marker_pos(&span.start);
            match event {
                Event::DocumentStart(..) => {
                    self.documents += 1;
                    if self.documents > 1 {
                        return Err(SyntaxError {
                            pos,
                            message: "only one YAML document is allowed (remove the extra '---')"
                                .into(),
                        });
                    }
                }
                Event::Scalar(value, style, anchor, tag) => {
                    let forced_str = tag.as_deref().is_some_and(|t| t.suffix() == "str");
                    let value = if forced_str || !matches!(style, ScalarStyle::Plain) {
                        Value::Str(value.into_owned())
                    } else {
                        plain_scalar(&value)
                    };
                    self.finish(Node { pos, value }, anchor)?;
                }
                Event::Alias(id) => {
                    let node = self.anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
                        pos,
                        message: "unknown alias".into(),
                    })?;
                    // The alias stands where it is written.
                    self.finish(Node { pos, ..node }, 0)?;
                }
                Event::SequenceStart(_, anchor, _) => self.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                }),
                Event::MappingStart(_, anchor, _) => self.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                }),
                Event::SequenceEnd | Event::MappingEnd => {
                    let (node, anchor) = match self.stack.pop() {
                        Some(Frame::Seq {
                            pos,
                            anchor,
                            mut items,
                        }) => (
                            Node {
                                pos,
                                value: Value::Seq({
                                    items.shrink_to_fit();
                                    items
                                }),
                            },
                            anchor,
                        ),
                        Some(Frame::Map {
                            pos,
                            anchor,
                            entries,
                            ..
                        }) => (
                            Node {
                                pos,
                                value: Value::Map({
                                    // Exact size: most maps and sequences are small, and
                                    // grown by pushes they hold up to twice their length.
                                    let mut entries = merge_keys(entries);
                                    entries.shrink_to_fit();
                                    entries
                                }),
                            },
                            anchor,
                        ),
                        None => {
                            return Err(SyntaxError {
                                pos,
                                message: "unbalanced collection end".into(),
                            });
                        }
                    };
                    self.finish(node, anchor)?;
                }
                _ => {}
            }
        }
        self.root.ok_or(SyntaxError {
            pos: Pos { line: 1, col: 1 },
            message: "the file holds no YAML document".into(),
        })
    }

    /// A complete node goes into its parent (or becomes the root).
    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                Ok(())
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Map { entries, key, .. }) => {
                match key.take() {
                    Some(k) => entries.push((k, node)),
                    None => {
                        let name = match node.value {
                            Value::Str(s) => s,
                            Value::Int(i) => i.to_string(),
                            Value::Float(f) => f.to_string(),
                            Value::Bool(b) => b.to_string(),
                            Value::Null => "null".into(),
                            other => {
                                return Err(SyntaxError {
                                    pos: node.pos,
                                    message: format!(
                                        "a map key must be a scalar, found {}",
                                        other.kind()
                                    ),
                                });
                            }
                        };
                        *key = Some(Key {
                            pos: node.pos,
                            name,
                        });
                    }
                }
                Ok(())
            }
        }
    }
}

/// YAML merge keys (`<<: *base`): entries of the merged map(s) that the map does not
/// set itself.
fn merge_keys(entries: Vec<(Key, Node)>) -> Vec<(Key, Node)> {
    if !entries.iter().any(|(k, _)| k.name == "<<") {
        return entries;
    }
    let mut own = Vec::with_capacity(entries.len());
    let mut merged = Vec::new();
    for (k, v) in entries {
        if k.name != "<<" {
            own.push((k, v));
            continue;
        }
        match v.value {
            Value::Map(m) => merged.extend(m),
            Value::Seq(items) => {
                for n in items {
                    if let Value::Map(m) = n.value {
                        merged.extend(m);
                    }
                }
            }
            other => own.push((
                k,
                Node {
                    pos: v.pos,
                    value: other,
                },
            )),
        }
    }
    for (k, v) in merged {
        if !own.iter().any(|(o, _)| o.name == k.name) {
            own.push((k, v));
        }
    }
    own
}

/// YAML 1.2 core schema for plain scalars: null, booleans (true/false only, so a name
/// such as `off` or `n` stays a string), integers, floats; anything else is a string.
fn plain_scalar(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let digits = |x: &[u8]| !x.is_empty() && x.iter().all(u8::is_ascii_digit);
    let b = s.as_bytes();
    let unsigned = b
        .strip_prefix(b"-")
        .or_else(|| b.strip_prefix(b"+"))
        .unwrap_or(b);
    if digits(unsigned) {
        return s
            .parse::<i64>()
            .map_or_else(|_| Value::Str(s.to_string()), Value::Int);
    }
    if let Some(h) = s.strip_prefix("0x")
        && !h.is_empty()
        && h.bytes().all(|c| c.is_ascii_hexdigit())
    {
        return i64::from_str_radix(h, 16).map_or_else(|_| Value::Str(s.to_string()), Value::Int);
    }
    if let Some(o) = s.strip_prefix("0o")
        && !o.is_empty()
        && o.bytes().all(|c| (b'0'..=b'7').contains(&c))
    {
        return i64::from_str_radix(o, 8).map_or_else(|_| Value::Str(s.to_string()), Value::Int);
    }
    // Floats: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
    let (mantissa, exponent) = match unsigned.iter().position(|&c| c == b'e' || c == b'E') {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let mantissa_ok = match mantissa.iter().position(|&c| c == b'.') {
        Some(i) => {
            let (int, frac) = (&mantissa[..i], &mantissa[i + 1..]);
            (int.is_empty() && digits(frac)) || (digits(int) && (frac.is_empty() || digits(frac)))
        }
        None => exponent.is_some() && digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e
            .strip_prefix(b"-")
            .or_else(|| e.strip_prefix(b"+"))
            .unwrap_or(e);
        digits(e)
    });
    if mantissa_ok
        && exponent_ok
        && let Ok(f) = s.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::Str(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_kept() {
        let n =
            parse("_format_version: '3.0'\nservices:\n  - name: a\n    url: http://x\n").unwrap();
        let Value::Map(m) = n.value else { panic!() };
        assert_eq!(m[1].0.name, "services");
        assert_eq!(m[1].0.pos, Pos { line: 2, col: 1 });
        let Value::Seq(s) = &m[1].1.value else {
            panic!()
        };
        let Value::Map(svc) = &s[0].value else {
            panic!()
        };
        assert_eq!(svc[1].0.name, "url");
        assert_eq!(svc[1].0.pos, Pos { line: 4, col: 5 });
        assert_eq!(svc[1].1.pos, Pos { line: 4, col: 10 });
        assert!(matches!(m[0].1.value, Value::Str(ref s) if s == "3.0"));
    }

    fn scalar(text: &str) -> Value {
        let n = parse(&format!("k: {text}\n")).unwrap();
        let Value::Map(mut m) = n.value else { panic!() };
        m.remove(0).1.value
    }

    #[test]
    fn core_schema_scalars() {
        assert!(matches!(scalar("80"), Value::Int(80)));
        assert!(matches!(scalar("-7"), Value::Int(-7)));
        assert!(matches!(scalar("0x1F"), Value::Int(31)));
        assert!(matches!(scalar("2.1"), Value::Float(f) if f == 2.1));
        assert!(matches!(scalar("1e3"), Value::Float(f) if f == 1000.0));
        assert!(matches!(scalar("'2.1'"), Value::Str(ref s) if s == "2.1"));
        assert!(matches!(scalar("true"), Value::Bool(true)));
        assert!(matches!(scalar("off"), Value::Str(ref s) if s == "off"));
        assert!(matches!(scalar("n"), Value::Str(ref s) if s == "n"));
        assert!(matches!(scalar("~"), Value::Null));
        assert!(matches!(scalar(""), Value::Null));
        assert!(matches!(scalar("!!str 80"), Value::Str(ref s) if s == "80"));
        assert!(matches!(scalar("1.2.3"), Value::Str(ref s) if s == "1.2.3"));
        assert!(matches!(scalar("/a/b"), Value::Str(ref s) if s == "/a/b"));
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let n = parse("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\nd: *b\n").unwrap();
        let Value::Map(m) = n.value else { panic!() };
        let Value::Map(c) = &m[1].1.value else {
            panic!()
        };
        let names: Vec<&str> = c.iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(names, ["y", "x"]);
        assert!(matches!(c[0].1.value, Value::Int(3)));
        assert!(matches!(m[2].1.value, Value::Map(_)));
        assert_eq!(m[2].1.pos, Pos { line: 5, col: 4 });
    }

    #[test]
    fn one_document_only() {
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2, "{e:?}");
    }

    #[test]
    fn json_is_accepted() {
        let n = parse("{\"_format_version\": \"3.0\", \"services\": []}").unwrap();
        assert!(matches!(n.value, Value::Map(ref m) if m.len() == 2));
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("a: [1, 2\nb: c\n").unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
    }
}
