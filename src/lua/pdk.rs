//! The Kong PDK subset and the sandbox environment, installed once per VM.
//!
//! While a chunk runs, the request lives in the VM's app data as a [`ReqState`]
//! (moved in and out of a [`Slot`] by `Session::call`), so the PDK functions are plain
//! functions created once per VM: nothing is built per request but the tables a chunk
//! asks for. Templates read headers through one view table per VM whose `__index`
//! looks the name up in the request (no table of every header per request).

use super::Flags;
use super::args::{ArgValue, Args, escape_component, unescape_uri};
use crate::body::{self, Body};
use crate::context::UpstreamOverrides;
use crate::router::Captures;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};
use mlua::{Function, Lua, Table, Value, Variadic};
use std::net::IpAddr;
use std::rc::Rc;

/// The request as Lua sees and changes it during one call.
pub(crate) struct ReqState {
    pub plugin: &'static str,
    pub request_id: String,
    /// The client's method (an override is in `upstream.method`).
    pub method: Method,
    pub headers: HeaderMap,
    pub uri: Uri,
    /// The buffered body, when the chain buffers it.
    pub body: Option<Bytes>,
    pub captures: Captures,
    pub upstream: UpstreamOverrides,
    pub client_ip: IpAddr,
    /// Set by `kong.response.exit` / `kong.response.error`.
    pub exit: Option<Response<Body>>,
    /// What request-transformer templates have read in this plugin run.
    pub template: TemplateRun,
}

/// The template environment's state for one plugin run (Kong builds `template_env`
/// per run and loads each of its tables once, on first use).
#[derive(Default)]
pub(crate) struct TemplateRun {
    /// A template has looked up a header.
    pub headers_read: bool,
    /// The headers as templates first read them, once the plugin has changed the
    /// request's (see `Session::keep_template_headers`).
    pub headers: Option<HeaderMap>,
    /// The query arguments, parsed on first use.
    pub query: Option<Args>,
}

/// The VM's app data: the request while a chunk runs, None otherwise. Set once per VM,
/// so a call moves the request in and out without allocating.
#[derive(Default)]
pub(crate) struct Slot(pub Option<ReqState>);

pub(crate) struct Installed {
    pub new_env: Function,
    /// Called first by every template (see `template::to_lua`).
    pub fresh: Function,
    pub tenv: Table,
    pub current: Table,
}

const REG_HEADER_MT: &str = "portcullis.header_mt";

/// Runs once per VM with the real globals (trusted code). It builds, from the Rust
/// functions in `P`, a fresh sandbox environment per chunk, so a chunk that changes
/// its `kong` or `string` tables changes only its own.
const SETUP: &str = r##"
local P, aborted = ...
local error, type, tostring, select, unpack, setmetatable, rawget, pcall, xpcall =
      error, type, tostring, select, unpack, setmetatable, rawget, pcall, xpcall
local co_create, co_resume, co_running, co_status, co_wrap, co_yield =
      coroutine.create, coroutine.resume, coroutine.running, coroutine.status,
      coroutine.wrap, coroutine.yield
local string_lib, table_lib, math_lib, os_lib = string, table, math, os
string.dump = nil

-- Once the budget is spent or the request answered, nothing may swallow the error.
local function check(ok, ...)
  if not ok and aborted() then error((...), 0) end
  return ok, ...
end
local function safe_pcall(f, ...) return check(pcall(f, ...)) end
local function safe_xpcall(f, h) return check(xpcall(f, h)) end
local function safe_resume(co, ...) return check(co_resume(co, ...)) end

local function denied_require(name)
  error(("require '%s' not allowed within sandbox"):format(tostring(name)), 2)
end

local function pick(src, names)
  local t = {}
  for n in names:gmatch("%S+") do t[n] = src[n] end
  return t
end

local function group(prefix, names)
  local t = {}
  for n in names:gmatch("%S+") do t[n] = P[prefix .. n] end
  return t
end

-- Per request: `shared` (kong.ctx.shared) and `ngx_ctx` (ngx.ctx), made on first use.
local current = setmetatable({}, { __index = function(t, k)
  if k == "shared" or k == "ngx_ctx" then
    local v = {}
    rawset(t, k, v)
    return v
  end
end })

-- ngx.req.get_headers(): a miss retries lower-cased with `_` as `-`.
local header_mt = { __index = function(t, k)
  if type(k) == "string" then
    local n = k:lower():gsub("_", "-")
    if n ~= k then return rawget(t, n) end
  end
end }

local function per_request(field, key)
  return {
    __index = function(_, k) if k == key then return current[field] end end,
    __newindex = function(t, k, v)
      if k == key then current[field] = v else rawset(t, k, v) end
    end,
  }
end

local function new_kong()
  return {
    request = group("request.", "get_header get_headers get_query get_query_arg get_path " ..
      "get_raw_path get_path_with_query get_method get_raw_query get_host get_raw_body"),
    service = { request = group("service.request.", "set_header add_header clear_header " ..
      "set_headers set_path set_query set_raw_query clear_query_arg set_method set_raw_body") },
    response = group("response.", "exit error"),
    log = group("log.", "emerg alert crit err warn notice info debug"),
    client = group("client.", "get_forwarded_ip"),
    ctx = setmetatable({}, per_request("shared", "shared")),
  }
