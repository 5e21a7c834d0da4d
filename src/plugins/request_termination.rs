//! request-termination (PRIORITY 2): answer with a fixed status and body instead of
//! proxying, optionally only when a trigger header or query argument is present.

use super::{Flow, RequestCtx};
use crate::body;
use crate::error::json_message;
use crate::yaml::raw::{Node, Pos};
use crate::yaml::walk::Ctx;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderName, Response, StatusCode};

#[derive(Debug)]
pub struct RequestTermination {
    pub status: StatusCode,
    pub message: Option<String>,
    pub body: Option<bytes::Bytes>,
    pub content_type: Option<HeaderValue>,
    pub echo: bool,
    pub trigger: Option<HeaderName>,
}

/// Kong's DEFAULT_RESPONSE table of the plugin.
pub fn default_message(status: u16) -> Option<&'static str> {
    Some(match status {
        401 => "Unauthorized",
        404 => "Not found",
        405 => "Method not allowed",
        500 => "An unexpected error occurred",
        502 => "Bad Gateway",
        503 => "Service unavailable",
        _ => return None,
    })
}

pub fn decode(config: Option<&Node>, pos: Pos, ctx: &mut Ctx<'_>) -> Option<RequestTermination> {
    let what = "plugin 'request-termination'.config";
    let mut out = RequestTermination {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: None,
        body: None,
        content_type: None,
        echo: false,
        trigger: None,
    };
    let Some(config) = config else {
        return Some(out);
    };
    if matches!(config.value, crate::yaml::raw::Value::Null) {
        return Some(out);
    }
    let mut f = ctx.fields(config, what)?;
    let before = ctx.errors.len();
    if let Some(n) = f.get("status_code")
        && let Some(s) = ctx.int(n, &format!("{what}.status_code"), 100, 599)
    {
        out.status = StatusCode::from_u16(s as u16).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    }
    out.message = ctx.opt_string(f.get("message"), &format!("{what}.message"));
    out.body = ctx
        .opt_string(f.get("body"), &format!("{what}.body"))
        .map(bytes::Bytes::from);
    if let Some(n) = f.get("content_type")
        && let Some(ct) = ctx.opt_string(Some(n), &format!("{what}.content_type"))
    {
        match HeaderValue::from_str(&ct) {
            Ok(v) => out.content_type = Some(v),
            Err(_) => ctx.err(n.pos, format!("{what}.content_type: invalid header value")),
        }
    }
    out.echo = ctx.opt_bool(f.get("echo"), &format!("{what}.echo"), false);
    if let Some(n) = f.get("trigger")
        && let Some(t) = ctx.opt_string(Some(n), &format!("{what}.trigger"))
    {
        match HeaderName::from_bytes(t.as_bytes()) {
            Ok(h) => out.trigger = Some(h),
            Err(_) => ctx.err(n.pos, format!("{what}.trigger: invalid header name '{t}'")),
        }
    }
    let at = f.pos;
    f.finish(ctx, what);
    if out.message.is_some() && (out.body.is_some() || out.content_type.is_some()) {
        ctx.err(
            at,
            format!("{what}: message cannot be used with content_type or body"),
        );
    }
    if out.content_type.is_some() && out.body.is_none() {
        ctx.err(at, format!("{what}: content_type requires a body"));
    }
    if out.echo && (out.body.is_some() || out.content_type.is_some()) {
        ctx.err(
            at,
            format!("{what}: echo cannot be used with content_type and body"),
        );
    }
    let _ = pos;
    (ctx.errors.len() == before).then_some(out)
}

