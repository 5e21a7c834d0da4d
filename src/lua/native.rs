//! request-transformer templates evaluated without the Lua VM, when every `$( ... )` is
//! in a small subset of Lua whose meaning is fixed: string literals, `nil`, `true`,
//! `false`, `headers.NAME` / `headers["NAME"]`, `query_params.NAME` /
//! `query_params["NAME"]`, `:sub(i [, j])` with integer literals, `..`, `==`, `~=`,
//! `not`, `and`, `or` and parentheses. That covers Supabase's `Authorization` and
//! `apikey` templates, which otherwise cost a VM call, two metamethod calls per
//! lookup and a Lua string per header value on every request.
//!
//! Exactly Lua 5.1's semantics, or nothing: a template outside the subset is not
//! compiled here, and at run time anything whose Lua result is not a plain string,
//! boolean or nil (a repeated header or argument is a table, `..` or `:sub` on
//! a nil is an error, ...) returns [`Fallback`], and the caller renders the same
//! template with Lua. Templates are pure functions of the request (see
//! `Template::may_vary`), so trying here first changes nothing but the cost.

use super::args::{ArgValue, Args};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::borrow::Cow;

/// A template compiled for [`render`](Native::render).
#[derive(Debug)]
pub struct Native {
    pieces: Vec<Piece>,
    reads_headers: bool,
    reads_query: bool,
}

#[derive(Debug)]
enum Piece {
    Text(Vec<u8>),
    Expr(Expr),
}

#[derive(Debug)]
enum Expr {
    Nil,
    Bool(bool),
    Str(Vec<u8>),
    Header(HeaderKey),
    Query(Vec<u8>),
    Sub(Box<Expr>, i64, Option<i64>),
    Concat(Box<Expr>, Box<Expr>),
    Eq(Box<Expr>, Box<Expr>),
    Ne(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// The template needs the Lua VM for this request.
#[derive(Debug, PartialEq, Eq)]
pub struct Fallback;

#[derive(Debug, PartialEq, Eq)]
enum Val<'a> {
    Nil,
    Bool(bool),
    Str(Cow<'a, [u8]>),
}

impl Val<'_> {
    fn truthy(&self) -> bool {
        !matches!(self, Val::Nil | Val::Bool(false))
    }
}

/// What a render reads from the request.
pub struct Input<'a> {
    pub headers: &'a HeaderMap,
    /// The query arguments; needed only when [`Native::reads_query`].
    pub query: Option<&'a Args>,
}

impl Native {
    /// `pieces` as `template::split` cut them: literal text and expression sources.
    /// None when an expression is outside the subset.
    pub fn compile(pieces: &[super::template::Piece<'_>]) -> Option<Native> {
        let mut out = Native {
            pieces: Vec::with_capacity(pieces.len()),
            reads_headers: false,
            reads_query: false,
        };
        for p in pieces {
            match p {
                super::template::Piece::Text(t) => out.pieces.push(Piece::Text(t.to_vec())),
                super::template::Piece::Expr(src) => {
                    let mut p = Parser {
                        toks: lex(src)?,
                        at: 0,
                    };
                    let e = p.expr()?;
                    if p.at != p.toks.len() {
                        return None;
                    }
                    e.visit(&mut |e| match e {
                        Expr::Header(_) => out.reads_headers = true,
                        Expr::Query(_) => out.reads_query = true,
                        _ => {}
                    });
                    out.pieces.push(Piece::Expr(e));
                }
            }
        }
        Some(out)
    }

    pub fn reads_headers(&self) -> bool {
        self.reads_headers
    }

    pub fn reads_query(&self) -> bool {
        self.reads_query
    }

    /// The rendered value, as `tostring((expr) or '')` for each expression.
    pub fn render(&self, input: &Input<'_>) -> Result<Vec<u8>, Fallback> {
        let mut out = Vec::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.extend_from_slice(t),
                Piece::Expr(e) => match e.eval(input)? {
                    Val::Nil | Val::Bool(false) => {}
                    Val::Bool(true) => out.extend_from_slice(b"true"),
                    Val::Str(s) => out.extend_from_slice(&s),
                },
            }
        }
        Ok(out)
    }
}