end

local function new_ngx()
  local ngx = group("ngx.", "log time now encode_base64 decode_base64 escape_uri unescape_uri")
  ngx.STDERR, ngx.EMERG, ngx.ALERT, ngx.CRIT, ngx.ERR = 0, 1, 2, 3, 4
  ngx.WARN, ngx.NOTICE, ngx.INFO, ngx.DEBUG = 5, 6, 7, 8
  ngx.HTTP_OK, ngx.HTTP_BAD_REQUEST, ngx.HTTP_UNAUTHORIZED, ngx.HTTP_FORBIDDEN = 200, 400, 401, 403
  ngx.HTTP_NOT_FOUND, ngx.HTTP_INTERNAL_SERVER_ERROR, ngx.HTTP_SERVICE_UNAVAILABLE = 404, 500, 503
  return setmetatable(ngx, per_request("ngx_ctx", "ctx"))
end

local function new_env()
  local env = {
    _VERSION = _VERSION, assert = assert, error = error, ipairs = ipairs, next = next,
    pairs = pairs, pcall = safe_pcall, print = P.print, select = select,
    tonumber = tonumber, tostring = tostring, type = type, unpack = unpack,
    xpcall = safe_xpcall, require = denied_require,
    coroutine = { create = co_create, resume = safe_resume, running = co_running,
                  status = co_status, wrap = co_wrap, yield = co_yield },
    math = pick(math_lib, "abs acos asin atan atan2 ceil cos cosh deg exp floor fmod " ..
      "frexp huge ldexp log log10 max min modf pi pow rad random sin sinh sqrt tan tanh"),
    os = pick(os_lib, "clock date difftime time"),
    string = pick(string_lib, "byte char find format gmatch gsub len lower match rep " ..
      "reverse sub upper"),
    table = pick(table_lib, "concat foreach foreachi getn insert maxn remove sort"),
    kong = new_kong(),
    ngx = new_ngx(),
  }
  env.table.unpack = unpack
  env.table.pack = function(...) return { n = select("#", ...), ... } end
  env._G = env
  return env
end

-- request-transformer's template environment: `type` (repeated headers are tables),
-- `shared` (kong.ctx.shared), and views of the request: `headers`, `query_params` and
-- `uri_captures` are tables made once per VM whose lookups read the current request
-- (Rust keeps what a plugin run has read), so a template builds no table per request.
-- Within one render each header is looked up in Rust once (nothing can change the
-- request while a template runs); `fresh`, which every template calls first, forgets.
local NONE = {}
local hcache = {}
local header_lookup = P.header_view
local headers_view = setmetatable({}, { __index = function(_, k)
  if type(k) ~= "string" then return nil end
  local v = hcache[k]
  if v == nil then
    v = header_lookup(k)
    if v == nil then v = NONE end
    hcache[k] = v
  end
  if v ~= NONE then return v end
end })
local function fresh()
  for k in next, hcache do hcache[k] = nil end
end
local query_view = setmetatable({}, { __index = P.query_view })
local captures_view = setmetatable({}, { __index = P.captures_view })
local tenv = setmetatable({ type = type, require = denied_require }, {
  __index = function(_, k)
    if k == "headers" then return headers_view
    elseif k == "query_params" then return query_view
    elseif k == "uri_captures" then return captures_view
    elseif k == "shared" then return current.shared end
  end,
  __newindex = function() error("This environment is read-only.", 2) end,
})

return new_env, tenv, current, header_mt, fresh
"##;

pub(crate) fn install(lua: &Lua, flags: &Rc<Flags>) -> mlua::Result<Installed> {
    let p = lua.create_table()?;
    register(lua, &p, flags)?;
    let aborted = {
        let flags = Rc::clone(flags);
        lua.create_function(move |_, ()| Ok(flags.exhausted.get() || flags.exited.get()))?
    };
    let setup = lua
        .load(SETUP)
        .set_name("=portcullis.sandbox")
        .into_function()?;
    let (new_env, tenv, current, header_mt, fresh): (Function, Table, Table, Table, Function) =
        setup.call((p, aborted))?;
    lua.set_named_registry_value(REG_HEADER_MT, header_mt)?;
    Ok(Installed {
        new_env,
        fresh,
        tenv,
        current,
    })
}

fn rt(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::runtime(msg.into())
}

fn no_state() -> mlua::Error {
    rt("the Kong PDK is only available while a plugin runs")
}

/// Runs `f` on the request state.
fn with<R>(lua: &Lua, f: impl FnOnce(&mut ReqState) -> mlua::Result<R>) -> mlua::Result<R> {
    let mut slot = lua.app_data_mut::<Slot>().ok_or_else(no_state)?;
    let st = slot.0.as_mut().ok_or_else(no_state)?;
    f(st)
}

