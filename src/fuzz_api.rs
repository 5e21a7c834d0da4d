//! The fuzz targets' entry points (`fuzz/fuzz_targets/*.rs`) and the properties they
//! check, in one place: each `pub fn` takes the fuzzer's bytes, runs one stage of the
//! gateway on them and panics when a property breaks (a panic is what the fuzzer
//! reports). `tests/fuzz_regressions.rs` replays `fuzz/regressions/` and the corpora
//! through the same functions in the normal suite.
//!
//! This is the only module the fuzz crate calls, so moving a module inside the crate
//! means fixing paths here and nowhere else. Not part of the gateway's API.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config;
use crate::cors::{Cors, CorsConfig};
use crate::ipset::{IpSet, parse_forwarded_addr, real_client_ip};
use crate::path;
use crate::router::{RequestInfo, RouteSpec, Router, validate_expression};
use crate::upstream::ClientCache;

/// Reads structured values off the fuzzer's bytes; past the end everything is zero or
/// empty, so every input decodes to something.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.byte()) % items.len()]
    }

    /// Up to `max` bytes, each mapped into `alphabet`.
    fn text(&mut self, alphabet: &[u8], max: usize) -> String {
        let n = usize::from(self.byte()) % (max + 1);
        (0..n)
            .map(|_| char::from(self.pick(alphabet)))
            .collect::<String>()
    }

    /// The bytes up to the next `\n` (or the end), as text.
    fn line(&mut self) -> String {
        let end = self
            .data
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(self.data.len());
        let (line, rest) = self.data.split_at(end);
        self.data = rest.get(1..).unwrap_or(&[]);
        String::from_utf8_lossy(line).into_owned()
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

fn clients() -> &'static ClientCache {
    static CLIENTS: OnceLock<ClientCache> = OnceLock::new();
    CLIENTS.get_or_init(ClientCache::default)
}

// ------------------------------------------------------------------ config

/// The config loader end to end: bytes → positioned tree → model → snapshot, and
/// what `portcullis check` does with the same text. They must agree: a file that
/// `check` accepts must load, and the other way round; every error has a position.
pub fn config(data: &[u8]) {
    const FILE: &str = "fuzz.yaml";
    let loaded = config::load_bytes(FILE, data, 1, clients());
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(loaded.is_err(), "a non-UTF-8 file loaded");
        return;
    };
    let checked = config::load_config(FILE, text);
    assert_eq!(
        checked.is_ok(),
        loaded.is_ok(),
        "check and load disagree: check {:?}, load {:?}",
        checked.as_ref().err().map(ToString::to_string),
        loaded.as_ref().err().map(ToString::to_string),
    );
    // An upper bound on YAML's line count, whatever it takes for a line break.
    let breaks = text
        .chars()
        .filter(|c| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        .count();
    let lines = u64::try_from(breaks).unwrap_or(u64::MAX);
    for errors in [checked.err(), loaded.err()].into_iter().flatten() {
        assert!(!errors.0.is_empty(), "an error result without errors");
        for e in &errors.0 {
            assert!(
                e.pos.line >= 1 && e.pos.col >= 1,
                "error without a position: {e}"
            );
            assert!(
                e.pos.line <= lines.saturating_add(1),
                "error past the end of the file ({lines} lines): {e}"
            );
            assert!(!e.message.is_empty(), "empty error message at {}", e.pos);
            assert!(e.to_string().starts_with(FILE), "{e}");
        }
    }
}

// ------------------------------------------------------------------ path

/// Kong's decoding, written out plainly: `%XX` becomes its byte unless that byte is
/// one of the reserved ``!*'();:@&=+$,/?%#[]`` (then the escape stays, upper-cased);
/// None for a malformed escape.
fn reference_decode(raw: &[u8]) -> Option<Vec<u8>> {
    const RESERVED: &[u8] = b"!*'();:@&=+$,/?%#[]";
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'%' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let v = u8::from_str_radix(hex, 16).ok()?;
        if RESERVED.contains(&v) {
            out.push(b'%');
            out.extend(hex.bytes().map(|b| b.to_ascii_uppercase()));
        } else {
            out.push(v);
        }
        i += 3;
    }
    Some(out)
}

