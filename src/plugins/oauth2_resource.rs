//! oauth2-resource (PRIORITY 1300): the route is an OAuth 2.1 resource server, as the
//! MCP authorization spec asks of an MCP server (beyond Kong OSS, whose `oauth2`
//! plugin is an authorization server of its own).
//!
//! - `GET /.well-known/oauth-protected-resource[/<resource path>]` on a route that
//!   carries the plugin answers the RFC 9728 metadata, built only from the configured
//!   public `resource` URL — never from `Host`/`X-Forwarded-*`, which clients can forge
//!   and which flip http/https behind TLS terminators.
//! - Any other request needs `Authorization: Bearer <JWT>`, verified against the
//!   authorization server's JWKS (`crate::jwks`): asymmetric algorithms only, `iss`
//!   exact, `exp`/`nbf` with a small leeway, `aud` containing one of `audiences`,
//!   `required_scopes` present. Then the client's `Authorization` is removed (MCP
//!   forbids token passthrough) and the subject may be forwarded in a header.
//! - Answers (RFC 6750 §3, RFC 9728 §5.1): no token → 401 with a bare challenge
//!   naming `resource_metadata`; malformed request (two Authorization headers, an
//!   empty or non-token69 bearer, a token in the query) → 400 `invalid_request`; a
//!   token that doesn't verify → 401 `invalid_token`; missing scopes → 403
//!   `insufficient_scope`.
//! - CORS preflights pass untouched (browsers send no credentials on them; the cors
//!   plugin, priority 2000, answers them first).

use super::{Flow, RequestCtx};
use crate::body;
use crate::jwks::{KeyRing, Settings, Source};
use crate::yaml::raw::{Node, Pos, Value};
use crate::yaml::walk::Ctx;
use base64::Engine;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The RFC 9728 well-known path prefix.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// Asymmetric algorithms `jsonwebtoken` verifies. HS* (a shared secret that the
/// resource server would also hold — and alg-confusion bait) and `none` are never
/// accepted; ES512 is not supported by the verifier.
const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

pub struct OAuth2Resource {
    pub resource: String,
    /// The public URL of the metadata document (path-suffixed form).
    pub metadata_url: String,
    /// `WELL_KNOWN` + the resource's path ("" when the resource is a bare origin).
    suffixed_path: String,
    metadata_doc: String,
    pub issuer: String,
    audiences: Vec<String>,
    required_scopes: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    require_client_id: bool,
    allowed_client_ids: Vec<String>,
    subject_header: Option<HeaderName>,
    min_refresh: Duration,
    pub ring: Arc<KeyRing>,
}

impl std::fmt::Debug for OAuth2Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Resource")
            .field("resource", &self.resource)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// The parts of a public http(s) URL this plugin needs.
struct PublicUrl {
    /// scheme://host[:port], scheme and host lowercased.
    origin: String,
    /// The path, "" for a bare origin or "/".
    path: String,
    /// The query, if any (kept as given).
    query: Option<String>,
}

fn public_url(s: &str) -> Result<PublicUrl, String> {
    if s.contains('#') {
        return Err("must not contain a fragment".into());
    }
    let uri: http::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    let scheme = uri
        .scheme_str()
        .map(str::to_ascii_lowercase)
        .filter(|s| s == "http" || s == "https")
        .ok_or("must be an absolute http:// or https:// URL")?;
    let authority = uri.authority().ok_or("must name a host")?;
    if authority.as_str().contains('@') {
        return Err("must not contain user information".into());
    }
    let path = match uri.path() {
        "/" => String::new(),
        p => p.to_string(),
    };
    Ok(PublicUrl {
        origin: format!("{scheme}://{}", authority.as_str().to_ascii_lowercase()),
        path,
        query: uri.query().map(str::to_string),
    })
}

/// RFC 8414 §3.1: the well-known segment goes between the host and the issuer's path.
fn rfc8414_url(issuer: &str) -> Result<String, String> {
    let u = public_url(issuer)?;
    Ok(format!(
        "{}/.well-known/oauth-authorization-server{}",
        u.origin, u.path
    ))
}