fn register(lua: &Lua, p: &Table, flags: &Rc<Flags>) -> mlua::Result<()> {
    macro_rules! def {
        ($name:expr, $f:expr) => {
            p.raw_set($name, lua.create_function($f)?)?;
        };
    }

    // ---- kong.request
    def!("request.get_header", |lua, name: Value| {
        let name = name_arg(&name, "header name must be a string")?;
        let v = with(lua, |st| {
            Ok(get_header(&st.headers, &name).map(|v| v.to_vec()))
        })?;
        v.map(|v| lua.create_string(v)).transpose()
    });
    def!("request.get_headers", |lua, _max: Option<Value>| {
        let h = with(lua, |st| Ok(std::mem::take(&mut st.headers)))?;
        let t = headers_table(lua, &h);
        with(lua, |st| {
            st.headers = h;
            Ok(())
        })?;
        t
    });
    def!("request.get_query", |lua, _max: Option<Value>| {
        let args = with(lua, |st| Ok(query_args(&st.uri)))?;
        args_table(lua, &args)
    });
    def!("request.get_query_arg", |lua, name: Value| {
        let name = name_arg(&name, "query argument name must be a string")?;
        let args = with(lua, |st| Ok(query_args(&st.uri)))?;
        match args.get(name.as_bytes()).and_then(|v| v.first()) {
            None => Ok(Value::Nil),
            Some(ArgValue::Flag) => Ok(Value::Boolean(true)),
            Some(ArgValue::Str(s)) => Ok(Value::String(lua.create_string(s)?)),
        }
    });
    def!("request.get_path", |lua, ()| {
        let path = with(lua, |st| Ok(st.uri.path().to_string()))?;
        Ok(match crate::path::normalize(&path) {
            Ok(n) => crate::path::escape(&n).into_owned(),
            Err(_) => path,
        })
    });
    def!("request.get_raw_path", |lua, ()| {
        with(lua, |st| Ok(st.uri.path().to_string()))
    });
    def!("request.get_path_with_query", |lua, ()| {
        with(lua, |st| {
            Ok(st
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()))
        })
    });
    def!("request.get_method", |lua, ()| {
        with(lua, |st| {
            Ok(st
                .upstream
                .method
                .as_ref()
                .unwrap_or(&st.method)
                .as_str()
                .to_string())
        })
    });
    def!("request.get_raw_query", |lua, ()| {
        with(lua, |st| Ok(st.uri.query().unwrap_or("").to_string()))
    });
    def!("request.get_host", |lua, ()| {
        with(lua, |st| {
            let host = st
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| st.uri.host())
                .unwrap_or("");
            Ok(strip_port(host).to_ascii_lowercase())
        })
    });
    def!("request.get_raw_body", |lua, ()| {
        let body = with(lua, |st| Ok(st.body.clone()))?;
        match body {
            Some(b) => Ok((Value::String(lua.create_string(&b)?), Value::Nil)),
            None => Ok((
                Value::Nil,
                Value::String(lua.create_string("request body was not buffered")?),
            )),
        }
    });

    // ---- kong.service.request
    def!("service.request.set_header", |lua,
                                        (name, value): (
        Value,
        Value
    )| {
        let (name, values) = header_arg(&name, &value)?;
        with(lua, |st| set_header(st, name, values, false))
    });
    def!("service.request.add_header", |lua,
                                        (name, value): (
        Value,
        Value
    )| {
        let (name, values) = header_arg(&name, &value)?;
        with(lua, |st| set_header(st, name, values, true))
    });
    def!("service.request.clear_header", |lua, name: Value| {
        let name = name_arg(&name, "header must be a string")?;
        if let Ok(n) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
            with(lua, |st| {
                st.headers.remove(n);
                Ok(())
            })?;
        }
        Ok(())
    });
    def!("service.request.set_headers", |lua, t: Value| {
        let Value::Table(t) = t else {
            return Err(rt("headers must be a table"));
        };
        let mut all = Vec::new();
        for pair in t.pairs::<Value, Value>() {
            let (k, v) = pair?;
            if !matches!(k, Value::String(_)) {
                return Err(rt(format!(
                    "invalid header name {}: got {}, expected string",
                    show(&k),
                    k.type_name()
                )));
            }
            all.push(header_arg(&k, &v)?);
        }
        // Kong sets them in lexicographic order.
        all.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        with(lua, |st| {
            for (name, values) in all {
                set_header(st, name, values, false)?;
            }
            Ok(())
        })
    });
    def!("service.request.set_path", |lua, path: Value| {
        let Value::String(path) = path else {
            return Err(rt("path must be a string"));
        };
        let path = path.as_bytes().to_vec();
        if path.first() != Some(&b'/') {
            return Err(rt("path must start with /"));
        }
        let escaped = crate::path::escape(&path).into_owned();
        with(lua, |st| {
            st.upstream.path = Some(escaped);
            Ok(())
        })
    });
    def!("service.request.set_raw_query", |lua, q: Value| {
        let Value::String(q) = q else {
            return Err(rt("query must be a string"));
        };
        let q = q.to_string_lossy();
        with(lua, |st| set_query(&mut st.uri, &q))
    });
    def!("service.request.set_query", |lua, t: Value| {
        let Value::Table(t) = t else {
            return Err(rt("args must be a table"));
        };
        let q = ordered_args(&t)?;
        with(lua, |st| set_query(&mut st.uri, &q))
    });
    def!("service.request.clear_query_arg", |lua, name: Value| {
        let name = name_arg(&name, "query argument name must be a string")?;
        with(lua, |st| {
            let uri = crate::context::remove_query_arg(&st.uri, &name);
            let q = uri.query().unwrap_or("").replace('+', "%20");
            st.uri = uri;
            set_query(&mut st.uri, &q)
        })
    });
    def!("service.request.set_method", |lua, m: Value| {
        let Value::String(m) = m else {
            return Err(rt("method must be a string"));
        };
        let m = m.to_string_lossy();
        let method = settable_method(&m).ok_or_else(|| rt(format!("invalid method: {m}")))?;
        with(lua, |st| {
            st.upstream.method = Some(method);
            Ok(())
        })
    });
    def!("service.request.set_raw_body", |lua, b: Value| {
        let Value::String(b) = b else {
            return Err(rt("body must be a string"));
        };
        let b = Bytes::from(b.as_bytes().to_vec());
        with(lua, |st| match st.body.as_mut() {
            Some(body) => {
                st.headers
                    .insert(http::header::CONTENT_LENGTH, HeaderValue::from(b.len()));
                *body = b;
                Ok(())
            }
            None => Err(rt("request body was not buffered")),
        })
    });

    // ---- kong.response
    {
        let flags = Rc::clone(flags);
        def!("response.exit", move |lua,
                                    (status, body, headers): (
            Value,
            Value,
            Value
        )| {
            let status = status_arg(&status, 100)?;
            let extra = headers_arg(&headers)?;
            let (content, json) = match &body {
                Value::Nil => (None, false),
                Value::String(s) => (Some(Bytes::from(s.as_bytes().to_vec())), false),
                Value::Table(_) => (Some(Bytes::from(to_json(&body, 0)?.to_string())), true),
                _ => return Err(rt("body must be a nil, string or table")),
            };
            let resp = with(lua, |st| {
                Ok(exit_response(
                    status,
                    content,
                    json,
                    extra,
                    st.method == Method::HEAD,
                ))
            })?;
            finish_exit(lua, &flags, resp)
        });
    }
    {
        let flags = Rc::clone(flags);
        def!("response.error", move |lua,
                                     (status, message, headers): (
            Value,
            Value,
            Value
        )| {
            let status = status_arg(&status, 400)?;
            let message = match &message {
                Value::Nil => None,
                Value::String(s) => Some(s.to_string_lossy()),
                Value::Table(_) => Some(to_json(&message, 0)?.to_string()),
                _ => return Err(rt("message must be a nil, a string or a table")),
            };
            let extra = headers_arg(&headers)?;
            let resp = with(lua, |st| {
                let msg = message.unwrap_or_else(|| error_message(status.as_u16()));
                let format = crate::error::Format::from_accept(&st.headers);
                let mut resp = crate::error::render(
                    format,
                    status,
                    &msg,
                    &st.request_id,
                    st.method == Method::HEAD,
                );
                for (k, v) in extra {
                    resp.headers_mut().append(k, v);
                }
                Ok(resp)
            })?;
            finish_exit(lua, &flags, resp)
        });
    }

    // ---- kong.log, ngx.log, print
    for (level, name) in [
        (1, "emerg"),
        (2, "alert"),
        (3, "crit"),
        (4, "err"),
        (5, "warn"),
        (6, "notice"),
        (7, "info"),
        (8, "debug"),
    ] {
        def!(format!("log.{name}"), move |lua, args: Variadic<Value>| {
            log(lua, level, &concat(&args, ""));
            Ok(())
        });
    }
    def!("ngx.log", |lua, mut args: Variadic<Value>| {
        if args.is_empty() {
            return Err(rt("expecting at least 1 argument"));
        }
        let level = match args.remove(0) {
            Value::Integer(i) => i,
            Value::Number(n) => n as i64,
            _ => return Err(rt("bad argument #1 to 'log' (number expected)")),
        };
        log(lua, level, &concat(&args, ""));
        Ok(())
    });
    def!("print", |lua, args: Variadic<Value>| {
        log(lua, 6, &concat(&args, "\t"));
        Ok(())
    });

    // ---- kong.client and ngx helpers
    def!("client.get_forwarded_ip", |lua, ()| {
        with(lua, |st| Ok(st.client_ip.to_string()))
    });
    def!("ngx.time", |_, ()| {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0))
    });
    def!("ngx.now", |_, ()| {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| (d.as_millis() as f64) / 1000.0)
            .unwrap_or(0.0))
    });
    def!("ngx.encode_base64", |lua, s: mlua::LuaString| {
        use base64::Engine;
        lua.create_string(base64::engine::general_purpose::STANDARD.encode(&*s.as_bytes()))
    });
    def!("ngx.decode_base64", |lua, s: mlua::LuaString| {
        use base64::Engine;
        match base64::engine::general_purpose::STANDARD.decode(&*s.as_bytes()) {
            Ok(v) => Ok(Value::String(lua.create_string(v)?)),
            Err(_) => Ok(Value::Nil),
        }
    });
    def!("ngx.escape_uri", |_, s: mlua::LuaString| {
        let mut out = String::new();
        escape_component(&s.as_bytes(), &mut out);
        Ok(out)
    });
    def!("ngx.unescape_uri", |lua, s: mlua::LuaString| {
        lua.create_string(unescape_uri(&s.as_bytes()))
    });

    // ---- request-transformer's template views
    def!("header_view", |lua, key: Value| {
        let Value::String(key) = key else {
            return Ok(Value::Nil);
        };
        let key = key.as_bytes();
        let mut slot = lua.app_data_mut::<Slot>().ok_or_else(no_state)?;
        let st = slot.0.as_mut().ok_or_else(no_state)?;
        st.template.headers_read = true;
        let h = st.template.headers.as_ref().unwrap_or(&st.headers);
        let Some(all) = header_view(h, &key) else {
            return Ok(Value::Nil);
        };
        let mut values = all.iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(Value::Nil),
            (Some(one), None) => Ok(Value::String(lua.create_string(one.as_bytes())?)),
            (Some(first), Some(second)) => {
                let t = lua.create_table()?;
                for v in [first, second].into_iter().chain(values) {
                    t.raw_push(lua.create_string(v.as_bytes())?)?;
                }
                Ok(Value::Table(t))
            }
        }
    });
    def!("query_view", |lua, (_view, key): (Value, Value)| {
        let Value::String(key) = key else {
            return Ok(Value::Nil);
        };
        let mut slot = lua.app_data_mut::<Slot>().ok_or_else(no_state)?;
        let st = slot.0.as_mut().ok_or_else(no_state)?;
        let uri = &st.uri;
        let args = st.template.query.get_or_insert_with(|| query_args(uri));
        let one = |v: &ArgValue| -> mlua::Result<Value> {
            Ok(match v {
                ArgValue::Flag => Value::Boolean(true),
                ArgValue::Str(s) => Value::String(lua.create_string(s)?),
            })
        };
        match args.get(&key.as_bytes()).map(Vec::as_slice) {
            None | Some([]) => Ok(Value::Nil),
            Some([v]) => one(v),
            Some(vals) => {
                let t = lua.create_table_with_capacity(vals.len(), 0)?;
                for v in vals {
                    t.raw_push(one(v)?)?;
                }
                Ok(Value::Table(t))
            }
        }
    });
    def!("captures_view", |lua, (_view, key): (Value, Value)| {
        let v = with(lua, |st| {
            let c = &st.captures;
            if c.numbered.len() <= 1 && c.named.is_empty() {
                return Ok(None);
            }
            let index = match &key {
                Value::Integer(i) => usize::try_from(*i).ok(),
                Value::Number(n) if n.fract() == 0.0 && *n >= 0.0 => Some(*n as usize),
                Value::String(name) => {
                    let name = name.as_bytes();
                    return Ok(c
                        .named
                        .iter()
                        .find(|(k, _)| k.as_bytes() == &*name)
                        .map(|(_, v)| v.clone()));
                }
                _ => None,
            };
            Ok(index.and_then(|i| c.numbered.get(i).cloned().flatten()))
        })?;
        v.map(|v| lua.create_string(v)).transpose()
    });
    Ok(())
}

