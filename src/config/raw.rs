//! Stage 1 of config loading: YAML (or JSON) text → a generic tree where every node
//! keeps its line and column.
//!
//! We deliberately do not deserialize straight into typed structs with
//! `deny_unknown_fields`: serde stops at the first error, and `portcullis check` must
//! report every error in the file at once. The typed decoding (with unknown-field and
//! type checks) happens in `decode.rs`, walking this tree.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

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

fn pos_of(loc: serde_saphyr::Location) -> Pos {
    Pos {
        line: loc.line(),
        col: loc.column(),
    }
}

/// Parses YAML (JSON is a subset) into a positioned tree.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text.trim().is_empty() {
        return Err(SyntaxError {
            pos: Pos { line: 1, col: 1 },
            message: "the file is empty: expected a map with '_format_version'".into(),
        });
    }
    // YAML 1.2 booleans only: a service named `n` or `off` stays a string. Boolean
    // fields still accept the YAML 1.1 spellings (see walk.rs).
    let options = serde_saphyr::options! { strict_booleans: true };
    match serde_saphyr::from_str_with_options::<Spanned<RawValue>>(text, options) {
        Ok(sp) => Ok(Node {
            pos: pos_of(sp.referenced),
            value: sp.value.0,
        }),
        Err(e) => {
            let pos = e.location().map(pos_of).unwrap_or(Pos { line: 1, col: 1 });
            // The crate's Display renders a multi-line snippet; keep the first line.
            let full = e.to_string();
            let message = full
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid YAML")
                .trim()
                .to_string();
            Err(SyntaxError { pos, message })
        }
    }
}

/// Newtype so we can implement `Deserialize` for the tree's value.
struct RawValue(Value);

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor).map(RawValue)
    }
}

struct SpannedKey(Key);

impl<'de> Deserialize<'de> for SpannedKey {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let sp = Spanned::<KeyText>::deserialize(d)?;
        Ok(SpannedKey(Key {
            pos: pos_of(sp.referenced),
            name: sp.value.0,
        }))
    }
}

/// Map keys are read as text whatever their YAML type (`80: x` is the key "80").
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawValue::deserialize(d)?.0 {
            Value::Str(s) => Ok(KeyText(s)),
            Value::Int(i) => Ok(KeyText(i.to_string())),
            Value::Float(f) => Ok(KeyText(f.to_string())),
            Value::Bool(b) => Ok(KeyText(b.to_string())),
            Value::Null => Ok(KeyText("null".into())),
            other => Err(de::Error::custom(format!(
                "a map key must be a scalar, found {}",
                other.kind()
            ))),
        }
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .or(Ok(Value::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(sp) = seq.next_element::<Spanned<RawValue>>()? {
            out.push(Node {
                pos: pos_of(sp.referenced),
                value: sp.value.0,
            });
        }
        Ok(Value::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(SpannedKey(key)) = map.next_key::<SpannedKey>()? {
            let sp = map.next_value::<Spanned<RawValue>>()?;
            out.push((
                key,
                Node {
                    pos: pos_of(sp.referenced),
                    value: sp.value.0,
                },
            ));
        }
        Ok(Value::Map(out))
    }
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

    #[test]
    fn syntax_error_has_position() {
        let e = parse("a: [1, 2\nb: c\n").unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
    }
}