fn parse_alg(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") || name.to_ascii_uppercase().starts_with("HS") {
        return Err(format!(
            "'{name}' is refused: only asymmetric algorithms ({}) are accepted",
            alg_names(ASYMMETRIC)
        ));
    }
    name.parse::<Algorithm>()
        .ok()
        .filter(|a| ASYMMETRIC.contains(a))
        .ok_or_else(|| {
            format!(
                "unknown or unsupported algorithm '{name}' (supported: {})",
                alg_names(ASYMMETRIC)
            )
        })
}

fn alg_names(list: &[Algorithm]) -> String {
    list.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn decode(config: Option<&Node>, pos: Pos, ctx: &mut Ctx<'_>) -> Option<OAuth2Resource> {
    let what = "plugin 'oauth2-resource'.config";
    let Some(config) = config.filter(|c| !matches!(c.value, Value::Null)) else {
        ctx.err(pos, format!("{what}: 'resource' and 'issuer' are required"));
        return None;
    };
    let mut f = ctx.fields(config, what)?;
    let before = ctx.errors.len();
    let at = f.pos;

    let required_url = |ctx: &mut Ctx<'_>, f: &mut crate::yaml::walk::Fields<'_>, key: &str| {
        let n = f.get(key);
        match n {
            None => {
                ctx.err(at, format!("{what}.{key}: required field missing"));
                None
            }
            Some(n) => {
                let s = ctx.string(n, &format!("{what}.{key}"))?;
                match public_url(&s) {
                    Ok(u) => Some((s, u, n.pos)),
                    Err(e) => {
                        ctx.err(n.pos, format!("{what}.{key}: '{s}' {e}"));
                        None
                    }
                }
            }
        }
    };
    let resource = required_url(ctx, &mut f, "resource");
    let issuer = required_url(ctx, &mut f, "issuer");
    if let Some((_, u, p)) = &resource
        && u.query.is_some()
    {
        ctx.err(
            *p,
            format!("{what}.resource: must not contain a query (RFC 8707 canonical URI)"),
        );
    }

    let list = |ctx: &mut Ctx<'_>, f: &mut crate::yaml::walk::Fields<'_>, key: &str| {
        f.get(key)
            .map(|n| ctx.strings(Some(n), &format!("{what}.{key}")))
    };
    let authorization_servers = list(ctx, &mut f, "authorization_servers");
    if let Some(list) = &authorization_servers {
        for (s, p) in list {
            if let Err(e) = public_url(s) {
                ctx.err(*p, format!("{what}.authorization_servers: '{s}' {e}"));
            }
        }
    }
    let audiences = list(ctx, &mut f, "audiences");
    if let (Some(a), Some(n)) = (&audiences, f.key_pos("audiences"))
        && a.is_empty()
    {
        ctx.err(n, format!("{what}.audiences: length must be at least 1"));
    }
    let required_scopes = list(ctx, &mut f, "required_scopes").unwrap_or_default();
    for (s, p) in &required_scopes {
        if s.is_empty() || !s.bytes().all(scope_char) {
            ctx.err(
                *p,
                format!("{what}.required_scopes: '{s}' is not a valid scope"),
            );
        }
    }
    let scopes_supported = list(ctx, &mut f, "scopes_supported");
    let mut algorithms = Vec::new();
    match list(ctx, &mut f, "algorithms") {
        None => algorithms.extend_from_slice(ASYMMETRIC),
        Some(l) => {
            for (name, p) in l {
                match parse_alg(&name) {
                    Ok(a) => algorithms.push(a),
                    Err(e) => ctx.err(p, format!("{what}.algorithms: {e}")),
                }
            }
            if algorithms.is_empty() && ctx.errors.len() == before {
                ctx.err(at, format!("{what}.algorithms: length must be at least 1"));
            }
        }
    }
    let leeway = ctx
        .opt_int(f.get("leeway"), &format!("{what}.leeway"), 0, 300)
        .unwrap_or(30) as u64;
    let require_client_id = ctx.opt_bool(
        f.get("require_client_id"),
        &format!("{what}.require_client_id"),
        false,
    );
    let allowed_client_ids = list(ctx, &mut f, "allowed_client_ids").unwrap_or_default();
    let subject_header = match f.get("subject_header") {
        None => None,
        Some(n) => match ctx.opt_string(Some(n), &format!("{what}.subject_header")) {
            None => None,
            Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) if h != header::AUTHORIZATION && h != header::HOST => Some(h),
                _ => {
                    ctx.err(
                        n.pos,
                        format!("{what}.subject_header: '{h}' is not a usable header name"),
                    );
                    None
                }
            },
        },
    };
    let resource_name = ctx.opt_string(f.get("resource_name"), &format!("{what}.resource_name"));
    let resource_documentation = ctx.opt_string(
        f.get("resource_documentation"),
        &format!("{what}.resource_documentation"),
    );
    let url_field = |ctx: &mut Ctx<'_>, f: &mut crate::yaml::walk::Fields<'_>, key: &str| {
        let n = f.get(key)?;
        let s = ctx.opt_string(Some(n), &format!("{what}.{key}"))?;
        match s.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                Some(s)
            }
            _ => {
                ctx.err(
                    n.pos,
                    format!("{what}.{key}: '{s}' must be an absolute http:// or https:// URL"),
                );
                None
            }
        }
    };
    let jwks_uri = url_field(ctx, &mut f, "jwks_uri");
    let discovery_url = url_field(ctx, &mut f, "discovery_url");
    if jwks_uri.is_some() && discovery_url.is_some() {
        ctx.err(
            at,
            format!("{what}: set either 'jwks_uri' or 'discovery_url', not both"),
        );
    }
    let ttl = ctx
        .opt_int(
            f.get("jwks_cache_ttl"),
            &format!("{what}.jwks_cache_ttl"),
            1,
            86_400,
        )
        .unwrap_or(600) as u64;
    let min_refresh = ctx
        .opt_int(
            f.get("jwks_min_refresh_interval"),
            &format!("{what}.jwks_min_refresh_interval"),
            1,
            3_600,
        )
        .unwrap_or(10) as u64;
    if min_refresh > ttl {
        ctx.err(
            at,
            format!(
                "{what}.jwks_min_refresh_interval ({min_refresh}) must not exceed jwks_cache_ttl ({ttl})"
            ),
        );
    }
    f.finish(ctx, what);

    let (Some((_, resource_url, _)), Some((issuer, _, issuer_pos))) = (resource, issuer) else {
        return None;
    };
    let source = match (jwks_uri, discovery_url) {
        (Some(j), _) => Source::Jwks(j),
        (None, Some(d)) => Source::Discovery {
            url: d,
            issuer: issuer.clone(),
        },
        (None, None) => match rfc8414_url(&issuer) {
            Ok(url) => Source::Discovery {
                url,
                issuer: issuer.clone(),
            },
            Err(e) => {
                ctx.err(issuer_pos, format!("{what}.issuer: {e}"));
                return None;
            }
        },
    };
    if ctx.errors.len() != before {
        return None;
    }

    // The canonical resource: lowercase scheme and host, the path as configured.
    let resource = format!("{}{}", resource_url.origin, resource_url.path);
    let suffixed_path = format!("{WELL_KNOWN}{}", resource_url.path);
    let metadata_url = format!("{}{suffixed_path}", resource_url.origin);
    let required_scopes: Vec<String> = required_scopes.into_iter().map(|(s, _)| s).collect();
    let scopes_supported: Vec<String> = match scopes_supported {
        Some(l) => l.into_iter().map(|(s, _)| s).collect(),
        None => required_scopes.clone(),
    };
    let authorization_servers: Vec<String> = match authorization_servers {
        Some(l) if !l.is_empty() => l.into_iter().map(|(s, _)| s).collect(),
        _ => vec![issuer.clone()],
    };
    let mut doc = serde_json::json!({
        "resource": resource,
        "authorization_servers": authorization_servers,
        "bearer_methods_supported": ["header"],
    });
    if !scopes_supported.is_empty() {
        doc["scopes_supported"] = serde_json::json!(scopes_supported);
    }
    if let Some(n) = resource_name {
        doc["resource_name"] = serde_json::json!(n);
    }
    if let Some(d) = resource_documentation {
        doc["resource_documentation"] = serde_json::json!(d);
    }
    let audiences: Vec<String> = match audiences {
        Some(l) => l.into_iter().map(|(s, _)| s).collect(),
        None => vec![resource.clone()],
    };
    let ring = KeyRing::shared(
        source,
        Settings {
            min_interval: Duration::from_secs(min_refresh),
            max_ttl: Duration::from_secs(ttl),
        },
    );
    Some(OAuth2Resource {
        resource,
        metadata_url,
        suffixed_path,
        metadata_doc: doc.to_string(),
        issuer,
        audiences,
        required_scopes,
        algorithms,
        leeway,
        require_client_id,
        allowed_client_ids: allowed_client_ids.into_iter().map(|(s, _)| s).collect(),
        subject_header,
        min_refresh: Duration::from_secs(min_refresh),
        ring,
    })
}

