//! The per-request plugin work of Supabase's `/rest/v1/` route: the fixture `kong.yml`
//! (`tests/fixtures/supabase/`) loaded with the values Supabase's entrypoint gives
//! it, and its compiled chain (cors, key-auth, acl, request-transformer with the Lua
//! `Authorization` template) run as the proxy runs it: the access phase on a realistic
//! supabase-js request with a valid key, then the response's header_filter.
//!
//! Cases: `access/opaque` (new `sb_publishable_` key in `apikey` and `Authorization`,
//! which the template turns into the anon JWT), `access/legacy` (a JWT in both),
//! `header_filter`, and `headers_clone` (the per-iteration copy of the request's
//! headers, already excluded from the other cases; shown for scale).
//!
//! On a machine shared with other work, wall-clock figures wander; for CPU figures,
//! `CHAIN_LOOP=<case>:<n>` runs one case `n` times without criterion (case: `opaque`,
//! `legacy`, `header_filter` or `clone`), to run under `perf stat`: the CPU time per
//! request is the task-clock difference between two `n` divided by their difference.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use portcullis::config;
use portcullis::plugins::{AuthState, Flow, RequestCtx, UpstreamOverrides};
use portcullis::router::RequestInfo;
use portcullis::snapshot::{self, Snapshot};
use portcullis::upstream::ClientCache;

const PUBLISHABLE: &str = "sb_publishable_0123456789abcdefghijkl";
const SECRET: &str = "sb_secret_0123456789abcdefghijklmnopqr";
const ANON_JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoiYW5vbiIsImlzcyI6InN1cGFiYXNlIiwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjIwMDAwMDAwMDB9.c2lnbmF0dXJlLW9mLXRoZS1hbm9uLWtleS1mb3ItYmVuY2g";
const SERVICE_JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIiwiaXNzIjoic3VwYWJhc2UiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MjAwMDAwMDAwMH0.c2lnbmF0dXJlLW9mLXRoZS1zZXJ2aWNlLWtleQ";
const ANON_ASYM: &str =
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoiYW5vbiJ9.YXN5bW1ldHJpYy1hbm9uLXNpZ25hdHVyZQ";
const SERVICE_ASYM: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.YXN5bW1ldHJpYy1zZXJ2aWNlLXNpZw";

/// The values `deploy/entrypoint.sh` computes (opaque keys configured).
fn env(name: &str) -> Option<String> {
    Some(match name {
        "SUPABASE_ANON_KEY" => ANON_JWT.into(),
        "SUPABASE_SERVICE_KEY" => SERVICE_JWT.into(),
        "SUPABASE_PUBLISHABLE_KEY" => PUBLISHABLE.into(),
        "SUPABASE_SECRET_KEY" => SECRET.into(),
        "DASHBOARD_USERNAME" => "supabase".into(),
        "DASHBOARD_PASSWORD" => "bench-password".into(),
        "LUA_AUTH_EXPR" => format!(
            "$((headers.authorization ~= nil and headers.authorization:sub(1, 10) ~= 'Bearer sb_' and headers.authorization) or (headers.apikey == '{SECRET}' and 'Bearer {SERVICE_ASYM}') or (headers.apikey == '{PUBLISHABLE}' and 'Bearer {ANON_ASYM}') or headers.apikey)"
        ),
        "LUA_RT_WS_EXPR" => format!(
            "$((query_params.apikey == '{SECRET}' and '{SERVICE_ASYM}') or (query_params.apikey == '{PUBLISHABLE}' and '{ANON_ASYM}') or query_params.apikey)"
        ),
        "LUA_FUNCTIONS_EXPR" => format!(
            "$((headers.apikey == '{SECRET}' and '{SERVICE_ASYM}') or (headers.apikey == '{PUBLISHABLE}' and '{ANON_ASYM}') or (headers.authorization == 'Bearer {SECRET}' and '{SERVICE_ASYM}') or (headers.authorization == 'Bearer {PUBLISHABLE}' and '{ANON_ASYM}') or nil)"
        ),
        "WELL_KNOWN_OAUTH_PATH" => "/.well-known/oauth-authorization-server/auth/v1".into(),
        _ => return None,
    })
}

