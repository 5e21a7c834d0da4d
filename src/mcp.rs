//! MCP on the wire, as the `mcp-policy` plugin and the response phase read it: the
//! JSON-RPC messages of a POST body (one message, or a batch in the 2025-03-26 era),
//! the 2026-07-28 `Mcp-Method` / `Mcp-Name` headers, the policy rules (exact names and
//! `*`/`?` globs) and the response filter that removes what a client may not use from
//! `tools/list`, `resources/list` and `prompts/list` results, in `application/json`
//! answers and inside `text/event-stream` answers.
//!
//! The SSE filter passes every event through as soon as it is complete and only
//! rewrites the one event that carries a filtered request's result; once every such
//! result has been seen, the rest of the stream is forwarded frame by frame untouched.

use crate::body::{self, Body, BoxError};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The most of a filtered response (an `application/json` list result, or the one SSE
/// event carrying it) the gateway holds in memory.
const RESPONSE_LIMIT: usize = 16 << 20;

/// What a policy names: tools, resources (by URI) and prompts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tool,
    Resource,
    Prompt,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Resource => "resource",
            Kind::Prompt => "prompt",
        }
    }

    /// The array of a list result, and the field naming each entry.
    fn list_field(self) -> (&'static str, &'static str) {
        match self {
            Kind::Tool => ("tools", "name"),
            Kind::Resource => ("resources", "uri"),
            Kind::Prompt => ("prompts", "name"),
        }
    }
}

// ------------------------------------------------------------------ patterns

/// A list of exact names and `*`/`?` globs, compiled at load.
#[derive(Debug, Default, Clone)]
pub struct Patterns {
    exact: HashSet<String>,
    globs: Vec<String>,
}

impl Patterns {
    pub fn new<'a>(items: impl IntoIterator<Item = &'a str>) -> Patterns {
        let mut p = Patterns::default();
        for s in items {
            if s.contains(['*', '?']) {
                p.globs.push(s.to_string());
            } else {
                p.exact.insert(s.to_string());
            }
        }
        p
    }

    pub fn matches(&self, name: &str) -> bool {
        self.exact.contains(name) || self.globs.iter().any(|g| glob(g, name))
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty()
    }
}

