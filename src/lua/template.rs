//! request-transformer value templates, as Kong compiles them with Penlight's
//! `pl.template` (escape character disabled): every `$` followed by a balanced
//! `( ... )` group (Lua's `%b()`: parentheses are counted, quotes are not) is a Lua
//! expression whose value is rendered with `tostring(value or '')`, so `nil` and
//! `false` render as the empty string; the rest is literal text. There is no
//! backslash escape: a literal `$(x)` is written `$('$(x)')`, as Kong documents.

use super::native::Native;
use super::{Chunk, compile_chunk};
use std::sync::Arc;

/// A compiled value: literal text needs no Lua at all, and a template within
/// [`Native`]'s subset of Lua is evaluated in Rust first (its chunk is the fallback).
#[derive(Clone, Debug)]
pub enum Template {
    Const(Vec<u8>),
    Lua(Chunk, Option<Arc<Native>>),
}

impl Template {
    /// Parses and compiles `src` (syntax-checked now; each worker thread compiles the
    /// generated Lua once, on first use). `name` labels Lua errors.
    pub fn compile(src: &str, name: &str) -> Result<Template, String> {
        match to_lua(src) {
            None => Ok(Template::Const(src.as_bytes().to_vec())),
            Some(code) => {
                let chunk = compile_chunk(name, code, super::Kind::Template)?;
                let native = split(src).and_then(|p| Native::compile(&p)).map(Arc::new);
                Ok(Template::Lua(chunk, native))
            }
        }
    }

    pub fn is_lua(&self) -> bool {
        matches!(self, Template::Lua(..))
    }

    /// Whether `self` and `other` are one compiled Lua template.
    pub fn same(&self, other: &Template) -> bool {
        match (self, other) {
            (Template::Lua(a, _), Template::Lua(b, _)) => Arc::ptr_eq(&a.0, &b.0),
            _ => false,
        }
    }

    /// Whether rendering it twice on the same request may give two values: only
    /// through `shared` (kong.ctx.shared can hold a pre-function's closures); the
    /// rest of the template environment is read-only data and pure functions.
    pub fn may_vary(&self) -> bool {
        matches!(self, Template::Lua(c, _) if c.reads_shared())
    }
}

/// A piece of a template: literal text or the source of one `$( ... )` expression.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a [u8]),
    Expr(&'a str),
}

/// `src` cut into its pieces, or None when it has no `$( ... )` (a constant).
pub fn split(src: &str) -> Option<Vec<Piece<'_>>> {
    let b = src.as_bytes();
    let mut pieces = Vec::new();
    let mut any_expr = false;
    let mut text_start = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$'
            && b.get(i + 1) == Some(&b'(')
            && let Some(end) = balanced(b, i + 1)
        {
            if text_start < i {
                pieces.push(Piece::Text(&b[text_start..i]));
            }
            // `end` is the index of the closing parenthesis.
            pieces.push(Piece::Expr(&src[i + 2..end]));
            any_expr = true;
            i = end + 1;
            text_start = i;
            continue;
        }
        i += 1;
    }
    if !any_expr {
        return None;
    }
    if text_start < b.len() {
        pieces.push(Piece::Text(&b[text_start..]));
    }
    Some(pieces)
}

/// The Lua chunk for a template, or None when it has no `$( ... )` (a constant).
///
/// The chunk returns the concatenation of the pieces; `__tostring` is the real
/// `tostring`, looked up in the template's environment as Penlight does; `__fresh()`
/// starts the render (header lookups are kept only within one render).
pub fn to_lua(src: &str) -> Option<String> {
    let pieces: Vec<String> = split(src)?
        .into_iter()
        .map(|p| match p {
            Piece::Text(t) => lua_quote(t),
            Piece::Expr(inner) => format!("__tostring(({inner}) or '')"),
        })
        .collect();
    // Everything on the template's first line, so Lua's line numbers are the template's.
    Some(format!(
        "local __tostring = __tostring; __fresh(); return {}",
        pieces.join(" .. ")
    ))
}

/// Lua's `%b()` from the `(` at `open`: the index of the matching `)`.
fn balanced(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (j, &c) in b.iter().enumerate().skip(open) {
        if c == b')' {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return Some(j);
            }
        } else if c == b'(' {
            depth += 1;
        }
    }
    None
}

/// A Lua string literal holding exactly `bytes`.
fn lua_quote(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 2);
    s.push('"');
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            0..=31 | 127 => s.push_str(&format!("\\{c:03}")),
            0..=127 => s.push(char::from(c)),
            _ => {
                // Non-ASCII: copy the whole UTF-8 sequence (the source is a &str).
                let len = utf8_len(c);
                match std::str::from_utf8(&bytes[i..(i + len).min(bytes.len())]) {
                    Ok(ch) => s.push_str(ch),
                    Err(_) => s.push_str(&format!("\\{c:03}")),
                }
                i += len.max(1);
                continue;
            }
        }
        i += 1;
    }
    s.push('"');
    s
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_templates_need_no_lua() {
        assert!(to_lua("Bearer abc").is_none());
        assert!(to_lua("$HOME").is_none());
        assert!(to_lua("$(unbalanced").is_none());
        assert!(to_lua("cost: 5$").is_none());
    }

    #[test]
    fn expressions_and_text() {
        assert_eq!(
            to_lua(" $(headers.x)").unwrap(),
            "local __tostring = __tostring; __fresh(); return \" \" .. __tostring((headers.x) or '')"
        );
        assert_eq!(
            to_lua("/v2/$(uri_captures[\"p\"])/x").unwrap(),
            "local __tostring = __tostring; __fresh(); return \"/v2/\" .. __tostring((uri_captures[\"p\"]) or '') .. \"/x\""
        );
        // Nested parentheses are part of the expression.
        assert_eq!(
            to_lua("$((a and b) or c)").unwrap(),
            "local __tostring = __tostring; __fresh(); return __tostring(((a and b) or c) or '')"
        );
        // `$$(x)`: the first `$` is text.
        assert_eq!(
            to_lua("$$(x)").unwrap(),
            "local __tostring = __tostring; __fresh(); return \"$\" .. __tostring((x) or '')"
        );
        // Kong's documented escape: a string expression.
        assert_eq!(
            to_lua("$('$(x)')").unwrap(),
            "local __tostring = __tostring; __fresh(); return __tostring(('$(x)') or '')"
        );
        assert_eq!(lua_quote("é\"\\\n\t".as_bytes()), "\"é\\\"\\\\\\n\\009\"");
    }
}
