//! basic-auth (PRIORITY 1100): identifies the consumer by `Proxy-Authorization` or
//! `Authorization: Basic …`. Passwords are kept as Kong's salted SHA-1 and compared in
//! constant time.

use super::{AuthOutcome, Flow, RequestCtx, run_auth, set_consumer};
use crate::yaml::raw::{Node, Value};
use crate::yaml::walk::Ctx;
use base64::Engine;
use http::{HeaderName, HeaderValue, StatusCode, header};

#[derive(Debug)]
pub struct BasicAuth {
    pub hide_credentials: bool,
    pub anonymous: Option<String>,
    pub www_authenticate: HeaderValue,
}

pub fn decode(config: Option<&Node>, ctx: &mut Ctx<'_>) -> Option<BasicAuth> {
    let what = "plugin 'basic-auth'.config";
    let mut out = BasicAuth {
        hide_credentials: false,
        anonymous: None,
        www_authenticate: HeaderValue::from_static("Basic realm=\"service\""),
    };
    let Some(config) = config.filter(|c| !matches!(c.value, Value::Null)) else {
        return Some(out);
    };
    let mut f = ctx.fields(config, what)?;
    let before = ctx.errors.len();
    out.hide_credentials = ctx.opt_bool(
        f.get("hide_credentials"),
        &format!("{what}.hide_credentials"),
        false,
    );
    out.anonymous = ctx.opt_string(f.get("anonymous"), &format!("{what}.anonymous"));
    if let Some(v) = super::decode_realm(ctx, f.get("realm"), what, "Basic") {
        out.www_authenticate = v;
    }
    f.finish(ctx, what);
    (ctx.errors.len() == before).then_some(out)
}

/// `\s*[Bb]asic\s*(.+)`, base64-decoded, split at the first `:` (the username must be
/// non-empty; the password may contain `:`).
fn parse(value: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(value).ok()?.trim_start();
    let rest = s
        .strip_prefix("Basic")
        .or_else(|| s.strip_prefix("basic"))?;
    let b64 = rest.trim();
    if b64.is_empty() {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    if user.is_empty() {
        return None;
    }
    Some((user.to_string(), pass.to_string()))
}

impl BasicAuth {
    pub fn access(&self, req: &mut RequestCtx<'_>) -> Flow {
        run_auth(
            req,
            self.anonymous.as_deref(),
            &self.www_authenticate,
            |req| self.authenticate(req),
        )
    }

    fn authenticate(&self, req: &mut RequestCtx<'_>) -> AuthOutcome {
        let unauthorized = AuthOutcome::Fail(StatusCode::UNAUTHORIZED, "Unauthorized");
        if !req.headers.contains_key(header::AUTHORIZATION)
            && !req.headers.contains_key(header::PROXY_AUTHORIZATION)
        {
            return unauthorized;
        }
        let mut found = None;
        for h in [header::PROXY_AUTHORIZATION, header::AUTHORIZATION] {
            let Some(v) = req.headers.get(&h) else {
                continue;
            };
            let Some((user, pass)) = parse(v.as_bytes()) else {
                continue;
            };
            self.hide(req, &h);
            if let Some(c) = req.consumers.check_basic(&user, &pass) {
                found = Some((c.consumer, c.username.clone()));
                break;
            }
            if req.consumers.has_basic_user(&user) {
                // Known user, wrong password: Kong stops here.
                break;
            }
        }
        let Some((consumer, username)) = found else {
            return unauthorized;
        };
        set_consumer(req, Some(consumer), Some(username));
        AuthOutcome::Ok
    }

    fn hide(&self, req: &mut RequestCtx<'_>, h: &HeaderName) {
        if self.hide_credentials {
            req.headers.remove(h);
        }
    }
}
