//! The plugin pipeline: one closed enum, one file per plugin, one dispatch `match`.
//!
//! Unknown plugin names fail at config load (a security plugin silently ignored would
//! be an open door). Each route's chain is resolved at compile time with Kong's
//! precedence (most specific scope wins per plugin name) and sorted by Kong's
//! PRIORITY, so YAML order never changes execution order. Consumer-scoped entries are
//! kept in the chain and chosen at run time, once an auth plugin has identified the
//! consumer (auth plugins run first: they have the highest priorities after cors).

pub mod acl;
pub mod basic_auth;
pub mod cors;
pub mod functions;
pub mod ip_restriction;
pub mod key_auth;
pub mod mcp_origin;
pub mod mcp_policy;
pub mod oauth2_resource;
pub mod rate_limiting;
pub mod request_termination;
pub mod request_transformer;

use crate::body::Body;
use crate::error::{Format, render};
use crate::yaml::raw::{Node, Pos};
use crate::yaml::walk::Ctx;
// The per-request context lives below `plugins` and `lua`, which both use it.
pub use crate::context::{
    AuthState, RequestCtx, ResponseHeaders, UpstreamOverrides, body_field, form_decode,
    remove_body_field, remove_query_arg,
};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

/// A compiled plugin instance (its config validated and pre-built at load).
#[derive(Debug)]
pub enum Plugin {
    Cors(cors::CorsPlugin),
    KeyAuth(key_auth::KeyAuth),
    BasicAuth(basic_auth::BasicAuth),
    IpRestriction(ip_restriction::IpRestriction),
    Acl(acl::Acl),
    RequestTermination(request_termination::RequestTermination),
    RequestTransformer(request_transformer::RequestTransformer),
    PreFunction(functions::Functions),
    PostFunction(functions::Functions),
    McpOrigin(mcp_origin::McpOrigin),
    OAuth2Resource(oauth2_resource::OAuth2Resource),
    RateLimiting(rate_limiting::RateLimiting),
    McpPolicy(mcp_policy::McpPolicy),
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
    /// The plugin needs something fetched before it can decide (oauth2-resource: the
    /// authorization server's keys). The proxy awaits the future on the request's own
    /// task, then runs the same plugin's access phase once more; a second `Wait` is an
    /// internal error. A plugin returns it before changing anything in the request.
    Wait(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>),
}

/// The request headers `header_filter` hooks read (CORS): the proxy keeps these for
/// the response phase instead of a copy of every header.
pub static RESPONSE_PHASE_REQUEST_HEADERS: [HeaderName; 4] = [
    http::header::ORIGIN,
    http::header::ACCESS_CONTROL_REQUEST_METHOD,
    http::header::ACCESS_CONTROL_REQUEST_HEADERS,
    HeaderName::from_static("access-control-request-private-network"),
];

