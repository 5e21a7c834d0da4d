//! The embedded Lua (PUC Lua 5.1, the language of Kong's LuaJIT) that runs
//! request-transformer templates and pre-/post-function snippets, with the subset of
//! Kong's PDK that real configs use (`pdk.rs`).
//!
//! Config load: every template and snippet is syntax-checked (compiled, never run) and
//! becomes a [`Chunk`] with a process-unique id; a bad one is a config error.
//!
//! Threads: an mlua state is not `Send`, so each worker thread that runs Lua owns one
//! VM (`thread_local!`), with no lock anywhere. The first time a thread runs a chunk it
//! compiles the source into its VM and caches the function by chunk id; later requests
//! only call it. The cache holds a `Weak` of each chunk, so chunks of a replaced config
//! are swept once the old snapshot is gone. Plugins of one request run back to back on
//! one thread (each worker runs one single-threaded runtime).
//!
//! Per-request tables (`kong.ctx.shared`, `ngx.ctx`) belong to the request, not to the
//! VM: the access phase may await between two plugins (oauth2-resource fetching
//! signing keys) while other requests run Lua on the same thread. When another
//! request's session begins, the current request's tables are parked in the VM under
//! its request id and come back at its next session; a [`LuaRequest`] guard in the
//! request's extensions frees them when the request ends.
//!
//! Sandbox: chunks see Kong's sandbox environment (safe base functions, `string`,
//! `table`, `math`, `os.clock/date/difftime/time`, `coroutine`, `kong`, `ngx`), never
//! the VM's globals; `io`, `debug`, `package`, `load*`, `dofile`, `getfenv`/`setfenv`,
//! `getmetatable`/`setmetatable`, `raw*`, `collectgarbage` and `string.dump` are absent
//! and `require` refuses. Each call gets a budget of [`BUDGET_INSTRUCTIONS`] VM
//! instructions (a count hook inherited by coroutines); once spent, every hook tick
//! errors and the sandbox's `pcall`/`xpcall`/`coroutine.resume` re-raise, so even
//! `while true do pcall(f) end` ends. The VM has a memory limit, and a VM left near it
//! is rebuilt. A failing call is an error for the caller (a 500), never a panic.
//!
//! Why PUC Lua 5.1 and not LuaJIT: with mlua's `luajit` feature the memory limit works
//! (GC64 takes mlua's allocator), but the instruction budget needs the JIT off (hooks
//! do not run inside compiled traces), and then the Supabase chain measured no faster
//! (`benches/chain.rs`): a template's cost is the Rust/Lua boundary, not the bytecode.

pub mod args;
mod native;
mod pdk;
pub mod template;

pub(crate) use pdk::settable_method;
pub use template::Template;

use crate::body::Body;
use crate::context::RequestCtx;
use crate::router::Captures;
use crate::yaml::raw::Pos;
use mlua::chunk::ChunkMode;
use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};
use pdk::{ReqState, Slot, TemplateRun};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// VM instructions between two budget checks.
const HOOK_EVERY: u32 = 1000;
/// Budget checks per call.
const BUDGET_TICKS: u32 = 1000;
/// Instructions one template or snippet call may run.
pub const BUDGET_INSTRUCTIONS: u64 = HOOK_EVERY as u64 * BUDGET_TICKS as u64;
/// Memory limit of one thread's VM (all chunks and their data).
pub const MEMORY_LIMIT: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A request-transformer template: returns the rendered string.
    Template,
    /// A pre-/post-function snippet: run for its effects (or returns a function to run).
    Snippet,
}

#[derive(Debug)]
struct ChunkInner {
    id: u64,
    name: String,
    code: String,
    kind: Kind,
    /// The source mentions `shared` (`kong.ctx.shared`): see [`Chunk::reads_shared`].
    shared: bool,
}

/// Lua source that passed the syntax check at config load.
#[derive(Clone, Debug)]
pub struct Chunk(Arc<ChunkInner>);

impl Chunk {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn source(&self) -> &str {
        &self.0.code
    }