/// Plain RFC 3986 5.2.4 on segments, with runs of `/` merged, for absolute paths:
/// the reference the normaliser's in-place loop is checked against.
fn reference_dot_segments(decoded: &[u8]) -> Vec<u8> {
    let segments: Vec<&[u8]> = decoded[1..].split(|&b| b == b'/').collect();
    let mut stack: Vec<&[u8]> = Vec::new();
    for s in &segments {
        match *s {
            b"" | b"." => {}
            b".." => {
                stack.pop();
            }
            s => stack.push(s),
        }
    }
    let trailing = matches!(segments.last(), Some(&(b"" | b"." | b"..")));
    let mut out = Vec::with_capacity(decoded.len());
    for s in &stack {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing || out.is_empty() {
        out.push(b'/');
    }
    out
}

/// The path normaliser, the nginx pre-check, the upstream escape and the strip_path
/// join: no panic, and the laws that hold between them.
pub fn path(data: &[u8]) {
    let mut r = Reader { data };
    let service = r.pick(&[None, Some("/"), Some("/svc"), Some("/svc/"), Some("/a.b")]);
    let strip_path = r.byte() & 1 == 1;
    let matched = r.byte();
    let raw = String::from_utf8_lossy(r.rest());
    // What the gateway normalises: the target without query (and a fragment never
    // reaches it).
    let raw: &str = raw.split(['?', '#']).next().unwrap_or_default();
    let nginx_ok = path::check_nginx_uri(raw).is_ok();
    let decoded = reference_decode(raw.as_bytes());
    let Ok(normalized) = path::normalize(raw) else {
        assert!(!nginx_ok, "nginx accepts {raw:?} but normalize refuses it");
        assert!(decoded.is_none(), "normalize refuses {raw:?}");
        return;
    };
    let Some(decoded) = decoded else {
        panic!("normalize accepts the malformed {raw:?}");
    };
    if decoded.starts_with(b"/") {
        let want = reference_dot_segments(&decoded);
        assert!(
            normalized == want,
            "normalize({raw:?}) = {:?}, RFC 3986 dot-segment removal gives {:?}",
            String::from_utf8_lossy(&normalized),
            String::from_utf8_lossy(&want)
        );
    }
    // Escaping for upstream, then normalising again, gives the same path back.
    let escaped = path::escape(&normalized);
    assert_eq!(escaped.len(), path::escaped_len(&normalized));
    assert_eq!(
        path::normalize(&escaped).as_deref(),
        Ok(&normalized[..]),
        "normalize(escape(normalize({raw:?}))) is not a fixed point (escaped {escaped:?})"
    );
    if !normalized.starts_with(b"/") {
        return;
    }
    let matched_len = (matched != 0).then(|| usize::from(matched - 1) % (normalized.len() + 1));
    let (joined, prefix) =
        path::strip_and_join(service, &normalized, &escaped, matched_len, strip_path);
    let base = service.unwrap_or("/");
    assert!(
        joined.starts_with(base.strip_suffix('/').unwrap_or(base)),
        "{joined:?} lost the service path {service:?}"
    );
    if let Some(p) = prefix {
        assert!(p <= escaped.len(), "prefix {p} past {escaped:?}");
    }
    assert!(
        http::uri::PathAndQuery::try_from(joined.as_str()).is_ok(),
        "upstream path {joined:?} (from {raw:?}) is not a valid request target"
    );
}

// ------------------------------------------------------------------ router

const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
const HOSTS: [&str; 8] = [
    "a.test",
    "b.test",
    "*.test",
    "a.*",
    "A.TEST",
    "a.test:8000",
    "*.a.test",
    "[::1]:80",
];
const REQ_HOSTS: [Option<&str>; 8] = [
    None,
    Some("a.test"),
    Some("b.test"),
    Some("x.a.test"),
    Some("A.Test:8000"),
    Some("a.other"),
    Some("[::1]:80"),
    Some("a.test:80"),
];
const REGEXES: [&str; 6] = [
    "~/a+",
    "~/(?<v>[ab]+)/x",
    "~/b$",
    "~/a/(.*)",
    "~/[^/]*\\.x",
    "~/(a|b)?c",
];
const HEADER_VALUES: [&str; 4] = ["v", "V", "~*v[0-9]", "w"];
const PATH_BYTES: &[u8] = b"/ab.x";

/// Whether a host pattern as configured matches the request's Host, written
/// independently of the router's index (plain string work, no tries).
fn host_matches(pattern: &str, host: &str, listener_port: u16) -> bool {
    fn split(s: &str) -> (&str, Option<u64>) {
        match s.find(':') {
            Some(i) if !s[i + 1..].is_empty() && s[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
                (&s[..i], s[i + 1..].parse().ok())
            }
            _ => (s, None),
        }
    }
    let (ph, pp) = split(pattern);
    let (rh, rp) = split(host);
    let port = rp.unwrap_or(u64::from(listener_port));
    if pp.is_some_and(|p| p != port) {
        return false;
    }
    let (ph, rh) = (ph.to_ascii_lowercase(), rh.to_ascii_lowercase());
    if let Some(suffix) = ph.strip_prefix('*') {
        rh.ends_with(suffix)
    } else if let Some(prefix) = ph.strip_suffix('*') {
        rh.starts_with(prefix)
    } else {
        rh == ph
    }
}

/// Whether `spec` matches the request, by the route's own fields (the reference).
fn route_matches(spec: &RouteSpec, req: &RequestInfo<'_>) -> bool {
    if !spec.methods.is_empty() && !spec.methods.iter().any(|m| m == req.method) {
        return false;
    }
    if !spec.hosts.is_empty() {
        let Some(host) = req.host else { return false };
        if !spec
            .hosts
            .iter()
            .any(|p| host_matches(p, host, req.listener_port))
        {
            return false;
        }
    }
    for (name, values) in &spec.headers {
        let any = req.headers.get_all(name.as_str()).iter().any(|v| {
            let Ok(v) = v.to_str() else { return false };
            values.iter().any(|want| match want.strip_prefix("~*") {
                Some(re) => regex::Regex::new(&re.to_lowercase())
                    .is_ok_and(|re| re.is_match(&v.to_lowercase())),
                None => v.eq_ignore_ascii_case(want),
            })
        });
        if !any {
            return false;
        }
    }
    spec.paths.is_empty()
        || spec.paths.iter().any(|p| match p.strip_prefix('~') {
            Some(re) => regex::bytes::Regex::new(&format!("^(?:{re})"))
                .is_ok_and(|re| re.is_match(req.path)),
            None => req.path.starts_with(p.as_bytes()),
        })
}

/// An arbitrary small config and request: the router doesn't panic, its pick is the
/// first of `candidates`, and the route it picks really matches (checked against the
/// route's fields by a separate, naive matcher); no match only when none matches.
pub fn router(data: &[u8]) {
    let mut r = Reader { data };
    let n = usize::from(r.byte() % 6) + 1;
    let mut specs = Vec::with_capacity(n);
    for _ in 0..n {
        let set = r.byte();
        let mut spec = RouteSpec::default();
        if set & 1 != 0 {
            spec.methods.push(r.pick(&METHODS).to_string());
        }
        if set & 2 != 0 {
            for _ in 0..=r.byte() % 2 {
                spec.hosts.push(r.pick(&HOSTS).to_string());
            }
        }
        if set & 4 != 0 {
            spec.headers.push((
                r.pick(&["x-a", "x-b"]).to_string(),
                vec![r.pick(&HEADER_VALUES).to_string()],
            ));
        }
        if set & 8 != 0 || set & 15 == 0 {
            for _ in 0..=r.byte() % 2 {
                if r.byte().is_multiple_of(3) {
                    spec.paths.push(r.pick(&REGEXES).to_string());
                } else {
                    spec.paths.push(format!("/{}", r.text(PATH_BYTES, 5)));
                }
            }
        }
        spec.regex_priority = i64::from(r.byte() % 3);
        specs.push(spec);
    }
    let Ok(router) = Router::new(&specs) else {
        return;
    };
    let method = r.pick(&METHODS);
    let host = r.pick(&REQ_HOSTS);
    let listener_port = r.pick(&[80u16, 8000]);
    let mut headers = HeaderMap::new();
    for _ in 0..r.byte() % 3 {
        let name = r.pick(&["x-a", "x-b"]);
        let value = r.pick(&["v", "V", "v1", "w", "W9"]);
        headers.append(name, HeaderValue::from_static(value));
    }
    let raw = format!("/{}", r.text(b"/ab.x%2e", 12));
    let Ok(path) = path::normalize(&raw) else {
        return;
    };
    let req = RequestInfo {
        method,
        host,
        listener_port,
        path: &path,
        headers: &headers,
        query: None,
        tls: false,
        client_ip: None,
        client_port: None,
    };
    let found = router.find(&req);
    let candidates = router.candidates(&req);
    assert_eq!(
        found.as_ref().map(|m| m.route),
        candidates.first().map(|c| c.route),
        "find and candidates disagree for {req:?} on {specs:#?}"
    );
    let matching: Vec<usize> = (0..specs.len())
        .filter(|&i| route_matches(&specs[i], &req))
        .collect();
    match &found {
        None => assert!(
            matching.is_empty(),
            "no route found for {req:?}, but routes {matching:?} match: {specs:#?}"
        ),
        Some(m) => {
            assert!(
                matching.contains(&m.route),
                "route {} chosen for {req:?} but it does not match: {specs:#?}",
                m.route
            );
            let spec = &specs[m.route];
            match m.matched_len {
                None => assert!(spec.paths.is_empty(), "no matched length for {spec:?}"),
                Some(len) => {
                    assert!(len <= path.len(), "matched {len} of {} bytes", path.len());
                    let text = &path[..len];
                    let plain = spec.paths.iter().any(|p| p.as_bytes() == text);
                    let regex = spec.paths.iter().any(|p| p.starts_with('~'));
                    assert!(
                        plain || regex,
                        "matched text {:?} is none of {:?}",
                        String::from_utf8_lossy(text),
                        spec.paths
                    );
                }
            }
        }
    }
    for c in &candidates {
        assert!(
            matching.contains(&c.route),
            "candidate {} does not match {req:?}: {specs:#?}",
            c.route
        );
    }
}

// ------------------------------------------------------------------ expressions

/// The expression-route parser: what the config stage accepts (`validate_expression`)
/// the router compiles, and the other way round; matching the compiled route against
/// a few requests doesn't panic and agrees with `candidates`.
pub fn expression(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let valid = validate_expression(text);
    let specs = [
        RouteSpec {
            expression: Some(text.to_string()),
            priority: 1,
            ..RouteSpec::default()
        },
        RouteSpec {
            paths: vec!["/".to_string()],
            ..RouteSpec::default()
        },
    ];
    let built = Router::new(&specs);
    assert_eq!(
        valid.is_ok(),
        built.is_ok(),
        "validate_expression and Router::new disagree on {text:?}: {valid:?} / {:?}",
        built.as_ref().err()
    );
    let Ok(router) = built else { return };
    let mut headers = HeaderMap::new();
    headers.insert("x-a", HeaderValue::from_static("v"));
    for (method, host, p, query, tls) in [
        ("GET", Some("a.test"), &b"/a/b"[..], Some("x=1&y"), false),
        ("POST", None, &b"/"[..], None, true),
        (
            "GET",
            Some("b.test:8443"),
            &b"/\xff%2F"[..],
            Some("%zz"),
            false,
        ),
    ] {
        let req = RequestInfo {
            method,
            host,
            listener_port: 8000,
            path: p,
            headers: &headers,
            query,
            tls,
            client_ip: Some(IpAddr::from([127, 0, 0, 1])),
            client_port: Some(40000),
        };
        let found = router.find(&req);
        let candidates = router.candidates(&req);
        assert_eq!(
            found.as_ref().map(|m| m.route),
            candidates.first().map(|c| c.route),
            "find and candidates disagree on {text:?} for {req:?}"
        );
        if let Some(m) = found
            && let Some(len) = m.matched_len
        {
            assert!(len <= p.len(), "matched {len} of {} bytes", p.len());
        }
    }
}

// ------------------------------------------------------------------ cors

/// CORS origin matching: for an arbitrary `origins` list and request `Origin`, no
/// panic; `Access-Control-Allow-Origin` is `*`, the configured literal, or the
/// request's origin (as sent or normalised), and an echoed origin comes with
/// `Vary: Origin`.
pub fn cors(data: &[u8]) {
    let mut r = Reader { data };
    let flags = r.byte();
    let n = usize::from(r.byte() % 4);
    let origins: Vec<String> = (0..n).map(|_| r.line()).collect();
    let origin = r.line();
    let cfg = CorsConfig {
        origins: origins.clone(),
        credentials: flags & 1 != 0,
        allow_origin_absent: flags & 2 != 0,
        private_network: flags & 4 != 0,
        preflight_continue: flags & 8 != 0,
        ..CorsConfig::default()
    };
    let Ok(cors) = Cors::new(cfg) else { return };
    let mut req = HeaderMap::new();
    let origin_value = HeaderValue::from_bytes(origin.as_bytes()).ok();
    if let Some(v) = &origin_value {
        req.insert(http::header::ORIGIN, v.clone());
    }
    let mut resp = HeaderMap::new();
    cors.header_filter(&Method::GET, &req, &mut resp);
    check_acao(&resp, &origins, origin_value.as_ref());
    req.insert(
        http::header::ACCESS_CONTROL_REQUEST_METHOD,
        HeaderValue::from_static("PUT"),
    );
    if let Some(pre) = cors.access(&Method::OPTIONS, &req) {
        check_acao(&pre, &origins, origin_value.as_ref());
    }
}

fn check_acao(resp: &HeaderMap, origins: &[String], origin: Option<&HeaderValue>) {
    let values: Vec<&HeaderValue> = resp
        .get_all(http::header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .iter()
        .collect();
    assert!(values.len() <= 1, "ACAO repeated: {values:?}");
    let Some(acao) = values.first() else { return };
    let acao = acao.as_bytes();
    if acao == b"*" || origins.first().is_some_and(|o| o.as_bytes() == acao) {
        return;
    }
    let Some(origin) = origin else {
        panic!("ACAO {acao:?} without a request Origin (origins {origins:?})");
    };
    let o = origin.as_bytes();
    // Normalising keeps the scheme and host and may only drop parts.
    assert!(
        acao == o || (acao.len() <= o.len() + 1 && o.starts_with(&acao[..acao.len().min(3)])),
        "ACAO {acao:?} is not the request origin {o:?} (origins {origins:?})"
    );
    let vary = resp
        .get_all(http::header::VARY)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"origin"));
    assert!(vary, "echoed origin {acao:?} without Vary: Origin");
}