impl Expr {
    fn visit(&self, f: &mut impl FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Sub(e, _, _) | Expr::Not(e) => e.visit(f),
            Expr::Concat(a, b)
            | Expr::Eq(a, b)
            | Expr::Ne(a, b)
            | Expr::And(a, b)
            | Expr::Or(a, b) => {
                a.visit(f);
                b.visit(f);
            }
            _ => {}
        }
    }

    fn eval<'a>(&'a self, input: &Input<'a>) -> Result<Val<'a>, Fallback> {
        Ok(match self {
            Expr::Nil => Val::Nil,
            Expr::Bool(b) => Val::Bool(*b),
            Expr::Str(s) => Val::Str(Cow::Borrowed(s)),
            Expr::Header(key) => header(input.headers, key)?,
            Expr::Query(name) => {
                let args = input.query.ok_or(Fallback)?;
                match args.get(name).map(Vec::as_slice) {
                    None | Some([]) => Val::Nil,
                    Some([ArgValue::Str(s)]) => Val::Str(Cow::Borrowed(s)),
                    Some([ArgValue::Flag]) => Val::Bool(true),
                    // Repeated: a table in Lua.
                    Some(_) => return Err(Fallback),
                }
            }
            Expr::Sub(e, i, j) => match e.eval(input)? {
                Val::Str(s) => Val::Str(lua_sub(s, *i, j.unwrap_or(-1))),
                _ => return Err(Fallback),
            },
            Expr::Concat(a, b) => match (a.eval(input)?, b.eval(input)?) {
                (Val::Str(a), Val::Str(b)) => {
                    let mut v = Vec::with_capacity(a.len() + b.len());
                    v.extend_from_slice(&a);
                    v.extend_from_slice(&b);
                    Val::Str(Cow::Owned(v))
                }
                _ => return Err(Fallback),
            },
            Expr::Eq(a, b) => Val::Bool(a.eval(input)? == b.eval(input)?),
            Expr::Ne(a, b) => Val::Bool(a.eval(input)? != b.eval(input)?),
            Expr::Not(e) => Val::Bool(!e.eval(input)?.truthy()),
            Expr::And(a, b) => {
                let a = a.eval(input)?;
                if a.truthy() { b.eval(input)? } else { a }
            }
            Expr::Or(a, b) => {
                let a = a.eval(input)?;
                if a.truthy() { a } else { b.eval(input)? }
            }
        })
    }
}

/// A `headers.X` key, resolved at compile time to the names the template environment's
/// view looks up (`pdk::header_view`): the key as written when it is lower case, then
/// the key lower-cased with `_` as `-` when it has upper case or `_`.
#[derive(Debug)]
struct HeaderKey {
    /// The key itself (lower case only); `None`: not tried.
    direct: Option<HeaderName>,
    /// The normalised key, tried when `direct` finds nothing (or is not tried).
    normalized: Option<HeaderName>,
    /// Whether the normalised key is tried at all.
    normalize: bool,
}

impl HeaderKey {
    fn new(key: &[u8]) -> HeaderKey {
        let Ok(key) = std::str::from_utf8(key) else {
            return HeaderKey {
                direct: None,
                normalized: None,
                normalize: false,
            };
        };
        let upper = key.bytes().any(|b| b.is_ascii_uppercase());
        let norm = key.to_ascii_lowercase().replace('_', "-");
        HeaderKey {
            direct: (!upper)
                .then(|| HeaderName::from_bytes(key.as_bytes()).ok())
                .flatten(),
            normalized: HeaderName::from_bytes(norm.as_bytes()).ok(),
            normalize: upper || key.contains('_'),
        }
    }

    fn lookup<'h>(&self, h: &'h HeaderMap) -> Option<http::header::GetAll<'h, HeaderValue>> {
        if let Some(d) = &self.direct {
            let all = h.get_all(d);
            if all.iter().next().is_some() {
                return Some(all);
            }
        }
        if !self.normalize {
            return None;
        }
        self.normalized.as_ref().map(|n| h.get_all(n))
    }
}

