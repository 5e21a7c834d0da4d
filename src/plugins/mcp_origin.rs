//! mcp-origin (PRIORITY 2100): the Origin check every MCP server MUST make against DNS
//! rebinding (MCP transports, all revisions; since 2025-11-25: present and invalid →
//! 403). Supabase Studio's own transport leaves it off, so the gateway does it.
//!
//! - No `Origin` header passes: CLI and desktop clients send none, and a browser
//!   always sends one on the cross-origin requests this check is about.
//! - An `Origin` not in `allowed_origins` → 403, before anything else runs (its
//!   priority is above cors' 2000, so a rebinding page's preflight is refused too, and
//!   no auth plugin or fetch is spent on it).
//! - Entries are `scheme://host[:port]`, compared as RFC 6454 origins (scheme and host
//!   case-insensitive, default ports implied); `:*` accepts any port, as the MCP
//!   Python SDK's `http://127.0.0.1:*`; `null` accepts the opaque origin.

use super::{Flow, RequestCtx};
use crate::error::{Format, render};
use crate::yaml::raw::{Node, Value};
use crate::yaml::walk::Ctx;
use http::StatusCode;

#[derive(Debug)]
pub struct McpOrigin {
    allowed: Vec<Pattern>,
    allow_null: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Port {
    Any,
    Is(u16),
    /// No port written and no default for the scheme.
    None,
}

#[derive(Debug)]
struct Pattern {
    scheme: String,
    host: String,
    port: Port,
}

/// An origin split into lowercase scheme, lowercase host and effective port.
fn split(origin: &str, allow_any_port: bool) -> Result<(String, String, Port), String> {
    let (scheme, rest) = origin
        .split_once("://")
        .ok_or("expected scheme://host[:port]")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Err("invalid scheme".into());
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err("an origin has a host and no path, query or user".into());
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed '[' in the host")?;
        (format!("[{h}]"), after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err("empty host".into());
    }
    let scheme = scheme.to_ascii_lowercase();
    let port = match port {
        Some("*") if allow_any_port => Port::Any,
        Some(p) => Port::Is(p.parse().map_err(|_| format!("invalid port '{p}'"))?),
        None => match scheme.as_str() {
            "http" | "ws" => Port::Is(80),
            "https" | "wss" => Port::Is(443),
            _ => Port::None,
        },
    };
    Ok((scheme, host.to_ascii_lowercase(), port))
}

pub fn decode(config: Option<&Node>, ctx: &mut Ctx<'_>) -> Option<McpOrigin> {
    let what = "plugin 'mcp-origin'.config";
    let mut out = McpOrigin {
        allowed: Vec::new(),
        allow_null: false,
    };
    let Some(config) = config.filter(|c| !matches!(c.value, Value::Null)) else {
        // No list: only requests without an Origin pass.
        return Some(out);
    };
    let mut f = ctx.fields(config, what)?;
    let before = ctx.errors.len();
    for (entry, pos) in ctx.strings(f.get("allowed_origins"), &format!("{what}.allowed_origins")) {
        if entry == "null" {
            out.allow_null = true;
            continue;
        }
        if entry == "*" {
            ctx.err(
                pos,
                format!("{what}.allowed_origins: '*' would switch the check off; list the origins, or remove the plugin"),
            );
            continue;
        }
        match split(&entry, true) {
            Ok((scheme, host, port)) => out.allowed.push(Pattern { scheme, host, port }),
            Err(e) => ctx.err(pos, format!("{what}.allowed_origins: '{entry}': {e}")),
        }
    }
    f.finish(ctx, what);
    (ctx.errors.len() == before).then_some(out)
}

impl McpOrigin {
    pub fn allows(&self, origin: &str) -> bool {
        if origin == "null" {
            return self.allow_null;
        }
        let Ok((scheme, host, port)) = split(origin, false) else {
            return false;
        };
        self.allowed.iter().any(|p| {
            p.scheme == scheme && p.host == host && (p.port == Port::Any || p.port == port)
        })
    }

    pub fn access(&self, req: &mut RequestCtx<'_>) -> Flow {
        let mut values = req.headers.get_all(http::header::ORIGIN).iter();
        let Some(first) = values.next() else {
            return Flow::Continue;
        };
        // Two Origin headers are no browser's doing: refuse rather than pick one.
        let ok = values.next().is_none() && first.to_str().is_ok_and(|o| self.allows(o.trim()));
        if ok {
            return Flow::Continue;
        }
        Flow::Respond(render(
            Format::from_accept(req.headers),
            StatusCode::FORBIDDEN,
            "Origin not allowed",
            req.request_id,
            req.method == http::Method::HEAD,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(list: &[&str]) -> McpOrigin {
        let mut out = McpOrigin {
            allowed: Vec::new(),
            allow_null: false,
        };
        for e in list {
            if *e == "null" {
                out.allow_null = true;
            } else {
                let (scheme, host, port) = split(e, true).unwrap();
                out.allowed.push(Pattern { scheme, host, port });
            }
        }
        out
    }

    #[test]
    fn origin_matching() {
        let p = plugin(&[
            "https://app.example.com",
            "http://127.0.0.1:*",
            "http://[::1]:6274",
            "vscode-webview://abc",
        ]);
        assert!(p.allows("https://app.example.com"));
        assert!(p.allows("HTTPS://App.Example.com:443"));
        assert!(!p.allows("https://app.example.com:8443"));
        assert!(!p.allows("http://app.example.com"));
        assert!(!p.allows("https://app.example.com.evil.test"));
        assert!(p.allows("http://127.0.0.1:6274"));
        assert!(p.allows("http://127.0.0.1"));
        assert!(!p.allows("http://127.0.0.1:*"));
        assert!(p.allows("http://[::1]:6274"));
        assert!(!p.allows("http://[::1]:1"));
        assert!(p.allows("vscode-webview://abc"));
        assert!(!p.allows("null"));
        assert!(!p.allows("https://app.example.com/path"));
        assert!(!p.allows("garbage"));
        assert!(plugin(&["null"]).allows("null"));
    }

    #[test]
    fn bad_entries() {
        assert!(split("app.example.com", true).is_err());
        assert!(split("https://a/b", true).is_err());
        assert!(split("https://a:x", true).is_err());
        assert!(split("https://a:*", false).is_err());
    }
}