// ------------------------------------------------------------------ real IP

/// The real-IP / X-Forwarded-For parser: the element syntax agrees with the standard
/// library where both read an address; the resolved client is the peer (untrusted
/// peer, nothing usable) or an address from the header.
pub fn real_ip(data: &[u8]) {
    let mut r = Reader { data };
    let flags = r.byte();
    let trusted_line = r.line();
    let trusted_entries: Vec<&str> = trusted_line.split(' ').filter(|s| !s.is_empty()).collect();
    let parsed_set = IpSet::parse(&trusted_entries);
    let complete = parsed_set.is_ok();
    let trusted = parsed_set.unwrap_or_default();
    let peer = r
        .line()
        .parse::<IpAddr>()
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let header = if flags & 1 == 0 {
        HeaderName::from_static("x-forwarded-for")
    } else {
        HeaderName::from_static("x-real-ip")
    };
    let recursive = flags & 2 != 0;
    let mut headers = HeaderMap::new();
    let mut elements = Vec::new();
    for chunk in r.rest().split(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(chunk);
        for e in text.split([' ', ',']).filter(|e| !e.is_empty()) {
            let parsed = parse_forwarded_addr(e);
            if let Ok(std) = e.parse::<IpAddr>()
                && e != "255.255.255.255"
            {
                assert_eq!(parsed, Some(std), "{e:?}");
            }
            // A zone id (`%eth0`) is Rust's syntax, not an address nginx reads.
            if let Ok(std) = e.parse::<SocketAddr>()
                && std.port() != 0
                && !e.contains('%')
                && !e.starts_with("255.255.255.255:")
            {
                assert_eq!(parsed, Some(std.ip()), "{e:?}");
            }
            if let Some(ip) = parsed {
                assert_eq!(
                    parse_forwarded_addr(&ip.to_string()),
                    Some(ip),
                    "{ip} from {e:?}"
                );
                elements.push(ip);
            }
        }
        if let Ok(v) = HeaderValue::from_bytes(chunk) {
            headers.append(header.clone(), v);
        }
    }
    for e in trusted_entries.iter().filter(|_| complete) {
        if let Ok(ip) = e.parse::<IpAddr>() {
            assert!(trusted.contains(ip), "{ip} not in a set built from it");
        }
    }
    let client = real_client_ip(peer, &trusted, &header, recursive, &headers);
    if !trusted.contains(peer) {
        assert_eq!(client, peer, "an untrusted peer's header was used");
    }
    assert!(
        client == peer || elements.contains(&client),
        "client {client} is neither the peer nor from the header"
    );
}

