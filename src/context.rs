//! The per-request context: the request as plugins and Lua see and change it, who it
//! is (auth), what it imposes on the upstream, and the query/body helpers both use.
//! Below `lua` and `plugins` (both import it; it imports neither).

use crate::consumers::Consumers;
use crate::router::Captures;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};
use std::net::IpAddr;

/// What the listener knows about the connection.
#[derive(Clone, Copy, Debug)]
pub struct Listener {
    pub port: u16,
    pub tls: bool,
}

/// Who the request is, as established by auth plugins.
#[derive(Debug, Default, Clone)]
pub struct AuthState {
    /// Index into `Consumers::list`.
    pub consumer: Option<usize>,
    /// The credential's identifier (key-auth: credential id; basic-auth: username).
    /// None with a consumer = the anonymous consumer.
    pub credential: Option<String>,
    /// The scopes of a bearer token that oauth2-resource accepted (mcp-policy reads them).
    pub scopes: Vec<String>,
}

/// The request as plugins see and change it. Changes to `headers`, `uri` and `body`
/// are what the upstream receives.
pub struct RequestCtx<'a> {
    pub method: &'a Method,
    pub uri: &'a mut Uri,
    pub headers: &'a mut HeaderMap,
    /// The buffered request body, when a plugin of the chain needs to read it.
    pub body: Option<&'a mut Bytes>,
    /// Real client IP (after trusted-proxy processing).
    pub client_ip: IpAddr,
    pub request_id: &'a str,
    pub consumers: &'a Consumers,
    pub auth: &'a mut AuthState,
    /// The route's regex captures (Kong's `uri_captures`).
    pub captures: &'a crate::router::Captures,
    /// Changes to the upstream request that the router would otherwise decide.
    pub upstream: &'a mut UpstreamOverrides,
    /// The matched route's service id (Kong's `kong.router.get_service().id`).
    pub service: Option<&'a str>,
    /// Per-request plugin state (Kong's `ngx.ctx`), e.g. what a `Flow::Wait` fetched;
    /// [`ResponseHeaders`] found here at the end of the access phase go on the response.
    pub extensions: &'a mut http::Extensions,
    /// What mcp-policy judged (log, metrics) and what the response phase must filter.
    pub mcp: &'a mut Option<crate::mcp::Exchange>,
}

/// Headers a plugin sets on the response from the access phase (Kong's
/// `kong.response.set_header`): the proxy adds them to whatever response the request
/// gets, proxied or not.
#[derive(Clone, Debug, Default)]
pub struct ResponseHeaders(pub HeaderMap);

/// What plugins may impose on the upstream request beyond headers, query and body
/// (Kong's `kong.service.request.set_path` / `set_method` / `set_header("Host")`).
#[derive(Debug, Default, Clone)]
pub struct UpstreamOverrides {
    /// The upstream path, already escaped; replaces the strip_path/service path join.
    pub path: Option<String>,
    /// The upstream Host header (wins over preserve_host and the service host).
    pub host: Option<HeaderValue>,
    pub method: Option<Method>,
}

// ------------------------------------------------------------------ query and body helpers

/// application/x-www-form-urlencoded decoding (`+` is a space), bytes in, bytes out.
pub fn form_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(a), Some(b)) => {
                    out.push(a << 4 | b);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The URI without the query argument(s) named `name`; the other arguments keep their
/// order and their exact bytes.
pub fn remove_query_arg(uri: &Uri, name: &str) -> Uri {
    let Some(q) = uri.query() else {
        return uri.clone();
    };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|pair| {
            let k = pair.split('=').next().unwrap_or("");
            form_decode(k.as_bytes()) != name.as_bytes()
        })
        .collect();
    let mut pq = uri.path().to_string();
    if !kept.is_empty() {
        pq.push('?');
        pq.push_str(&kept.join("&"));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = pq.parse().ok().or(parts.path_and_query);
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

fn mime(ctype: &str) -> String {
    ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A string field of a form-urlencoded or JSON body (what key-auth's `key_in_body` reads).
pub fn body_field(ctype: &str, body: &[u8], name: &str) -> Option<String> {
    match mime(ctype).as_str() {
        "application/x-www-form-urlencoded" => {
            let s = std::str::from_utf8(body).ok()?;
            s.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (form_decode(k.as_bytes()) == name.as_bytes())
                    .then(|| String::from_utf8_lossy(&form_decode(v.as_bytes())).into_owned())
            })
        }
        m if m == "application/json" || m.ends_with("+json") => {
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            v.get(name)?.as_str().map(str::to_string)
        }
        _ => None,
    }
}

/// Removes a field from a form-urlencoded or JSON body (hide_credentials).
pub fn remove_body_field(ctype: &str, body: &mut Bytes, name: &str) {
    match mime(ctype).as_str() {
        "application/x-www-form-urlencoded" => {
            let Ok(s) = std::str::from_utf8(body) else {
                return;
            };
            let kept: Vec<&str> = s
                .split('&')
                .filter(|pair| {
                    let k = pair.split('=').next().unwrap_or("");
                    form_decode(k.as_bytes()) != name.as_bytes()
                })
                .collect();
            *body = Bytes::from(kept.join("&"));
        }
        m if m == "application/json" || m.ends_with("+json") => {
            if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body)
                && let Some(obj) = v.as_object_mut()
            {
                obj.remove(name);
                *body = Bytes::from(v.to_string());
            }
        }
        _ => {}
    }
}

/// The route's regex captures as Kong's `uri_captures` JSON.
pub fn captures_json(c: &Captures) -> serde_json::Value {
    let unnamed: Vec<serde_json::Value> = c
        .numbered
        .iter()
        .map(|v| match v {
            Some(s) => serde_json::Value::String(s.clone()),
            None => serde_json::Value::Null,
        })
        .collect();
    let named: serde_json::Map<String, serde_json::Value> = c
        .named
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({ "unnamed": unnamed, "named": named })
}