    /// Whether the source mentions `shared`, found once at load (a template that may
    /// read `kong.ctx.shared` can render differently twice in one request).
    pub fn reads_shared(&self) -> bool {
        self.0.shared
    }
}

/// Why a Lua call failed, for the log (the client gets a plain 500).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuaError(pub String);

impl fmt::Display for LuaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl LuaError {
    fn new(s: impl Into<String>) -> Self {
        LuaError(s.into())
    }
}

/// Compiles a pre-/post-function snippet (syntax check only).
pub fn snippet(name: &str, code: &str) -> Result<Chunk, String> {
    compile_chunk(name, code.to_string(), Kind::Snippet)
}

pub(crate) fn compile_chunk(name: &str, code: String, kind: Kind) -> Result<Chunk, String> {
    syntax_check(name, &code)?;
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    Ok(Chunk(Arc::new(ChunkInner {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        name: name.to_string(),
        shared: code.contains("shared"),
        code,
        kind,
    })))
}

fn load<'a>(lua: &'a Lua, name: &str, code: &'a str) -> mlua::chunk::Chunk<'a> {
    // Text only: a YAML escape can spell Lua bytecode, which would bypass the sandbox.
    lua.load(code)
        .set_name(format!("={name}"))
        .set_mode(ChunkMode::Text)
}

fn syntax_check(name: &str, code: &str) -> Result<(), String> {
    thread_local! {
        static CHECKER: RefCell<Option<Lua>> = const { RefCell::new(None) };
    }
    CHECKER.with(|cell| {
        let mut slot = cell
            .try_borrow_mut()
            .map_err(|_| "the Lua syntax checker is busy".to_string())?;
        if slot.is_none() {
            *slot = Some(
                Lua::new_with(StdLib::NONE, LuaOptions::new())
                    .map_err(|e| format!("cannot start Lua: {e}"))?,
            );
        }
        let Some(lua) = slot.as_ref() else {
            return Err("cannot start Lua".to_string());
        };
        load(lua, name, code)
            .into_function()
            .map(|_| ())
            .map_err(|e| describe(&e))
    })
}

/// Where a Lua error in a config string points in the file: the Lua line counted from
/// the scalar's position, which for a block scalar (`|`) is its first content line, so
/// the result is exact there (and the scalar's own position for one-line values).
pub fn error_pos(pos: Pos, chunk: &str, message: &str) -> Pos {
    let line = message
        .strip_prefix(chunk)
        .and_then(|r| r.strip_prefix(':'))
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse::<u64>().ok());
    match line {
        Some(l) if l > 1 => Pos {
            line: pos.line + l - 1,
            col: pos.col,
        },
        _ => pos,
    }
}

/// A Lua error as one readable line: the Lua position and message, without mlua's
/// wrapping and tracebacks.
pub(crate) fn describe(e: &mlua::Error) -> String {
    match e {
        mlua::Error::SyntaxError { message, .. } => strip_traceback(message),
        mlua::Error::RuntimeError(m) => strip_traceback(m),
        mlua::Error::MemoryError(_) => "not enough memory (Lua memory limit reached)".into(),
        mlua::Error::CallbackError { traceback, cause } => {
            let inner = describe(cause);
            match first_lua_frame(traceback) {
                Some(at) if !inner.starts_with(&at) => format!("{at}: {inner}"),
                _ => inner,
            }
        }
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", describe(cause)),
        mlua::Error::ExternalError(err) => err.to_string(),
        other => other.to_string(),
    }
}

fn strip_traceback(m: &str) -> String {
    m.split("\nstack traceback:")
        .next()
        .unwrap_or(m)
        .trim_end()
        .to_string()
}

/// `access[0]:3` out of `\taccess[0]:3: in main chunk`, skipping C frames.
fn first_lua_frame(traceback: &str) -> Option<String> {
    traceback.lines().skip(1).find_map(|l| {
        let l = l.trim();
        if l.starts_with("[C]") {
            return None;
        }
        l.split_once(": in ").map(|(at, _)| at.to_string())
    })
}

// ------------------------------------------------------------------ the per-thread VM