/// What `headers[key]` finds in the table `ngx.req.get_headers()` returns (whose keys
/// are the lower-case names): the key itself, else the key lower-cased with `_` as `-`.
pub(super) fn header_view<'h>(
    h: &'h HeaderMap,
    key: &[u8],
) -> Option<http::header::GetAll<'h, HeaderValue>> {
    let key = std::str::from_utf8(key).ok()?;
    let upper = key.bytes().any(|b| b.is_ascii_uppercase());
    if !upper {
        let all = h.get_all(key);
        if all.iter().next().is_some() {
            return Some(all);
        }
        if !key.contains('_') {
            return None;
        }
    }
    let norm = key.to_ascii_lowercase().replace('_', "-");
    Some(h.get_all(norm.as_str()))
}

// ------------------------------------------------------------------ helpers

fn name_arg(v: &Value, msg: &str) -> mlua::Result<String> {
    match v {
        Value::String(s) => Ok(s.to_string_lossy()),
        _ => Err(rt(msg)),
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{}\"", s.to_string_lossy()),
        other => lua_tostring(other),
    }
}

/// Kong's `validate_header` + `normalize_multi_header`: a string, number, boolean or
/// array of strings; an empty string becomes a single space.
fn header_arg(name: &Value, value: &Value) -> mlua::Result<(HeaderName, Vec<HeaderValue>)> {
    let Value::String(n) = name else {
        return Err(rt(format!(
            "invalid header name {}: got {}, expected string",
            show(name),
            name.type_name()
        )));
    };
    let n_str = n.to_string_lossy();
    let header = HeaderName::from_bytes(n_str.to_ascii_lowercase().as_bytes())
        .map_err(|_| rt(format!("invalid header name \"{n_str}\"")))?;
    let raw: Vec<Vec<u8>> = match value {
        Value::String(s) => vec![s.as_bytes().to_vec()],
        Value::Integer(_) | Value::Number(_) | Value::Boolean(_) => {
            vec![lua_tostring(value).into_bytes()]
        }
        Value::Table(t) => {
            let mut out = Vec::new();
            for v in t.sequence_values::<Value>() {
                match v? {
                    Value::String(s) => out.push(s.as_bytes().to_vec()),
                    other => {
                        return Err(rt(format!(
                            "invalid header value in array \"{n_str}\": got {}, expected string",
                            other.type_name()
                        )));
                    }
                }
            }
            out
        }
        other => {
            return Err(rt(format!(
                "invalid header value for \"{n_str}\": got {}, expected array of string, string, number or boolean",
                other.type_name()
            )));
        }
    };
    let mut values = Vec::with_capacity(raw.len());
    for v in raw {
        let v = if v.is_empty() { b" ".to_vec() } else { v };
        values.push(
            HeaderValue::from_bytes(&v)
                .map_err(|_| rt(format!("invalid header value for \"{n_str}\"")))?,
        );
    }
    Ok((header, values))
}