fn load() -> Snapshot {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/supabase/kong.yml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let file = path.display().to_string();
    let cfg = config::load_config_with_env(&file, &text, &env)
        .unwrap_or_else(|e| panic!("the fixture does not load:\n{e}"));
    config::compile::compile(cfg, &file, String::new(), 1, &ClientCache::default())
        .unwrap_or_else(|e| panic!("the fixture does not compile: {e:?}"))
}

/// A supabase-js `GET /rest/v1/todos?select=*` from a browser.
fn request(apikey: &str, bearer: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut add = |k: &'static str, v: &str| {
        h.append(
            HeaderName::from_static(k),
            HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{k}: {e}")),
        );
    };
    add("host", "localhost:8000");
    add(
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    );
    add("accept", "application/json");
    add("accept-language", "en-GB,en;q=0.5");
    add("accept-encoding", "gzip, deflate, br, zstd");
    add("referer", "http://localhost:3000/");
    add("origin", "http://localhost:3000");
    add("apikey", apikey);
    add("authorization", &format!("Bearer {bearer}"));
    add("x-client-info", "supabase-js-web/2.49.4");
    add("accept-profile", "public");
    add("connection", "keep-alive");
    add("sec-fetch-dest", "empty");
    add("sec-fetch-mode", "cors");
    add("sec-fetch-site", "same-site");
    h
}

struct Route<'s> {
    snap: &'s Snapshot,
    chain: &'s [snapshot::ChainLink],
    captures: portcullis::router::Captures,
}

fn route(snap: &Snapshot) -> Route<'_> {
    let headers = request(PUBLISHABLE, PUBLISHABLE);
    let info = RequestInfo {
        method: "GET",
        host: Some("localhost:8000"),
        listener_port: 8000,
        path: b"/rest/v1/todos",
        headers: &headers,
        query: Some("select=*"),
        tls: false,
        client_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        client_port: None,
    };
    let m = snap
        .router
        .find(&info)
        .expect("/rest/v1/todos matches no route");
    let compiled = &snap.routes[m.route];
    assert_eq!(&*compiled.name, "rest-v1-all", "wrong route matched");
    Route {
        snap,
        chain: &compiled.chain,
        captures: m.captures,
    }
}

/// The access phase as the proxy runs it; returns the consumer and the headers the
/// upstream gets (so dropping them is outside the measurement).
fn access(r: &Route<'_>, mut headers: HeaderMap) -> (Option<usize>, HeaderMap, Uri) {
    let method = Method::GET;
    let mut uri = Uri::from_static("/rest/v1/todos?select=*");
    let mut auth = AuthState::default();
    let mut overrides = UpstreamOverrides::default();
    let mut extensions = http::Extensions::new();
    let mut mcp = None;
    let mut ctx = RequestCtx {
        method: &method,
        uri: &mut uri,
        headers: &mut headers,
        body: None,
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        request_id: "0f3c2a9e4b7d41c8a6e5d2b1c0f9e8d7",
        consumers: &r.snap.consumers,
        auth: &mut auth,
        captures: &r.captures,
        upstream: &mut overrides,
        service: None,
        extensions: &mut extensions,
        mcp: &mut mcp,
    };
    let mut last: Option<&'static str> = None;
    for link in r.chain {
        let name = link.plugin.name();
        if last == Some(name) || !link.runs_for(ctx.auth.consumer) {
            continue;
        }
        last = Some(name);
        match link.plugin.access(&mut ctx) {
            Flow::Continue => {}
            _ => panic!("{name} answered a valid request"),
        }
    }
    (auth.consumer, headers, uri)
}