/// Names Portcullis knows but has not implemented: refused at load with this message.
const KNOWN_UNSUPPORTED: &[&str] = &[
    "response-transformer",
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
        "key-auth" => key_auth::decode(config, ctx).map(Plugin::KeyAuth),
        "basic-auth" => basic_auth::decode(config, ctx).map(Plugin::BasicAuth),
        "ip-restriction" => {
            ip_restriction::decode(config, name_pos, ctx).map(Plugin::IpRestriction)
        }
        "acl" => acl::decode(config, name_pos, ctx).map(Plugin::Acl),
        "request-termination" => {
            request_termination::decode(config, name_pos, ctx).map(Plugin::RequestTermination)
        }
        "request-transformer" => {
            request_transformer::decode(config, ctx).map(Plugin::RequestTransformer)
        }
        "pre-function" => {
            functions::decode("pre-function", config, name_pos, ctx).map(Plugin::PreFunction)
        }
        "post-function" => {
            functions::decode("post-function", config, name_pos, ctx).map(Plugin::PostFunction)
        }
        "mcp-origin" => mcp_origin::decode(config, ctx).map(Plugin::McpOrigin),
        "oauth2-resource" => {
            oauth2_resource::decode(config, name_pos, ctx).map(Plugin::OAuth2Resource)
        }
        "rate-limiting" => rate_limiting::decode(config, name_pos, ctx).map(Plugin::RateLimiting),
        "mcp-policy" => mcp_policy::decode(config, name_pos, ctx).map(Plugin::McpPolicy),
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
            Plugin::KeyAuth(_) => "key-auth",
            Plugin::BasicAuth(_) => "basic-auth",
            Plugin::IpRestriction(_) => "ip-restriction",
            Plugin::Acl(_) => "acl",
            Plugin::RequestTermination(_) => "request-termination",
            Plugin::RequestTransformer(_) => "request-transformer",
            Plugin::PreFunction(_) => "pre-function",
            Plugin::PostFunction(_) => "post-function",
            Plugin::McpOrigin(_) => "mcp-origin",
            Plugin::OAuth2Resource(_) => "oauth2-resource",
            Plugin::RateLimiting(_) => "rate-limiting",
            Plugin::McpPolicy(_) => "mcp-policy",
        }
    }

    /// Kong's PRIORITY: higher runs first.
    pub fn priority(&self) -> i32 {
        match self {
            Plugin::Cors(_) => 2000,
            Plugin::KeyAuth(_) => 1250,
            Plugin::BasicAuth(_) => 1100,
            Plugin::IpRestriction(_) => 990,
            Plugin::Acl(_) => 950,
            Plugin::RequestTransformer(_) => 801,
            Plugin::RequestTermination(_) => 2,
            Plugin::PreFunction(_) => 1_000_000,
            Plugin::PostFunction(_) => -1000,
            // Above cors (2000): a disallowed Origin is refused before anything else,
            // its preflight included; below pre-function, as in Kong's ordering.
            Plugin::McpOrigin(_) => 2100,
            // After cors (preflights are answered first), before key-auth (1250) and
            // ip-restriction (990), like Kong's other authentication plugins.
            Plugin::OAuth2Resource(_) => 1300,
            // After the auth plugins and acl (950), before request-transformer (801).
            Plugin::RateLimiting(_) => 910,
            // After authentication (it reads the consumer and the token's scopes) and
            // acl (950); before rate-limiting (910), so refused calls cost no quota, and
            // request-transformer (801), so it judges the client's own body.
            Plugin::McpPolicy(_) => 920,
        }
    }

    /// cors, key-auth, basic-auth, acl and the serverless functions cannot be
    /// consumer-scoped in Kong (`typedefs.no_consumer`).
    pub fn consumer_scopable(&self) -> bool {
        match self {
            Plugin::Cors(_)
            | Plugin::KeyAuth(_)
            | Plugin::BasicAuth(_)
            | Plugin::Acl(_)
            | Plugin::PreFunction(_)
            | Plugin::PostFunction(_)
            | Plugin::McpOrigin(_)
            | Plugin::OAuth2Resource(_) => false,
            Plugin::IpRestriction(_)
            | Plugin::RequestTermination(_)
            | Plugin::RequestTransformer(_)
            | Plugin::RateLimiting(_) => true,
            Plugin::McpPolicy(_) => true,
        }
    }

    /// Whether the access phase needs the request body buffered.
    pub fn needs_body(&self) -> bool {
        match self {
            Plugin::KeyAuth(k) => k.key_in_body,
            Plugin::RequestTransformer(t) => t.needs_body(),
            Plugin::PreFunction(f) | Plugin::PostFunction(f) => f.needs_body(),
            Plugin::McpPolicy(_) => true,
            Plugin::Cors(_)
            | Plugin::BasicAuth(_)
            | Plugin::IpRestriction(_)
            | Plugin::Acl(_)
            | Plugin::RequestTermination(_)
            | Plugin::McpOrigin(_)
            | Plugin::OAuth2Resource(_)
            | Plugin::RateLimiting(_) => false,
        }
    }

    pub fn access(&self, req: &mut RequestCtx<'_>) -> Flow {
        match self {
            Plugin::Cors(p) => p.access(req),
            Plugin::KeyAuth(p) => p.access(req),
            Plugin::BasicAuth(p) => p.access(req),
            Plugin::IpRestriction(p) => p.access(req),
            Plugin::Acl(p) => p.access(req),
            Plugin::RequestTermination(p) => p.access(req),
            Plugin::RequestTransformer(p) => p.access(req),
            Plugin::PreFunction(p) | Plugin::PostFunction(p) => p.access(req),
            Plugin::McpOrigin(p) => p.access(req),
            Plugin::OAuth2Resource(p) => p.access(req),
            Plugin::RateLimiting(p) => p.access(req),
            Plugin::McpPolicy(p) => p.access(req),
        }
    }

    /// Whether `header_filter` does anything (so the request headers must be kept).
    pub fn has_header_filter(&self) -> bool {
        match self {
            Plugin::Cors(_) => true,
            Plugin::KeyAuth(_)
            | Plugin::BasicAuth(_)
            | Plugin::IpRestriction(_)
            | Plugin::Acl(_)
            | Plugin::RequestTermination(_)
            | Plugin::RequestTransformer(_)
            | Plugin::PreFunction(_)
            | Plugin::PostFunction(_)
            | Plugin::McpOrigin(_)
            | Plugin::OAuth2Resource(_)
            | Plugin::RateLimiting(_) => false,
            Plugin::McpPolicy(_) => false,
        }
    }

    /// Response-phase hook, run on every response of a request whose chain holds the
    /// plugin: proxied, upstream errors and the gateway's own answers alike.
    pub fn header_filter(&self, method: &Method, req: &HeaderMap, resp: &mut HeaderMap) {
        match self {
            Plugin::Cors(p) => p.header_filter(method, req, resp),
            Plugin::KeyAuth(_)
            | Plugin::BasicAuth(_)
            | Plugin::IpRestriction(_)
            | Plugin::Acl(_)
            | Plugin::RequestTermination(_)
            | Plugin::RequestTransformer(_)
            | Plugin::PreFunction(_)
            | Plugin::PostFunction(_)
            | Plugin::McpOrigin(_)
            | Plugin::OAuth2Resource(_)
            | Plugin::RateLimiting(_) => {}
            Plugin::McpPolicy(_) => {}
        }
    }

    /// One line for `portcullis explain` when the plugin lets the request through.
    pub fn explain_pass(&self, req: &RequestCtx<'_>) -> String {
        match self {
            Plugin::Cors(_) => "passes (not a preflight); adds CORS headers to the response".into(),
            Plugin::KeyAuth(_) | Plugin::BasicAuth(_) => {
                match (req.auth.consumer, &req.auth.credential) {
                    (Some(c), Some(_)) => format!(
                        "authenticates consumer '{}'",
                        req.consumers
                            .list
                            .get(c)
                            .map(consumer_label)
                            .unwrap_or_default()
                    ),
                    (Some(c), None) => format!(
                        "falls back to the anonymous consumer '{}'",
                        req.consumers
                            .list
                            .get(c)
                            .map(consumer_label)
                            .unwrap_or_default()
                    ),
                    (None, _) => "passes".into(),
                }
            }
            Plugin::IpRestriction(_) => format!("allows {}", req.client_ip),
            Plugin::Acl(_) => "allows the consumer's groups".into(),
            Plugin::RequestTermination(_) => "passes (trigger not present)".into(),
            Plugin::RequestTransformer(t) => t.explain(),
            Plugin::PreFunction(f) | Plugin::PostFunction(f) => f.explain(),
            Plugin::McpOrigin(_) => "allows the Origin (or none was sent)".into(),
            Plugin::OAuth2Resource(p) => p.explain(),
            Plugin::RateLimiting(p) => p.explain(),
            Plugin::McpPolicy(p) => p.explain(req),
        }
    }
}