fn set_header(
    st: &mut ReqState,
    name: HeaderName,
    values: Vec<HeaderValue>,
    add: bool,
) -> mlua::Result<()> {
    if name == http::header::HOST {
        // kong.service.request.set_header("Host", ...) sets the upstream Host.
        if let Some(v) = values.last() {
            st.upstream.host = Some(v.clone());
        }
    }
    if !add {
        st.headers.remove(&name);
    }
    for v in values {
        st.headers.append(name.clone(), v);
    }
    Ok(())
}

/// `kong.request.get_header`: the first value; the name is case-insensitive and, as
/// nginx's `$http_*` variables, `-` and `_` are the same.
pub(crate) fn get_header<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    let lower = name.to_ascii_lowercase();
    if let Some(v) = h.get(lower.as_str()) {
        return Some(v.as_bytes());
    }
    fn norm(s: &str) -> impl Iterator<Item = u8> + '_ {
        s.bytes().map(|b| if b == b'_' { b'-' } else { b })
    }
    h.iter()
        .find(|(k, _)| norm(k.as_str()).eq(norm(&lower)))
        .map(|(_, v)| v.as_bytes())
}

pub(super) fn query_args(uri: &Uri) -> Args {
    Args::parse(uri.query().unwrap_or("").as_bytes())
}

