#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::consumers::Consumers;
use crate::context::{AuthState, UpstreamOverrides};
use http::{HeaderMap, HeaderValue, Method, Uri};

/// Owns everything a `RequestCtx` borrows.
struct Req {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Option<Bytes>,
    consumers: Consumers,
    auth: AuthState,
    captures: Captures,
    upstream: UpstreamOverrides,
    extensions: http::Extensions,
    id: String,
}

use bytes::Bytes;

impl Req {
    fn new(target: &str, headers: &[(&str, &str)]) -> Req {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Req {
            method: Method::GET,
            uri: target.parse().unwrap(),
            headers: h,
            body: None,
            consumers: Consumers::default(),
            auth: AuthState::default(),
            captures: Captures::default(),
            upstream: UpstreamOverrides::default(),
            extensions: http::Extensions::new(),
            id: format!("req-{}", rand_id()),
        }
    }

    fn with<R>(&mut self, f: impl FnOnce(&mut RequestCtx<'_>) -> R) -> R {
        let mut ctx = RequestCtx {
            method: &self.method,
            uri: &mut self.uri,
            headers: &mut self.headers,
            body: self.body.as_mut(),
            client_ip: "10.1.2.3".parse().unwrap(),
            request_id: &self.id,
            consumers: &self.consumers,
            auth: &mut self.auth,
            captures: &self.captures,
            upstream: &mut self.upstream,
            service: None,
            extensions: &mut self.extensions,
            mcp: &mut None,
        };
        f(&mut ctx)
    }

    fn render(&mut self, src: &str) -> Result<String, LuaError> {
        let t = Template::compile(src, "t").map_err(LuaError)?;
        self.with(|ctx| {
            session(ctx, "test", t.is_lua(), |s| {
                s.render(&t)
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
            })
        })
    }

    fn run(&mut self, code: &str) -> Result<Option<http::Response<Body>>, LuaError> {
        let c = snippet("access[0]", code).map_err(LuaError)?;
        self.run_chunk(&c)
    }

    fn run_chunk(&mut self, c: &Chunk) -> Result<Option<http::Response<Body>>, LuaError> {
        self.with(|ctx| {
            session(ctx, "test", true, |s| {
                s.run_snippet(c)?;
                Ok(s.take_exit())
            })
        })
    }
}

fn rand_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn supabase_auth_expression() {
    let expr = "$((headers.authorization ~= nil and headers.authorization:sub(1, 10) ~= 'Bearer sb_' and headers.authorization) or headers.apikey)";
    // A user JWT passes through.
    let mut r = Req::new("/", &[("Authorization", "Bearer eyJuser"), ("apikey", "k")]);
    assert_eq!(r.render(expr).unwrap(), "Bearer eyJuser");
    // An opaque bearer falls back to the apikey.
    let mut r = Req::new(
        "/",
        &[
            ("Authorization", "Bearer sb_publishable_x"),
            ("apikey", "k"),
        ],
    );
    assert_eq!(r.render(expr).unwrap(), "k");
    // Neither: nil renders as "".
    let mut r = Req::new("/", &[]);
    assert_eq!(r.render(expr).unwrap(), "");
    // Text around the expression is kept (the space after "Authorization:").
    let mut r = Req::new("/", &[("apikey", "k")]);
    assert_eq!(r.render(&format!(" {expr}")).unwrap(), " k");
}

#[test]
fn opaque_key_expression() {
    let expr = "$((headers.apikey == 'sb_secret_x' and 'Bearer eyJservice') or (headers.apikey == 'sb_publishable_y' and 'Bearer eyJanon') or (headers.authorization ~= nil and headers.authorization:sub(1, 10) ~= 'Bearer sb_' and headers.authorization) or headers.apikey)";
    let mut r = Req::new("/", &[("apikey", "sb_publishable_y")]);
    assert_eq!(r.render(expr).unwrap(), "Bearer eyJanon");
    let mut r = Req::new("/", &[("apikey", "sb_secret_x")]);
    assert_eq!(r.render(expr).unwrap(), "Bearer eyJservice");
    let mut r = Req::new("/", &[("apikey", "legacy")]);
    assert_eq!(r.render(expr).unwrap(), "legacy");
}

#[test]
fn template_values() {
    let mut r = Req::new(
        "/x?apikey=a%20b&flag&rep=1&rep=2",
        &[
            ("X-Multi", "1"),
            ("x-multi", "2"),
            ("Content-Type", "text/plain"),
        ],
    );
    assert_eq!(r.render("$(query_params.apikey)").unwrap(), "a b");
    assert_eq!(r.render("$(nil)").unwrap(), "");
    assert_eq!(r.render("$(false)").unwrap(), "");
    assert_eq!(r.render("$(query_params.flag)").unwrap(), "true");
    assert_eq!(r.render("$(query_params.rep[2])").unwrap(), "2");
    assert_eq!(r.render("$(type(headers['x-multi']))").unwrap(), "table");
    // Case-insensitive, `_` for `-`.
    assert_eq!(r.render("$(headers.Content_Type)").unwrap(), "text/plain");
    assert_eq!(
        r.render("$(headers['content-type'])").unwrap(),
        "text/plain"
    );
    assert_eq!(r.render("a$(1+1)b$('c')").unwrap(), "a2bc");
    assert_eq!(r.render("$('$(x)')").unwrap(), "$(x)");
    assert_eq!(r.render("$(uri_captures[1])").unwrap(), "");
    // Only the template environment: no `string` global (as Kong's sandbox).
    let e = r.render("$(string.upper('x'))").unwrap_err();
    assert!(e.0.contains("string"), "{e}");
    let e = r.render("$(require('os'))").unwrap_err();
    assert!(e.0.contains("not allowed within sandbox"), "{e}");
    // Method calls on strings work (the string metatable).
    assert_eq!(r.render("$(('abc'):upper())").unwrap(), "ABC");
}

#[test]
fn captures_and_shared() {
    let mut r = Req::new("/users/42", &[]);
    r.captures = Captures {
        numbered: vec![Some("/users/42".into()), Some("42".into())],
        named: vec![("id".into(), "42".into())],
    };
    assert_eq!(
        r.render("$(uri_captures[0])|$(uri_captures[1])|$(uri_captures.id)")
            .unwrap(),
        "/users/42|42|42"
    );
    // kong.ctx.shared is what templates see as `shared`, per request.
    r.run("kong.ctx.shared.v = 'from-pre'").unwrap();
    assert_eq!(r.render("$(shared.v)").unwrap(), "from-pre");
    r.id = "another".into();
    assert_eq!(r.render("$(shared.v)").unwrap(), "");
}

#[test]
fn syntax_errors_at_compile() {
    let e = Template::compile("$(headers.x +)", "add.headers[0]").unwrap_err();
    assert!(e.starts_with("add.headers[0]:1:"), "{e}");
    let e = snippet("access[0]", "local x = \nif then").unwrap_err();
    assert!(e.starts_with("access[0]:2:"), "{e}");
    // Lua bytecode is refused.
    assert!(snippet("access[0]", "\x1bLua\x51\x00").is_err());
}

#[test]
fn pdk_request_and_service() {
    let mut r = Req::new(
        "/p/a?x=1&y=two",
        &[("sb-api-key", "v"), ("Host", "example.test:8000")],
    );
    r.run(
        r#"
        assert(kong.request.get_header("SB_API_KEY") == "v")
        assert(kong.request.get_header("missing") == nil)
        assert(kong.request.get_query_arg("y") == "two")
        assert(kong.request.get_query().x == "1")
        assert(kong.request.get_raw_query() == "x=1&y=two")
        assert(kong.request.get_path() == "/p/a")
        assert(kong.request.get_method() == "GET")
        assert(kong.request.get_host() == "example.test")
        assert(kong.request.get_headers()["sb-api-key"] == "v")
        assert(kong.client.get_forwarded_ip() == "10.1.2.3")
        kong.service.request.set_header("X-Set", "1")
        kong.service.request.add_header("X-Set", "2")
        kong.service.request.set_header("X-Empty", "")
        kong.service.request.clear_header("sb-api-key")
        kong.service.request.set_path("/new path")
        kong.service.request.set_query({ b = "2", a = { "1", true }, c = false })
        kong.service.request.set_method("POST")
        kong.service.request.set_header("Host", "up.test")
    "#,
    )
    .unwrap();
    let all: Vec<_> = r.headers.get_all("x-set").iter().collect();
    assert_eq!(all, ["1", "2"]);
    assert_eq!(r.headers["x-empty"], " ");
    assert!(!r.headers.contains_key("sb-api-key"));
    assert_eq!(r.upstream.path.as_deref(), Some("/new%20path"));
    assert_eq!(r.uri.query(), Some("a=1&a&b=2"));
    assert_eq!(r.upstream.method, Some(Method::POST));
    assert_eq!(r.upstream.host.as_ref().unwrap(), "up.test");
    r.run("kong.service.request.set_raw_query('z=1&z=2')")
        .unwrap();
    assert_eq!(r.uri.query(), Some("z=1&z=2"));
    r.run("kong.service.request.clear_query_arg('z')").unwrap();
    assert_eq!(r.uri.query(), None);
}

#[test]
fn supabase_post_functions() {
    let code = r#"
local auth = kong.request.get_header("authorization")
if auth == nil or auth == "" or auth:find("^%s*$") then
  kong.service.request.clear_header("authorization")
end
"#;
    for (value, kept) in [(" ", false), ("   ", false), ("Bearer x", true)] {
        let mut r = Req::new("/", &[("Authorization", value)]);
        r.run(code).unwrap();
        assert_eq!(r.headers.contains_key("authorization"), kept, "{value:?}");
    }
    let mut r = Req::new("/", &[]);
    r.run(code).unwrap();
    assert!(!r.headers.contains_key("authorization"));
}

#[test]
fn exit_and_error() {
    let mut r = Req::new("/", &[]);
    let resp = r
        .run("kong.response.exit(403, { message = 'no' }, { ['X-A'] = 'b' }) error('not reached')")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(resp.headers()["x-a"], "b");
    assert_eq!(resp.headers()["content-length"], "16");
    // pcall cannot swallow an exit.
    let resp = r
        .run("pcall(kong.response.exit, 418, 'tea') kong.service.request.set_header('x', 'y')")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 418);
    assert!(!r.headers.contains_key("x"));
    let resp = r.run("return kong.response.error(401)").unwrap().unwrap();
    assert_eq!(resp.status(), 401);
    // Bad arguments are errors.
    let e = r.run("kong.response.exit('x')").unwrap_err();
    assert!(e.0.contains("code must be a number"), "{e}");
    let e = r
        .run("kong.service.request.set_header('x', nil)")
        .unwrap_err();
    assert!(e.0.starts_with("access[0]:1:"), "{e}");
}