fn consumer_label(c: &crate::consumers::ConsumerRt) -> String {
    c.username.clone().unwrap_or_else(|| c.id.clone())
}

// ------------------------------------------------------------------ shared auth logic

pub(crate) enum AuthOutcome {
    Ok,
    Fail(StatusCode, &'static str),
}

static X_CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");
static X_CONSUMER_CUSTOM_ID: HeaderName = HeaderName::from_static("x-consumer-custom-id");
static X_CONSUMER_USERNAME: HeaderName = HeaderName::from_static("x-consumer-username");
static X_CREDENTIAL_IDENTIFIER: HeaderName = HeaderName::from_static("x-credential-identifier");
static X_ANONYMOUS_CONSUMER: HeaderName = HeaderName::from_static("x-anonymous-consumer");

/// `name` set to `v`, or removed when there is no value and the client sent one.
fn set_or_clear(h: &mut HeaderMap, name: &HeaderName, v: Option<HeaderValue>, sent: bool) {
    match v {
        Some(v) => {
            h.insert(name.clone(), v);
        }
        None if sent => {
            h.remove(name);
        }
        None => {}
    }
}

/// Kong's `set_consumer`: authenticate, then set the consumer headers upstream and
/// clear every one that has no value, so a client cannot spoof them.
pub(crate) fn set_consumer(
    req: &mut RequestCtx<'_>,
    consumer: Option<usize>,
    credential: Option<String>,
) {
    // Which of them the client sent (most requests: none, and nothing is removed).
    let mut sent = [false; 5];
    for name in req.headers.keys() {
        if let Some(rest) = name.as_str().strip_prefix("x-") {
            match rest {
                "consumer-id" => sent[0] = true,
                "consumer-custom-id" => sent[1] = true,
                "consumer-username" => sent[2] = true,
                "credential-identifier" => sent[3] = true,
                "anonymous-consumer" => sent[4] = true,
                _ => {}
            }
        }
    }
    let c = consumer.and_then(|i| req.consumers.list.get(i));
    let h = &mut *req.headers;
    set_or_clear(
        h,
        &X_CONSUMER_ID,
        c.and_then(|c| c.id_header.clone()),
        sent[0],
    );
    set_or_clear(
        h,
        &X_CONSUMER_CUSTOM_ID,
        c.and_then(|c| c.custom_id_header.clone()),
        sent[1],
    );
    set_or_clear(
        h,
        &X_CONSUMER_USERNAME,
        c.and_then(|c| c.username_header.clone()),
        sent[2],
    );
    set_or_clear(
        h,
        &X_CREDENTIAL_IDENTIFIER,
        credential
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok()),
        sent[3],
    );
    if credential.is_some() {
        if sent[4] {
            h.remove(&X_ANONYMOUS_CONSUMER);
        }
    } else {
        h.insert(
            X_ANONYMOUS_CONSUMER.clone(),
            HeaderValue::from_static("true"),
        );
    }
    req.auth.consumer = consumer;
    req.auth.credential = credential;
}

