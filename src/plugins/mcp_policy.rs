//! mcp-policy (PRIORITY 920): which MCP methods, tools, resources and prompts a client
//! may use, enforced on the wire (beyond Kong, which cannot read JSON-RPC).
//!
//! - Runs after authentication (oauth2-resource 1300, key-auth 1250, basic-auth 1100)
//!   so it knows the consumer (Kong's plugin scoping picks a consumer's own entry) and
//!   the token's scopes (`scopes` entries unlock more), and before
//!   request-transformer (801).
//! - A POST body (one JSON-RPC message, or a 2025-03-26 batch) is read up to
//!   `max_body_size` (larger: 413) and judged; the 2026-07-28 `Mcp-Method`/`Mcp-Name`
//!   headers must agree with it (else 400, JSON-RPC -32020). Allowed bodies go upstream
//!   byte for byte. A refused request is answered 200 with a JSON-RPC error carrying
//!   its id (an MCP client shows that to the model; a 401/403 would start OAuth again);
//!   a refused notification is answered 202 and never forwarded.
//! - `tools/list`, `resources/list` and `prompts/list` results are filtered in the
//!   response (`crate::mcp`), so a client only sees what it may use.
//! - Lists: `allow` and `deny`, each with `methods`, `tools`, `resources` (URIs) and
//!   `prompts`, exact or `*`/`?` globs. Deny wins. A category with an allow list
//!   anywhere in the config (base or a scope set) is closed except for what the lists
//!   in force name; a category no allow list mentions is only limited by `deny`.

use super::{Flow, RequestCtx};
use crate::body;
use crate::mcp::{self, Exchange, Kind, Patterns, Policy, ResponseFilter, Restricted, Rules};
use crate::yaml::raw::{Node, Pos, Value};
use crate::yaml::walk::Ctx;
use http::{HeaderName, HeaderValue, Method, Response, StatusCode, header};
use std::sync::Arc;

/// The default `max_body_size`: 1 MiB.
const DEFAULT_MAX_BODY: usize = 1 << 20;
/// The most a plugin may buffer (the proxy's own limit).
const MAX_BODY_LIMIT: i64 = 8 << 20;

static MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
static MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

#[derive(Debug)]
pub struct McpPolicy {
    pub max_body_size: usize,
    allow: Option<Arc<Rules>>,
    deny: Option<Arc<Rules>>,
    scopes: Vec<ScopeSet>,
    restricted: Restricted,
}

#[derive(Debug)]
struct ScopeSet {
    scope: String,
    allow: Option<Arc<Rules>>,
    deny: Option<Arc<Rules>>,
}

fn decode_rules(node: Option<&Node>, what: &str, ctx: &mut Ctx<'_>) -> Option<Arc<Rules>> {
    let n = node.filter(|n| !matches!(n.value, Value::Null))?;
    let mut f = ctx.fields(n, what)?;
    let mut list = |ctx: &mut Ctx<'_>, key: &str| -> Option<Patterns> {
        let node = f.get(key)?;
        let items = ctx.strings(Some(node), &format!("{what}.{key}"));
        for (s, p) in &items {
            if s.is_empty() {
                ctx.err(*p, format!("{what}.{key}: empty name"));
            }
        }
        Some(Patterns::new(items.iter().map(|(s, _)| s.as_str())))
    };
    let rules = Rules {
        methods: list(ctx, "methods"),
        tools: list(ctx, "tools"),
        resources: list(ctx, "resources"),
        prompts: list(ctx, "prompts"),
    };
    f.finish(ctx, what);
    if rules.is_empty() {
        ctx.err(
            n.pos,
            format!("{what}: empty (give methods, tools, resources or prompts)"),
        );
        return None;
    }
    Some(Arc::new(rules))
}

fn note(r: &mut Restricted, rules: Option<&Arc<Rules>>) {
    if let Some(r2) = rules {
        r.methods |= r2.methods.is_some();
        r.tools |= r2.tools.is_some();
        r.resources |= r2.resources.is_some();
        r.prompts |= r2.prompts.is_some();
    }
}