/// `headers[name]` as the template environment's view gives it (one value: a string;
/// several: a table, which only Lua can hold).
fn header<'a>(h: &'a HeaderMap, key: &HeaderKey) -> Result<Val<'a>, Fallback> {
    let Some(all) = key.lookup(h) else {
        return Ok(Val::Nil);
    };
    let mut values = all.iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(Val::Nil),
        (Some(one), None) => Ok(Val::Str(Cow::Borrowed(HeaderValue::as_bytes(one)))),
        (Some(_), Some(_)) => Err(Fallback),
    }
}

/// Lua 5.1's `string.sub(s, i, j)`.
fn lua_sub(s: Cow<'_, [u8]>, i: i64, j: i64) -> Cow<'_, [u8]> {
    let len = i64::try_from(s.len()).unwrap_or(i64::MAX);
    let rel = |p: i64| {
        let p = if p < 0 { p.saturating_add(len + 1) } else { p };
        p.max(0)
    };
    let start = rel(i).max(1);
    let end = rel(j).min(len);
    if start > end {
        return Cow::Borrowed(&[]);
    }
    let (a, b) = (
        usize::try_from(start - 1).unwrap_or(0),
        usize::try_from(end).unwrap_or(0),
    );
    match s {
        Cow::Borrowed(s) => Cow::Borrowed(&s[a..b]),
        Cow::Owned(s) => Cow::Owned(s[a..b].to_vec()),
    }
}

// ------------------------------------------------------------------ lexer and parser

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Str(Vec<u8>),
    Int(i64),
    Sym(&'static str),
}

const KEYWORDS: &[&str] = &[
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if", "in", "local",
    "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
];

/// Tokens of the subset; None for anything else (escapes in strings, long strings,
/// comments, non-integer numbers, other operators).
fn lex(src: &str) -> Option<Vec<Tok>> {
    let b = src.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'\'' | b'"' => {
                let end = b[i + 1..].iter().position(|&x| x == c)? + i + 1;
                let body = &b[i + 1..end];
                if body.iter().any(|&x| x == b'\\' || x == b'\n' || x == b'\r') {
                    return None;
                }
                toks.push(Tok::Str(body.to_vec()));
                i = end + 1;
            }
            b'0'..=b'9' => {
                let end = b[i..]
                    .iter()
                    .position(|x| !x.is_ascii_digit())
                    .map_or(b.len(), |p| p + i);
                // `1.5`, `0x10`, `1e3`: not in the subset.
                if b.get(end)
                    .is_some_and(|x| x.is_ascii_alphanumeric() || *x == b'.' || *x == b'_')
                {
                    return None;
                }
                toks.push(Tok::Int(src[i..end].parse().ok()?));
                i = end;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let end = b[i..]
                    .iter()
                    .position(|x| !(x.is_ascii_alphanumeric() || *x == b'_'))
                    .map_or(b.len(), |p| p + i);
                toks.push(Tok::Name(src[i..end].to_string()));
                i = end;
            }
            _ => {
                let rest = &src[i..];
                let sym = ["..", "==", "~=", ".", "(", ")", "[", "]", ":", ",", "-"]
                    .into_iter()
                    .find(|s| rest.starts_with(s))?;
                // `...` (varargs) and `--` (a comment) are not in the subset.
                if (sym == ".." && rest.starts_with("..."))
                    || (sym == "-" && rest.starts_with("--"))
                {
                    return None;
                }
                toks.push(Tok::Sym(sym));
                i += sym.len();
            }
        }
    }
    Some(toks)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn eat_kw(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Name(x)) if x == k) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    // Lua 5.1 precedence, lowest first: or; and; comparison; `..` (right
    // associative); unary `not`.
    fn expr(&mut self) -> Option<Expr> {
        let mut e = self.and()?;
        while self.eat_kw("or") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Some(e)
    }

    fn and(&mut self) -> Option<Expr> {
        let mut e = self.cmp()?;
        while self.eat_kw("and") {
            e = Expr::And(Box::new(e), Box::new(self.cmp()?));
        }
        Some(e)
    }

    fn cmp(&mut self) -> Option<Expr> {
        let mut e = self.concat()?;
        loop {
            if self.eat_sym("==") {
                e = Expr::Eq(Box::new(e), Box::new(self.concat()?));
            } else if self.eat_sym("~=") {
                e = Expr::Ne(Box::new(e), Box::new(self.concat()?));
            } else {
                return Some(e);
            }
        }
    }

    fn concat(&mut self) -> Option<Expr> {
        let e = self.unary()?;
        if self.eat_sym("..") {
            return Some(Expr::Concat(Box::new(e), Box::new(self.concat()?)));
        }
        Some(e)
    }

    fn unary(&mut self) -> Option<Expr> {
        if self.eat_kw("not") {
            return Some(Expr::Not(Box::new(self.unary()?)));
        }
        self.suffixed()
    }

    fn suffixed(&mut self) -> Option<Expr> {
        let mut e = self.primary()?;
        while self.eat_sym(":") {
            if !self.eat_kw("sub") || !self.eat_sym("(") {
                return None;
            }
            let i = self.int()?;
            let j = if self.eat_sym(",") {
                Some(self.int()?)
            } else {
                None
            };
            if !self.eat_sym(")") {
                return None;
            }
            e = Expr::Sub(Box::new(e), i, j);
        }
        Some(e)
    }

    fn int(&mut self) -> Option<i64> {
        let neg = self.eat_sym("-");
        match self.peek() {
            Some(Tok::Int(n)) => {
                let n = *n;
                self.at += 1;
                Some(if neg { -n } else { n })
            }
            _ => None,
        }
    }

    fn primary(&mut self) -> Option<Expr> {
        let tok = self.peek()?.clone();
        self.at += 1;
        match tok {
            Tok::Str(s) => Some(Expr::Str(s)),
            Tok::Sym("(") => {
                let e = self.expr()?;
                self.eat_sym(")").then_some(e)
            }
            Tok::Name(n) => match n.as_str() {
                "nil" => Some(Expr::Nil),
                "true" => Some(Expr::Bool(true)),
                "false" => Some(Expr::Bool(false)),
                "headers" => Some(Expr::Header(HeaderKey::new(&self.field()?))),
                "query_params" => Some(Expr::Query(self.field()?)),
                _ => None,
            },
            _ => None,
        }
    }

    /// `.NAME` or `["NAME"]` after a view.
    fn field(&mut self) -> Option<Vec<u8>> {
        if self.eat_sym(".") {
            match self.peek() {
                Some(Tok::Name(n)) if !KEYWORDS.contains(&n.as_str()) => {
                    let n = n.clone().into_bytes();
                    self.at += 1;
                    Some(n)
                }
                _ => None,
            }
        } else if self.eat_sym("[") {
            let Some(Tok::Str(s)) = self.peek().cloned() else {
                return None;
            };
            self.at += 1;
            self.eat_sym("]").then_some(s)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lua::template::split;

    fn native(src: &str) -> Option<Native> {
        Native::compile(&split(src)?)
    }

    fn render(src: &str, headers: &[(&str, &str)], query: &str) -> Result<String, Fallback> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let args = Args::parse(query.as_bytes());
        let n = native(src).expect("in the subset");
        n.render(&Input {
            headers: &h,
            query: Some(&args),
        })
        .map(|v| String::from_utf8(v).unwrap())
    }

    const SUPABASE: &str = "$((headers.authorization ~= nil and headers.authorization:sub(1, 10) ~= 'Bearer sb_' and headers.authorization) or (headers.apikey == 'sb_secret_x' and 'Bearer svc') or (headers.apikey == 'sb_publishable_x' and 'Bearer anon') or headers.apikey)";

    #[test]
    fn supabase_authorization_template() {
        assert_eq!(render(SUPABASE, &[("apikey", "jwt")], ""), Ok("jwt".into()));
        assert_eq!(
            render(SUPABASE, &[("apikey", "sb_secret_x")], ""),
            Ok("Bearer svc".into())
        );
        assert_eq!(
            render(SUPABASE, &[("apikey", "sb_publishable_x")], ""),
            Ok("Bearer anon".into())
        );
        assert_eq!(
            render(
                SUPABASE,
                &[("authorization", "Bearer user"), ("apikey", "k")],
                ""
            ),
            Ok("Bearer user".into())
        );
        assert_eq!(
            render(
                SUPABASE,
                &[
                    ("authorization", "Bearer sb_publishable_x"),
                    ("apikey", "sb_publishable_x")
                ],
                ""
            ),
            Ok("Bearer anon".into())
        );
        assert_eq!(render(SUPABASE, &[], ""), Ok(String::new()));
        // A repeated header is a table in Lua.
        assert_eq!(
            render(SUPABASE, &[("apikey", "a"), ("apikey", "b")], ""),
            Err(Fallback)
        );
    }

    #[test]
    fn query_and_text() {
        let t = "x=$((query_params.apikey == 'p' and 'j') or query_params.apikey)/y";
        assert_eq!(render(t, &[], "apikey=p"), Ok("x=j/y".into()));
        assert_eq!(render(t, &[], "apikey=q%20r"), Ok("x=q r/y".into()));
        assert_eq!(render(t, &[], ""), Ok("x=/y".into()));
        assert_eq!(render(t, &[], "apikey"), Ok("x=true/y".into()));
        assert_eq!(render(t, &[], "apikey=1&apikey=2"), Err(Fallback));
        assert_eq!(
            render("$(query_params[\"a b\"])", &[], "a+b=1"),
            Ok("1".into())
        );
    }

    #[test]
    fn lua_semantics() {
        assert_eq!(
            render("$(headers.x:sub(2))", &[("x", "abc")], ""),
            Ok("bc".into())
        );
        assert_eq!(
            render("$(headers.x:sub(-2, -1))", &[("x", "abc")], ""),
            Ok("bc".into())
        );
        assert_eq!(
            render("$(headers.x:sub(0, 99))", &[("x", "abc")], ""),
            Ok("abc".into())
        );
        assert_eq!(
            render("$(headers.x:sub(3, 2))", &[("x", "abc")], ""),
            Ok("".into())
        );
        assert_eq!(
            render("$(headers.x:sub(-9, 1))", &[("x", "abc")], ""),
            Ok("a".into())
        );
        // `..` binds tighter than `==`; `and` tighter than `or`.
        assert_eq!(render("$('a' .. 'b' == 'ab')", &[], ""), Ok("true".into()));
        assert_eq!(
            render("$(nil or false and 'x' or 'y')", &[], ""),
            Ok("y".into())
        );
        assert_eq!(render("$(not nil)", &[], ""), Ok("true".into()));
        assert_eq!(render("$(false)", &[], ""), Ok("".into()));
        assert_eq!(render("$(nil == false)", &[], ""), Ok("".into()));
        // Header names as Kong's view reads them.
        assert_eq!(
            render("$(headers.X_Api_Key)", &[("x-api-key", "k")], ""),
            Ok("k".into())
        );
        assert_eq!(
            render("$(headers['x-api-key'])", &[("x-api-key", "k")], ""),
            Ok("k".into())
        );
        // Errors in Lua are Lua's to report.
        assert_eq!(render("$(headers.x:sub(1))", &[], ""), Err(Fallback));
        assert_eq!(render("$(headers.x .. 'a')", &[], ""), Err(Fallback));
    }

    #[test]
    fn outside_the_subset_is_left_to_lua() {
        for src in [
            "$(type(headers.x))",
            "$(shared.x)",
            "$(uri_captures.x)",
            "$(headers)",
            "$(headers.x.y)",
            "$(headers.x:upper())",
            "$('a\\'b')",
            "$([[x]])",
            "$(1 + 2)",
            "$(headers.x == 1)",
            "$('a' -- c\n)",
            "$(headers.x:sub(1.5))",
            "$(headers.end)",
            "$(...)",
        ] {
            assert!(native(src).is_none(), "{src}");
        }
    }
}