// ------------------------------------------------------------------ Lua templates

/// The request-transformer template parser: arbitrary text compiles or fails with a
/// message (no panic), and literal text around an expression renders back byte for
/// byte (the quoting of literal text into Lua is exact).
pub fn template(data: &[u8]) {
    use crate::lua::Template;
    let src = String::from_utf8_lossy(data);
    let _ = Template::compile(&src, "fuzz");
    // Without `$`, nothing in the text can start an expression.
    let literal: String = src.chars().filter(|&c| c != '$').collect();
    let wrapped = format!("{literal}$(1){literal}");
    let t = match Template::compile(&wrapped, "fuzz") {
        Ok(t) => t,
        Err(e) => panic!("literal text {literal:?} breaks the template: {e}"),
    };
    assert!(t.is_lua());
    let rendered = render(&t);
    assert_eq!(
        rendered.as_deref(),
        Ok(format!("{literal}1{literal}").as_bytes()),
        "template {wrapped:?}"
    );
}

fn render(t: &crate::lua::Template) -> Result<Vec<u8>, String> {
    use crate::consumers::Consumers;
    use crate::plugins::{AuthState, RequestCtx, UpstreamOverrides};
    let method = Method::GET;
    let mut uri = http::Uri::from_static("/");
    let mut headers = HeaderMap::new();
    let consumers = Consumers::default();
    let mut auth = AuthState::default();
    let captures = crate::router::Captures::default();
    let mut upstream = UpstreamOverrides::default();
    let mut extensions = http::Extensions::new();
    let mut ctx = RequestCtx {
        method: &method,
        uri: &mut uri,
        headers: &mut headers,
        body: None,
        client_ip: IpAddr::from([127, 0, 0, 1]),
        request_id: "fuzz",
        consumers: &consumers,
        auth: &mut auth,
        captures: &captures,
        upstream: &mut upstream,
        service: None,
        extensions: &mut extensions,
        mcp: &mut None,
    };
    crate::lua::session(&mut ctx, "fuzz", t.is_lua(), |s| s.render(t)).map_err(|e| e.0)
}