#[test]
fn budget_ends_loops() {
    let mut r = Req::new("/", &[]);
    for code in [
        "while true do end",
        "while true do pcall(function() while true do end end) end",
        "local co = coroutine.wrap(function() while true do end end) co()",
        "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
        "local function f() return f() end f()",
    ] {
        let e = r.run(code).unwrap_err();
        assert!(e.0.contains("instruction budget exceeded"), "{code}: {e}");
    }
    // The VM still works afterwards.
    r.run("local x = 1").unwrap();
}

#[test]
fn memory_limit() {
    let mut r = Req::new("/", &[]);
    let e = r
        .run("local t = {} for i = 1, 200 do t[i] = string.rep('x', 1024 * 1024) .. i end")
        .unwrap_err();
    assert!(e.0.contains("memory"), "{e}");
    r.run("local x = string.rep('y', 10)").unwrap();
}

#[test]
fn sandbox_escapes_fail() {
    let mut r = Req::new("/", &[]);
    for code in [
        "os.execute('true')",
        "io.open('/etc/passwd')",
        "require('os')",
        "load('return 1')",
        "loadstring('return 1')",
        "dofile('/etc/passwd')",
        "debug.getinfo(1)",
        "string.dump(function() end)",
        "(''):dump()",
        "getmetatable('').__index.dump(print)",
        "setfenv(1, {})",
        "getfenv(0)",
        "collectgarbage()",
        "rawset(_G, 'x', 1)",
        "package.loadlib('x', 'y')",
        "os.getenv('HOME')",
    ] {
        assert!(r.run(code).is_err(), "{code} should fail");
    }
    // Globals a snippet sets stay in its own environment.
    let a = snippet(
        "access[0]",
        "x = (x or 0) + 1 kong.service.request.set_header('n', x)",
    )
    .unwrap();
    let b = snippet("access[1]", "assert(x == nil) string = nil").unwrap();
    r.run_chunk(&a).unwrap();
    r.run_chunk(&a).unwrap();
    assert_eq!(r.headers["n"], "2");
    r.run_chunk(&b).unwrap();
    r.run("assert(string.upper('a') == 'A')").unwrap();
}