/// RFC 6749 scope-token characters.
fn scope_char(b: u8) -> bool {
    b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b)
}

/// RFC 6750 b64token.
fn b64token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// Why a request is refused.
enum Refusal {
    /// No bearer credentials at all: a bare challenge (RFC 6750 §3.1: no error code).
    NoToken,
    /// 400 invalid_request.
    BadRequest(&'static str),
    /// 401 invalid_token.
    InvalidToken(String),
    /// 403 insufficient_scope.
    InsufficientScope(String),
    /// 503: the keys could not be fetched (the token was not judged).
    KeysUnavailable,
}

impl OAuth2Resource {
    pub fn access(&self, req: &mut RequestCtx<'_>) -> Flow {
        let path = req.uri.path();
        if path.starts_with(WELL_KNOWN) {
            return self.metadata(req, path == WELL_KNOWN || path == self.suffixed_path);
        }
        if is_preflight(req) {
            return Flow::Continue;
        }
        match self.authenticate(req) {
            Ok(Some(wait)) => wait,
            Ok(None) => Flow::Continue,
            Err(r) => Flow::Respond(self.refuse(r, req.method == Method::HEAD)),
        }
    }

    /// `Ok(Some(flow))`: the proxy must await a key fetch first (nothing was changed).
    fn authenticate(&self, req: &mut RequestCtx<'_>) -> Result<Option<Flow>, Refusal> {
        // Owned: the request's headers are changed below once the token checks out.
        let token = bearer(req)?.to_string();
        let (alg, kid) = token_header(&token)?;
        if !self.algorithms.contains(&alg) {
            return Err(Refusal::InvalidToken(format!(
                "algorithm {alg:?} is not accepted"
            )));
        }
        let now = Instant::now();
        let keys = self.ring.keys();
        if !keys.is_loaded() {
            return match self.ring.may_fetch(now) {
                true => Ok(Some(Flow::Wait(self.ring.refresh()))),
                false => Err(Refusal::KeysUnavailable),
            };
        }
        let Some(entry) = keys.find(kid.as_deref(), alg, now) else {
            // A key we have not seen: the server may have rotated. Fetch (rate-limited).
            if self.ring.may_fetch(now) {
                return Ok(Some(Flow::Wait(self.ring.refresh())));
            }
            return Err(Refusal::InvalidToken(match kid {
                Some(_) => "the token's signing key (kid) is unknown".into(),
                None => "the token has no kid and no single key fits it".into(),
            }));
        };
        self.ring.refresh_if_stale(now);
        if !entry.params.fits(alg) || entry.alg.is_some_and(|a| a != alg) {
            return Err(Refusal::InvalidToken(format!(
                "the signing key is not for algorithm {alg:?}"
            )));
        }

        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&self.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &entry.key, &v)
            .map_err(|e| Refusal::InvalidToken(describe(e.kind()).into()))?;
        let claims = data.claims;
        let client_id = claims.get("client_id").and_then(|c| c.as_str());
        if self.require_client_id && client_id.is_none() {
            return Err(Refusal::InvalidToken(
                "the token was not issued to an OAuth client (no client_id)".into(),
            ));
        }
        if !self.allowed_client_ids.is_empty()
            && !client_id.is_some_and(|c| self.allowed_client_ids.iter().any(|a| a == c))
        {
            return Err(Refusal::InvalidToken(
                "the token was issued to a client this resource does not accept".into(),
            ));
        }
        let granted = scopes(&claims);
        let missing: Vec<&str> = self
            .required_scopes
            .iter()
            .filter(|s| !granted.contains(&s.as_str()))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(Refusal::InsufficientScope(format!(
                "missing scope: {}",
                missing.join(" ")
            )));
        }
        let sub = claims.get("sub").and_then(|s| s.as_str()).unwrap_or("");
        // For later plugins (mcp-policy's scope sets).
        req.auth.scopes = granted.iter().map(|s| s.to_string()).collect();