impl RequestTermination {
    pub fn access(&self, req: &mut RequestCtx<'_>) -> Flow {
        if let Some(t) = &self.trigger
            && !req.headers.contains_key(t)
            && !query_has(req.uri.query(), t.as_str())
        {
            return Flow::Continue;
        }
        if self.echo {
            return Flow::Echo {
                status: self.status,
                message: self.message.clone(),
            };
        }
        let head = req.method == http::Method::HEAD;
        if let Some(b) = &self.body {
            let mut resp = Response::new(if head {
                body::empty()
            } else {
                body::full(b.clone())
            });
            *resp.status_mut() = self.status;
            if let Some(ct) = &self.content_type {
                resp.headers_mut().insert(CONTENT_TYPE, ct.clone());
            }
            resp.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(b.len()));
            return Flow::Respond(resp);
        }
        match self
            .message
            .as_deref()
            .or(default_message(self.status.as_u16()))
        {
            Some(m) => Flow::Respond(json_message(self.status, m, head)),
            None => {
                // `{ message = nil }` is an empty body in Kong's PDK.
                let mut resp = Response::new(body::empty());
                *resp.status_mut() = self.status;
                if self.status != StatusCode::NO_CONTENT {
                    resp.headers_mut()
                        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
                }
                Flow::Respond(resp)
            }
        }
    }
}

/// Whether the query string has an argument named `name` (decoded, case-sensitive,
/// with or without a value), as `kong.request.get_query()[name]` would find it.
pub fn query_has(query: Option<&str>, name: &str) -> bool {
    let Some(q) = query else { return false };
    q.split('&').any(|pair| {
        let key = pair.split('=').next().unwrap_or("");
        key == name || percent_decode(key).as_deref() == Some(name)
    })
}

fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') && !s.contains('+') {
        return None;
    }
    String::from_utf8(super::form_decode(s.as_bytes())).ok()
}

/// `echo`: the request as the gateway saw it, as JSON (Kong's shape).
#[allow(clippy::too_many_arguments)]
pub async fn echo(
    status: StatusCode,
    message: Option<&str>,
    parts: &http::request::Parts,
    raw: Option<bytes::Bytes>,
    listener: crate::context::Listener,
    captures: &crate::router::Captures,
    route: &crate::entities::Route,
    service: Option<&crate::entities::Service>,
) -> Response<crate::body::Body> {
    use serde_json::{Map, Value, json};
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let v = Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(Value::Array(a)) => a.push(v),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, v]);
            }
            None => {
                headers.insert(name.as_str().to_string(), v);
            }
        }
    }
    let mut query = Map::new();
    if let Some(q) = parts.uri.query() {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = match pair.split_once('=') {
                Some((k, v)) => (k, Value::String(percent_decode(v).unwrap_or(v.to_string()))),
                None => (pair, Value::Bool(true)),
            };
            let k = percent_decode(k).unwrap_or(k.to_string());
            match query.get_mut(&k) {
                Some(Value::Array(a)) => a.push(v),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, v]);
                }
                None => {
                    query.insert(k, v);
                }
            }
        }
    }
    let raw_text = raw
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    let is_json = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    let parsed_body = match (&raw, is_json) {
        (Some(b), true) => serde_json::from_slice::<Value>(b).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| h.split(':').next().unwrap_or(h).to_ascii_lowercase())
        .unwrap_or_default();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let doc = json!({
        "message": message.or(default_message(status.as_u16())),
        "kong": {
            "node_id": node_id(),
            "worker_pid": std::process::id(),
            "hostname": hostname,
        },
        "request": {
            "scheme": if listener.tls { "https" } else { "http" },
            "host": host,
            "port": listener.port,
            "headers": headers,
            "query": query,
            "body": parsed_body,
            "raw_body": raw_text,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "uri_captures": crate::context::captures_json(captures),
        },
        "matched_route": {
            "id": route.id,
            "name": route.name,
            "paths": route.paths,
            "hosts": route.hosts,
            "methods": route.methods,
            "strip_path": route.strip_path,
            "preserve_host": route.preserve_host,
        },
        "matched_service": service.map(|s| json!({
            "id": s.id,
            "name": s.name,
            "protocol": s.protocol.as_str(),
            "host": s.host,
            "port": s.port,
            "path": s.path,
        })),
    });
    crate::error::json_body(status, doc.to_string(), parts.method == http::Method::HEAD)
}

fn node_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}
