//! `portcullis explain`: what would the gateway do with this request? Prints the
//! normalised path, the winning route and why it beats the other candidates, the
//! plugin chain in execution order with scopes, the upstream URL after strip_path,
//! and which plugin would answer first. Nothing is sent anywhere.

use crate::config::model::Config;
use crate::config::snapshot::Snapshot;
use crate::path;
use crate::plugins::{AuthState, Flow, RequestCtx};
use crate::router::RequestInfo;
use crate::yaml::raw::Pos;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body_util::BodyExt;
use std::fmt::Write;
use std::net::IpAddr;

pub struct Request {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub client_ip: IpAddr,
    /// The request body (`--body`), for plugins that read it (mcp-policy).
    pub body: Option<bytes::Bytes>,
}

/// Parses `-H 'Name: value'` arguments.
pub fn parse_header(h: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = h
        .split_once(':')
        .ok_or_else(|| format!("invalid header '{h}': expected 'Name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("invalid header name in '{h}'"))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("invalid header value in '{h}'"))?;
    Ok((name, value))
}

fn at(file: &str, pos: Pos) -> String {
    format!("{file}:{}:{}", pos.line, pos.col)
}

fn route_label(cfg: &Config, idx: usize) -> String {
    let r = &cfg.routes[idx];
    let svc = r
        .service
        .map(|s| format!(" (service '{}')", cfg.services[s].display_name()))
        .unwrap_or_else(|| " (no service)".into());
    format!("route '{}'{svc}", r.display_name())
}

/// Renders the explanation; async only because plugin answers are bodies to read.
pub async fn explain(snap: &Snapshot, req: &Request) -> String {
    let mut out = String::new();
    let cfg = &snap.config;
    let file = &snap.file;
    let _ = writeln!(out, "request:         {} {}", req.method, req.uri);
    let _ = writeln!(
        out,
        "config:          {file} (sha256 {})",
        &snap.config_hash[..12]
    );
    let _ = writeln!(out, "client ip:       {}", req.client_ip);

    if path::check_nginx_uri(req.uri.path()).is_err() {
        let _ = writeln!(
            out,
            "verdict:         400 Bad request (the path is malformed or climbs above /)"
        );
        return out;
    }
    let normalized = match path::normalize(req.uri.path()) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(out, "verdict:         400 Bad request ({e})");
            return out;
        }
    };
    let escaped = path::escape(&normalized);
    let _ = writeln!(out, "normalised path: {escaped}");

    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or(req.uri.authority().map(|a| a.as_str()));
    let port = req
        .uri
        .port_u16()
        .unwrap_or(if req.uri.scheme_str() == Some("https") {
            8443
        } else {
            8000
        });
    let info = RequestInfo {
        method: req.method.as_str(),
        host,
        listener_port: port,
        path: &normalized,
        headers: &req.headers,
        query: req.uri.query(),
        tls: req.uri.scheme_str() == Some("https"),
        client_ip: Some(req.client_ip),
        client_port: None,
    };
    let candidates = snap.router.candidates(&info);
    let Some(m) = snap.router.find(&info) else {
        let _ = writeln!(out, "matched route:   none");
        let _ = writeln!(
            out,
            "verdict:         404 \"no Route matched with those values\" (deny by default)"
        );
        return out;
    };
    let compiled = &snap.routes[m.route];
    let route = &cfg.routes[compiled.index];
    let _ = writeln!(
        out,
        "matched route:   {} at {}",
        route_label(cfg, compiled.index),
        at(file, route.pos)
    );
    if let Some(best) = candidates.iter().find(|c| c.route == m.route) {
        if let Some(e) = route.expression.as_deref() {
            let _ = writeln!(out, "  matched by:    expression '{e}'");
        } else if let Some(p) = &best.matched_path {
            let kind = if p.starts_with('~') {
                "regex"
            } else {
                "prefix"
            };
            let _ = writeln!(out, "  matched by:    {kind} path '{p}'");
        }
        for other in candidates.iter().filter(|c| c.route != m.route) {
            let _ = writeln!(
                out,
                "  beats:         {} — {}",
                route_label(cfg, snap.routes[other.route].index),
                best.key.why_beats(&other.key)
            );
        }
    }

    // The plugin chain, run for real on a copy of the request (auth plugins establish
    // the consumer, consumer-scoped entries are chosen as the proxy would).
    let mut uri = req.uri.clone();
    let mut headers = req.headers.clone();
    let mut auth = AuthState::default();
    let mut overrides = crate::plugins::UpstreamOverrides::default();
    let mut extensions = http::Extensions::new();
    let mut body = req.body.clone();
    let mut mcp = None;
    let mut ctx = RequestCtx {
        method: &req.method,
        uri: &mut uri,
        headers: &mut headers,
        body: body.as_mut(),
        client_ip: req.client_ip,
        request_id: "explain",
        consumers: &snap.consumers,
        auth: &mut auth,
        captures: &m.captures,
        upstream: &mut overrides,
        service: route.service.map(|s| cfg.services[s].id.as_str()),
        extensions: &mut extensions,
        mcp: &mut mcp,
    };
    let _ = writeln!(out, "plugins (in execution order):");
    if compiled.chain.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    let mut answer: Option<String> = None;
    let mut last: Option<&'static str> = None;
    let mut n = 0;
    for link in compiled.chain.iter() {
        let p = &link.plugin;
        let scope = match link.scope.consumer {
            Some(c) => format!(
                "consumer '{}'",
                cfg.consumers
                    .get(c)
                    .map(|c| c.username.clone().unwrap_or_else(|| c.id.clone()))
                    .unwrap_or_default()
            ),
            None => link.scope.label().to_string(),
        };
        let verdict = if answer.is_some() {
            "not reached".to_string()
        } else if last == Some(p.name()) {
            "not used (a more specific entry applies)".to_string()
        } else if !link.runs_for(ctx.auth.consumer) {
            "not used (the request is not from this consumer)".to_string()
        } else {
            last = Some(p.name());
            match p.access(&mut ctx) {
                Flow::Continue => p.explain_pass(&ctx),
                Flow::Respond(resp) => {
                    let status = resp.status();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                        .unwrap_or_default();
                    let summary = summarize(&body);
                    answer = Some(format!("{} answers {status}{summary}", p.name()));
                    match p.name() {
                        "ip-restriction" => {
                            format!("DENIES {} → {status}{summary}", req.client_ip)
                        }
                        "cors" => format!("answers the preflight → {status}"),
                        _ => format!("ANSWERS → {status}{summary}"),
                    }
                }
                // Explain sends nothing, so keys are never fetched here.
                Flow::Wait(_) if p.name() == "rate-limiting" => {
                    "would count the request in Redis and answer 429 past the limit (explain sends nothing)".to_string()
                }
                Flow::Wait(_) => {
                    "would fetch the authorization server's keys, then check the bearer token (explain fetches nothing)".to_string()
                }
                Flow::Echo { status, .. } => {
                    answer = Some(format!(
                        "{} answers {status} (echo of the request)",
                        p.name()
                    ));
                    format!("ANSWERS → {status} (echo)")
                }
            }
        };
        n += 1;
        let _ = writeln!(
            out,
            "  {}. {:<20} priority {:>5}  {:<8} {}  [{}]",
            n,
            p.name(),
            p.priority(),
            scope,
            verdict,
            at(file, link.pos)
        );
    }

    // Upstream.
    match &compiled.upstream {
        None => {
            let _ = writeln!(out, "upstream:        none (route has no service → 503)");
        }
        Some(up) => {
            let (joined, _) = path::strip_and_join(
                up.path.as_deref(),
                &normalized,
                &escaped,
                m.matched_len,
                route.strip_path,
            );
            // A plugin's set_path (request-transformer replace.uri) replaces the join.
            let mut target = overrides.path.take().unwrap_or(joined);
            if let Some(q) = req.uri.query() {
                target.push('?');
                target.push_str(q);
            }
            let _ = writeln!(
                out,
                "upstream:        {} {}://{}{target}{}",
                req.method,
                up.scheme,
                up.authority,
                if route.strip_path {
                    " (strip_path on)"
                } else {
                    " (strip_path off)"
                }
            );
        }
    }
    let verdict = match (answer, &compiled.upstream) {
        (Some(a), _) => format!("{a}; the request never reaches the upstream"),
        (None, Some(up)) => format!("proxied to service '{}'", up.name),
        (None, None) => "503 \"no Service found with those values\"".into(),
    };
    let _ = writeln!(out, "verdict:         {verdict}");
    out
}

/// A short rendition of a plugin's answer body for one line of output.
fn summarize(body: &str) -> String {
    if body.is_empty() {
        return String::new();
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
            return format!(" \"{m}\"");
        }
        // A JSON-RPC error (mcp-policy), or a batch of them.
        let first = v.as_array().and_then(|a| a.first()).unwrap_or(&v);
        if let Some(e) = first.get("error").filter(|e| e.get("code").is_some()) {
            return format!(
                " JSON-RPC error {} \"{}\"",
                e["code"],
                e["message"].as_str().unwrap_or("")
            );
        }
    }
    let first = body.lines().next().unwrap_or("");
    let short: String = first.chars().take(80).collect();
    format!(" \"{short}\"")
}