        // No token passthrough: the upstream never sees the client's credentials.
        req.headers.remove(header::AUTHORIZATION);
        if let Some(h) = &self.subject_header {
            req.headers.remove(h);
            if let Ok(v) = HeaderValue::from_str(sub) {
                req.headers.insert(h.clone(), v);
            }
        }
        Ok(None)
    }

    /// The RFC 9728 document, at the root well-known path and the path-suffixed one.
    fn metadata(&self, req: &RequestCtx<'_>, ours: bool) -> Flow {
        let head = *req.method == Method::HEAD;
        if !ours {
            return Flow::Respond(json(
                StatusCode::NOT_FOUND,
                r#"{"error":"not_found","error_description":"no protected resource metadata at this path"}"#.into(),
                head,
            ));
        }
        let mut resp = match *req.method {
            Method::GET | Method::HEAD => {
                let mut r = json(StatusCode::OK, self.metadata_doc.clone(), head);
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=3600"),
                );
                r
            }
            Method::OPTIONS => {
                let mut r = Response::new(body::empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            _ => {
                let mut r = Response::new(body::empty());
                *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                r
            }
        };
        if resp.status() != StatusCode::OK {
            resp.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, OPTIONS"),
            );
        }
        Flow::Respond(resp)
    }

    fn refuse(&self, r: Refusal, head: bool) -> Response<body::Body> {
        let rm = &self.metadata_url;
        let scope = self.required_scopes.join(" ");
        let scope_param = if scope.is_empty() {
            String::new()
        } else {
            format!(", scope=\"{scope}\"")
        };
        let (status, challenge, code, desc) = match r {
            Refusal::NoToken => (
                StatusCode::UNAUTHORIZED,
                format!("Bearer resource_metadata=\"{rm}\"{scope_param}"),
                "invalid_token",
                "Authentication required".to_string(),
            ),
            Refusal::BadRequest(d) => (
                StatusCode::BAD_REQUEST,
                format!(
                    "Bearer error=\"invalid_request\", error_description=\"{d}\", resource_metadata=\"{rm}\""
                ),
                "invalid_request",
                d.to_string(),
            ),
            Refusal::InvalidToken(d) => (
                StatusCode::UNAUTHORIZED,
                format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\", resource_metadata=\"{rm}\"{scope_param}",
                    quoted(&d)
                ),
                "invalid_token",
                d,
            ),
            Refusal::InsufficientScope(d) => (
                StatusCode::FORBIDDEN,
                format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{scope}\", resource_metadata=\"{rm}\", error_description=\"{}\"",
                    quoted(&d)
                ),
                "insufficient_scope",
                d,
            ),
            Refusal::KeysUnavailable => {
                let mut r = json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({
                        "error": "temporarily_unavailable",
                        "error_description": "the authorization server's signing keys could not be fetched",
                    })
                    .to_string(),
                    head,
                );
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(self.min_refresh.as_secs().max(1)),
                );
                return r;
            }
        };
        let body = serde_json::json!({ "error": code, "error_description": desc }).to_string();
        let mut resp = json(status, body, head);
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    pub fn explain(&self) -> String {
        format!(
            "accepts the bearer token (issuer {}); removes Authorization before proxying",
            self.issuer
        )
    }
}

