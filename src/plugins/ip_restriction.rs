//! ip-restriction (PRIORITY 990): allow/deny by the real client IP. Deny wins over
//! allow. Lookups are binary searches over merged ranges (`crate::ipset`), so 100k
//! CIDRs cost about what 10 do.

use super::{Flow, RequestCtx};
use crate::error::{Format, render};
use crate::ipset::IpSet;
use crate::yaml::raw::{Node, Pos};
use crate::yaml::walk::Ctx;
use http::StatusCode;

#[derive(Debug)]
pub struct IpRestriction {
    pub allow: IpSet,
    pub deny: IpSet,
    pub status: StatusCode,
    pub message: Option<String>,
}

pub fn decode(config: Option<&Node>, pos: Pos, ctx: &mut Ctx<'_>) -> Option<IpRestriction> {
    let what = "plugin 'ip-restriction'.config";
    let Some(config) = config else {
        ctx.err(
            pos,
            format!("{what}: at least one of these fields must be non-empty: 'config.allow', 'config.deny'"),
        );
        return None;
    };
    let mut f = ctx.fields(config, what)?;
    let before = ctx.errors.len();
    let mut set = |ctx: &mut Ctx<'_>, key: &str| -> IpSet {
        let list = ctx.strings(f.get(key), &format!("{what}.{key}"));
        let entries: Vec<&str> = list.iter().map(|(s, _)| s.as_str()).collect();
        match IpSet::parse(&entries) {
            Ok(s) => s,
            Err(errs) => {
                for (i, msg) in errs {
                    let p = list.get(i).map(|(_, p)| *p).unwrap_or(pos);
                    ctx.err(p, format!("{what}.{key}: {msg}"));
                }
                IpSet::default()
            }
        }
    };
    let allow = set(ctx, "allow");
    let deny = set(ctx, "deny");
    let status = match f.get("status") {
        None => StatusCode::FORBIDDEN,
        Some(n) => ctx
            .opt_int(Some(n), &format!("{what}.status"), 100, 599)
            .and_then(|s| StatusCode::from_u16(s as u16).ok())
            .unwrap_or(StatusCode::FORBIDDEN),
    };
    let message = ctx.opt_string(f.get("message"), &format!("{what}.message"));
    let at = f.pos;
    f.finish(ctx, what);
    if allow.is_empty() && deny.is_empty() && ctx.errors.len() == before {
        ctx.err(
            at,
            format!("{what}: at least one of these fields must be non-empty: 'config.allow', 'config.deny'"),
        );
    }
    (ctx.errors.len() == before).then_some(IpRestriction {
        allow,
        deny,
        status,
        message,
    })
}

impl IpRestriction {
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        if !self.deny.is_empty() && self.deny.contains(ip) {
            return false;
        }
        self.allow.is_empty() || self.allow.contains(ip)
    }

    pub fn access(&self, req: &mut RequestCtx<'_>) -> Flow {
        if self.allows(req.client_ip) {
            return Flow::Continue;
        }
        let msg = match &self.message {
            Some(m) => std::borrow::Cow::Borrowed(m.as_str()),
            None => std::borrow::Cow::Owned(format!("IP address not allowed: {}", req.client_ip)),
        };
        Flow::Respond(render(
            Format::from_accept(req.headers),
            self.status,
            &msg,
            req.request_id,
            req.method == http::Method::HEAD,
        ))
    }
}