fn bench(c: &mut Criterion) {
    let snap = load();
    let r = route(&snap);
    let names: Vec<&str> = r.chain.iter().map(|l| l.plugin.name()).collect();
    assert_eq!(names, ["cors", "key-auth", "acl", "request-transformer"]);

    let opaque = request(PUBLISHABLE, PUBLISHABLE);
    let legacy = request(ANON_JWT, ANON_JWT);
    // The chain does what Supabase needs: the opaque key becomes the anon JWT.
    let (consumer, out, _) = access(&r, opaque.clone());
    assert!(consumer.is_some(), "the key was not accepted");
    assert_eq!(
        out.get("authorization").map(|v| v.as_bytes().trim_ascii()),
        Some(format!("Bearer {ANON_ASYM}").as_bytes())
    );
    let (_, out, _) = access(&r, legacy.clone());
    assert_eq!(
        out.get("authorization").map(|v| v.as_bytes().trim_ascii()),
        Some(format!("Bearer {ANON_JWT}").as_bytes())
    );

    if let Ok(spec) = std::env::var("CHAIN_LOOP") {
        run_loop(&spec, &r, &opaque, &legacy, consumer);
        return;
    }

    let mut g = c.benchmark_group("supabase_rest_chain");
    g.bench_function("headers_clone", |b| b.iter(|| black_box(opaque.clone())));
    for (case, req) in [("access/opaque", &opaque), ("access/legacy", &legacy)] {
        g.bench_function(case, |b| {
            b.iter_batched(
                || req.clone(),
                |h| access(&r, black_box(h)),
                BatchSize::SmallInput,
            )
        });
    }

    // The response phase: the request headers the proxy keeps for it, and an
    // upstream response from PostgREST.
    let mut kept = HeaderMap::new();
    for name in &portcullis::plugins::RESPONSE_PHASE_REQUEST_HEADERS {
        for v in opaque.get_all(name) {
            kept.append(name.clone(), v.clone());
        }
    }
    let resp = response();
    g.bench_function("header_filter", |b| {
        b.iter_batched(
            || resp.clone(),
            |h| header_filter(&r, consumer, &kept, h),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A PostgREST response's headers.
fn response() -> HeaderMap {
    let mut resp = HeaderMap::new();
    resp.insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp.insert("content-range", HeaderValue::from_static("0-24/*"));
    resp.insert(
        "date",
        HeaderValue::from_static("Mon, 07 Dec 2026 00:00:00 GMT"),
    );
    resp.insert(
        "content-location",
        HeaderValue::from_static("/todos?select=*"),
    );
    resp
}

fn header_filter(
    r: &Route<'_>,
    consumer: Option<usize>,
    req: &HeaderMap,
    mut resp: HeaderMap,
) -> HeaderMap {
    for link in snapshot::select(r.chain, consumer) {
        link.plugin
            .header_filter(&Method::GET, black_box(req), &mut resp);
    }
    resp
}

/// `CHAIN_LOOP=<case>:<n>`: the case `n` times, each with its own copy of the request
/// headers (the `clone` case is that copy alone).
fn run_loop(
    spec: &str,
    r: &Route<'_>,
    opaque: &HeaderMap,
    legacy: &HeaderMap,
    consumer: Option<usize>,
) {
    let (case, n) = spec
        .split_once(':')
        .and_then(|(c, n)| Some((c, n.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("CHAIN_LOOP={spec}: expected <case>:<count>"));
    let resp = response();
    for _ in 0..n {
        match case {
            "opaque" => drop(black_box(access(r, opaque.clone()))),
            "legacy" => drop(black_box(access(r, legacy.clone()))),
            "header_filter" => drop(black_box(header_filter(r, consumer, opaque, resp.clone()))),
            "clone" => drop(black_box(opaque.clone())),
            other => panic!("CHAIN_LOOP: unknown case '{other}'"),
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