#[test]
fn snippet_returning_a_function() {
    let mut r = Req::new("/", &[]);
    let c = snippet(
        "access[0]",
        "local n = 0 return function() n = n + 1 kong.service.request.set_header('n', n) end",
    )
    .unwrap();
    r.run_chunk(&c).unwrap();
    assert_eq!(r.headers["n"], "1");
    r.run_chunk(&c).unwrap();
    assert_eq!(r.headers["n"], "2");
}

#[test]
fn stale_chunks_are_swept() {
    let mut r = Req::new("/", &[]);
    for i in 0..200 {
        let c = snippet("access[0]", &format!("local x = {i}")).unwrap();
        r.run_chunk(&c).unwrap();
    }
    let len = ENGINE.with(|e| e.borrow().as_ref().map(|e| e.cache.len()).unwrap_or(0));
    assert!(len < 150, "cache kept {len} dead chunks");
}

/// Templates inside the Rust evaluator's subset render exactly as Lua renders them
/// (or fall back to Lua, which then gives Lua's answer, error included).
#[test]
fn native_templates_agree_with_lua() {
    let templates = [
        "$((headers.authorization ~= nil and headers.authorization:sub(1, 10) ~= 'Bearer sb_' and headers.authorization) or (headers.apikey == 'sb_secret_x' and 'Bearer svc') or (headers.apikey == 'sb_publishable_x' and 'Bearer anon') or headers.apikey)",
        "$((query_params.apikey == 'sb_secret_x' and 'svc') or (query_params.apikey == 'sb_publishable_x' and 'anon') or query_params.apikey)",
        "Bearer $(headers.apikey)",
        "$(headers.x:sub(2, -2)) and $(headers['x']:sub(-3))",
        "$(headers.x .. '/' .. query_params.q)",
        "$(not headers.x) $(headers.x == query_params.q) $(headers.X_Y ~= nil) [$(headers.x_y)] [$(headers.X)]",
        "$(headers.x:sub(0)) $(headers.x:sub(5, 2)) $(headers.x:sub(-100, 100))",
        "$(query_params.flag)-$(query_params[\"q\"])",
        "$(nil) $(false) $(true) $(nil == false) $(headers.missing or 'dflt')",
    ];
    let requests: [(&str, &[(&str, &str)]); 8] = [
        ("/", &[]),
        ("/?q=1", &[("x", "abcdef")]),
        (
            "/?apikey=sb_secret_x&q=abcdef",
            &[("x", "abcdef"), ("x-y", "z")],
        ),
        (
            "/?apikey=sb_publishable_x&flag",
            &[("apikey", "sb_publishable_x")],
        ),
        (
            "/?apikey=jwt&apikey=two",
            &[("apikey", "sb_secret_x"), ("x", "é")],
        ),
        (
            "/?q=a%20b+c",
            &[("authorization", "Bearer sb_x"), ("apikey", "k")],
        ),
        ("/?flag=&q", &[("authorization", "Bearer user"), ("x", "")]),
        (
            "/",
            &[("x", "1"), ("x", "2"), ("apikey", "a"), ("apikey", "b")],
        ),
    ];
    let mut natives = 0;
    for src in templates {
        let t = Template::compile(src, "t").unwrap();
        let Template::Lua(chunk, Some(n)) = &t else {
            panic!("not in the native subset: {src}");
        };
        let lua_only = Template::Lua(chunk.clone(), None);
        for (target, headers) in requests {
            let mut r = Req::new(target, headers);
            let (native, by_lua) = r.with(|ctx| {
                session(ctx, "test", true, |s| {
                    // A table renders as its address, which differs between tables.
                    let show = |r: Result<Vec<u8>, LuaError>| {
                        r.map(|v| {
                            let v = String::from_utf8_lossy(&v).into_owned();
                            match v.find("table: 0x") {
                                Some(i) => format!("{}table: ADDRESS", &v[..i]),
                                None => v,
                            }
                        })
                        .map_err(|e| e.0)
                    };
                    Ok((show(s.render(&t)), show(s.render(&lua_only))))
                })
                .unwrap()
            });
            assert_eq!(native, by_lua, "{src} on {target} {headers:?}");
            let args = pdk::query_args(&r.uri);
            let input = native::Input {
                headers: &r.headers,
                query: Some(&args),
            };
            if n.render(&input).is_ok() {
                natives += 1;
            }
        }
    }
    // Most renders never needed the VM (the rest were repeated headers or arguments,
    // and Lua errors).
    assert!(
        natives >= templates.len() * requests.len() * 2 / 3,
        "{natives}"
    );
}