/// `*` matches any run of characters (`/` included), `?` exactly one.
pub fn glob(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// One allow or deny block: a list per category; `None` = the block doesn't say.
#[derive(Debug, Default)]
pub struct Rules {
    pub methods: Option<Patterns>,
    pub tools: Option<Patterns>,
    pub resources: Option<Patterns>,
    pub prompts: Option<Patterns>,
}

impl Rules {
    fn list(&self, kind: Kind) -> Option<&Patterns> {
        match kind {
            Kind::Tool => self.tools.as_ref(),
            Kind::Resource => self.resources.as_ref(),
            Kind::Prompt => self.prompts.as_ref(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.methods.is_none()
            && self.tools.is_none()
            && self.resources.is_none()
            && self.prompts.is_none()
    }
}

/// Which categories have an allow list anywhere in the plugin's config (base or any
/// scope set): those are closed except for what the lists in force name.
#[derive(Debug, Default, Clone, Copy)]
pub struct Restricted {
    pub methods: bool,
    pub tools: bool,
    pub resources: bool,
    pub prompts: bool,
}

impl Restricted {
    fn kind(&self, kind: Kind) -> bool {
        match kind {
            Kind::Tool => self.tools,
            Kind::Resource => self.resources,
            Kind::Prompt => self.prompts,
        }
    }
}

/// The rules in force for one request: the base blocks plus those of the scope sets
/// the token unlocks. Cheap to clone (shared blocks), so a response filter owns one.
#[derive(Debug, Clone)]
pub struct Policy {
    pub allow: Vec<Arc<Rules>>,
    pub deny: Vec<Arc<Rules>>,
    pub restricted: Restricted,
}

impl Policy {
    /// `Err(reason)` when the method may not be used.
    pub fn method(&self, method: &str) -> Result<(), String> {
        if self
            .deny
            .iter()
            .any(|r| r.methods.as_ref().is_some_and(|p| p.matches(method)))
        {
            return Err(format!("method '{method}' is denied"));
        }
        if self.restricted.methods
            && !self
                .allow
                .iter()
                .any(|r| r.methods.as_ref().is_some_and(|p| p.matches(method)))
        {
            return Err(format!(
                "method '{method}' is not in an allow list in force"
            ));
        }
        Ok(())
    }

    /// `Err(reason)` when the tool, resource or prompt may not be used.
    pub fn name(&self, kind: Kind, name: &str) -> Result<(), String> {
        let what = kind.label();
        if self
            .deny
            .iter()
            .any(|r| r.list(kind).is_some_and(|p| p.matches(name)))
        {
            return Err(format!("{what} '{name}' is denied"));
        }
        if self.restricted.kind(kind)
            && !self
                .allow
                .iter()
                .any(|r| r.list(kind).is_some_and(|p| p.matches(name)))
        {
            return Err(format!("{what} '{name}' is not in an allow list in force"));
        }
        Ok(())
    }

    pub fn allows(&self, kind: Kind, name: &str) -> bool {
        self.name(kind, name).is_ok()
    }
}

// ------------------------------------------------------------------ requests

/// What the policy reads of one JSON-RPC message (arguments are skipped unparsed).
#[derive(Deserialize)]
struct Message {
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    method: Option<String>,
    params: Option<Params>,
}

/// `Some(v)` for a present id (even `null`), `None` when the field is absent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Params {
    name: Option<Value>,
    uri: Option<Value>,
    #[serde(rename = "ref")]
    reference: Option<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    uri: Option<String>,
}

/// One JSON-RPC message of the request as the policy judged it.
#[derive(Debug, Clone)]
pub struct Call {
    /// `None` for a client's response to a server request (no method).
    pub method: Option<String>,
    /// The tool, resource URI or prompt the method names.
    pub target: Option<(Kind, String)>,
    /// `None` for a notification (or a response).
    pub id: Option<Value>,
    /// `Err(reason)` when refused.
    pub verdict: Result<(), Denial>,
}

/// Why a message was refused, and the JSON-RPC error code the client gets.
#[derive(Debug, Clone)]
pub struct Denial {
    pub code: i64,
    pub message: String,
}

impl Call {
    pub fn allowed(&self) -> bool {
        self.verdict.is_ok()
    }
}

/// The methods whose params name a tool, resource or prompt.
fn target(method: &str, params: Option<&Params>) -> Result<Option<(Kind, String)>, String> {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let (kind, name) = match method {
        "tools/call" => (Kind::Tool, s(params.and_then(|p| p.name.as_ref()))),
        "prompts/get" => (Kind::Prompt, s(params.and_then(|p| p.name.as_ref()))),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            (Kind::Resource, s(params.and_then(|p| p.uri.as_ref())))
        }
        "completion/complete" => {
            let r = params.and_then(|p| p.reference.as_ref());
            match r.and_then(|r| r.kind.as_deref()) {
                Some("ref/prompt") => (Kind::Prompt, r.and_then(|r| r.name.clone())),
                Some("ref/resource") => (Kind::Resource, r.and_then(|r| r.uri.clone())),
                _ => return Err("completion/complete without a prompt or resource ref".into()),
            }
        }
        _ => return Ok(None),
    };
    match name {
        Some(n) => Ok(Some((kind, n))),
        None => Err(format!(
            "{method} without a {} {}",
            kind.label(),
            if kind == Kind::Resource {
                "uri"
            } else {
                "name"
            }
        )),
    }
}

fn judge(policy: &Policy, msg: &Message) -> Call {
    let Some(method) = msg.method.clone() else {
        return Call {
            method: None,
            target: None,
            id: msg.id.clone(),
            verdict: Ok(()),
        };
    };
    let tgt = target(&method, msg.params.as_ref());
    let verdict = match (&tgt, policy.method(&method)) {
        (_, Err(reason)) => Err(Denial {
            code: METHOD_NOT_FOUND,
            message: format!("Refused by the gateway's MCP policy: {reason}"),
        }),
        (Err(e), Ok(())) => Err(Denial {
            code: INVALID_PARAMS,
            message: format!("Refused by the gateway's MCP policy: {e}"),
        }),
        (Ok(Some((kind, name))), Ok(())) => policy.name(*kind, name).map_err(|reason| Denial {
            code: match kind {
                // What servers answer for a resource they don't have.
                Kind::Resource => RESOURCE_NOT_FOUND,
                Kind::Tool | Kind::Prompt => INVALID_PARAMS,
            },
            message: format!("Refused by the gateway's MCP policy: {reason}"),
        }),
        (Ok(None), Ok(())) => Ok(()),
    };
    Call {
        method: Some(method),
        target: tgt.ok().flatten(),
        id: msg.id.clone(),
        verdict,
    }
}

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const RESOURCE_NOT_FOUND: i64 = -32002;
/// 2026-07-28: the `Mcp-Method`/`Mcp-Name` headers disagree with the body.
pub const HEADER_MISMATCH: i64 = -32020;

/// A request body the policy cannot judge, or headers that contradict it.
#[derive(Debug, PartialEq)]
pub struct Malformed {
    pub code: i64,
    pub message: String,
}

/// The judged messages of one POST body.
#[derive(Debug)]
pub struct Judged {
    pub batch: bool,
    pub calls: Vec<Call>,
}

/// Parses and judges a POST body, and checks the 2026-07-28 headers against it.
pub fn judge_body(
    policy: &Policy,
    body: &[u8],
    mcp_method: Option<&str>,
    mcp_name: Option<&str>,
) -> Result<Judged, Malformed> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let (batch, msgs) = match first {
        Some(b'[') => (
            true,
            serde_json::from_slice::<Vec<Message>>(body).map_err(parse_error)?,
        ),
        Some(_) => (
            false,
            vec![serde_json::from_slice::<Message>(body).map_err(parse_error)?],
        ),
        None => {
            return Err(Malformed {
                code: PARSE_ERROR,
                message: "Parse error: empty body".into(),
            });
        }
    };
    if msgs.is_empty() {
        return Err(Malformed {
            code: INVALID_REQUEST,
            message: "Invalid Request: empty batch".into(),
        });
    }
    let calls: Vec<Call> = msgs.iter().map(|m| judge(policy, m)).collect();
    if mcp_method.is_some() || mcp_name.is_some() {
        check_headers(batch, &calls, mcp_method, mcp_name)?;
    }
    Ok(Judged { batch, calls })
}