fn set_query(uri: &mut Uri, q: &str) -> mlua::Result<()> {
    let mut pq = uri.path().to_string();
    if !q.is_empty() {
        pq.push('?');
        pq.push_str(q);
    }
    let mut parts = std::mem::take(uri).into_parts();
    let old = parts.path_and_query.clone();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|_| rt(format!("invalid query string: {q}")))?,
    );
    match Uri::from_parts(parts) {
        Ok(u) => *uri = u,
        Err(_) => {
            let mut p = http::uri::Parts::default();
            p.path_and_query = old;
            *uri = Uri::from_parts(p).unwrap_or_default();
            return Err(rt(format!("invalid query string: {q}")));
        }
    }
    Ok(())
}

/// `make_ordered_args` of `kong.service.request.set_query`: each key encoded on its
/// own, the pieces sorted, values of an array kept in order.
fn ordered_args(t: &Table) -> mlua::Result<String> {
    let mut pieces = Vec::new();
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair?;
        let Value::String(k) = k else {
            return Err(rt("arg keys must be strings"));
        };
        let mut one = Args::default();
        let key = k.as_bytes().to_vec();
        let mut push = |v: &Value| -> mlua::Result<()> {
            match v {
                Value::Boolean(true) => one.push(key.clone(), ArgValue::Flag),
                Value::Boolean(false) => {}
                Value::String(s) => one.push(key.clone(), ArgValue::Str(s.as_bytes().to_vec())),
                Value::Integer(_) | Value::Number(_) => {
                    one.push(key.clone(), ArgValue::Str(lua_tostring(v).into_bytes()))
                }
                other => {
                    return Err(rt(format!(
                        "attempt to use {} as query arg value",
                        other.type_name()
                    )));
                }
            }
            Ok(())
        };
        match &v {
            Value::Table(arr) => {
                for item in arr.sequence_values::<Value>() {
                    push(&item?)?;
                }
            }
            other => push(other)?,
        }
        let s = one.encode();
        if !s.is_empty() {
            pieces.push(s);
        }
    }
    pieces.sort();
    Ok(pieces.join("&"))
}

