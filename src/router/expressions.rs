//! Expression routes, as Kong 3.x runs them with `router_flavor = expressions`: the route's
//! `expression` is compiled and evaluated by Kong's own engine, the `atc-router` crate (the version
//! Kong 3.10 ships, 1.7.1), against the http schema of `kong/router/fields.lua`.
//!
//! This module owns:
//! - that schema (which fields exist, with their types);
//! - checking one expression as Kong's route schema does (`validate_route` in
//!   `kong/db/schema/entities/routes.lua`): syntax, known fields, operand types, well-formed
//!   `http.path.segments.*` names ([`validate`]);
//! - the compiled set of expression routes and matching a request against it ([`ExprRouter`]): the
//!   per-request ATC context gets exactly the fields the expressions use, computed the way
//!   `fields.lua` computes them.
//!
//! Kong facts reproduced (checked against Kong 3.10 `kong/router/{transform,expressions,atc,fields}.lua`):
//! - an expression route's ATC priority is `EXPRESSION_ONLY_BIT (0xFF << 56) | priority`
//!   (`get_priority`), above the highest traditional priority (3-bit field count << 61), so every
//!   expression route is tried before any paths/hosts/methods/headers route; among them, higher
//!   `priority` first;
//! - `amending_expression`: `net.port` followed by an operator is rewritten to `net.dst.port`; a route
//!   whose protocols are not just `["https"]` gets `&& (net.protocol == "http" || ...)` appended
//!   (`get_expression` in `expressions.lua`); appending is safe without parentheses because `&&` binds
//!   loosest in ATC (`a && b || c` is `a && (b || c)`);
//! - the `http.path` value the matcher recorded (`get_result("http.path")` in `atc.lua`: the right-hand
//!   string of a matching `==`/`^=`/`=^`, or the whole text a `~` regex matched) is the prefix
//!   `strip_path` removes: that many bytes are cut from the start of the path, whatever operator
//!   produced the value. No recorded value (the expression never tested `http.path` successfully):
//!   nothing is stripped;
//! - `uri_captures` are the captures of every regex predicate that matched (path or not), and only when
//!   there is more than group 0.
//!
//! Deliberate differences:
//! - Equal priorities go to file order (Kong: the greater route UUID wins).
//! - A request value Kong's context would refuse (a path, header, host or query value that is not
//!   UTF-8) is left out of the context, so predicates on that field are false. Kong's router errors
//!   and answers 404 for such a request whatever the routes.
//! - `tls.sni` and `net.dst.ip` are in Kong's schema but refused at config time here: the router is
//!   not told the TLS server name or the local address.
//! - When the recorded `http.path` value is not at the start of the path (an unanchored `~`, or
//!   `=^`), the same number of bytes is stripped as in Kong, but `X-Forwarded-Prefix` carries those
//!   first bytes of the path (Kong: the recorded text), because a match is passed on as a length.

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use atc_router::ast::{BinaryOperator, Expression, LogicalExpression, Type, Value};
use atc_router::context::{Context, Match};
use atc_router::interpreter::Execute;
use atc_router::parser::parse;
use atc_router::router::Router as AtcRouter;
use atc_router::schema::Schema;
use atc_router::semantics::{FieldCounter, Validate};
use http::HeaderName;
use uuid::Uuid;

use super::{Captures, Req, RouteMatch, RouteSpec, RouterError};

/// Kong's prefix for every expression error (`validate_route`).
const FAILED: &str = "Router Expression failed validation: ";

/// `HTTP_FIELDS` of `kong/router/fields.lua`.
static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let mut s = Schema::default();
    for f in [
        "net.protocol",
        "tls.sni",
        "http.method",
        "http.host",
        "http.path",
        "http.path.segments.*",
        "http.headers.*",
        "http.queries.*",
    ] {
        s.add_field(f, Type::String);
    }
    for f in ["net.src.port", "net.dst.port", "http.path.segments.len"] {
        s.add_field(f, Type::Int);
    }
    for f in ["net.src.ip", "net.dst.ip"] {
        s.add_field(f, Type::IpAddr);
    }
    s
});

/// `NET_PORT_REG` of `amending_expression` (transform.lua).
static NET_PORT: LazyLock<Option<regex::Regex>> =
    LazyLock::new(|| regex::Regex::new(r"(net\.port)(\s*)([=><!])").ok());

/// Kong reads at most `lua_max_uri_args` (100) query arguments for `http.queries.*`.
const MAX_QUERY_ARGS: usize = 100;