fn parse_error(e: serde_json::Error) -> Malformed {
    Malformed {
        code: PARSE_ERROR,
        message: format!("Parse error: {e}"),
    }
}

/// 2026-07-28 (Streamable HTTP, "Standard headers"): `Mcp-Method` must equal the
/// body's method and `Mcp-Name` its `params.name` (tools/call, prompts/get) or
/// `params.uri` (resources/read); a mismatch is refused with -32020.
fn check_headers(
    batch: bool,
    calls: &[Call],
    mcp_method: Option<&str>,
    mcp_name: Option<&str>,
) -> Result<(), Malformed> {
    let mismatch = |what: &str| Malformed {
        code: HEADER_MISMATCH,
        message: format!("Header mismatch: {what}"),
    };
    let ([call], false) = (calls, batch) else {
        return Err(mismatch("Mcp-Method/Mcp-Name headers with a batch body"));
    };
    if let Some(h) = mcp_method
        && call.method.as_deref() != Some(h)
    {
        return Err(mismatch(
            "Mcp-Method header does not match the body's method",
        ));
    }
    if let Some(h) = mcp_name {
        let name = decode_header_value(h);
        let body_name = call
            .target
            .as_ref()
            .filter(|(_, _)| {
                matches!(
                    call.method.as_deref(),
                    Some("tools/call" | "prompts/get" | "resources/read")
                )
            })
            .map(|(_, n)| n.as_str());
        if body_name != Some(name.as_str()) {
            return Err(mismatch("Mcp-Name header does not match the body"));
        }
    }
    Ok(())
}

/// `=?base64?…?=` header values (2026-07-28, for names that are not visible ASCII).
pub fn decode_header_value(v: &str) -> String {
    use base64::Engine;
    if let Some(inner) = v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
        && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(inner)
        && let Ok(s) = String::from_utf8(raw)
    {
        return s;
    }
    v.to_string()
}

/// A JSON-RPC error response.
pub fn error_response(id: &Value, code: i64, message: &str) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": code, "message": message }
    })
}