/// The methods `kong.service.request.set_method` accepts.
pub(crate) fn settable_method(m: &str) -> Option<Method> {
    const OK: [&str; 15] = [
        "GET",
        "HEAD",
        "PUT",
        "POST",
        "DELETE",
        "OPTIONS",
        "MKCOL",
        "COPY",
        "MOVE",
        "PROPFIND",
        "PROPPATCH",
        "LOCK",
        "UNLOCK",
        "PATCH",
        "TRACE",
    ];
    OK.contains(&m)
        .then(|| Method::from_bytes(m.as_bytes()).ok())
        .flatten()
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// `ngx.req.get_headers()`: lower-case names, repeated headers as arrays.
pub(crate) fn headers_table(lua: &Lua, h: &HeaderMap) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, h.keys_len())?;
    for name in h.keys() {
        let mut values = h.get_all(name).iter();
        let Some(first) = values.next() else {
            continue;
        };
        match values.next() {
            None => t.raw_set(name.as_str(), lua.create_string(first.as_bytes())?)?,
            Some(second) => {
                let arr = lua.create_table()?;
                arr.raw_push(lua.create_string(first.as_bytes())?)?;
                arr.raw_push(lua.create_string(second.as_bytes())?)?;
                for v in values {
                    arr.raw_push(lua.create_string(v.as_bytes())?)?;
                }
                t.raw_set(name.as_str(), arr)?;
            }
        }
    }
    let mt: Table = lua.named_registry_value(REG_HEADER_MT)?;
    t.set_metatable(Some(mt))?;
    Ok(t)
}

/// `ngx.req.get_uri_args()`: strings, `true` for a bare name, arrays when repeated.
fn args_table(lua: &Lua, args: &Args) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, args.0.len())?;
    let one = |v: &ArgValue| -> mlua::Result<Value> {
        Ok(match v {
            ArgValue::Flag => Value::Boolean(true),
            ArgValue::Str(s) => Value::String(lua.create_string(s)?),
        })
    };
    for (k, vals) in &args.0 {
        let key = lua.create_string(k)?;
        if let [v] = vals.as_slice() {
            t.raw_set(key, one(v)?)?;
        } else {
            let arr = lua.create_table_with_capacity(vals.len(), 0)?;
            for v in vals {
                arr.raw_push(one(v)?)?;
            }
            t.raw_set(key, arr)?;
        }
    }
    Ok(t)
}

fn status_arg(v: &Value, min: u16) -> mlua::Result<StatusCode> {
    let n = match v {
        Value::Integer(i) => *i as f64,
        Value::Number(n) => *n,
        _ => return Err(rt("code must be a number")),
    };
    if n.fract() != 0.0 || n < f64::from(min) || n > 599.0 {
        return Err(rt(format!("code must be a number between {min} and 599")));
    }
    StatusCode::from_u16(n as u16).map_err(|_| rt("code must be a number"))
}

fn headers_arg(v: &Value) -> mlua::Result<Vec<(HeaderName, HeaderValue)>> {
    let t = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Table(t) => t,
        _ => return Err(rt("headers must be a nil or table")),
    };
    let mut out = Vec::new();
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair?;
        let (name, values) = header_arg(&k, &v)?;
        if name == http::header::TRANSFER_ENCODING {
            tracing::warn!("manually setting Transfer-Encoding. Ignored.");
            continue;
        }
        for v in values {
            out.push((name.clone(), v));
        }
    }
    Ok(out)
}

