//! cors (PRIORITY 2000): answers preflights before any auth plugin runs and adds the
//! CORS headers to every other response. The semantics live in `core` (Kong's handler
//! and schema); this file decodes the YAML and plugs it into the pipeline.

pub mod core;

use self::core::{Cors, CorsConfig};
use super::{Flow, RequestCtx};
use crate::body;
use crate::yaml::raw::{Node, Value};
use crate::yaml::walk::Ctx;
use http::{HeaderMap, Response, StatusCode};

pub struct CorsPlugin(pub Cors);

impl std::fmt::Debug for CorsPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CorsPlugin")
    }
}

pub fn decode(config: Option<&Node>, ctx: &mut Ctx<'_>) -> Option<CorsPlugin> {
    let what = "plugin 'cors'.config";
    let mut cfg = CorsConfig::default();
    if let Some(config) = config
        && !matches!(config.value, Value::Null)
    {
        let mut f = ctx.fields(config, what)?;
        let list = |ctx: &mut Ctx<'_>, n: Option<&Node>, key: &str| -> Option<Vec<String>> {
            n.map(|n| {
                ctx.strings(Some(n), &format!("{what}.{key}"))
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect()
            })
        };
        let origins_pos = f.get("origins").map(|n| n.pos);
        if let Some(v) = list(ctx, f.get("origins"), "origins") {
            cfg.origins = v;
        }
        if let Some(v) = list(ctx, f.get("headers"), "headers") {
            cfg.headers = v;
        }
        if let Some(v) = list(ctx, f.get("exposed_headers"), "exposed_headers") {
            cfg.exposed_headers = v;
        }
        if let Some(v) = list(ctx, f.get("methods"), "methods")
            && !v.is_empty()
        {
            cfg.methods = v;
        }
        if let Some(n) = f.get("max_age") {
            cfg.max_age = ctx
                .opt_int(Some(n), &format!("{what}.max_age"), 0, i64::MAX)
                .or(cfg.max_age);
        }
        cfg.credentials = ctx.opt_bool(f.get("credentials"), &format!("{what}.credentials"), false);
        cfg.private_network = ctx.opt_bool(
            f.get("private_network"),
            &format!("{what}.private_network"),
            false,
        );
        cfg.preflight_continue = ctx.opt_bool(
            f.get("preflight_continue"),
            &format!("{what}.preflight_continue"),
            false,
        );
        cfg.allow_origin_absent = ctx.opt_bool(
            f.get("allow_origin_absent"),
            &format!("{what}.allow_origin_absent"),
            true,
        );
        let at = f.pos;
        f.finish(ctx, what);
        return match Cors::new(cfg) {
            Ok(c) => Some(CorsPlugin(c)),
            Err(errs) => {
                for (field, msg) in errs {
                    let p = if field.starts_with("origins") {
                        origins_pos.unwrap_or(at)
                    } else {
                        at
                    };
                    ctx.err(p, format!("{what}.{field}: {msg}"));
                }
                None
            }
        };
    }
    match Cors::new(cfg) {
        Ok(c) => Some(CorsPlugin(c)),
        Err(errs) => {
            for (field, msg) in errs {
                ctx.err(
                    config.map(|n| n.pos).unwrap_or_default(),
                    format!("{what}.{field}: {msg}"),
                );
            }
            None
        }
    }
}

impl CorsPlugin {
    pub fn access(&self, req: &mut RequestCtx<'_>) -> Flow {
        match self.0.access(req.method, req.headers) {
            None => Flow::Continue,
            Some(headers) => {
                let mut resp = Response::new(body::empty());
                *resp.status_mut() = StatusCode::OK;
                *resp.headers_mut() = headers;
                resp.headers_mut().insert(
                    http::header::CONTENT_LENGTH,
                    http::HeaderValue::from_static("0"),
                );
                Flow::Respond(resp)
            }
        }
    }

    pub fn header_filter(&self, method: &http::Method, req: &HeaderMap, resp: &mut HeaderMap) {
        if self.0.is_preflight(method, req) {
            // Either we answered it (headers already set) or preflight_continue sent it
            // upstream, in which case Kong adds nothing.
            return;
        }
        self.0.header_filter(method, req, resp);
    }
}