/// The gateway's answer to a body with a refused message: the refused requests get
/// their policy error, the batch's other requests one saying they were not run (the
/// batch is never split); notifications get nothing. `None`: nothing to answer (only
/// notifications and responses), i.e. 202.
pub fn refusal(j: &Judged) -> Option<Value> {
    let mut out: Vec<Value> = Vec::new();
    for c in &j.calls {
        let Some(id) = &c.id else { continue };
        if c.method.is_none() {
            continue;
        }
        out.push(match &c.verdict {
            Err(d) => error_response(id, d.code, &d.message),
            Ok(()) => error_response(
                id,
                INVALID_REQUEST,
                "Not run: another request of this batch was refused by the gateway's MCP policy",
            ),
        });
    }
    match (j.batch, out.len()) {
        (_, 0) => None,
        (false, _) => out.pop(),
        (true, _) => Some(Value::Array(out)),
    }
}

// ------------------------------------------------------------------ responses

/// What the response phase must filter: the ids of the list requests and what they
/// list, under the request's policy.
#[derive(Debug, Clone)]
pub struct ResponseFilter {
    pub targets: Vec<(Value, Kind)>,
    pub policy: Policy,
}

/// Per request: what the policy saw and decided (log, metrics, explain) and what the
/// response phase must filter.
#[derive(Debug, Default)]
pub struct Exchange {
    pub calls: Vec<Call>,
    pub filter: Option<ResponseFilter>,
}

impl Exchange {
    /// The method and name for the access log: the first refused message, else the
    /// first message with a method.
    pub fn summary(&self) -> Option<(&str, Option<&str>, bool)> {
        let c = self
            .calls
            .iter()
            .find(|c| !c.allowed())
            .or_else(|| self.calls.iter().find(|c| c.method.is_some()))?;
        Some((
            c.method.as_deref().unwrap_or(""),
            c.target.as_ref().map(|(_, n)| n.as_str()),
            c.allowed(),
        ))
    }
}

fn mime(h: &HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Wraps a successful upstream response's body so list results are filtered.
/// Other answers (errors, 202, other content types) pass unchanged.
pub fn filter_response(f: ResponseFilter, parts: &mut http::response::Parts, body: Body) -> Body {
    if !parts.status.is_success() || f.targets.is_empty() {
        return body;
    }
    let kind = mime(&parts.headers);
    if kind != "application/json" && kind != "text/event-stream" {
        return body;
    }
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        // Cannot read it, so cannot filter it: never pass an unfiltered list.
        parts.status = http::StatusCode::BAD_GATEWAY;
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let id = f
            .targets
            .first()
            .map(|t| t.0.clone())
            .unwrap_or(Value::Null);
        let v = error_response(
            &id,
            -32603,
            "The gateway's MCP policy cannot filter an encoded list response",
        );
        return body::full(v.to_string());
    }
    // The length changes when entries are removed.
    parts.headers.remove(header::CONTENT_LENGTH);
    if kind == "application/json" {
        let fut = async move {
            let mut body = body;
            let mut buf = BytesMut::new();
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame?.into_data() {
                    if buf.len() + d.len() > RESPONSE_LIMIT {
                        return Err(BoxError::from(
                            "a list answer larger than the MCP policy's filter limit",
                        ));
                    }
                    buf.extend_from_slice(&d);
                }
            }
            Ok(Frame::data(rewrite_json(&f, buf.freeze())))
        };
        return http_body_util::StreamBody::new(futures_util::stream::once(fut)).boxed();
    }
    SseFilter {
        inner: body,
        buf: BytesMut::new(),
        filter: f,
        done: false,
    }
    .boxed()
}

/// Filters a list result in place; `true` when the message was one of the targets.
fn filter_message(f: &ResponseFilter, msg: &mut Value) -> bool {
    let Some(id) = msg.get("id") else {
        return false;
    };
    let Some(kind) = f.targets.iter().find(|(t, _)| t == id).map(|(_, k)| *k) else {
        return false;
    };
    let (field, key) = kind.list_field();
    if let Some(list) = msg
        .get_mut("result")
        .and_then(|r| r.get_mut(field))
        .and_then(Value::as_array_mut)
    {
        list.retain(|entry| {
            entry
                .get(key)
                .and_then(Value::as_str)
                .is_some_and(|n| f.policy.allows(kind, n))
        });
    }
    true
}

