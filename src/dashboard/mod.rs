//! The read-only dashboard on the status listener: one page (HTML, JS and CSS compiled
//! into the binary; no CDN, no build step) and the JSON endpoints behind it.
//!
//! | path | what |
//! |---|---|
//! | `/`, `/dashboard` | the page |
//! | `/api/routes` | routes, their plugin chains (execution order, file:line:col), deny-by-default guards, `/mcp` state, consumers by name |
//! | `/api/reloads` | the config serving (file, generation, hash) and the history of loads, with every error |
//! | `/api/traffic` | requests per second by status class per route, upstream latency percentiles per service |
//! | `/api/explain` | POST `{method, url, headers, client_ip, body}`: `portcullis explain`'s output and verdict |
//!
//! Nothing here changes the gateway. Nothing here sends a secret: consumers appear by
//! name, credentials by count, Lua snippets as written in the file (`$NAME`, not its
//! value); and every response is scrubbed of the configured key-auth keys and
//! basic-auth passwords as a last line of defence.
//!
//! Who may look: on a loopback status listener, anyone on the machine (requests whose
//! Host is not `localhost` or an IP address are refused, against DNS rebinding);
//! elsewhere only with the basic-auth credentials of `--dashboard-user` and
//! `--dashboard-password`, and without them the dashboard is off.

pub mod traffic;

use crate::body::{self, Body};
use crate::config::snapshot::Snapshot;
use crate::proxy::Gateway;
use base64::Engine;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use sha2::Digest;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// The largest `/api/explain` request body.
const EXPLAIN_MAX: usize = 64 * 1024;

/// The dashboard's flags.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--dashboard off` turns it off whatever the listener.
    pub off: bool,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// Who may see the dashboard, decided once from the flags and the listener address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Not served; the reason is logged at start and answered with 404.
    Off(String),
    /// A loopback listener without credentials: open to local clients.
    Local,
    /// Basic auth: the sha256 of `user:password`.
    Basic([u8; 32]),
}