struct Flags {
    ticks: Cell<u32>,
    exhausted: Cell<bool>,
    exited: Cell<bool>,
}

impl Flags {
    fn reset(&self) {
        self.ticks.set(BUDGET_TICKS);
        self.exhausted.set(false);
        self.exited.set(false);
    }
}

struct Cached {
    chunk: Weak<ChunkInner>,
    func: Function,
    /// Kong runs a snippet's chunk once; if it returns a function, that function is
    /// what runs from then on (keeping its upvalues per worker).
    resolved: bool,
}

struct Engine {
    lua: Lua,
    flags: Rc<Flags>,
    new_env: Function,
    /// "shared" and "ngx_ctx": the per-request tables' keys in `current`.
    request_keys: [mlua::LuaString; 2],
    template_meta: Table,
    tostring: Function,
    fresh: Function,
    current: Table,
    /// The request the per-request tables belong to; lent to `ReqState` during calls.
    request: String,
    /// Per-request tables of requests waiting between two sessions: request id →
    /// `{ shared, ngx_ctx }`.
    parked: Table,
    /// The ids `parked` holds, so a request with nothing parked costs no Lua string.
    parked_ids: std::collections::HashSet<String>,
    /// Requests that have ended (their guards push here, from any thread).
    ended: Ended,
    cache: HashMap<u64, Cached>,
    sweep_at: usize,
    broken: bool,
}

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
}

/// Ids of requests that have ended, for the VM that holds their parked tables.
type Ended = Arc<std::sync::Mutex<Vec<String>>>;

/// In a request's extensions once Lua left per-request tables for it; the VM frees
/// them when the request (and so this) is dropped.
#[derive(Clone)]
pub struct LuaRequest {
    _end: Arc<RequestEnd>,
}

struct RequestEnd {
    id: String,
    ended: Ended,
}

impl Drop for RequestEnd {
    fn drop(&mut self) {
        let mut list = match self.ended.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        list.push(std::mem::take(&mut self.id));
    }
}