pub fn decode(config: Option<&Node>, pos: Pos, ctx: &mut Ctx<'_>) -> Option<McpPolicy> {
    let what = "plugin 'mcp-policy'.config";
    let Some(config) = config.filter(|c| !matches!(c.value, Value::Null)) else {
        ctx.err(
            pos,
            format!("{what}: an empty policy (give allow, deny or scopes)"),
        );
        return None;
    };
    let mut f = ctx.fields(config, what)?;
    let before = ctx.errors.len();
    let max_body_size = ctx
        .opt_int(
            f.get("max_body_size"),
            &format!("{what}.max_body_size"),
            1,
            MAX_BODY_LIMIT,
        )
        .map(|n| n as usize)
        .unwrap_or(DEFAULT_MAX_BODY);
    let allow = decode_rules(f.get("allow"), &format!("{what}.allow"), ctx);
    let deny = decode_rules(f.get("deny"), &format!("{what}.deny"), ctx);
    let mut scopes = Vec::new();
    let scopes_what = format!("{what}.scopes");
    for item in ctx.seq(f.get("scopes"), &scopes_what) {
        let Some(mut sf) = ctx.fields(item, &scopes_what) else {
            continue;
        };
        let scope = match sf.get("scope") {
            Some(n) => ctx.string(n, &format!("{scopes_what}.scope")),
            None => {
                ctx.err(
                    item.pos,
                    format!("{scopes_what}.scope: required field missing"),
                );
                None
            }
        };
        let a = decode_rules(sf.get("allow"), &format!("{scopes_what}.allow"), ctx);
        let d = decode_rules(sf.get("deny"), &format!("{scopes_what}.deny"), ctx);
        sf.finish(ctx, &scopes_what);
        if a.is_none() && d.is_none() {
            ctx.err(
                item.pos,
                format!("{scopes_what}: an entry needs allow or deny"),
            );
        }
        if let Some(scope) = scope {
            if scope.is_empty() || scope.contains(' ') {
                ctx.err(
                    item.pos,
                    format!("{scopes_what}.scope: '{scope}' is not one scope"),
                );
            }
            scopes.push(ScopeSet {
                scope,
                allow: a,
                deny: d,
            });
        }
    }
    let policy_pos = f.pos;
    f.finish(ctx, what);
    if allow.is_none() && deny.is_none() && scopes.is_empty() && ctx.errors.len() == before {
        ctx.err(
            policy_pos,
            format!("{what}: an empty policy (give allow, deny or scopes)"),
        );
    }
    let mut restricted = Restricted::default();
    note(&mut restricted, allow.as_ref());
    for s in &scopes {
        note(&mut restricted, s.allow.as_ref());
    }
    (ctx.errors.len() == before).then_some(McpPolicy {
        max_body_size,
        allow,
        deny,
        scopes,
        restricted,
    })
}

impl McpPolicy {
    /// The rules in force for a token with `granted` scopes.
    pub fn policy(&self, granted: &[String]) -> Policy {
        let mut p = Policy {
            allow: self.allow.iter().cloned().collect(),
            deny: self.deny.iter().cloned().collect(),
            restricted: self.restricted,
        };
        for s in self.scopes.iter().filter(|s| granted.contains(&s.scope)) {
            p.allow.extend(s.allow.iter().cloned());
            p.deny.extend(s.deny.iter().cloned());
        }
        p
    }

    pub fn access(&self, req: &mut RequestCtx<'_>) -> Flow {
        let body: &[u8] = req.body.as_deref().map(|b| &b[..]).unwrap_or(&[]);
        // GET (server-to-client stream), DELETE (end of session) and preflights carry
        // no JSON-RPC message; any request that does is judged.
        if *req.method != Method::POST && body.is_empty() {
            return Flow::Continue;
        }
        if body.len() > self.max_body_size {
            return Flow::Respond(jsonrpc(
                StatusCode::PAYLOAD_TOO_LARGE,
                &mcp::error_response(
                    &serde_json::Value::Null,
                    mcp::INVALID_REQUEST,
                    &format!(
                        "Request body larger than the gateway's limit ({} bytes)",
                        self.max_body_size
                    ),
                ),
            ));
        }
        let policy = self.policy(&req.auth.scopes);
        let header = |name: &HeaderName| {
            req.headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
        };
        let (m, n) = (header(&MCP_METHOD), header(&MCP_NAME));
        let judged = match mcp::judge_body(&policy, body, m.as_deref(), n.as_deref()) {
            Ok(j) => j,
            Err(e) => {
                return Flow::Respond(jsonrpc(
                    StatusCode::BAD_REQUEST,
                    &mcp::error_response(&serde_json::Value::Null, e.code, &e.message),
                ));
            }
        };
        let refused = judged.calls.iter().any(|c| !c.allowed());
        let answer = refused.then(|| mcp::refusal(&judged));
        let targets: Vec<(serde_json::Value, Kind)> = judged
            .calls
            .iter()
            .filter_map(|c| {
                let id = c.id.clone()?;
                let kind = match c.method.as_deref()? {
                    "tools/list" => Kind::Tool,
                    "resources/list" => Kind::Resource,
                    "prompts/list" => Kind::Prompt,
                    _ => return None,
                };
                Some((id, kind))
            })
            .collect();
        let mut ex = Exchange {
            calls: judged.calls,
            filter: None,
        };
        if let Some(answer) = answer {
            *req.mcp = Some(ex);
            return Flow::Respond(match answer {
                Some(v) => jsonrpc(StatusCode::OK, &v),
                None => {
                    let mut r = Response::new(body::empty());
                    *r.status_mut() = StatusCode::ACCEPTED;
                    r
                }
            });
        }
        if !targets.is_empty() {
            // The list must be readable to be filtered.
            req.headers.remove(header::ACCEPT_ENCODING);
            ex.filter = Some(ResponseFilter { targets, policy });
        }
        *req.mcp = Some(ex);
        Flow::Continue
    }

    pub fn explain(&self, req: &RequestCtx<'_>) -> String {
        match req.mcp.as_ref().and_then(|e| e.summary()) {
            Some((method, name, _)) => {
                let what = name.map(|n| format!(" '{n}'")).unwrap_or_default();
                let filtered = if req.mcp.as_ref().is_some_and(|e| e.filter.is_some()) {
                    "; the list in the response is filtered"
                } else {
                    ""
                };
                format!("allows {method}{what}{filtered}")
            }
            None => "passes (no JSON-RPC body; give one with --body)".into(),
        }
    }
}

fn jsonrpc(status: StatusCode, v: &serde_json::Value) -> Response<body::Body> {
    let text = v.to_string();
    let len = text.len();
    let mut r = Response::new(body::full(text));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}