impl Access {
    pub fn decide(o: &Options, listener: SocketAddr) -> Access {
        if o.off {
            return Access::Off("the dashboard is off (--dashboard off)".into());
        }
        match (&o.user, &o.password) {
            (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => {
                Access::Basic(sha2::Sha256::digest(format!("{u}:{p}")).into())
            }
            (Some(_), _) | (_, Some(_)) => Access::Off(
                "the dashboard is off: set both --dashboard-user and --dashboard-password (non-empty)"
                    .into(),
            ),
            (None, None) if listener.ip().is_loopback() => Access::Local,
            (None, None) => Access::Off(format!(
                "the dashboard is off: the status listener {listener} is not loopback, so it needs --dashboard-user and --dashboard-password"
            )),
        }
    }
}

/// The dashboard of one status listener: who may look, and the traffic history.
pub struct Dashboard {
    access: Access,
    traffic: Mutex<traffic::Ring>,
}

impl Dashboard {
    pub fn new(access: Access) -> Dashboard {
        Dashboard {
            access,
            traffic: Mutex::new(traffic::Ring::default()),
        }
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Samples the gateway's counters every [`traffic::INTERVAL`] until dropped
    /// (abort the returned task). Nothing runs when the dashboard is off.
    pub fn spawn_sampler(
        self: &Arc<Self>,
        gw: Arc<Gateway>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if matches!(self.access, Access::Off(_)) {
            return None;
        }
        let me = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(traffic::INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let s = traffic::Sample::parse(
                    &gw.metrics.render_traffic(),
                    std::time::SystemTime::now(),
                );
                me.traffic
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(s);
            }
        }))
    }

    /// Whether `path` is the dashboard's (the status listener asks before its own paths).
    pub fn owns(path: &str) -> bool {
        matches!(path, "/" | "/dashboard" | "/dashboard/")
            || path.starts_with("/dashboard/")
            || path.starts_with("/api/")
    }

    pub async fn handle(&self, gw: &Gateway, req: Request<Incoming>) -> Response<Body> {
        if let Some(denied) = self.check(&req) {
            return denied;
        }
        let snap = gw.snapshot.load_full();
        let path = req.uri().path().to_string();
        let resp = match (req.method(), path.as_str()) {
            (&Method::GET | &Method::HEAD, "/" | "/dashboard" | "/dashboard/") => {
                asset("text/html; charset=utf-8", INDEX_HTML)
            }
            (&Method::GET | &Method::HEAD, "/dashboard/app.js") => {
                asset("text/javascript; charset=utf-8", APP_JS)
            }
            (&Method::GET | &Method::HEAD, "/dashboard/app.css") => {
                asset("text/css; charset=utf-8", APP_CSS)
            }
            (&Method::GET, "/api/routes") => self.json(&snap, routes(&snap)),
            (&Method::GET, "/api/reloads") => self.json(&snap, reloads(gw, &snap)),
            (&Method::GET, "/api/traffic") => {
                let doc = self
                    .traffic
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .to_json();
                self.json(&snap, doc)
            }
            (&Method::POST, "/api/explain") => match explain(&snap, req).await {
                Ok(doc) => self.json(&snap, doc),
                Err((status, msg)) => {
                    let mut r = self.json(&snap, json!({ "error": msg }));
                    *r.status_mut() = status;
                    r
                }
            },
            (_, "/api/explain") => plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST a JSON object: {\"method\", \"url\", \"headers\", \"client_ip\", \"body\"}\n",
            ),
            (_, "/api/routes" | "/api/reloads" | "/api/traffic") => {
                plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n")
            }
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found (the dashboard is at /; its JSON at /api/routes, /api/reloads, /api/traffic, /api/explain)\n",
            ),
        };
        secure(resp)
    }

    /// Off, unauthenticated or rebound requests are answered here.
    fn check<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        match &self.access {
            Access::Off(why) => Some(plain(StatusCode::NOT_FOUND, &format!("{why}\n"))),
            Access::Local => {
                let host = req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or(req.uri().host())
                    .unwrap_or("");
                (!local_host(host)).then(|| {
                    plain(
                        StatusCode::FORBIDDEN,
                        "the dashboard answers only Host: localhost or an IP address\n",
                    )
                })
            }
            Access::Basic(want) => {
                let given = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.strip_prefix("Basic ").or(h.strip_prefix("basic ")))
                    .and_then(|b| {
                        base64::engine::general_purpose::STANDARD
                            .decode(b.trim())
                            .ok()
                    })
                    .map(|b| -> [u8; 32] { sha2::Sha256::digest(b).into() });
                let ok = given.is_some_and(|g| {
                    // Constant time: the digests differ anywhere or nowhere.
                    g.iter()
                        .zip(want.iter())
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
                });
                if ok {
                    return None;
                }
                let mut r = plain(StatusCode::UNAUTHORIZED, "credentials required\n");
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Basic realm=\"portcullis dashboard\", charset=\"UTF-8\"",
                    ),
                );
                Some(r)
            }
        }
    }

    /// A JSON response, scrubbed of every credential value the config holds.
    fn json(&self, snap: &Snapshot, doc: Value) -> Response<Body> {
        let mut text = doc.to_string();
        for secret in secrets(snap) {
            // JSON escapes some characters; scrub both spellings.
            let escaped = Value::String(secret.clone()).to_string();
            let escaped = escaped.trim_matches('"');
            for s in [secret.as_str(), escaped] {
                if !s.is_empty() && text.contains(s) {
                    // A bug upstream of here: say so, so that tests (and operators) see it.
                    tracing::warn!("dashboard: a credential value was about to be sent; masked");
                    text = text.replace(s, "********");
                }
            }
        }
        let mut r = Response::new(body::full(text));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        r
    }
}