// ------------------------------------------------------------------ HTTP/1 head

/// The blocked prefix of [`http1`]'s gateway; its upstream must never see it.
const BLOCKED: &str = "/mcp";

struct Harness {
    gateway: SocketAddr,
    /// Paths the upstream received that normalise under [`BLOCKED`].
    leaks: Arc<Mutex<Vec<String>>>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => panic!("tokio runtime: {e}"),
            };
            rt.block_on(async move {
                let h = start_harness().await;
                let _ = tx.send(h);
                std::future::pending::<()>().await;
            });
        });
        match rx.recv() {
            Ok(h) => h,
            Err(e) => panic!("harness did not start: {e}"),
        }
    })
}

async fn start_harness() -> Harness {
    use crate::proxy::{Gateway, Settings};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let bind = |what: &'static str| async move {
        match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind {what}: {e}"),
        }
    };
    // A fuzzer's main is libFuzzer's, not Rust's, so SIGPIPE still kills the process
    // when the gateway writes to a closed socket (the real binary ignores it). A tokio
    // listener replaces the default action for good.
    let sigpipe = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe());
    if let Err(e) = sigpipe {
        panic!("SIGPIPE handler: {e}");
    }
    let leaks = Arc::new(Mutex::new(Vec::new()));
    let up = bind("upstream").await;
    let up_addr = match up.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    };
    let seen = Arc::clone(&leaks);
    tokio::spawn(async move {
        while let Ok((s, _)) = up.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let p = req.uri().path().to_string();
                    if path::normalize(&p).is_ok_and(|n| n.starts_with(BLOCKED.as_bytes()))
                        && let Ok(mut l) = seen.lock()
                    {
                        l.push(p);
                    }
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(crate::body::full(
                            "upstream",
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let yaml = format!(
        "_format_version: \"3.0\"\nservices:\n  - name: open\n    url: http://{up_addr}/\n    routes:\n      - name: open\n        paths: [\"/\"]\n  - name: blocked\n    url: http://{up_addr}/\n    routes:\n      - name: blocked\n        paths: [\"{BLOCKED}\"]\n    plugins:\n      - name: request-termination\n        config:\n          status_code: 403\n"
    );
    let snap = match config::load_bytes("fuzz.yaml", yaml.as_bytes(), 1, clients()) {
        Ok(s) => s,
        Err(e) => panic!("harness config: {e}"),
    };
    let settings = Settings {
        access_log: crate::access_log::Format::Off,
        ..Settings::default()
    };
    let gw = Arc::new(Gateway::new(snap, settings, clients().clone()));
    let l = bind("gateway").await;
    let gateway = match l.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    };
    tokio::spawn(crate::server::run(gw, l, std::future::pending()));
    Harness { gateway, leaks }
}

/// Whether `head` is a well-formed HTTP/1.x response head (status line, header
/// lines, blank line).
fn response_head_ok(bytes: &[u8]) -> Result<(), String> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err("no end of head".into());
    };
    // The head up to the last line's CR: every line then ends in CR.
    let head = &bytes[..=end];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").ok_or("bare LF in the head"));
    let status = lines.next().unwrap_or(Ok(b""))?;
    let ok_status = (status.starts_with(b"HTTP/1.1 ") || status.starts_with(b"HTTP/1.0 "))
        && status.len() >= 13
        && status[9..12].iter().all(u8::is_ascii_digit)
        && status[12] == b' ';
    if !ok_status {
        return Err(format!(
            "bad status line {:?}",
            String::from_utf8_lossy(status)
        ));
    }
    for line in lines {
        let line = line?;
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("header line without ':'")?;
        HeaderName::from_bytes(&line[..colon]).map_err(|e| format!("header name: {e}"))?;
        if line.iter().any(|&b| b == b'\r' || b == 0) {
            return Err("CR or NUL in a header line".into());
        }
    }
    Ok(())
}