impl Engine {
    fn new() -> mlua::Result<Engine> {
        let lua = Lua::new_with(
            StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::OS,
            LuaOptions::new(),
        )?;
        lua.set_memory_limit(MEMORY_LIMIT)?;
        let flags = Rc::new(Flags {
            ticks: Cell::new(BUDGET_TICKS),
            exhausted: Cell::new(false),
            exited: Cell::new(false),
        });
        let hook_flags = Rc::clone(&flags);
        // Global: coroutines created by the snippet inherit the hook.
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                let left = hook_flags.ticks.get();
                if left == 0 {
                    hook_flags.exhausted.set(true);
                    return Err(mlua::Error::runtime(format!(
                        "instruction budget exceeded ({BUDGET_INSTRUCTIONS} instructions)"
                    )));
                }
                hook_flags.ticks.set(left - 1);
                Ok(VmState::Continue)
            },
        )?;
        let installed = pdk::install(&lua, &flags)?;
        let template_meta = lua.create_table()?;
        template_meta.raw_set("__index", installed.tenv.clone())?;
        let tostring: Function = lua.globals().raw_get("tostring")?;
        lua.set_app_data(Slot::default());
        let request_keys = [lua.create_string("shared")?, lua.create_string("ngx_ctx")?];
        let parked = lua.create_table()?;
        Ok(Engine {
            lua,
            flags,
            new_env: installed.new_env,
            request_keys,
            template_meta,
            tostring,
            fresh: installed.fresh,
            current: installed.current,
            request: String::new(),
            parked,
            parked_ids: std::collections::HashSet::new(),
            ended: Ended::default(),
            cache: HashMap::new(),
            sweep_at: 64,
            broken: false,
        })
    }

    /// Per request: fresh `kong.ctx.shared` and `ngx.ctx` (made on first use, so
    /// only a request that used them has any to drop). A plugin run's template state
    /// lives in its `Session`.
    fn begin(&mut self, request_id: &str) -> mlua::Result<()> {
        if self.request == request_id {
            return Ok(());
        }
        let ended = {
            let mut list = match self.ended.lock() {
                Ok(l) => l,
                Err(p) => p.into_inner(),
            };
            std::mem::take(&mut *list)
        };
        for id in &ended {
            if self.parked_ids.remove(id) {
                self.parked.raw_set(id.as_str(), Value::Nil)?;
            }
        }
        // The outgoing request's tables: parked if it may come back, else dropped.
        let outgoing_ended = ended.contains(&self.request);
        let mut out: [Value; 2] = [Value::Nil, Value::Nil];
        for (slot, k) in out.iter_mut().zip(&self.request_keys) {
            // A raw_get costs far less than a (memory-checked) raw_set.
            *slot = self.current.raw_get::<Value>(k)?;
            if !slot.is_nil() {
                self.current.raw_set(k, Value::Nil)?;
            }
        }
        if !outgoing_ended && out.iter().any(|v| !v.is_nil()) {
            let t = self.lua.create_table_with_capacity(0, 2)?;
            for (v, k) in out.into_iter().zip(&self.request_keys) {
                t.raw_set(k, v)?;
            }
            self.parked.raw_set(self.request.as_str(), t)?;
            self.parked_ids.insert(self.request.clone());
        }
        if self.parked_ids.remove(request_id) {
            if let Value::Table(t) = self.parked.raw_get::<Value>(request_id)? {
                for k in &self.request_keys {
                    self.current.raw_set(k, t.raw_get::<Value>(k)?)?;
                }
            }
            self.parked.raw_set(request_id, Value::Nil)?;
        }
        self.request.clear();
        self.request.push_str(request_id);
        Ok(())
    }

    /// Whether the current request has per-request tables (so needs a guard).
    fn has_request_tables(&self) -> bool {
        self.request_keys
            .iter()
            .any(|k| self.current.raw_get::<Value>(k).is_ok_and(|v| !v.is_nil()))
    }

    /// The thread's function for `chunk`, compiling it on first use.
    fn function(&mut self, chunk: &Chunk) -> Result<(Function, bool), LuaError> {
        if let Some(c) = self.cache.get(&chunk.0.id) {
            return Ok((c.func.clone(), c.resolved));
        }
        let env = match chunk.0.kind {
            Kind::Template => {
                let env = self.lua.create_table().map_err(|e| err(&e))?;
                env.raw_set("__tostring", self.tostring.clone())
                    .map_err(|e| err(&e))?;
                env.raw_set("__fresh", self.fresh.clone())
                    .map_err(|e| err(&e))?;
                env.set_metatable(Some(self.template_meta.clone()))
                    .map_err(|e| err(&e))?;
                env
            }
            Kind::Snippet => self.new_env.call::<Table>(()).map_err(|e| err(&e))?,
        };
        let func = load(&self.lua, &chunk.0.name, &chunk.0.code)
            .set_environment(env)
            .into_function()
            .map_err(|e| err(&e))?;
        if self.cache.len() >= self.sweep_at {
            self.cache.retain(|_, c| c.chunk.strong_count() > 0);
            self.sweep_at = (self.cache.len() * 2).max(64);
        }
        self.cache.insert(
            chunk.0.id,
            Cached {
                chunk: Arc::downgrade(&chunk.0),
                func: func.clone(),
                resolved: false,
            },
        );
        Ok((func, false))
    }

    /// After a plugin run: collect garbage when the VM grows, and rebuild a VM that
    /// stays near its limit (a snippet hoarding data in its globals).
    fn maintain(&mut self) {
        if self.lua.used_memory() > MEMORY_LIMIT / 2 {
            let _ = self.lua.gc_collect();
            let _ = self.lua.gc_collect();
            if self.lua.used_memory() > MEMORY_LIMIT / 2 {
                tracing::warn!(
                    used = self.lua.used_memory(),
                    "Lua VM near its memory limit; rebuilding it"
                );
                self.broken = true;
            }
        }
    }
}

fn err(e: &mlua::Error) -> LuaError {
    LuaError(describe(e))
}

// ------------------------------------------------------------------ sessions