/// An `application/json` answer: one message or a batch of them.
fn rewrite_json(f: &ResponseFilter, raw: Bytes) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(&raw) else {
        return raw;
    };
    let hit = match &mut v {
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |acc, m| filter_message(f, m) | acc),
        m => filter_message(f, m),
    };
    if hit { Bytes::from(v.to_string()) } else { raw }
}

/// A `text/event-stream` body: complete events pass as they come; the event whose
/// data is a target's result is rewritten; after the last target, pure passthrough.
struct SseFilter {
    inner: Body,
    /// The incomplete event at the end of what has been read so far.
    buf: BytesMut,
    filter: ResponseFilter,
    done: bool,
}

/// The end of the first complete event in `b` (just past its blank line), if any.
fn event_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut line_start = 0;
    while i < b.len() {
        let eol = match b[i] {
            b'\n' => 1,
            b'\r' if i + 1 < b.len() && b[i + 1] == b'\n' => 2,
            // A lone \r at the end may be the first half of \r\n: wait for more.
            b'\r' if i + 1 == b.len() => return None,
            b'\r' => 1,
            _ => {
                i += 1;
                continue;
            }
        };
        if i == line_start {
            return Some(i + eol);
        }
        i += eol;
        line_start = i;
    }
    None
}

impl SseFilter {
    /// Rewrites `event` if its data is a target's result; else returns it unchanged.
    fn process(&mut self, event: Bytes) -> Bytes {
        let text = String::from_utf8_lossy(&event);
        let mut data = String::new();
        let mut other: Vec<&str> = Vec::new();
        let mut has_data = false;
        for line in text.lines() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            if let Some(d) = line.strip_prefix("data") {
                let d = d.strip_prefix(':').unwrap_or(d);
                let d = d.strip_prefix(' ').unwrap_or(d);
                if has_data {
                    data.push('\n');
                }
                data.push_str(d);
                has_data = true;
            } else {
                other.push(line);
            }
        }
        if !has_data {
            return event;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(&data) else {
            return event;
        };
        if !filter_message(&self.filter, &mut v) {
            return event;
        }
        if let Some(id) = v.get("id") {
            self.filter.targets.retain(|(t, _)| t != id);
        }
        self.done = self.filter.targets.is_empty();
        let nl = if text.contains("\r\n") { "\r\n" } else { "\n" };
        let mut out = String::with_capacity(data.len() + 64);
        for l in other {
            out.push_str(l);
            out.push_str(nl);
        }
        out.push_str("data: ");
        out.push_str(&v.to_string());
        out.push_str(nl);
        out.push_str(nl);
        Bytes::from(out)
    }

    /// The complete events of the buffer, each processed; the rest stays buffered.
    fn drain(&mut self, at_end: bool) -> BytesMut {
        let mut out = BytesMut::new();
        while !self.done {
            match event_end(&self.buf) {
                Some(n) => {
                    let ev = self.buf.split_to(n).freeze();
                    out.extend_from_slice(&self.process(ev));
                }
                None => break,
            }
        }
        if self.done || at_end {
            // Passthrough from here on (or a last unterminated event: as it is,
            // unless it is a target's result).
            let rest = self.buf.split().freeze();
            if !rest.is_empty() {
                let rest = if self.done { rest } else { self.process(rest) };
                out.extend_from_slice(&rest);
            }
        }
        out
    }
}