/// `localhost`, `*.localhost` or an IP address, with or without a port.
fn local_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let lower = name.to_ascii_lowercase();
    lower == "localhost" || lower.ends_with(".localhost") || name.parse::<IpAddr>().is_ok()
}

/// Every credential value of the config: key-auth keys and basic-auth passwords.
fn secrets(snap: &Snapshot) -> Vec<String> {
    let c = &snap.config;
    c.keyauth_credentials
        .iter()
        .map(|k| k.key.clone())
        .chain(c.basicauth_credentials.iter().map(|b| b.password.clone()))
        .filter(|s| s.len() >= 4)
        .collect()
}

fn asset(ctype: &'static str, text: &'static str) -> Response<Body> {
    let mut r = Response::new(body::full(text));
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(body::full(text.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// No caching, no framing, nothing loaded from elsewhere.
fn secure(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn at(file: &str, pos: crate::yaml::raw::Pos) -> String {
    format!("{file}:{}:{}", pos.line, pos.col)
}

fn rfc3339(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What a plugin says about itself on the page: only settings that are not secrets.
fn plugin_summary(p: &crate::plugins::Plugin) -> Value {
    use crate::plugins::Plugin;
    match p {
        Plugin::RequestTermination(t) => json!({
            "status": t.status.as_u16(),
            "message": t.message,
            "trigger": t.trigger.as_ref().map(|h| h.as_str()),
        }),
        Plugin::IpRestriction(r) => json!({
            "status": r.status.as_u16(),
            "allow": r.listed[0],
            "deny": r.listed[1],
            "allow_ranges": r.allow.interval_count(),
            "deny_ranges": r.deny.interval_count(),
        }),
        Plugin::KeyAuth(k) => json!({
            "key_names": k.key_names.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            "hide_credentials": k.hide_credentials,
            "anonymous": k.anonymous,
        }),
        Plugin::Acl(a) => json!({
            "mode": if a.allow_mode { "allow" } else { "deny" },
            "groups": a.groups,
        }),
        Plugin::OAuth2Resource(o) => json!({
            "resource": o.resource,
            "issuer": o.issuer,
        }),
        Plugin::PreFunction(f) | Plugin::PostFunction(f) => json!({
            "access": f.written(),
        }),
        Plugin::RateLimiting(r) => json!({ "limits": r.explain() }),
        Plugin::RequestTransformer(t) => json!({ "does": t.explain() }),
        Plugin::Cors(_) | Plugin::BasicAuth(_) | Plugin::McpOrigin(_) | Plugin::McpPolicy(_) => {
            json!({})
        }
    }
}

/// The guard a plugin puts in front of a route, if it denies by default.
fn guard(p: &crate::plugins::Plugin) -> Option<&'static str> {
    use crate::plugins::Plugin;
    match p {
        Plugin::RequestTermination(t) if t.trigger.is_none() => Some("closed"),
        Plugin::IpRestriction(_) => Some("ip-restricted"),
        Plugin::OAuth2Resource(_) => Some("oauth"),
        Plugin::McpPolicy(_) => Some("mcp-policy"),
        Plugin::KeyAuth(k) if k.anonymous.is_none() => Some("key-auth"),
        Plugin::BasicAuth(_) => Some("basic-auth"),
        _ => None,
    }
}

/// The `/api/routes` document.
pub fn routes(snap: &Snapshot) -> Value {
    let cfg = &snap.config;
    let file = &snap.file;
    let consumer_name = |c: usize| {
        cfg.consumers
            .get(c)
            .map(|c| c.username.clone().unwrap_or_else(|| c.id.clone()))
            .unwrap_or_default()
    };
    let chain_json = |chain: &[crate::config::snapshot::ChainLink]| -> Vec<Value> {
        chain
            .iter()
            .map(|l| {
                json!({
                    "name": l.plugin.name(),
                    "priority": l.plugin.priority(),
                    "scope": l.scope.label(),
                    "consumer": l.scope.consumer.map(consumer_name),
                    "at": at(file, l.pos),
                    "guard": guard(&l.plugin),
                    "config": plugin_summary(&l.plugin),
                })
            })
            .collect()
    };
    let mut mcp = Vec::new();
    let mut list: Vec<(usize, &crate::config::snapshot::CompiledRoute)> =
        snap.routes.iter().enumerate().collect();
    list.sort_by_key(|(_, r)| r.index);
    let routes: Vec<Value> = list
        .into_iter()
        .map(|(_, r)| {
            let route = &cfg.routes[r.index];
            let service = route.service.map(|s| &cfg.services[s]);
            let mut guards: Vec<&str> = Vec::new();
            for l in r.chain.iter().filter(|l| l.scope.consumer.is_none()) {
                if let Some(g) = guard(&l.plugin)
                    && !guards.contains(&g)
                {
                    guards.push(g);
                }
            }
            let deny = ["closed", "ip-restricted", "oauth", "mcp-policy"];
            let deny_by_default = guards.iter().any(|g| deny.contains(g));
            let state = if guards.contains(&"closed") {
                "closed".to_string()
            } else if guards.is_empty() {
                "open".to_string()
            } else {
                guards.join(" + ")
            };
            let is_mcp = route
                .paths
                .iter()
                .any(|p| p == "/mcp" || p.starts_with("/mcp/"))
                || r.chain
                    .iter()
                    .any(|l| matches!(*l.plugin, crate::plugins::Plugin::McpPolicy(_)));
            if is_mcp {
                mcp.push(json!({
                    "route": route.display_name(),
                    "paths": route.paths,
                    "state": state,
                }));
            }
            let mut protocols = Vec::new();
            if route.http {
                protocols.push("http");
            }
            if route.https {
                protocols.push("https");
            }
            json!({
                "name": route.display_name(),
                "id": route.id,
                "at": at(file, route.pos),
                "service": service.map(|s| json!({
                    "name": s.display_name(),
                    "url": format!(
                        "{}://{}:{}{}",
                        if s.protocol.is_tls() { "https" } else { "http" },
                        s.host,
                        s.port,
                        s.path.as_deref().unwrap_or("")
                    ),
                    "at": at(file, s.pos),
                })),
                "protocols": protocols,
                "methods": route.methods,
                "hosts": route.hosts,
                "paths": route.paths,
                "headers": route.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                "expression": route.expression,
                "strip_path": route.strip_path,
                "preserve_host": route.preserve_host,
                "chain": chain_json(&r.chain),
                "guards": guards,
                "deny_by_default": deny_by_default,
                "state": state,
                "mcp": is_mcp,
            })
        })
        .collect();
    let consumers: Vec<Value> = cfg
        .consumers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "name": c.username.clone().unwrap_or_else(|| c.id.clone()),
                "key_auth_credentials": cfg.keyauth_credentials.iter().filter(|k| k.consumer == i).count(),
                "basic_auth_credentials": cfg.basicauth_credentials.iter().filter(|k| k.consumer == i).count(),
                "groups": cfg.acls.iter().filter(|a| a.consumer == i).map(|a| a.group.as_str()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "generation": snap.generation,
        "config_file": snap.file,
        "config_hash": snap.config_hash,
        "routes": routes,
        "global_plugins": chain_json(&snap.global_chain),
        "consumers": consumers,
        "mcp": mcp,
    })
}

/// The `/api/reloads` document.
pub fn reloads(gw: &Gateway, snap: &Snapshot) -> Value {
    let st = gw.status.lock().unwrap_or_else(PoisonError::into_inner);
    let history: Vec<Value> = st
        .history
        .iter()
        .rev()
        .map(|r| {
            use crate::proxy::ReloadOutcome;
            let (outcome, errors) = match &r.outcome {
                ReloadOutcome::Initial => ("loaded", Vec::new()),
                ReloadOutcome::Reloaded => ("reloaded", Vec::new()),
                ReloadOutcome::Unchanged => ("unchanged", Vec::new()),
                ReloadOutcome::Failed(e) => ("failed", e.clone()),
            };
            json!({
                "at": rfc3339(r.at),
                "generation": r.generation,
                "hash": r.hash,
                "ok": errors.is_empty(),
                "outcome": outcome,
                "errors": errors,
            })
        })
        .collect();
    json!({
        "current": {
            "config_file": snap.file,
            "generation": snap.generation,
            "hash": snap.config_hash,
            "loaded_at": rfc3339(snap.loaded_at),
        },
        "last_error": st.last_reload_error,
        "counts": {
            "ok": st.reloads_ok,
            "failed": st.reloads_failed,
            "unchanged": st.reloads_unchanged,
        },
        "history": history,
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainForm {
    method: String,
    url: String,
    #[serde(default)]
    headers: Headers,
    #[serde(default)]
    client_ip: Option<String>,
    #[serde(default)]
    body: Option<String>,
}

/// Headers as a list of `Name: value` or as one text, a header per line.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Headers {
    List(Vec<String>),
    Text(String),
}

impl Default for Headers {
    fn default() -> Self {
        Headers::List(Vec::new())
    }
}

/// `/api/explain`: the same explanation as `portcullis explain`, on the running snapshot.
async fn explain(snap: &Snapshot, req: Request<Incoming>) -> Result<Value, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let json_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json_type {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/json".into(),
        ));
    }
    let bytes = Limited::new(req.into_body(), EXPLAIN_MAX)
        .collect()
        .await
        .map_err(|e| {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the body: {e}"),
            )
        })?
        .to_bytes();
    let form: ExplainForm =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let headers: Vec<String> = match form.headers {
        Headers::List(l) => l,
        Headers::Text(t) => t.lines().map(str::to_string).collect(),
    }
    .into_iter()
    .filter(|h| !h.trim().is_empty())
    .collect();
    let client_ip = match form.client_ip.as_deref().map(str::trim) {
        None | Some("") => IpAddr::from([127, 0, 0, 1]),
        Some(s) => s
            .parse()
            .map_err(|_| bad(format!("invalid client_ip '{s}'")))?,
    };
    let body = form.body.filter(|b| !b.is_empty()).map(bytes::Bytes::from);
    let r =
        crate::explain::request(&form.method, &form.url, &headers, client_ip, body).map_err(bad)?;
    let text = crate::explain::explain(snap, &r).await;
    Ok(json!({
        "verdict": crate::explain::verdict(&text),
        "text": text,
        "generation": snap.generation,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_needs_credentials_off_loopback() {
        let lo: SocketAddr = "127.0.0.1:8100".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8100".parse().unwrap();
        let none = Options::default();
        assert_eq!(Access::decide(&none, lo), Access::Local);
        assert!(
            matches!(Access::decide(&none, any), Access::Off(m) if m.contains("--dashboard-user"))
        );
        let creds = Options {
            user: Some("ops".into()),
            password: Some("pw".into()),
            off: false,
        };
        assert!(matches!(Access::decide(&creds, any), Access::Basic(_)));
        let half = Options {
            user: Some("ops".into()),
            ..Options::default()
        };
        assert!(matches!(Access::decide(&half, lo), Access::Off(_)));
        let off = Options { off: true, ..creds };
        assert!(matches!(Access::decide(&off, lo), Access::Off(_)));
    }

    #[test]
    fn local_hosts() {
        for h in [
            "localhost",
            "localhost:8100",
            "127.0.0.1:8100",
            "[::1]:8100",
            "::1",
            "app.localhost",
        ] {
            assert!(local_host(h), "{h}");
        }
        for h in ["evil.example", "evil.example:8100", "127.0.0.1.nip.io", ""] {
            assert!(!local_host(h), "{h}");
        }
    }
}