/// An auth plugin's `realm`, rendered once as its `WWW-Authenticate` value
/// (`<scheme> realm="<realm>"`).
pub(crate) fn decode_realm(
    ctx: &mut Ctx<'_>,
    node: Option<&Node>,
    what: &str,
    scheme: &str,
) -> Option<HeaderValue> {
    let n = node?;
    let realm = ctx.opt_string(Some(n), &format!("{what}.realm"))?;
    match HeaderValue::from_str(&format!("{scheme} realm=\"{realm}\"")) {
        Ok(v) => Some(v),
        Err(_) => {
            ctx.err(n.pos, format!("{what}.realm: invalid characters"));
            None
        }
    }
}

/// Kong's AND/OR of auth plugins, shared by every one of them: with `anonymous` set and
/// a credential already established by an earlier auth plugin, this one is skipped
/// (OR); otherwise it authenticates, and a failure falls back to the anonymous
/// consumer or answers 401 (AND).
pub(crate) fn run_auth(
    req: &mut RequestCtx<'_>,
    anonymous: Option<&str>,
    www_authenticate: &HeaderValue,
    authenticate: impl FnOnce(&mut RequestCtx<'_>) -> AuthOutcome,
) -> Flow {
    if anonymous.is_some() && req.auth.credential.is_some() {
        return Flow::Continue;
    }
    match authenticate(req) {
        AuthOutcome::Ok => Flow::Continue,
        AuthOutcome::Fail(status, msg) => {
            auth_failure(req, anonymous, status, msg, www_authenticate)
        }
    }
}

/// A failed authentication: the anonymous consumer when configured, else the 401.
pub(crate) fn auth_failure(
    req: &mut RequestCtx<'_>,
    anonymous: Option<&str>,
    status: StatusCode,
    msg: &str,
    www_authenticate: &HeaderValue,
) -> Flow {
    let head = req.method == Method::HEAD;
    match anonymous {
        Some(anon) => match req.consumers.by_ref(anon) {
            Some(c) => {
                set_consumer(req, Some(c), None);
                Flow::Continue
            }
            None => Flow::Respond(render(
                Format::from_accept(req.headers),
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("anonymous consumer {anon} is configured but doesn't exist"),
                req.request_id,
                head,
            )),
        },
        None => {
            let mut resp = render(
                Format::from_accept(req.headers),
                status,
                msg,
                req.request_id,
                head,
            );
            resp.headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, www_authenticate.clone());
            Flow::Respond(resp)
        }
    }
}