/// The HTTP/1 request head as the server sees it: the bytes go to a real gateway
/// (`server::run` on 127.0.0.1, a `/mcp` route blocked by request-termination next
/// to an open `/`), whose answer, if any, starts with a well-formed response head and
/// comes within a bound; the upstream never receives a path under `/mcp`.
pub fn http1(data: &[u8]) {
    let h = harness();
    let mut s = match std::net::TcpStream::connect(h.gateway) {
        Ok(s) => s,
        Err(e) => panic!("connect: {e}"),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    // The server may close early (an error answer); what it read is what counts.
    let _ = s.write_all(data);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    if let Err(e) = s.read_to_end(&mut out)
        && e.kind() != std::io::ErrorKind::ConnectionReset
    {
        panic!("no end of the answer within 10 s ({e}), after {out:?}");
    }
    if data.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") {
        // HTTP/2 with prior knowledge: the server's first frame is its SETTINGS.
        assert!(
            out.is_empty() || out.get(3) == Some(&4),
            "HTTP/2 answer without SETTINGS first: {out:?}"
        );
    } else if !out.is_empty()
        && let Err(e) = response_head_ok(&out)
    {
        panic!("{e}: {:?}", String::from_utf8_lossy(&out));
    }
    let leaks = match h.leaks.lock() {
        Ok(mut l) => std::mem::take(&mut *l),
        Err(e) => panic!("{e}"),
    };
    assert!(leaks.is_empty(), "the upstream received {leaks:?}");
}