/// One plugin run's access to Lua and to the request.
pub struct Session<'s, 'c> {
    engine: Option<&'s mut Engine>,
    /// Whether the engine has been switched to this request (`Engine::begin`): only
    /// when Lua really runs, not for templates rendered in Rust.
    begun: bool,
    pub ctx: &'s mut RequestCtx<'c>,
    plugin: &'static str,
    captures: Option<Captures>,
    template: TemplateRun,
    exit: Option<http::Response<Body>>,
}

/// Runs `f` with a session. With `lua` false nothing touches the VM (constant
/// templates); rendering a Lua template then is an error.
pub fn session<R>(
    ctx: &mut RequestCtx<'_>,
    plugin: &'static str,
    lua: bool,
    f: impl FnOnce(&mut Session<'_, '_>) -> Result<R, LuaError>,
) -> Result<R, LuaError> {
    if !lua {
        let mut s = Session {
            engine: None,
            begun: false,
            ctx,
            plugin,
            captures: None,
            template: TemplateRun::default(),
            exit: None,
        };
        return f(&mut s);
    }
    ENGINE.with(|cell| {
        let mut slot = cell
            .try_borrow_mut()
            .map_err(|_| LuaError::new("the Lua VM of this thread is busy"))?;
        if slot.as_ref().is_none_or(|e| e.broken) {
            *slot = None;
            *slot = Some(Engine::new().map_err(|e| err(&e))?);
        }
        let Some(engine) = slot.as_mut() else {
            return Err(LuaError::new("cannot start Lua"));
        };
        let mut s = Session {
            engine: Some(engine),
            begun: false,
            ctx,
            plugin,
            captures: None,
            template: TemplateRun::default(),
            exit: None,
        };
        let out = f(&mut s);
        let begun = s.begun;
        drop(s);
        if begun && let Some(engine) = slot.as_mut() {
            // The first session that leaves per-request tables gives the request the
            // guard that frees them once it ends.
            if engine.has_request_tables() && ctx.extensions.get::<LuaRequest>().is_none() {
                ctx.extensions.insert(LuaRequest {
                    _end: Arc::new(RequestEnd {
                        id: ctx.request_id.to_string(),
                        ended: Arc::clone(&engine.ended),
                    }),
                });
            }
            engine.maintain();
        }
        out
    })
}

impl Session<'_, '_> {
    /// Renders a template (always a string; `nil` renders as "").
    pub fn render(&mut self, t: &Template) -> Result<Vec<u8>, LuaError> {
        match t {
            Template::Const(v) => Ok(v.clone()),
            Template::Lua(chunk, native) => {
                if let Some(n) = native
                    && let Ok(v) = self.render_native(n)
                {
                    return Ok(v);
                }
                let (func, _) = self.engine()?.function(chunk)?;
                match self.call(&func)? {
                    Value::String(s) => Ok(s.as_bytes().to_vec()),
                    Value::Nil => Ok(Vec::new()),
                    other => Err(LuaError(format!(
                        "template {} returned a {}",
                        chunk.name(),
                        other.type_name()
                    ))),
                }
            }
        }
    }

    /// `t` rendered in Rust: what Lua would give, or `Fallback` (see `native`).
    fn render_native(&mut self, n: &native::Native) -> Result<Vec<u8>, native::Fallback> {
        if n.reads_query() && self.template.query.is_none() {
            self.template.query = Some(pdk::query_args(self.ctx.uri));
        }
        if n.reads_headers() {
            self.template.headers_read = true;
        }
        n.render(&native::Input {
            headers: self.template.headers.as_ref().unwrap_or(self.ctx.headers),
            query: self.template.query.as_ref(),
        })
    }

    /// Called before the plugin changes the request's headers when templates may
    /// still render afterwards in this run: if a template has already read
    /// `headers`, the later ones keep seeing them as they were (Kong loads the
    /// template environment's `headers` once per run). Copies only in that case.
    pub fn keep_template_headers(&mut self) {
        if self.template.headers_read && self.template.headers.is_none() {
            self.template.headers = Some(self.ctx.headers.clone());
        }
    }

