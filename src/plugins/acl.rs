//! acl (PRIORITY 950): allows or denies the authenticated consumer by its groups
//! (`acls` entities), and tells the upstream the groups in `X-Consumer-Groups`.

use super::{Flow, RequestCtx};
use crate::error::{Format, render};
use crate::yaml::raw::{Node, Value};
use crate::yaml::walk::Ctx;
use http::{HeaderName, HeaderValue, StatusCode};

static X_CONSUMER_GROUPS: HeaderName = HeaderName::from_static("x-consumer-groups");

#[derive(Debug)]
pub struct Acl {
    /// true: `allow` list; false: `deny` list.
    pub allow_mode: bool,
    pub groups: Vec<String>,
    pub hide_groups_header: bool,
}

pub fn decode(config: Option<&Node>, pos: crate::yaml::raw::Pos, ctx: &mut Ctx<'_>) -> Option<Acl> {
    let what = "plugin 'acl'.config";
    let one_of = format!(
        "{what}: exactly one of these fields must be non-empty: 'config.allow', 'config.deny'"
    );
    let Some(config) = config.filter(|c| !matches!(c.value, Value::Null)) else {
        ctx.err(pos, one_of);
        return None;
    };
    let mut f = ctx.fields(config, what)?;
    let before = ctx.errors.len();
    let allow: Vec<String> = ctx
        .strings(f.get("allow"), &format!("{what}.allow"))
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let deny: Vec<String> = ctx
        .strings(f.get("deny"), &format!("{what}.deny"))
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let hide_groups_header = ctx.opt_bool(
        f.get("hide_groups_header"),
        &format!("{what}.hide_groups_header"),
        false,
    );
    ctx.opt_bool(
        f.get("always_use_authenticated_groups"),
        &format!("{what}.always_use_authenticated_groups"),
        false,
    );
    let at = f.pos;
    f.finish(ctx, what);
    if allow.is_empty() == deny.is_empty() {
        ctx.err(at, one_of);
    }
    if ctx.errors.len() != before {
        return None;
    }
    let allow_mode = !allow.is_empty();
    Some(Acl {
        allow_mode,
        groups: if allow_mode { allow } else { deny },
        hide_groups_header,
    })
}

impl Acl {
    pub fn access(&self, req: &mut RequestCtx<'_>) -> Flow {
        let deny = |req: &RequestCtx<'_>, status: StatusCode, msg: &str| {
            Flow::Respond(render(
                Format::from_accept(req.headers),
                status,
                msg,
                req.request_id,
                req.method == http::Method::HEAD,
            ))
        };
        let Some(consumer) = req.auth.consumer.and_then(|c| req.consumers.list.get(c)) else {
            if req.auth.credential.is_some() {
                return deny(
                    req,
                    StatusCode::FORBIDDEN,
                    "You cannot consume this service",
                );
            }
            return deny(req, StatusCode::UNAUTHORIZED, "Unauthorized");
        };
        if self.hide_groups_header {
            // Never let a client-sent value through in its place.
            req.headers.remove(&X_CONSUMER_GROUPS);
        }
        let groups = &consumer.groups;
        if groups.is_empty() {
            if self.allow_mode {
                if req.auth.credential.is_some() {
                    return deny(
                        req,
                        StatusCode::FORBIDDEN,
                        "You cannot consume this service",
                    );
                }
                return deny(req, StatusCode::UNAUTHORIZED, "Unauthorized");
            }
            if !self.hide_groups_header {
                req.headers
                    .insert(X_CONSUMER_GROUPS.clone(), HeaderValue::from_static(""));
            }
            return Flow::Continue;
        }
        let listed = groups.iter().any(|g| self.groups.contains(g));
        let blocked = if self.allow_mode { !listed } else { listed };
        if blocked {
            return deny(
                req,
                StatusCode::FORBIDDEN,
                "You cannot consume this service",
            );
        }
        if !self.hide_groups_header
            && let Some(v) = &consumer.groups_header
        {
            req.headers.insert(X_CONSUMER_GROUPS.clone(), v.clone());
        }
        Flow::Continue
    }
}