/// `kong.response.exit`'s response: a table body is JSON
/// (`application/json; charset=utf-8` unless a Content-Type was given).
fn exit_response(
    status: StatusCode,
    content: Option<Bytes>,
    json: bool,
    extra: Vec<(HeaderName, HeaderValue)>,
    head: bool,
) -> Response<Body> {
    let len = content.as_ref().map_or(0, |c| c.len());
    let mut resp = Response::new(match content {
        Some(c) if !head => body::full(c),
        _ => body::empty(),
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    for (k, v) in extra {
        h.append(k, v);
    }
    if json && !h.contains_key(http::header::CONTENT_TYPE) {
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
    }
    if !h.contains_key(http::header::CONTENT_LENGTH) && status != StatusCode::NO_CONTENT {
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    resp
}

/// Records the answer and unwinds the chunk (`ngx.exit` never returns either).
fn finish_exit(lua: &Lua, flags: &Flags, resp: Response<Body>) -> mlua::Result<()> {
    with(lua, |st| {
        st.exit = Some(resp);
        Ok(())
    })?;
    flags.exited.set(true);
    Err(rt("kong.response.exit"))
}

/// The message `kong.response.error` uses when none is given.
fn error_message(status: u16) -> String {
    let m = match status {
        400 => "Bad request",
        401 => "Unauthorized",
        402 => "Payment required",
        403 => "Forbidden",
        404 => "Not found",
        405 => "Method not allowed",
        406 => "Not acceptable",
        407 => "Proxy authentication required",
        408 => "Request timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length required",
        412 => "Precondition failed",
        413 => "Payload too large",
        414 => "URI too long",
        415 => "Unsupported media type",
        416 => "Range not satisfiable",
        417 => "Expectation failed",
        418 => "I'm a teapot",
        421 => "Misdirected request",
        422 => "Unprocessable entity",
        423 => "Locked",
        424 => "Failed dependency",
        425 => "Too early",
        426 => "Upgrade required",
        428 => "Precondition required",
        429 => "Too many requests",
        431 => "Request header fields too large",
        451 => "Unavailable for legal reasons",
        494 => "Request header or cookie too large",
        500 => "An unexpected error occurred",
        501 => "Not implemented",
        502 => "An invalid response was received from the upstream server",
        503 => "The upstream server is currently unavailable",
        504 => "The upstream server is timing out",
        505 => "HTTP version not supported",
        506 => "Variant also negotiates",
        507 => "Insufficient storage",
        508 => "Loop detected",
        510 => "Not extended",
        511 => "Network authentication required",
        other => return format!("The upstream server responded with {other}"),
    };
    m.to_string()
}

/// Lua's `tostring` for the values a log line or header may hold.
pub(crate) fn lua_tostring(v: &Value) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => fmt_number(*n),
        Value::String(s) => s.to_string_lossy(),
        other => other.type_name().to_string(),
    }
}

/// Lua 5.1's `%.14g`.
fn fmt_number(n: f64) -> String {
    if n.is_nan() {
        return "nan".into();
    }
    if n.is_infinite() {
        return if n > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if n.fract() == 0.0 && n.abs() < 1e15 {
        return format!("{}", n as i64);
    }
    let s = format!("{n:.14e}");
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-5..14).contains(&exp) {
        let digits = (13 - exp).max(0) as usize;
        let s = format!("{n:.digits$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        return s;
    }
    let mant = if mant.contains('.') {
        mant.trim_end_matches('0').trim_end_matches('.')
    } else {
        mant
    };
    format!("{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
}

fn concat(args: &[Value], sep: &str) -> String {
    args.iter().map(lua_tostring).collect::<Vec<_>>().join(sep)
}

fn log(lua: &Lua, level: i64, msg: &str) {
    let (plugin, rid) = lua
        .app_data_ref::<Slot>()
        .and_then(|slot| slot.0.as_ref().map(|st| (st.plugin, st.request_id.clone())))
        .unwrap_or(("lua", String::new()));
    match level {
        0..=4 => tracing::error!(plugin, request_id = %rid, "{msg}"),
        5 => tracing::warn!(plugin, request_id = %rid, "{msg}"),
        6 | 7 => tracing::info!(plugin, request_id = %rid, "{msg}"),
        _ => tracing::debug!(plugin, request_id = %rid, "{msg}"),
    }
}

/// cjson's encoding of a Lua value: a table whose keys are 1..n is an array, an empty
/// table is `{}`, other tables are objects with string keys.
pub(crate) fn to_json(v: &Value, depth: usize) -> mlua::Result<serde_json::Value> {
    use serde_json::Value as J;
    if depth > 1000 {
        return Err(rt("Cannot serialise, excessive nesting (1001)"));
    }
    Ok(match v {
        Value::Nil => J::Null,
        Value::LightUserData(_) => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => J::from(*i),
        Value::Number(n) => {
            if n.fract() == 0.0 && n.abs() < 1e15 {
                J::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n)
                    .map(J::Number)
                    .ok_or_else(|| rt("Cannot serialise number: must not be NaN or Inf"))?
            }
        }
        Value::String(s) => J::String(s.to_string_lossy()),
        Value::Table(t) => {
            let mut max = 0usize;
            let mut count = 0usize;
            let mut array = true;
            for pair in t.pairs::<Value, Value>() {
                let (k, _) = pair?;
                count += 1;
                let idx = match k {
                    Value::Integer(i) if i >= 1 => Some(i as usize),
                    Value::Number(n) if n >= 1.0 && n.fract() == 0.0 => Some(n as usize),
                    _ => None,
                };
                match idx {
                    Some(i) => max = max.max(i),
                    None => array = false,
                }
            }
            if count == 0 {
                J::Object(serde_json::Map::new())
            } else if array {
                if max > count * 2 && max > 10 {
                    return Err(rt("Cannot serialise table: excessively sparse array"));
                }
                let mut out = Vec::with_capacity(max);
                for i in 1..=max {
                    out.push(to_json(&t.raw_get::<Value>(i)?, depth + 1)?);
                }
                J::Array(out)
            } else {
                let mut out = serde_json::Map::new();
                for pair in t.pairs::<Value, Value>() {
                    let (k, val) = pair?;
                    let key = match &k {
                        Value::String(s) => s.to_string_lossy(),
                        Value::Integer(_) | Value::Number(_) => lua_tostring(&k),
                        other => {
                            return Err(rt(format!(
                                "Cannot serialise {}: table key must be a number or string",
                                other.type_name()
                            )));
                        }
                    };
                    out.insert(key, to_json(&val, depth + 1)?);
                }
                J::Object(out)
            }
        }
        other => {
            return Err(rt(format!(
                "Cannot serialise {}: type not supported",
                other.type_name()
            )));
        }
    })
}
