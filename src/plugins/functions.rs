//! pre-function (PRIORITY 1000000) and post-function (PRIORITY -1000): Lua snippets
//! run in the access phase, in order, in the sandbox of `crate::lua` with the Kong
//! PDK subset it provides. As in Kong, a snippet that returns a function is run once
//! to get that function, which then runs on every request (keeping its upvalues per
//! worker thread).
//!
//! Kong's other phase arrays (`certificate`, `rewrite`, `header_filter`,
//! `body_filter`, `log`) are syntax-checked, but a non-empty one is refused at load:
//! running access snippets at another time would be silently wrong.

use super::{Flow, RequestCtx};
use crate::error::GatewayError;
use crate::lua::{self, Chunk};
use crate::yaml::raw::{Node, Pos, Value};
use crate::yaml::walk::Ctx;
use http::Method;

const PHASES: [&str; 6] = [
    "certificate",
    "rewrite",
    "access",
    "header_filter",
    "body_filter",
    "log",
];

#[derive(Debug)]
pub struct Functions {
    name: &'static str,
    access: Vec<Chunk>,
    needs_body: bool,
}

pub fn decode(
    name: &'static str,
    config: Option<&Node>,
    pos: Pos,
    ctx: &mut Ctx<'_>,
) -> Option<Functions> {
    let what = format!("plugin '{name}'.config");
    let at_least_one = || {
        format!(
            "{what}: at least one of these fields must be non-empty: {}",
            PHASES
                .iter()
                .map(|p| format!("'config.{p}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let Some(config) = config.filter(|c| !matches!(c.value, Value::Null)) else {
        ctx.err(pos, at_least_one());
        return None;
    };
    let mut f = ctx.fields(config, &what)?;
    let before = ctx.errors.len();
    let mut out = Functions {
        name,
        access: Vec::new(),
        needs_body: false,
    };
    let mut any = false;
    for phase in PHASES {
        let key_pos = f.key_pos(phase);
        let snippets = ctx.strings(f.get(phase), &format!("{what}.{phase}"));
        if snippets.is_empty() {
            continue;
        }
        any = true;
        for (i, (code, spos)) in snippets.into_iter().enumerate() {
            let label = format!("{phase}[{i}]");
            match lua::snippet(&label, &code) {
                Ok(chunk) if phase == "access" => out.access.push(chunk),
                Ok(_) => {}
                Err(e) => ctx.err(
                    lua::error_pos(spos, &label, &e),
                    format!("{what}.{label}: error parsing {name}: {e}"),
                ),
            }
        }
        if phase != "access" {
            ctx.err(
                key_pos.unwrap_or(config.pos),
                format!(
                    "{what}.{phase}: the '{phase}' phase is not supported by Portcullis (only 'access' runs); refusing to load rather than skip it"
                ),
            );
        }
    }
    f.finish(ctx, &what);
    if !any && ctx.errors.len() == before {
        ctx.err(config.pos, at_least_one());
    }
    out.needs_body = out
        .access
        .iter()
        .any(|c| c.source().contains("get_raw_body") || c.source().contains("set_raw_body"));
    (ctx.errors.len() == before).then_some(out)
}

impl Functions {
    /// Buffered only when a snippet reads or replaces the raw body.
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }

    pub fn explain(&self) -> String {
        format!(
            "runs {} Lua snippet(s); passes unless one answers",
            self.access.len()
        )
    }

    pub fn access(&self, req: &mut RequestCtx<'_>) -> Flow {
        let result = lua::session(req, self.name, true, |s| {
            for chunk in &self.access {
                s.run_snippet(chunk)?;
                if let Some(resp) = s.take_exit() {
                    return Ok(Some(resp));
                }
            }
            Ok(None)
        });
        match result {
            Ok(Some(resp)) => Flow::Respond(resp),
            Ok(None) => Flow::Continue,
            Err(e) => {
                tracing::error!(
                    plugin = self.name,
                    request_id = req.request_id,
                    error = %e,
                    "Lua snippet failed"
                );
                Flow::Respond(GatewayError::Internal.response(
                    req.headers,
                    req.method == Method::HEAD,
                    req.request_id,
                ))
            }
        }
    }
}