    /// Runs a snippet; afterwards `take_exit` tells whether it answered the request.
    pub fn run_snippet(&mut self, chunk: &Chunk) -> Result<(), LuaError> {
        let (func, resolved) = self.engine()?.function(chunk)?;
        if resolved {
            self.call(&func)?;
            return Ok(());
        }
        if let Some(c) = self.engine()?.cache.get_mut(&chunk.0.id) {
            c.resolved = true;
        }
        let first = self.call(&func)?;
        if self.exit.is_some() {
            return Ok(());
        }
        if let Value::Function(inner) = first {
            if let Some(c) = self.engine()?.cache.get_mut(&chunk.0.id) {
                c.func = inner.clone();
            }
            self.call(&inner)?;
        }
        Ok(())
    }

    /// The response a snippet gave with `kong.response.exit` / `kong.response.error`.
    pub fn take_exit(&mut self) -> Option<http::Response<Body>> {
        self.exit.take()
    }

    fn engine(&mut self) -> Result<&mut Engine, LuaError> {
        let id = self.ctx.request_id;
        let engine = self
            .engine
            .as_deref_mut()
            .ok_or_else(|| LuaError::new("Lua is not enabled for this plugin run"))?;
        if !self.begun {
            engine.begin(id).map_err(|e| err(&e))?;
            self.begun = true;
        }
        Ok(engine)
    }

    /// Calls `func` with the request moved into the VM (cheap moves, no copies),
    /// within the instruction budget, and moves it back whatever happens.
    fn call(&mut self, func: &Function) -> Result<Value, LuaError> {
        self.engine()?;
        let Some(engine) = self.engine.as_deref_mut() else {
            return Err(LuaError::new("Lua is not enabled for this plugin run"));
        };
        let state = ReqState {
            plugin: self.plugin,
            request_id: std::mem::take(&mut engine.request),
            method: self.ctx.method.clone(),
            headers: std::mem::take(self.ctx.headers),
            uri: std::mem::take(self.ctx.uri),
            body: self.ctx.body.as_deref_mut().map(std::mem::take),
            captures: self
                .captures
                .take()
                .unwrap_or_else(|| self.ctx.captures.clone()),
            upstream: std::mem::take(self.ctx.upstream),
            client_ip: self.ctx.client_ip,
            exit: None,
            template: std::mem::take(&mut self.template),
        };
        let unset = match engine.lua.app_data_mut::<Slot>() {
            Some(mut slot) => {
                slot.0 = Some(state);
                None
            }
            None => Some(state),
        };
        if let Some(state) = unset {
            engine.lua.set_app_data(Slot(Some(state)));
        }
        engine.flags.reset();
        let result = func.call::<Value>(());
        let back = engine
            .lua
            .app_data_mut::<Slot>()
            .and_then(|mut slot| slot.0.take());
        let (exhausted, exited) = (engine.flags.exhausted.get(), engine.flags.exited.get());
        if let Err(mlua::Error::MemoryError(_)) = &result {
            engine.broken = true;
        }
        let Some(st) = back else {
            return Err(LuaError::new(
                "the request state was lost during a Lua call",
            ));
        };
        engine.request = st.request_id;
        *self.ctx.headers = st.headers;
        *self.ctx.uri = st.uri;
        if let (Some(b), Some(nb)) = (self.ctx.body.as_deref_mut(), st.body) {
            *b = nb;
        }
        *self.ctx.upstream = st.upstream;
        self.captures = Some(st.captures);
        self.template = st.template;
        if st.exit.is_some() {
            self.exit = st.exit;
        }
        match result {
            Ok(v) => Ok(v),
            Err(_) if exited && self.exit.is_some() => Ok(Value::Nil),
            Err(e) if exhausted => Err(LuaError(format!(
                "instruction budget exceeded ({BUDGET_INSTRUCTIONS} instructions): {}",
                describe(&e)
            ))),
            Err(e) => Err(err(&e)),
        }
    }
}

#[cfg(test)]
mod tests;