fn is_preflight(req: &RequestCtx<'_>) -> bool {
    *req.method == Method::OPTIONS
        && req.headers.contains_key(header::ORIGIN)
        && req
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The one bearer token of the request.
fn bearer<'r>(req: &'r RequestCtx<'_>) -> Result<&'r str, Refusal> {
    use super::key_auth::{QueryHit, query_values};
    // MCP: tokens only in the Authorization header, never in the URI (they leak into
    // logs and histories).
    if !matches!(
        query_values(req.uri.query(), "access_token"),
        QueryHit::None
    ) {
        return Err(Refusal::BadRequest(
            "access tokens are not accepted in the query string",
        ));
    }
    let mut values = req.headers.get_all(header::AUTHORIZATION).iter();
    let Some(first) = values.next() else {
        return Err(Refusal::NoToken);
    };
    if values.next().is_some() {
        return Err(Refusal::BadRequest("more than one Authorization header"));
    }
    let Ok(s) = first.to_str() else {
        return Err(Refusal::BadRequest("malformed Authorization header"));
    };
    let s = s.trim();
    let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, an apikey...): to this resource, no credentials.
        return Err(Refusal::NoToken);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(Refusal::BadRequest("empty bearer token"));
    }
    if !b64token(token) {
        return Err(Refusal::BadRequest("malformed bearer token"));
    }
    Ok(token)
}