impl HttpBody for SseFilter {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done && self.buf.is_empty() {
                return Pin::new(&mut self.inner).poll_frame(cx);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) => {
                        if self.buf.len() + d.len() > RESPONSE_LIMIT {
                            return Poll::Ready(Some(Err(
                                "an SSE event larger than the MCP policy's filter limit".into(),
                            )));
                        }
                        self.buf.extend_from_slice(&d);
                        let out = self.drain(false);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                        }
                    }
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    let out = self.drain(true);
                    self.done = true;
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buf.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(tools: &[&str]) -> Arc<Rules> {
        Arc::new(Rules {
            tools: Some(Patterns::new(tools.iter().copied())),
            ..Rules::default()
        })
    }

    fn policy(allow: &[&str], deny: &[&str]) -> Policy {
        Policy {
            allow: vec![rules(allow)],
            deny: vec![rules(deny)],
            restricted: Restricted {
                tools: true,
                ..Restricted::default()
            },
        }
    }

    #[test]
    fn globs() {
        assert!(glob("list_*", "list_tables"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(!glob("a*b*c", "aXbYbZ"));
        assert!(glob("get_?", "get_x"));
        assert!(!glob("get_?", "get_xy"));
        assert!(glob("docs://*", "docs://a/b"));
        assert!(!glob("list_*", "xlist_tables"));
    }

    #[test]
    fn deny_wins_and_categories_close_once_listed() {
        let p = policy(&["list_*", "search_docs"], &["list_secrets"]);
        assert!(p.allows(Kind::Tool, "list_tables"));
        assert!(!p.allows(Kind::Tool, "list_secrets"));
        assert!(!p.allows(Kind::Tool, "execute_sql"));
        // No allow list for resources anywhere: open.
        assert!(p.allows(Kind::Resource, "docs://x"));
        assert!(p.method("tools/call").is_ok());
    }

    #[test]
    fn bodies_batches_and_headers() {
        let p = policy(&["add"], &[]);
        let j = judge_body(
            &p,
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"rm","arguments":{"x":[1,{"y":2}]}}}"#,
            None,
            None,
        )
        .unwrap();
        let r = refusal(&j).unwrap();
        assert_eq!(r["id"], 7);
        assert_eq!(r["error"]["code"], INVALID_PARAMS);
        let j = judge_body(
            &p,
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}},
                {"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"rm"}},
                {"jsonrpc":"2.0","method":"tools/call","params":{"name":"rm"}}]"#,
            None,
            None,
        )
        .unwrap();
        let r = refusal(&j).unwrap();
        assert_eq!(r.as_array().unwrap().len(), 2);
        assert_eq!(r[0]["id"], 1);
        assert_eq!(r[0]["error"]["code"], INVALID_REQUEST);
        assert_eq!(r[1]["id"], "b");
        // A refused notification alone: nothing to answer.
        let j = judge_body(
            &p,
            br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"rm"}}"#,
            None,
            None,
        )
        .unwrap();
        assert!(!j.calls[0].allowed());
        assert!(refusal(&j).is_none());
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}"#;
        assert!(judge_body(&p, body, Some("tools/call"), Some("add")).is_ok());
        let e = judge_body(&p, body, Some("tools/call"), Some("rm")).unwrap_err();
        assert_eq!(e.code, HEADER_MISMATCH);
        let e = judge_body(&p, body, Some("tools/list"), None).unwrap_err();
        assert_eq!(e.code, HEADER_MISMATCH);
        assert!(judge_body(&p, body, None, Some("=?base64?YWRk?=")).is_ok());
        assert_eq!(
            judge_body(&p, b"{", None, None).unwrap_err().code,
            PARSE_ERROR
        );
        assert_eq!(
            judge_body(&p, b"[]", None, None).unwrap_err().code,
            INVALID_REQUEST
        );
    }

    #[test]
    fn sse_event_boundaries() {
        assert_eq!(event_end(b"data: x\n\nrest"), Some(9));
        assert_eq!(event_end(b"data: x\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: x\r\n\r"), None);
        assert_eq!(event_end(b"data: x\n"), None);
        assert_eq!(event_end(b": ping\n\n"), Some(8));
    }

    async fn run_sse(chunks: Vec<&'static [u8]>) -> String {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from_static(c)))),
        );
        let inner = http_body_util::StreamBody::new(stream).boxed();
        let f = SseFilter {
            inner,
            buf: BytesMut::new(),
            filter: ResponseFilter {
                targets: vec![(json!(2), Kind::Tool)],
                policy: policy(&["add"], &[]),
            },
            done: false,
        };
        let out = f.collect().await.unwrap().to_bytes();
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sse_rewrites_only_the_result_event() {
        let out = run_sse(vec![
            b"event: message\r\nid: 1\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\r\n\r\n",
            b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[{\"name\":\"add\"},",
            b"{\"name\":\"rm\"}]}}\r\n\r\n: ping\r\n\r\n",
        ])
        .await;
        assert!(
            out.starts_with("event: message\r\nid: 1\r\ndata: {\"jsonrpc\":\"2.0\",\"method\"")
        );
        assert!(out.contains("\"tools\":[{\"name\":\"add\"}]"), "{out}");
        assert!(!out.contains("rm"), "{out}");
        assert!(out.ends_with(": ping\r\n\r\n"), "{out}");
    }
}
