//! Configuration, flowing one way:
//!
//! ```text
//! file text ──raw::parse──▶ positioned YAML tree ──decode──▶ model::Config
//!           (syntax errors)           (every schema error, file:line:col)
//!     ──compile──▶ Snapshot (router, per-route plugin chains, upstream clients)
//! ```
//!
//! `load` runs all three and returns either a ready snapshot or every error found.

pub mod compile;
pub mod decode;
pub mod model;
pub mod snapshot;

// The YAML tree and its walker live in `crate::yaml` (below `plugins`); these keep
// the `config::raw` and `config::walk` paths working.
pub use crate::yaml::{raw, walk};

use crate::config::snapshot::Snapshot;
use crate::upstream::ClientCache;
use sha2::Digest;
pub use walk::{ConfigError, ConfigErrors};

/// Reads and validates a config file into a `model::Config` (no upstream clients).
pub fn load_config(path: &str, text: &str) -> Result<model::Config, ConfigErrors> {
    let env = |name: &str| std::env::var(name).ok();
    load_config_with_env(path, text, &env)
}

pub fn load_config_with_env(
    path: &str,
    text: &str,
    env: walk::EnvLookup<'_>,
) -> Result<model::Config, ConfigErrors> {
    let cfg = decode_config(path, text, env)?;
    match compile::check_router(path, &cfg) {
        errors if errors.is_empty() => Ok(cfg),
        errors => Err(sorted(errors)),
    }
}

/// Parse and decode, without the router check.
fn decode_config(
    path: &str,
    text: &str,
    env: walk::EnvLookup<'_>,
) -> Result<model::Config, ConfigErrors> {
    let root = raw::parse(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_string(),
            pos: e.pos,
            message: e.message,
        }])
    })?;
    let mut ctx = walk::Ctx::new(path, env);
    let cfg = decode::decode(&root, &mut ctx);
    // The tree is done with: freed before the router is built, not kept alongside it
    // (the tree of 10,000 routes was ~6 MiB, and the allocator keeps a load's peak
    // resident).
    drop(root);
    if ctx.errors.is_empty() {
        Ok(cfg)
    } else {
        Err(sorted(ctx.errors))
    }
}

fn sorted(mut errors: Vec<ConfigError>) -> ConfigErrors {
    errors.sort_by_key(|e| (e.pos.line, e.pos.col));
    ConfigErrors(errors)
}

/// Reads the file at `path`, validates it fully, and compiles a snapshot.
pub fn load(path: &str, generation: u64, clients: &ClientCache) -> Result<Snapshot, ConfigErrors> {
    let text = std::fs::read(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_string(),
            pos: raw::Pos { line: 1, col: 1 },
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    load_bytes(path, &text, generation, clients)
}

pub fn load_bytes(
    path: &str,
    text: &[u8],
    generation: u64,
    clients: &ClientCache,
) -> Result<Snapshot, ConfigErrors> {
    let hash = hex::encode(sha2::Sha256::digest(text));
    let text = std::str::from_utf8(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_string(),
            pos: raw::Pos { line: 1, col: 1 },
            message: format!("the config file is not valid UTF-8: {e}"),
        }])
    })?;
    let env = |name: &str| std::env::var(name).ok();
    let cfg = decode_config(path, text, &env)?;
    // The router is built once, by `compile` (over the routable routes), not first for
    // the check as well; the routes `compile` leaves out are checked alone. Same errors
    // as `load_config`.
    if !compile::unroutable_compile(&cfg) {
        return Err(sorted(compile::check_router(path, &cfg)));
    }
    compile::compile(cfg, path, hash, generation, clients).map_err(sorted)
}