/// The JOSE header's `alg` and `kid`, checked before any key is looked up (so `none`
/// and HS* are refused by name, never tried).
fn token_header(token: &str) -> Result<(Algorithm, Option<String>), Refusal> {
    let malformed = || Refusal::InvalidToken("malformed token: not a signed JWT".into());
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| malformed())?;
    let v: serde_json::Value = serde_json::from_slice(&raw).map_err(|_| malformed())?;
    let alg = v
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or_else(malformed)?;
    if v.get("crit").is_some() {
        return Err(Refusal::InvalidToken(
            "the token has critical header parameters this resource does not understand".into(),
        ));
    }
    let alg = parse_alg(alg).map_err(|_| {
        Refusal::InvalidToken(format!(
            "algorithm {} is not accepted (asymmetric signatures only)",
            quoted(alg)
        ))
    })?;
    let kid = match v.get("kid") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(malformed()),
    };
    Ok((alg, kid))
}

fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "the token was issued by another issuer",
        ErrorKind::InvalidAudience => "the token is not meant for this resource (aud)",
        ErrorKind::InvalidSignature => "the token's signature does not verify",
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => "the token has no exp claim",
            "iss" => "the token has no iss claim",
            "aud" => "the token has no aud claim",
            "sub" => "the token has no sub claim",
            _ => "the token lacks a required claim",
        },
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            "the token's algorithm does not fit its key"
        }
        ErrorKind::InvalidClaimFormat(_) => "the token has a malformed claim",
        _ => "malformed token",
    }
}

/// Granted scopes: the space-separated `scope` claim (RFC 9068, GoTrue), or `scp`
/// (a list or a string, as some servers send).
fn scopes(claims: &serde_json::Value) -> Vec<&str> {
    let mut out = Vec::new();
    for key in ["scope", "scp"] {
        match claims.get(key) {
            Some(serde_json::Value::String(s)) => {
                out.extend(s.split(' ').filter(|s| !s.is_empty()))
            }
            Some(serde_json::Value::Array(a)) => out.extend(a.iter().filter_map(|v| v.as_str())),
            _ => {}
        }
    }
    out
}

/// A value fit for a quoted-string parameter of WWW-Authenticate.
fn quoted(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

fn json(status: StatusCode, text: String, head: bool) -> Response<body::Body> {
    let len = text.len();
    let mut resp = Response::new(if head {
        body::empty()
    } else {
        body::full(text)
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = public_url("HTTPS://Supabase.Example.com/mcp").unwrap();
        assert_eq!(u.origin, "https://supabase.example.com");
        assert_eq!(u.path, "/mcp");
        assert!(public_url("https://a/mcp#x").is_err());
        assert!(public_url("ftp://a/mcp").is_err());
        assert!(public_url("/mcp").is_err());
        assert_eq!(
            rfc8414_url("https://h.example/auth/v1").unwrap(),
            "https://h.example/.well-known/oauth-authorization-server/auth/v1"
        );
        assert_eq!(
            rfc8414_url("https://h.example").unwrap(),
            "https://h.example/.well-known/oauth-authorization-server"
        );
    }

    #[test]
    fn algorithms() {
        assert!(parse_alg("none").is_err());
        assert!(parse_alg("HS256").is_err());
        assert!(parse_alg("hs512").is_err());
        assert!(parse_alg("ES512").is_err());
        assert_eq!(parse_alg("ES256").unwrap(), Algorithm::ES256);
        assert_eq!(parse_alg("EdDSA").unwrap(), Algorithm::EdDSA);
    }

    #[test]
    fn tokens_and_scopes() {
        assert!(b64token("abc.DEF-_~+/=="));
        assert!(!b64token("a b"));
        assert!(!b64token("==="));
        assert!(!b64token("a\"b"));
        let c = serde_json::json!({"scope": "email  openid", "scp": ["mcp"]});
        assert_eq!(scopes(&c), vec!["email", "openid", "mcp"]);
        assert_eq!(quoted("a\"b\\c\n"), "a'b'c ");
    }
}