/// `amending_expression`: the deprecated `net.port` is `net.dst.port`.
fn amend_net_port(expr: &str) -> String {
    match NET_PORT.as_ref() {
        Some(re) if expr.contains("net.port") => {
            re.replace_all(expr, "net.dst.port$2$3").into_owned()
        }
        _ => expr.to_string(),
    }
}

/// `get_expression` of `kong/router/expressions.lua`: a route that is not https-only only matches
/// requests of its protocols. Both http and https (the default) always hold here, so nothing is added.
fn with_protocols(expr: String, protocols: &[String]) -> String {
    let http = protocols.is_empty() || protocols.iter().any(|p| p == "http");
    let https = protocols.is_empty() || protocols.iter().any(|p| p == "https");
    if http && !https {
        format!("{expr} && (net.protocol == \"http\")")
    } else {
        expr
    }
}

/// One line out of pest's multi-line error (` --> 1:11 | ... = expected term`), e.g.
/// `expected term at 1:11`; a regex error keeps its first line and its `error:` line.
fn parse_error_summary(text: &str) -> String {
    let mut lines = text.lines().map(str::trim);
    let at = lines
        .clone()
        .find_map(|l| l.strip_prefix("--> "))
        .map(str::to_string);
    let message: Vec<&str> = lines
        .by_ref()
        .skip_while(|l| !l.starts_with("= "))
        .filter(|l| !l.is_empty())
        .collect();
    let message = match message.split_first() {
        Some((first, rest)) => {
            let first = first.trim_start_matches("= ");
            match rest.iter().rev().find_map(|l| l.strip_prefix("error: ")) {
                Some(detail) => format!("{first} {detail}"),
                None => first.to_string(),
            }
        }
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    match at {
        Some(at) => format!("{message} at {at}"),
        None => message,
    }
}

/// The first predicate the engine refuses, with its field name (the engine's own message does not
/// say which predicate it means).
fn first_invalid(e: Expression) -> Option<(String, String)> {
    match e {
        Expression::Logical(l) => match *l {
            LogicalExpression::And(a, b) | LogicalExpression::Or(a, b) => {
                first_invalid(a).or_else(|| first_invalid(b))
            }
            LogicalExpression::Not(a) => first_invalid(a),
        },
        Expression::Predicate(p) => {
            let field = p.lhs.var_name.clone();
            Expression::Predicate(p)
                .validate(&SCHEMA)
                .err()
                .map(|m| (field, m))
        }
    }
}

/// Checks a route's `expression` as Kong's route schema does; the error is Kong's message
/// (`Router Expression failed validation: ...`), on one line, naming the field at fault.
pub fn validate(expr: &str) -> Result<(), String> {
    let amended = amend_net_port(expr);
    let ast =
        parse(&amended).map_err(|e| format!("{FAILED}{}", parse_error_summary(&e.to_string())))?;
    if let Err(message) = ast.validate(&SCHEMA) {
        return Err(match first_invalid(ast) {
            Some((field, m)) => format!("{FAILED}{m} ('{field}')"),
            None => format!("{FAILED}{message}"),
        });
    }
    let mut fields = HashMap::new();
    ast.add_to_counter(&mut fields);
    let mut names: Vec<&String> = fields.keys().collect();
    names.sort();
    for name in names {
        Source::of(name)?;
    }
    Ok(())
}

/// Where the value of a schema field comes from (`FIELDS_FUNCS` and the generated accessors of
/// `fields.lua`).
#[derive(Debug)]
enum Source {
    Method,
    Host,
    Path,
    Protocol,
    SrcIp,
    SrcPort,
    DstPort,
    /// `http.headers.x_api_key` is the header `x-api-key` (ngx's `get_headers()` lookup lower-cases
    /// and turns `_` into `-`); None: not a valid header name, never present.
    Header(Option<HeaderName>),
    Query(Box<str>),
    SegmentsLen,
    Segment(usize),
    /// `http.path.segments.a_b`: segments a..=b joined with `/`.
    SegmentRange(usize, usize),
}

impl Source {
    fn of(field: &str) -> Result<Source, String> {
        Ok(match field {
            "http.method" => Source::Method,
            "http.host" => Source::Host,
            "http.path" => Source::Path,
            "net.protocol" => Source::Protocol,
            "net.src.ip" => Source::SrcIp,
            "net.src.port" => Source::SrcPort,
            "net.dst.port" => Source::DstPort,
            "http.path.segments.len" => Source::SegmentsLen,
            "tls.sni" | "net.dst.ip" => {
                return Err(format!(
                    "{FAILED}field '{field}' is not supported by Portcullis"
                ));
            }
            _ => {
                if let Some(name) = field.strip_prefix("http.headers.") {
                    let name = name.to_ascii_lowercase().replace('_', "-");
                    Source::Header(HeaderName::from_bytes(name.as_bytes()).ok())
                } else if let Some(name) = field.strip_prefix("http.queries.") {
                    Source::Query(name.into())
                } else if let Some(range) = field.strip_prefix("http.path.segments.") {
                    segments_source(range).ok_or_else(|| {
                        format!("{FAILED}illformed http.path.segments.* field ('{field}')")
                    })?
                } else {
                    // The schema let it through, so it is a field this module does not know.
                    return Err(format!(
                        "{FAILED}field '{field}' is not supported by Portcullis"
                    ));
                }
            }
        })
    }
}

/// `HTTP_PATH_SEGMENTS_SUFFIX_REG` (`^(0|[1-9]\d*)(_([1-9]\d*))?$`, and a range must go up).
fn segments_source(range: &str) -> Option<Source> {
    fn index(s: &str, zero_ok: bool) -> Option<usize> {
        if s == "0" {
            return zero_ok.then_some(0);
        }
        if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
    match range.split_once('_') {
        None => index(range, true).map(Source::Segment),
        Some((a, b)) => {
            let (a, b) = (index(a, true)?, index(b, false)?);
            (a < b).then_some(Source::SegmentRange(a, b))
        }
    }
}

/// A field the compiled expressions use, with where its value comes from.
#[derive(Debug)]
struct Field {
    name: String,
    source: Source,
}

/// One expression route, kept parsed for `portcullis explain` (which lists every match, not just the
/// first).
struct ExprRoute {
    route: usize,
    priority: u64,
    ast: Expression,
}

/// The compiled expression routes (only built when there are some).
pub(super) struct ExprRouter {
    engine: AtcRouter<'static>,
    /// Best first: priority descending, then file order.
    routes: Vec<ExprRoute>,
    /// Every field some expression uses, sorted by name.
    fields: Vec<Field>,
    /// When every route has one: the path tests (see [`PathGate`]). A request whose path
    /// passes none of them matches no expression route, and no context is built for it.
    gates: Option<Vec<PathGate>>,
}

/// A test on the path that every match of a route needs: a conjunct `http.path == "…"` or
/// `http.path ^= "…"` of its expression (at the top level, under `&&` only).
#[derive(Debug, PartialEq)]
enum PathGate {
    Exact(String),
    Prefix(String),
}

impl PathGate {
    fn of(e: &Expression) -> Option<PathGate> {
        match e {
            Expression::Logical(l) => match l.as_ref() {
                LogicalExpression::And(a, b) => PathGate::of(a).or_else(|| PathGate::of(b)),
                _ => None,
            },
            Expression::Predicate(p)
                if p.lhs.var_name == "http.path" && p.lhs.transformations.is_empty() =>
            {
                match (&p.op, &p.rhs) {
                    (BinaryOperator::Equals, Value::String(s)) => Some(PathGate::Exact(s.clone())),
                    (BinaryOperator::Prefix, Value::String(s)) => Some(PathGate::Prefix(s.clone())),
                    _ => None,
                }
            }
            Expression::Predicate(_) => None,
        }
    }

    fn admits(&self, path: &str) -> bool {
        match self {
            PathGate::Exact(p) => path == p,
            PathGate::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

impl fmt::Debug for ExprRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExprRouter")
            .field(
                "routes",
                &self
                    .routes
                    .iter()
                    .map(|r| (r.route, r.priority))
                    .collect::<Vec<_>>(),
            )
            .field("fields", &self.fields)
            .finish()
    }
}

/// Matcher ids: the engine tries equal priorities greatest id first, so earlier routes get greater ids.
fn uuid_of(route: usize) -> Uuid {
    Uuid::from_u128(u128::MAX - route as u128)
}

fn route_of(id: Uuid) -> usize {
    usize::try_from(u128::MAX - id.as_u128()).unwrap_or(usize::MAX)
}

impl ExprRouter {
    /// `routes`: (route index, spec) of every route with an `expression`.
    pub(super) fn new(routes: &[(usize, &RouteSpec)]) -> Result<ExprRouter, Vec<RouterError>> {
        let mut engine = AtcRouter::new(&SCHEMA);
        let mut compiled = Vec::with_capacity(routes.len());
        let mut errors = Vec::new();
        let mut error = |route: usize, message: String| {
            errors.push(RouterError {
                route,
                field: "expression",
                index: 0,
                message,
            });
        };
        for &(route, spec) in routes {
            let Some(expr) = spec.expression.as_deref() else {
                continue;
            };
            if let Err(e) = validate(expr) {
                error(route, e);
                continue;
            }
            let full = with_protocols(amend_net_port(expr), &spec.protocols);
            let priority = usize::try_from(spec.priority).unwrap_or(usize::MAX);
            if let Err(e) = engine.add_matcher(priority, uuid_of(route), &full) {
                error(route, format!("{FAILED}{}", parse_error_summary(&e)));
                continue;
            }
            match parse(&full) {
                Ok(ast) => compiled.push(ExprRoute {
                    route,
                    priority: spec.priority,
                    ast,
                }),
                Err(e) => error(
                    route,
                    format!("{FAILED}{}", parse_error_summary(&e.to_string())),
                ),
            }
        }
        let mut names: Vec<&String> = engine.fields.keys().collect();
        names.sort();
        let mut fields = Vec::with_capacity(names.len());
        for name in names {
            match Source::of(name) {
                Ok(source) => fields.push(Field {
                    name: name.clone(),
                    source,
                }),
                // Unreachable: every expression was validated; reported against the first route.
                Err(e) => error(routes.first().map_or(0, |r| r.0), e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        compiled.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.route.cmp(&b.route)));
        let gates = compiled.iter().map(|r| PathGate::of(&r.ast)).collect();
        Ok(ExprRouter {
            engine,
            routes: compiled,
            fields,
            gates,
        })
    }

    /// The best expression route matching the request.
    pub(super) fn find(&self, r: &Req<'_>) -> Option<RouteMatch> {
        if let Some(gates) = &self.gates {
            let path = std::str::from_utf8(r.path).ok()?;
            if !gates.iter().any(|g| g.admits(path)) {
                return None;
            }
        }
        let mut ctx = self.context(r);
        if !self.engine.execute(&mut ctx) {
            return None;
        }
        let m = ctx.result.take()?;
        let route = route_of(m.uuid);
        if !self.routes.iter().any(|x| x.route == route) {
            return None;
        }
        let matched_len = match m.matches.get("http.path") {
            Some(Value::String(s)) => Some(s.len()),
            _ => None,
        };
        Some(RouteMatch {
            route,
            matched_len,
            captures: captures_of(&m),
        })
    }

    /// Every expression route matching the request, best first: (route index, priority).
    pub(super) fn candidates(&self, r: &Req<'_>) -> Vec<(usize, u64)> {
        let mut ctx = self.context(r);
        self.routes
            .iter()
            .filter(|x| x.ast.execute(&mut ctx, &mut Match::new()))
            .map(|x| (x.route, x.priority))
            .collect()
    }

    /// `fill_atc_context`: the values of the fields the expressions use. Every value added has the
    /// schema's type for its field (the engine panics otherwise), and only validated fields are added.
    fn context(&self, r: &Req<'_>) -> Context<'static> {
        let mut ctx = Context::new(&SCHEMA);
        let path = std::str::from_utf8(r.path).ok();
        let mut segments: Option<Vec<&str>> = None;
        let mut queries: Option<Vec<(String, String)>> = None;
        for f in &self.fields {
            let name = f.name.as_str();
            let text = |ctx: &mut Context<'static>, s: &str| {
                ctx.add_value(name, Value::String(s.to_string()));
            };
            match &f.source {
                Source::Method => text(&mut ctx, r.method),
                Source::Host => {
                    if let Some(h) = r.host.and_then(|h| std::str::from_utf8(h).ok()) {
                        text(&mut ctx, h);
                    }
                }
                Source::Path => {
                    if let Some(p) = path {
                        text(&mut ctx, p);
                    }
                }
                Source::Protocol => text(&mut ctx, if r.tls { "https" } else { "http" }),
                Source::SrcIp => {
                    if let Some(ip) = r.client_ip {
                        ctx.add_value(name, Value::IpAddr(ip.to_canonical()));
                    }
                }
                Source::SrcPort => {
                    if let Some(port) = r.client_port {
                        ctx.add_value(name, Value::Int(i64::from(port)));
                    }
                }
                Source::DstPort => {
                    if let Ok(port) = i64::try_from(r.port) {
                        ctx.add_value(name, Value::Int(port));
                    }
                }
                Source::Header(None) => {}
                Source::Header(Some(h)) => {
                    for v in r.headers.get_all(h) {
                        if let Ok(s) = std::str::from_utf8(v.as_bytes()) {
                            text(&mut ctx, s);
                        }
                    }
                }
                Source::Query(key) => {
                    let args = queries.get_or_insert_with(|| parse_query(r.query));
                    for (k, v) in args.iter() {
                        if **k == **key {
                            text(&mut ctx, v);
                        }
                    }
                }
                Source::SegmentsLen => {
                    if let Some(p) = path {
                        let n = segments.get_or_insert_with(|| path_segments(p)).len();
                        ctx.add_value(name, Value::Int(i64::try_from(n).unwrap_or(i64::MAX)));
                    }
                }
                Source::Segment(i) => {
                    if let Some(seg) =
                        path.and_then(|p| segments.get_or_insert_with(|| path_segments(p)).get(*i))
                    {
                        text(&mut ctx, seg);
                    }
                }
                Source::SegmentRange(a, b) => {
                    if let Some(segs) =
                        path.map(|p| segments.get_or_insert_with(|| path_segments(p)))
                        && *b < segs.len()
                    {
                        text(&mut ctx, &segs[*a..=*b].join("/"));
                    }
                }
            }
        }
        ctx
    }
}

/// `get_http_segments`: the path without its leading `/`, split on `/`, trailing empty segments
/// dropped (`/` has none, `/a/b/` has `a`, `b`).
fn path_segments(path: &str) -> Vec<&str> {
    let mut segs: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    while segs.last() == Some(&"") {
        segs.pop();
    }
    segs
}

/// `ngx.req.get_uri_args()` as `http.queries.*` sees it: `&`-separated, `+` and `%XX` decoded in keys
/// and values (a `%` not followed by two hex digits stays), a key without `=` has the value `""`,
/// empty keys are dropped, at most 100 arguments. Arguments that do not decode to UTF-8 are dropped.
fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(q) = query else {
        return out;
    };
    for part in q.split('&') {
        if out.len() == MAX_QUERY_ARGS {
            break;
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let key = unescape(k);
        if key.is_empty() {
            continue;
        }
        if let (Ok(k), Ok(v)) = (String::from_utf8(key), String::from_utf8(unescape(v))) {
            out.push((k, v));
        }
    }
    out
}

/// `ngx_http_lua_unescape_uri` for a URI component: `+` is a space.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push((h << 4) | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Kong's `uri_captures` out of the matcher's captures (`has_capture`: only when there is more than
/// group 0). Named groups are sorted by name (a Lua table has no order).
fn captures_of(m: &Match) -> Captures {
    if m.captures.len() < 2 {
        return Captures::default();
    }
    let mut numbered: Vec<Option<String>> = Vec::new();
    let mut named = Vec::new();
    for (k, v) in &m.captures {
        match k.parse::<usize>() {
            Ok(i) => {
                if numbered.len() <= i {
                    numbered.resize(i + 1, None);
                }
                numbered[i] = Some(v.clone());
            }
            Err(_) => named.push((k.clone(), v.clone())),
        }
    }
    named.sort();
    Captures { numbered, named }
}

/// `parse_query` for the router's tests.
#[cfg(test)]
pub(super) fn tests_parse_query(q: &str) -> Vec<(String, String)> {
    parse_query(Some(q))
}

#[cfg(test)]
mod gate_tests {
    use super::*;

    fn gate(expr: &str) -> Option<PathGate> {
        PathGate::of(&parse(expr).unwrap())
    }

    #[test]
    fn path_gates_only_from_top_level_conjuncts() {
        assert_eq!(
            gate(r#"http.path == "/rest/v1/""#),
            Some(PathGate::Exact("/rest/v1/".into()))
        );
        assert_eq!(
            gate(r#"(http.method == "GET" && http.path ^= "/a") && net.protocol == "http""#),
            Some(PathGate::Prefix("/a".into()))
        );
        // Not a condition every match needs, or not on the path as it is.
        assert_eq!(gate(r#"http.path == "/a" || http.path == "/b""#), None);
        assert_eq!(gate(r#"!(http.path == "/a")"#), None);
        assert_eq!(gate(r#"lower(http.path) == "/a""#), None);
        assert_eq!(gate(r#"http.path ~ "^/a""#), None);
        assert_eq!(gate(r#"http.host == "a""#), None);
        assert!(PathGate::Prefix("/a".into()).admits("/ab"));
        assert!(!PathGate::Exact("/a".into()).admits("/ab"));
    }
}
