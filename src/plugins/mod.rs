//! The plugin pipeline: one closed enum, one file per plugin, one dispatch `match`.
//!
//! Unknown plugin names fail at config load (a security plugin silently ignored would
//! be an open door). Each route's chain is resolved at compile time with Kong's
//! precedence (most specific scope wins per plugin name) and sorted by Kong's
//! PRIORITY, so YAML order never changes execution order.

pub mod cors;
pub mod ip_restriction;
pub mod request_termination;

use crate::body::Body;
use crate::config::raw::{Node, Pos};
use crate::config::walk::Ctx;
use http::{HeaderMap, Method, Response, Uri};
use std::net::IpAddr;

/// A compiled plugin instance (its config validated and pre-built at load).
#[derive(Debug)]
pub enum Plugin {
    Cors(cors::CorsPlugin),
    IpRestriction(ip_restriction::IpRestriction),
    RequestTermination(request_termination::RequestTermination),
}

/// What a plugin's access phase decides.
pub enum Flow {
    Continue,
    Respond(Response<Body>),
    /// request-termination with `echo`: the handler reads the body, then answers.
    Echo {
        status: http::StatusCode,
        message: Option<String>,
    },
}

/// What plugins may read about the request being handled.
pub struct RequestCtx<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// Real client IP (after trusted-proxy processing).
    pub client_ip: IpAddr,
    pub request_id: &'a str,
}

/// Names Portcullis knows but has not implemented: refused at load with this message.
const KNOWN_UNSUPPORTED: &[&str] = &[
    "key-auth",
    "basic-auth",
    "acl",
    "rate-limiting",
    "request-transformer",
    "response-transformer",
    "pre-function",
    "post-function",
    "jwt",
    "oauth2",
    "hmac-auth",
    "ldap-auth",
    "bot-detection",
    "correlation-id",
    "request-size-limiting",
    "response-ratelimiting",
    "syslog",
    "file-log",
    "http-log",
    "tcp-log",
    "udp-log",
    "prometheus",
    "proxy-cache",
    "session",
    "acme",
    "grpc-gateway",
    "grpc-web",
    "aws-lambda",
    "azure-functions",
    "zipkin",
    "opentelemetry",
];

pub fn decode(
    name: &str,
    name_pos: Pos,
    config: Option<&Node>,
    ctx: &mut Ctx<'_>,
) -> Option<Plugin> {
    match name {
        "cors" => cors::decode(config, ctx).map(Plugin::Cors),
        "ip-restriction" => {
            ip_restriction::decode(config, name_pos, ctx).map(Plugin::IpRestriction)
        }
        "request-termination" => {
            request_termination::decode(config, name_pos, ctx).map(Plugin::RequestTermination)
        }
        other if KNOWN_UNSUPPORTED.contains(&other) => {
            ctx.err(
                name_pos,
                format!(
                    "plugin '{other}' is not supported by this version of Portcullis (refusing to load rather than skip it)"
                ),
            );
            None
        }
        other => {
            ctx.err(
                name_pos,
                format!(
                    "plugin '{other}' not enabled; add it to the 'plugins' configuration property"
                ),
            );
            None
        }
    }
}

impl Plugin {
    pub fn name(&self) -> &'static str {
        match self {
            Plugin::Cors(_) => "cors",
            Plugin::IpRestriction(_) => "ip-restriction",
            Plugin::RequestTermination(_) => "request-termination",
        }
    }

    /// Kong's PRIORITY: higher runs first.
    pub fn priority(&self) -> i32 {
        match self {
            Plugin::Cors(_) => 2000,
            Plugin::IpRestriction(_) => 990,
            Plugin::RequestTermination(_) => 2,
        }
    }

    /// cors, key-auth, basic-auth and acl cannot be consumer-scoped in Kong.
    pub fn consumer_scopable(&self) -> bool {
        match self {
            Plugin::Cors(_) => false,
            Plugin::IpRestriction(_) | Plugin::RequestTermination(_) => true,
        }
    }

    pub fn access(&self, req: &RequestCtx<'_>) -> Flow {
        match self {
            Plugin::Cors(p) => p.access(req),
            Plugin::IpRestriction(p) => p.access(req),
            Plugin::RequestTermination(p) => p.access(req),
        }
    }

    /// Whether `header_filter` does anything (so the request headers must be kept).
    pub fn has_header_filter(&self) -> bool {
        match self {
            Plugin::Cors(_) => true,
            Plugin::IpRestriction(_) | Plugin::RequestTermination(_) => false,
        }
    }

    /// Response-phase hook, run on every response of a request whose chain holds the
    /// plugin: proxied, upstream errors and the gateway's own answers alike.
    pub fn header_filter(&self, req: &RequestCtx<'_>, resp: &mut HeaderMap) {
        match self {
            Plugin::Cors(p) => p.header_filter(req, resp),
            Plugin::IpRestriction(_) | Plugin::RequestTermination(_) => {}
        }
    }

    /// One line for `portcullis explain`: what would this plugin do with this request?
    pub fn explain(&self, req: &RequestCtx<'_>) -> String {
        match self.access(req) {
            Flow::Continue => match self {
                Plugin::Cors(_) => {
                    "passes (not a preflight); adds CORS headers to the response".into()
                }
                Plugin::IpRestriction(_) => format!("allows {}", req.client_ip),
                Plugin::RequestTermination(_) => "passes (trigger not present)".into(),
            },
            Flow::Respond(r) => match self {
                Plugin::Cors(_) => format!("answers the preflight {}", r.status()),
                Plugin::IpRestriction(_) => {
                    format!("DENIES {} with {}", req.client_ip, r.status())
                }
                Plugin::RequestTermination(_) => format!("TERMINATES with {}", r.status()),
            },
            Flow::Echo { status, .. } => format!("TERMINATES with {status} (echo)"),
        }
    }
}
