//! The `cors` plugin (PRIORITY 2000), reproducing Kong 3.10's `kong/plugins/cors` handler and schema.
//!
//! [`CorsConfig`] is the plugin config as written (decoded elsewhere); [`Cors::new`] validates it like Kong's
//! schema and compiles it once: origin regexes are built, plain origins pre-normalized and every constant header
//! value pre-rendered, so per-request work only allocates when the echoed origin has to be rebuilt
//! (e.g. `http://a.test:80` → `http://a.test`).
//!
//! Phases:
//! - [`Cors::access`]: a preflight (`OPTIONS` + non-empty `Origin` + `Access-Control-Request-Method` present)
//!   is answered with `200`, an empty body and the CORS headers, unless `preflight_continue` is set.
//! - [`Cors::header_filter`]: every other response (proxied, upstream errors, the gateway's own errors) gets the
//!   origin / credentials / expose headers. Preflights get nothing here, as Kong's `skip_response_headers`.
//!
//! Kong details reproduced on purpose:
//! - `Origin` is the first `Origin` request header; an empty one counts as absent.
//! - The request origin is parsed like LuaSocket 3.0-rc1's `socket.url.parse` (fragment cut at the first `#`,
//!   scheme `[A-Za-z0-9][A-Za-z0-9+.-]*:`, authority after `//` up to the next `/` (so `?` stays in it),
//!   userinfo dropped up to the first `@`, port after the last `:` unless a `]` follows it, `[...]` brackets
//!   removed from the host) and normalized to `scheme://host[:port]`, dropping port 80 for `http` and 443 for
//!   `https` (case-sensitive). An origin without a host (`null`, `foo.test`, `http://`) is used verbatim as both
//!   host and normalized origin. A trailing `:` keeps an empty port (`http://a.test:` stays as is).
//! - `Vary: Origin` is *added* in header_filter (it can therefore appear twice, e.g. a `*` entry in a longer
//!   list combined with `credentials`), but *set* (once) on the preflight answer.
//! - Header values that Kong sets to an empty string (`methods: []`, an empty echoed
//!   `Access-Control-Request-Headers`) are emitted with an empty value.
//! - Origin regexes are PCRE in Kong; here they are compiled with the `regex` crate in byte mode with Unicode
//!   disabled (`(?-u)`, like PCRE without UTF), falling back to Unicode mode for patterns that need it
//!   (e.g. `\p{L}`). PCRE-only syntax (look-around, back-references, possessive quantifiers) is rejected.

use std::borrow::Cow;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::bytes::Regex;

/// Kong's allowed (and default) `methods`, in schema order.
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// `Access-Control-Allow-Private-Network` (not among `http`'s constants).
pub const ACCESS_CONTROL_ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");
/// `Access-Control-Request-Private-Network` (not among `http`'s constants).
pub const ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");

const STAR: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");

/// The plugin's config as written in YAML (decoded elsewhere). Defaults as Kong's schema.
#[derive(Debug, Clone)]
pub struct CorsConfig {
    pub origins: Vec<String>,
    pub headers: Vec<String>,
    pub exposed_headers: Vec<String>,
    /// `Default` gives Kong's 9 methods ([`METHODS`]).
    pub methods: Vec<String>,
    pub max_age: Option<i64>,
    pub credentials: bool,
    pub private_network: bool,
    pub preflight_continue: bool,
    /// Kong ≥ 3.10; default true. When false, a non-preflight request without (or with an empty) `Origin`
    /// gets no CORS headers at all.
    pub allow_origin_absent: bool,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            origins: Vec::new(),
            headers: Vec::new(),
            exposed_headers: Vec::new(),
            methods: METHODS.iter().map(|m| (*m).to_owned()).collect(),
            max_age: None,
            credentials: false,
            private_network: false,
            preflight_continue: false,
            allow_origin_absent: true,
        }
    }
}

/// A compiled origin regex. Kong matches with PCRE's anchored flag (match must start at offset 0).
#[derive(Debug, Clone)]
enum Matcher {
    /// Pattern wrapped as `\A(?:...)`.
    Anchored(Regex),
    /// Pattern as is (used when wrapping changes its meaning, e.g. a trailing `(?x)` comment would swallow
    /// the closing parenthesis); a match counts only when the leftmost match starts at 0.
    StartOnly(Regex),
}

impl Matcher {
    fn is_match(&self, subject: &[u8]) -> bool {
        match self {
            Matcher::Anchored(re) => re.is_match(subject),
            Matcher::StartOnly(re) => re.find(subject).is_some_and(|m| m.start() == 0),
        }
    }
}

/// One entry of a multi-entry (or single non-literal) `origins` list.
#[derive(Debug, Clone)]
enum Entry {
    /// Only `[A-Za-z0-9.:/-]`: compared to the normalized request origin.
    Plain(Vec<u8>),
    /// Anything else. `matcher` is `None` when the adjusted pattern (trailing `$` added, leading `^` dropped)
    /// does not compile although the original did: Kong logs the error and never matches.
    Regex {
        matcher: Option<Matcher>,
        by_host: bool,
    },
}

#[derive(Debug, Clone)]
enum Origins {
    /// `origins` empty or exactly `["*"]`: `ACAO: *`, no `Vary`.
    All,
    /// A single entry made only of `[A-Za-z0-9.:/-]`: sent verbatim whatever the request origin.
    Literal(HeaderValue),
    /// Anything else. `star`: some entry is `*` (then any provided origin gets `ACAO: *`).
    List { star: bool, entries: Vec<Entry> },
}

/// The compiled plugin instance (immutable, shareable between requests).
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Origins,
    credentials: bool,
    private_network: bool,
    preflight_continue: bool,
    allow_origin_absent: bool,
    allow_headers: Option<HeaderValue>,
    allow_methods: HeaderValue,
    max_age: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
}

type FieldErrors = Vec<(String, String)>;

impl Cors {
    /// Validates `cfg` as Kong's schema does and compiles it.
    ///
    /// Every error is returned, each as `(field, message)` with a 0-based element index, e.g.
    /// `("origins.2", "'[' is not a valid regex: unclosed character class")`. Messages:
    /// - empty string in `origins`/`headers`/`exposed_headers`: `length must be at least 1` (Kong's default
    ///   `len_min`);
    /// - an origin that is neither `*` nor a valid regex: `'<origin>' is not a valid regex: <reason>` (Kong's
    ///   message is the same without the `: <reason>` suffix);
    /// - a method outside Kong's set (case-sensitive, `""` included):
    ///   `expected one of: GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS, TRACE, CONNECT`;
    /// - (not in Kong, which would fail at runtime) a `headers`/`exposed_headers` element with control
    ///   characters: `'<value>' is not a valid header value`.
    pub fn new(cfg: CorsConfig) -> Result<Cors, Vec<(String, String)>> {
        let mut errors = FieldErrors::new();

        for (i, origin) in cfg.origins.iter().enumerate() {
            if origin.is_empty() {
                errors.push((
                    format!("origins.{i}"),
                    "length must be at least 1".to_owned(),
                ));
            } else if origin != "*"
                && let Err(reason) = validate_regex(origin)
            {
                errors.push((
                    format!("origins.{i}"),
                    format!("'{origin}' is not a valid regex: {reason}"),
                ));
            }
        }
        for (i, method) in cfg.methods.iter().enumerate() {
            if !METHODS.contains(&method.as_str()) {
                errors.push((
                    format!("methods.{i}"),
                    format!("expected one of: {}", METHODS.join(", ")),
                ));
            }
        }
        let allow_headers = joined_header(&cfg.headers, "headers", &mut errors);
        let expose_headers = joined_header(&cfg.exposed_headers, "exposed_headers", &mut errors);

        // Methods are validated above, so the joined value is always a valid header value.
        let allow_methods = HeaderValue::from_str(&cfg.methods.join(",")).ok();
        let max_age = cfg
            .max_age
            .and_then(|n| HeaderValue::from_str(&lua_number(n)).ok());
        let origins = compile_origins(&cfg.origins);

        match (errors.is_empty(), allow_methods) {
            (true, Some(allow_methods)) => Ok(Cors {
                origins,
                credentials: cfg.credentials,
                private_network: cfg.private_network,
                preflight_continue: cfg.preflight_continue,
                allow_origin_absent: cfg.allow_origin_absent,
                allow_headers,
                allow_methods,
                max_age,
                expose_headers,
            }),
            _ => Err(errors),
        }
    }

    /// True when this request is a preflight per Kong (OPTIONS + non-empty Origin + Access-Control-Request-Method
    /// present, even if empty). The method comparison is case-sensitive, as nginx's `$request_method`.
    pub fn is_preflight(&self, method: &Method, req: &HeaderMap) -> bool {
        *method == Method::OPTIONS
            && request_origin(req).is_some()
            && req.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Access phase. Returns Some(headers) for the 200 empty-body preflight answer Kong gives (the caller builds
    /// the response with Content-Length: 0), or None to continue (non-preflight, or preflight_continue=true).
    pub fn access(&self, method: &Method, req: &HeaderMap) -> Option<HeaderMap> {
        if !self.is_preflight(method, req) || self.preflight_continue {
            return None;
        }
        let origin = request_origin(req);
        let mut h = HeaderMap::new();
        let allow_all = self.configure_origin(&mut h, false, origin);
        self.configure_credentials(&mut h, false, allow_all, origin);

        if let Some(v) = &self.allow_headers {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        } else if let Some(v) = req.get(ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
        if let Some(v) = &self.max_age {
            h.insert(ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        if self.private_network
            && req
                .get(ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK)
                .is_some_and(|v| v.as_bytes() == b"true")
        {
            h.insert(ACCESS_CONTROL_ALLOW_PRIVATE_NETWORK, TRUE);
        }
        Some(h)
    }

    /// Header-filter phase for non-preflight responses (proxied, upstream errors and the gateway's own errors
    /// alike): adds/removes CORS headers on `resp` (ACAO, ACAC, Access-Control-Expose-Headers, `Vary: Origin`
    /// appended to any existing Vary rather than replacing it; removes an upstream ACAO when no origin matched,
    /// as Kong does).
    ///
    /// Preflight requests (per [`Cors::is_preflight`]) get nothing: either [`Cors::access`] answered them itself,
    /// or they were passed upstream because of `preflight_continue` (Kong's `skip_response_headers`).
    pub fn header_filter(&self, method: &Method, req: &HeaderMap, resp: &mut HeaderMap) {
        if self.is_preflight(method, req) {
            return;
        }
        self.apply_response_headers(req, resp);
    }

    /// [`Cors::header_filter`] without the preflight check, for a caller that records Kong's
    /// `skip_response_headers` itself (true when [`Cors::is_preflight`] held in the access phase). Kong reads
    /// `Origin` in header_filter from the request headers *as they are then*, i.e. after other plugins'
    /// changes (request-transformer can rename/remove/replace `Origin`), while the skip flag was decided in
    /// access with the original ones; pass those current headers as `req`.
    pub fn apply_response_headers(&self, req: &HeaderMap, resp: &mut HeaderMap) {
        let origin = request_origin(req);
        if origin.is_none() && !self.allow_origin_absent {
            return;
        }
        let allow_all = self.configure_origin(resp, true, origin);
        self.configure_credentials(resp, true, allow_all, origin);
        if let Some(v) = &self.expose_headers {
            resp.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }

    /// Whether preflights are passed upstream (`preflight_continue`).
    pub fn preflight_continue(&self) -> bool {
        self.preflight_continue
    }

    /// Kong's `configure_origin`: sets/clears ACAO (and Vary); true when ACAO is `*`.
    fn configure_origin(
        &self,
        resp: &mut HeaderMap,
        header_filter: bool,
        origin: Option<&HeaderValue>,
    ) -> bool {
        let (star, entries) = match &self.origins {
            Origins::All => {
                resp.insert(ACCESS_CONTROL_ALLOW_ORIGIN, STAR);
                return true;
            }
            Origins::Literal(v) => {
                add_vary(resp, header_filter);
                resp.insert(ACCESS_CONTROL_ALLOW_ORIGIN, v.clone());
                return false;
            }
            Origins::List { star, entries } => (*star, entries),
        };
        add_vary(resp, header_filter);

        if let Some(origin) = origin {
            if star {
                resp.insert(ACCESS_CONTROL_ALLOW_ORIGIN, STAR);
                return true;
            }
            let norm = NormOrigin::parse(origin.as_bytes());
            let matched = entries.iter().any(|entry| match entry {
                Entry::Plain(domain) => norm.domain_eq(domain),
                Entry::Regex { matcher, by_host } => matcher.as_ref().is_some_and(|m| {
                    if *by_host {
                        m.is_match(norm.host())
                    } else {
                        m.is_match(&norm.domain())
                    }
                }),
            });
            if matched {
                let value = if norm.domain_eq(origin.as_bytes()) {
                    Some(origin.clone())
                } else {
                    HeaderValue::from_bytes(&norm.domain()).ok()
                };
                if let Some(value) = value {
                    resp.insert(ACCESS_CONTROL_ALLOW_ORIGIN, value);
                    return false;
                }
            }
        }
        resp.remove(ACCESS_CONTROL_ALLOW_ORIGIN);
        false
    }

    /// Kong's `configure_credentials`.
    fn configure_credentials(
        &self,
        resp: &mut HeaderMap,
        header_filter: bool,
        allow_all: bool,
        origin: Option<&HeaderValue>,
    ) {
        if !self.credentials {
            return;
        }
        if !allow_all {
            resp.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
            return;
        }
        // ACAC cannot be `true` with `ACAO: *`: echo the raw request origin instead.
        if let Some(origin) = origin {
            add_vary(resp, header_filter);
            resp.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            resp.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
    }
}

/// `kong.response.add_header("vary", "Origin")` in header_filter, `set_header` when building the preflight.
fn add_vary(resp: &mut HeaderMap, header_filter: bool) {
    if header_filter {
        resp.append(VARY, VARY_ORIGIN);
    } else {
        resp.insert(VARY, VARY_ORIGIN);
    }
}

/// The first `Origin` request header, `None` when absent or empty.
fn request_origin(req: &HeaderMap) -> Option<&HeaderValue> {
    req.get(ORIGIN).filter(|v| !v.is_empty())
}

/// Only `[A-Za-z0-9.:/-]` (Kong's "does not look like a regex" test).
fn is_plain(s: &[u8]) -> bool {
    s.iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'/' | b'-'))
}

fn compile_origins(origins: &[String]) -> Origins {
    match origins {
        [] => return Origins::All,
        [only] if only == "*" => return Origins::All,
        [only] if !only.is_empty() && is_plain(only.as_bytes()) => {
            if let Ok(v) = HeaderValue::from_str(only) {
                return Origins::Literal(v);
            }
        }
        _ => {}
    }
    let mut star = false;
    let mut entries = Vec::with_capacity(origins.len());
    for entry in origins {
        if entry == "*" {
            star = true;
        } else if is_plain(entry.as_bytes()) {
            entries.push(Entry::Plain(
                NormOrigin::parse(entry.as_bytes()).domain().into_owned(),
            ));
        } else {
            let mut pattern: &str = entry;
            let with_dollar;
            if !pattern.ends_with('$') {
                with_dollar = format!("{pattern}$");
                pattern = &with_dollar;
            }
            let pattern = pattern.strip_prefix('^').unwrap_or(pattern);
            entries.push(Entry::Regex {
                matcher: compile_matcher(pattern),
                by_host: !pattern.contains(':'),
            });
        }
    }
    Origins::List { star, entries }
}

/// Byte-mode ASCII (PCRE without UTF) first, Unicode mode for patterns that need it.
fn compile_matcher(pattern: &str) -> Option<Matcher> {
    let anchored = [
        format!("(?-u)\\A(?:{pattern})"),
        format!("\\A(?:{pattern})"),
    ];
    if let Some(re) = anchored.iter().find_map(|p| Regex::new(p).ok()) {
        return Some(Matcher::Anchored(re));
    }
    [format!("(?-u){pattern}"), pattern.to_owned()]
        .iter()
        .find_map(|p| Regex::new(p).ok())
        .map(Matcher::StartOnly)
}

/// Kong's `is_regex`; on failure, the (one-line) reason from the Unicode-mode attempt.
fn validate_regex(pattern: &str) -> Result<(), String> {
    if Regex::new(&format!("(?-u){pattern}")).is_ok() {
        return Ok(());
    }
    match Regex::new(pattern) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let last = text.lines().last().unwrap_or_default().trim();
            Err(last.strip_prefix("error: ").unwrap_or(last).to_owned())
        }
    }
}

/// Validates a string array destined to a header and pre-renders it joined with `,` (`None` when empty).
fn joined_header(values: &[String], field: &str, errors: &mut FieldErrors) -> Option<HeaderValue> {
    let mut ok = true;
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            errors.push((
                format!("{field}.{i}"),
                "length must be at least 1".to_owned(),
            ));
            ok = false;
        } else if HeaderValue::from_str(v).is_err() {
            errors.push((
                format!("{field}.{i}"),
                format!("'{}' is not a valid header value", v.escape_debug()),
            ));
            ok = false;
        }
    }
    if values.is_empty() || !ok {
        return None;
    }
    HeaderValue::from_str(&values.join(",")).ok()
}

/// LuaJIT's `tostring(number)` (`%.14g`) for an integral value.
fn lua_number(n: i64) -> String {
    if n.unsigned_abs() < 100_000_000_000_000 {
        return n.to_string();
    }
    // `as` is the intended lossy conversion: Kong holds max_age as a Lua number (double).
    let s = format!("{:.13e}", n as f64);
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let mantissa = if mantissa.contains('.') {
        mantissa.trim_end_matches('0').trim_end_matches('.')
    } else {
        mantissa
    };
    let (sign, digits) = match exp.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exp),
    };
    let digits = if digits.len() < 2 {
        format!("0{digits}")
    } else {
        digits.to_owned()
    };
    format!("{mantissa}e{sign}{digits}")
}

/// A request (or plain config) origin as Kong's `normalize_origin` sees it.
struct NormOrigin<'a> {
    raw: &'a [u8],
    /// `None` when `socket.url.parse` finds no host: then host = normalized origin = `raw`.
    parts: Option<Parts<'a>>,
}

/// `scheme://host[:port]`, default port already dropped.
struct Parts<'a> {
    scheme: Option<&'a [u8]>,
    host: &'a [u8],
    port: Option<&'a [u8]>,
}

impl<'a> NormOrigin<'a> {
    /// LuaSocket 3.0-rc1 `url.parse`, keeping only what `normalize_origin` uses. Never fails.
    fn parse(raw: &'a [u8]) -> Self {
        NormOrigin {
            raw,
            parts: parse_parts(raw),
        }
    }

    fn host(&self) -> &'a [u8] {
        self.parts.as_ref().map_or(self.raw, |p| p.host)
    }

    /// The normalized origin as its pieces (empty slices for absent ones).
    fn pieces(&self) -> [&'a [u8]; 5] {
        match &self.parts {
            None => [self.raw, b"", b"", b"", b""],
            Some(p) => [
                p.scheme.unwrap_or_default(),
                if p.scheme.is_some() { b"://" } else { b"" },
                p.host,
                if p.port.is_some() { b":" } else { b"" },
                p.port.unwrap_or_default(),
            ],
        }
    }

    /// Normalized origin == `other`, without building it.
    fn domain_eq(&self, other: &[u8]) -> bool {
        let mut rest = other;
        for piece in self.pieces() {
            match rest.strip_prefix(piece) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.is_empty()
    }

    /// The normalized origin; borrowed when it is the raw value itself.
    fn domain(&self) -> Cow<'a, [u8]> {
        if self.domain_eq(self.raw) {
            Cow::Borrowed(self.raw)
        } else {
            Cow::Owned(self.pieces().concat())
        }
    }
}

fn parse_parts(raw: &[u8]) -> Option<Parts<'_>> {
    // fragment: from the first '#'
    let url = raw.split(|&b| b == b'#').next().unwrap_or_default();
    // scheme: ^[%w][%w+-.]*:
    let mut scheme = None;
    let mut rest = url;
    if url.first().is_some_and(u8::is_ascii_alphanumeric) {
        let end = url
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
            .unwrap_or(url.len());
        if let Some((s, r)) = url.split_at_checked(end)
            && let Some(r) = r.strip_prefix(b":")
        {
            scheme = Some(s);
            rest = r;
        }
    }
    // authority: ^//([^/]*)
    let after = rest.strip_prefix(b"//")?;
    let mut authority = after.split(|&b| b == b'/').next().unwrap_or_default();
    // userinfo: ^([^@]*)@
    if let Some(i) = authority.iter().position(|&b| b == b'@') {
        authority = authority.get(i + 1..).unwrap_or_default();
    }
    // port: :([^:%]]*)$
    let mut port = None;
    if let Some(i) = authority.iter().rposition(|&b| b == b':') {
        let (a, p) = authority.split_at(i);
        let p = p.get(1..).unwrap_or_default();
        if !p.contains(&b']') {
            port = Some(p);
            authority = a;
        }
    }
    if authority.is_empty() {
        return None;
    }
    // IPv6: ^%[(.+)%]$
    let host = match authority {
        [b'[', inner @ .., b']'] if !inner.is_empty() => inner,
        _ => authority,
    };
    if (scheme == Some(b"http") && port == Some(b"80"))
        || (scheme == Some(b"https") && port == Some(b"443"))
    {
        port = None;
    }
    Some(Parts { scheme, host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(cfg: CorsConfig) -> Cors {
        Cors::new(cfg).expect("valid config")
    }

    fn origins(list: &[&str]) -> CorsConfig {
        CorsConfig {
            origins: list.iter().map(|s| (*s).to_owned()).collect(),
            ..CorsConfig::default()
        }
    }

    fn req(headers: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    fn one(h: &HeaderMap, name: &str) -> Option<String> {
        let v = all(h, name);
        assert!(v.len() <= 1, "{name} repeated: {v:?}");
        v.into_iter().next()
    }

    /// header_filter on a GET with the given request headers and upstream response headers.
    fn filter(c: &Cors, rq: &[(&str, &str)], upstream: &[(&str, &str)]) -> HeaderMap {
        let mut resp = req(upstream);
        c.header_filter(&Method::GET, &req(rq), &mut resp);
        resp
    }

    fn acao_for(c: &Cors, origin: &str) -> Option<String> {
        one(
            &filter(c, &[("origin", origin)], &[]),
            "access-control-allow-origin",
        )
    }

    fn preflight(c: &Cors, extra: &[(&str, &str)]) -> Option<HeaderMap> {
        let mut h = vec![
            ("origin", "http://a.test"),
            ("access-control-request-method", "POST"),
        ];
        h.extend_from_slice(extra);
        c.access(&Method::OPTIONS, &req(&h))
    }

    #[test]
    fn defaults_match_kong_schema() {
        let d = CorsConfig::default();
        assert_eq!(
            d.methods.join(","),
            "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
        );
        assert!(d.origins.is_empty() && d.headers.is_empty() && d.exposed_headers.is_empty());
        assert_eq!(d.max_age, None);
        assert!(!d.credentials && !d.private_network && !d.preflight_continue);
        assert!(d.allow_origin_absent);
    }

    #[test]
    fn default_config_allows_all_without_vary() {
        let c = cors(CorsConfig::default());
        for rq in [vec![("origin", "http://x.test")], vec![]] {
            let h = filter(&c, &rq, &[]);
            assert_eq!(one(&h, "access-control-allow-origin").as_deref(), Some("*"));
            assert!(all(&h, "vary").is_empty());
            assert!(all(&h, "access-control-allow-credentials").is_empty());
            assert!(all(&h, "access-control-expose-headers").is_empty());
        }
        let c = cors(origins(&["*"]));
        let h = filter(
            &c,
            &[("origin", "http://x.test")],
            &[("access-control-allow-origin", "http://up.test")],
        );
        assert_eq!(all(&h, "access-control-allow-origin"), ["*"]);
        assert!(all(&h, "vary").is_empty());
    }

    #[test]
    fn default_config_preflight() {
        let c = cors(CorsConfig::default());
        let h = preflight(&c, &[("access-control-request-headers", "X-A, X-B")]).expect("answered");
        assert_eq!(one(&h, "access-control-allow-origin").as_deref(), Some("*"));
        assert_eq!(
            one(&h, "access-control-allow-methods").as_deref(),
            Some("GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT")
        );
        assert_eq!(
            one(&h, "access-control-allow-headers").as_deref(),
            Some("X-A, X-B")
        );
        assert!(h.get("vary").is_none());
        assert!(h.get("access-control-max-age").is_none());
        assert!(h.get("access-control-allow-credentials").is_none());
        assert!(h.get("access-control-expose-headers").is_none());
        assert!(h.get("access-control-allow-private-network").is_none());
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn preflight_detection() {
        let c = cors(CorsConfig::default());
        let full = [
            ("origin", "http://a.test"),
            ("access-control-request-method", "GET"),
        ];
        assert!(c.is_preflight(&Method::OPTIONS, &req(&full)));
        // empty ACRM still counts as present
        assert!(c.is_preflight(
            &Method::OPTIONS,
            &req(&[
                ("origin", "http://a.test"),
                ("access-control-request-method", "")
            ])
        ));
        assert!(!c.is_preflight(&Method::GET, &req(&full)));
        let lower = Method::from_bytes(b"options").expect("method");
        assert!(!c.is_preflight(&lower, &req(&full)));
        assert!(!c.is_preflight(
            &Method::OPTIONS,
            &req(&[("access-control-request-method", "GET")])
        ));
        assert!(!c.is_preflight(
            &Method::OPTIONS,
            &req(&[("origin", ""), ("access-control-request-method", "GET")])
        ));
        assert!(!c.is_preflight(&Method::OPTIONS, &req(&[("origin", "http://a.test")])));
        // OPTIONS that is not a preflight: proxied, headers added in header_filter
        let rq = req(&[("origin", "http://a.test")]);
        assert!(c.access(&Method::OPTIONS, &rq).is_none());
        let mut resp = HeaderMap::new();
        c.header_filter(&Method::OPTIONS, &rq, &mut resp);
        assert_eq!(
            one(&resp, "access-control-allow-origin").as_deref(),
            Some("*")
        );
        // a preflight's response gets nothing in header_filter
        let mut resp = HeaderMap::new();
        c.header_filter(&Method::OPTIONS, &req(&full), &mut resp);
        assert!(resp.is_empty());
    }

    #[test]
    fn single_literal_origin_is_sent_verbatim() {
        let c = cors(origins(&["http://mockbin.test:80"]));
        for rq in [
            vec![("origin", "http://other.test")],
            vec![("origin", "http://mockbin.test")],
            vec![],
        ] {
            let h = filter(&c, &rq, &[]);
            assert_eq!(
                one(&h, "access-control-allow-origin").as_deref(),
                Some("http://mockbin.test:80")
            );
            assert_eq!(all(&h, "vary"), ["Origin"]);
        }
        let h = preflight(&c, &[]).expect("answered");
        assert_eq!(
            one(&h, "access-control-allow-origin").as_deref(),
            Some("http://mockbin.test:80")
        );
        assert_eq!(all(&h, "vary"), ["Origin"]);
    }

    #[test]
    fn regex_without_colon_matches_host_anchored() {
        let c = cors(origins(&[r"(.*\.)?example\.com"]));
        assert_eq!(
            acao_for(&c, "https://api.example.com").as_deref(),
            Some("https://api.example.com")
        );
        assert_eq!(
            acao_for(&c, "http://example.com:8080").as_deref(),
            Some("http://example.com:8080")
        );
        assert_eq!(acao_for(&c, "https://example.com.evil.net"), None);
        // anchored at the start of the host
        let c = cors(origins(&[r"example\.com"]));
        assert_eq!(acao_for(&c, "http://notexample.com"), None);
        assert_eq!(
            acao_for(&c, "http://example.com").as_deref(),
            Some("http://example.com")
        );
        // leading '^' dropped, existing '$' kept
        let c = cors(origins(&[r"^foo\.test$", "bar.test"]));
        assert_eq!(
            acao_for(&c, "http://foo.test").as_deref(),
            Some("http://foo.test")
        );
        assert_eq!(acao_for(&c, "http://xfoo.test"), None);
        // every non-"All" config sends Vary even without a match
        let h = filter(&c, &[("origin", "http://nope.test")], &[]);
        assert_eq!(all(&h, "vary"), ["Origin"]);
        assert!(h.get("access-control-allow-origin").is_none());
        // alternation: Kong anchors only the start ("a|b$" lets "a..." through)
        let c = cors(origins(&["foo|bar"]));
        assert_eq!(
            acao_for(&c, "http://foooo.test").as_deref(),
            Some("http://foooo.test")
        );
        assert_eq!(acao_for(&c, "http://barx.test"), None);
    }

    #[test]
    fn regex_with_colon_matches_normalized_origin() {
        let c = cors(origins(&[r"https://.*\.example\.com"]));
        assert_eq!(
            acao_for(&c, "https://a.example.com").as_deref(),
            Some("https://a.example.com")
        );
        // default port dropped before matching and in the echoed value
        assert_eq!(
            acao_for(&c, "https://a.example.com:443").as_deref(),
            Some("https://a.example.com")
        );
        assert_eq!(acao_for(&c, "https://a.example.com:8443"), None);
        assert_eq!(acao_for(&c, "http://a.example.com"), None);
        let c = cors(origins(&[r"http://localhost:\d+"]));
        assert_eq!(
            acao_for(&c, "http://localhost:3000").as_deref(),
            Some("http://localhost:3000")
        );
        assert_eq!(acao_for(&c, "http://localhost"), None);
        assert_eq!(acao_for(&c, "http://localhost:80"), None);
    }

    #[test]
    fn plain_entries_compare_normalized() {
        let c = cors(origins(&[
            "http://a.test",
            "http://b.test:80",
            "https://c.test:8443",
        ]));
        assert_eq!(
            acao_for(&c, "http://a.test").as_deref(),
            Some("http://a.test")
        );
        assert_eq!(
            acao_for(&c, "http://a.test:80").as_deref(),
            Some("http://a.test")
        );
        assert_eq!(
            acao_for(&c, "http://b.test").as_deref(),
            Some("http://b.test")
        );
        assert_eq!(
            acao_for(&c, "http://b.test:80/path?q").as_deref(),
            Some("http://b.test")
        );
        assert_eq!(
            acao_for(&c, "https://c.test:8443").as_deref(),
            Some("https://c.test:8443")
        );
        assert_eq!(acao_for(&c, "https://a.test"), None);
        assert_eq!(acao_for(&c, "http://a.test:8080"), None);
        assert_eq!(acao_for(&c, "HTTP://a.test"), None);
        // an entry without scheme only equals a scheme-less origin
        let c = cors(origins(&["a.test", "null"]));
        assert_eq!(acao_for(&c, "http://a.test"), None);
        assert_eq!(acao_for(&c, "a.test").as_deref(), Some("a.test"));
        assert_eq!(acao_for(&c, "null").as_deref(), Some("null"));
    }

    #[test]
    fn star_in_list_allows_any_provided_origin() {
        let c = cors(origins(&["http://a.test", "*"]));
        let h = filter(&c, &[("origin", "http://zzz.test")], &[]);
        assert_eq!(one(&h, "access-control-allow-origin").as_deref(), Some("*"));
        assert_eq!(all(&h, "vary"), ["Origin"]);
        // without an origin: no match, ACAO cleared
        let h = filter(&c, &[], &[("access-control-allow-origin", "*")]);
        assert!(h.get("access-control-allow-origin").is_none());
        assert_eq!(all(&h, "vary"), ["Origin"]);
    }

    #[test]
    fn credentials_with_star_echo_raw_origin() {
        let c = cors(CorsConfig {
            credentials: true,
            ..CorsConfig::default()
        });
        let h = filter(&c, &[("origin", "http://foo.test:80")], &[]);
        assert_eq!(
            one(&h, "access-control-allow-origin").as_deref(),
            Some("http://foo.test:80")
        );
        assert_eq!(
            one(&h, "access-control-allow-credentials").as_deref(),
            Some("true")
        );
        assert_eq!(all(&h, "vary"), ["Origin"]);
        // no origin: ACAO * and no ACAC
        let h = filter(&c, &[], &[]);
        assert_eq!(one(&h, "access-control-allow-origin").as_deref(), Some("*"));
        assert!(h.get("access-control-allow-credentials").is_none());
        assert!(h.get("vary").is_none());
        // preflight
        let h = preflight(&c, &[]).expect("answered");
        assert_eq!(
            one(&h, "access-control-allow-origin").as_deref(),
            Some("http://a.test")
        );
        assert_eq!(
            one(&h, "access-control-allow-credentials").as_deref(),
            Some("true")
        );
        assert_eq!(all(&h, "vary"), ["Origin"]);
    }

    #[test]
    fn credentials_with_star_entry_in_list_adds_vary_twice() {
        let c = cors(CorsConfig {
            credentials: true,
            ..origins(&["http://a.test", "*"])
        });
        let h = filter(
            &c,
            &[("origin", "http://b.test")],
            &[("vary", "Accept-Encoding")],
        );
        assert_eq!(all(&h, "vary"), ["Accept-Encoding", "Origin", "Origin"]);
        assert_eq!(
            one(&h, "access-control-allow-origin").as_deref(),
            Some("http://b.test")
        );
        let h = preflight(&c, &[]).expect("answered");
        assert_eq!(all(&h, "vary"), ["Origin"]);
    }

    #[test]
    fn credentials_without_star_always_send_acac() {
        let c = cors(CorsConfig {
            credentials: true,
            ..origins(&["http://a.test", "http://b.test"])
        });
        let h = filter(&c, &[("origin", "http://nope.test")], &[]);
        assert!(h.get("access-control-allow-origin").is_none());
        assert_eq!(
            one(&h, "access-control-allow-credentials").as_deref(),
            Some("true")
        );
        let h = filter(&c, &[], &[]);
        assert_eq!(
            one(&h, "access-control-allow-credentials").as_deref(),
            Some("true")
        );
        // upstream ACAC kept when credentials=false
        let c = cors(origins(&["http://a.test", "http://b.test"]));
        let h = filter(
            &c,
            &[("origin", "http://a.test")],
            &[("access-control-allow-credentials", "true")],
        );
        assert_eq!(
            one(&h, "access-control-allow-credentials").as_deref(),
            Some("true")
        );
    }

    #[test]
    fn preflight_headers_config_and_echo() {
        let c = cors(CorsConfig {
            headers: vec!["X-One".into(), "X-Two".into()],
            methods: vec!["GET".into(), "POST".into()],
            ..CorsConfig::default()
        });
        let h = preflight(&c, &[("access-control-request-headers", "X-Other")]).expect("answered");
        assert_eq!(
            one(&h, "access-control-allow-headers").as_deref(),
            Some("X-One,X-Two")
        );
        assert_eq!(
            one(&h, "access-control-allow-methods").as_deref(),
            Some("GET,POST")
        );
        let c = cors(CorsConfig::default());
        let h = preflight(&c, &[]).expect("answered");
        assert!(h.get("access-control-allow-headers").is_none());
        // first ACRH only; an empty one is echoed (empty value)
        let h = preflight(
            &c,
            &[
                ("access-control-request-headers", "a"),
                ("access-control-request-headers", "b"),
            ],
        )
        .expect("answered");
        assert_eq!(all(&h, "access-control-allow-headers"), ["a"]);
        let h = preflight(&c, &[("access-control-request-headers", "")]).expect("answered");
        assert_eq!(all(&h, "access-control-allow-headers"), [""]);
        // methods: [] -> empty value
        let c = cors(CorsConfig {
            methods: vec![],
            ..CorsConfig::default()
        });
        let h = preflight(&c, &[]).expect("answered");
        assert_eq!(all(&h, "access-control-allow-methods"), [""]);
    }

    #[test]
    fn max_age() {
        let c = cors(CorsConfig {
            max_age: Some(23),
            ..CorsConfig::default()
        });
        let h = preflight(&c, &[]).expect("answered");
        assert_eq!(one(&h, "access-control-max-age").as_deref(), Some("23"));
        // only on preflights
        let h = filter(&c, &[("origin", "http://a.test")], &[]);
        assert!(h.get("access-control-max-age").is_none());
        assert_eq!(lua_number(0), "0");
        assert_eq!(lua_number(-5), "-5");
        assert_eq!(lua_number(99_999_999_999_999), "99999999999999");
        assert_eq!(lua_number(100_000_000_000_000), "1e+14");
        assert_eq!(lua_number(123_456_789_012_345_678), "1.2345678901235e+17");
        assert_eq!(lua_number(-100_000_000_000_000), "-1e+14");
        assert_eq!(lua_number(i64::MAX), "9.2233720368548e+18");
    }

    #[test]
    fn private_network() {
        let on = cors(CorsConfig {
            private_network: true,
            ..CorsConfig::default()
        });
        let off = cors(CorsConfig::default());
        let pna = [("access-control-request-private-network", "true")];
        let h = preflight(&on, &pna).expect("answered");
        assert_eq!(
            one(&h, "access-control-allow-private-network").as_deref(),
            Some("true")
        );
        let h = preflight(&on, &[]).expect("answered");
        assert!(h.get("access-control-allow-private-network").is_none());
        let h = preflight(&on, &[("access-control-request-private-network", "TRUE")])
            .expect("answered");
        assert!(h.get("access-control-allow-private-network").is_none());
        let h = preflight(&off, &pna).expect("answered");
        assert!(h.get("access-control-allow-private-network").is_none());
    }

    #[test]
    fn preflight_continue_adds_nothing() {
        let c = cors(CorsConfig {
            preflight_continue: true,
            credentials: true,
            exposed_headers: vec!["X-E".into()],
            ..CorsConfig::default()
        });
        assert!(c.preflight_continue());
        assert!(preflight(&c, &[]).is_none());
        let rq = req(&[
            ("origin", "http://a.test"),
            ("access-control-request-method", "POST"),
        ]);
        let mut resp = req(&[("access-control-allow-origin", "http://up.test")]);
        c.header_filter(&Method::OPTIONS, &rq, &mut resp);
        assert_eq!(
            all(&resp, "access-control-allow-origin"),
            ["http://up.test"]
        );
        assert_eq!(resp.len(), 1);
        // non-preflight requests are still handled
        let h = filter(&c, &[("origin", "http://a.test")], &[]);
        assert_eq!(
            one(&h, "access-control-allow-origin").as_deref(),
            Some("http://a.test")
        );
        assert_eq!(
            one(&h, "access-control-expose-headers").as_deref(),
            Some("X-E")
        );
    }

    #[test]
    fn vary_is_appended() {
        let c = cors(origins(&["http://a.test", "http://b.test"]));
        let h = filter(
            &c,
            &[("origin", "http://a.test")],
            &[("vary", "Accept-Encoding"), ("vary", "Cookie")],
        );
        assert_eq!(all(&h, "vary"), ["Accept-Encoding", "Cookie", "Origin"]);
        let h = filter(&c, &[("origin", "http://a.test")], &[("vary", "Origin")]);
        assert_eq!(all(&h, "vary"), ["Origin", "Origin"]);
    }

    #[test]
    fn upstream_acao_stripped_or_replaced() {
        let c = cors(origins(&["http://a.test", "http://b.test"]));
        let up = [
            ("access-control-allow-origin", "http://evil.test"),
            ("access-control-allow-origin", "*"),
        ];
        let h = filter(&c, &[("origin", "http://c.test")], &up);
        assert!(h.get("access-control-allow-origin").is_none());
        let h = filter(&c, &[], &up);
        assert!(h.get("access-control-allow-origin").is_none());
        let h = filter(&c, &[("origin", "http://b.test")], &up);
        assert_eq!(all(&h, "access-control-allow-origin"), ["http://b.test"]);
    }

    #[test]
    fn exposed_headers_replace_upstream() {
        let c = cors(CorsConfig {
            exposed_headers: vec!["X-A".into(), "X-B".into()],
            ..CorsConfig::default()
        });
        let h = filter(
            &c,
            &[("origin", "http://a.test")],
            &[("access-control-expose-headers", "X-Up")],
        );
        assert_eq!(all(&h, "access-control-expose-headers"), ["X-A,X-B"]);
        let c = cors(CorsConfig::default());
        let h = filter(&c, &[], &[("access-control-expose-headers", "X-Up")]);
        assert_eq!(all(&h, "access-control-expose-headers"), ["X-Up"]);
    }

    #[test]
    fn allow_origin_absent() {
        let c = cors(CorsConfig {
            allow_origin_absent: false,
            exposed_headers: vec!["X-E".into()],
            ..origins(&["http://a.test"])
        });
        for rq in [vec![], vec![("origin", "")]] {
            let h = filter(
                &c,
                &rq,
                &[("access-control-allow-origin", "http://up.test")],
            );
            assert_eq!(all(&h, "access-control-allow-origin"), ["http://up.test"]);
            assert_eq!(h.len(), 1);
        }
        let h = filter(&c, &[("origin", "http://x.test")], &[]);
        assert_eq!(
            one(&h, "access-control-allow-origin").as_deref(),
            Some("http://a.test")
        );
        // default true: headers even without an Origin
        let c = cors(origins(&["http://a.test"]));
        let h = filter(&c, &[], &[]);
        assert_eq!(
            one(&h, "access-control-allow-origin").as_deref(),
            Some("http://a.test")
        );
    }

    #[test]
    fn first_origin_header_is_used() {
        let c = cors(origins(&["http://a.test", "http://b.test"]));
        let h = filter(
            &c,
            &[("origin", "http://b.test"), ("origin", "http://a.test")],
            &[],
        );
        assert_eq!(all(&h, "access-control-allow-origin"), ["http://b.test"]);
    }

    fn norm(s: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let n = NormOrigin::parse(s);
        (n.domain().into_owned(), n.host().to_vec())
    }

    #[test]
    fn origin_normalization_like_luasocket() {
        let cases: &[(&[u8], &[u8], &[u8])] = &[
            (b"http://foo.test:80", b"http://foo.test", b"foo.test"),
            (b"https://foo.test:443", b"https://foo.test", b"foo.test"),
            (b"http://foo.test:443", b"http://foo.test:443", b"foo.test"),
            (b"https://foo.test:80", b"https://foo.test:80", b"foo.test"),
            (b"HTTP://foo.test:80", b"HTTP://foo.test:80", b"foo.test"),
            (b"http://foo.test/p/q", b"http://foo.test", b"foo.test"),
            (
                b"http://foo.test?x=1",
                b"http://foo.test?x=1",
                b"foo.test?x=1",
            ),
            (b"http://foo.test#frag", b"http://foo.test", b"foo.test"),
            (b"http://u:p@foo.test:80", b"http://foo.test", b"foo.test"),
            (b"http://[::1]:8080", b"http://::1:8080", b"::1"),
            (b"http://[::1]", b"http://::1", b"::1"),
            (b"http://[]", b"http://[]", b"[]"),
            (b"http://foo.test:", b"http://foo.test:", b"foo.test"),
            (b"//foo.test", b"foo.test", b"foo.test"),
            (b"null", b"null", b"null"),
            (b"foo.test:8080", b"foo.test:8080", b"foo.test:8080"),
            (b"http://", b"http://", b"http://"),
            (b"http://:80", b"http://:80", b"http://:80"),
            (b"://x", b"://x", b"://x"),
            (b"#", b"#", b"#"),
            (b":", b":", b":"),
            (b"x:y@z", b"x:y@z", b"x:y@z"),
            (
                b"http://\xff\xfe.test",
                b"http://\xff\xfe.test",
                b"\xff\xfe.test",
            ),
        ];
        for (raw, domain, host) in cases {
            assert_eq!(
                norm(raw),
                (domain.to_vec(), host.to_vec()),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn malformed_origins_never_panic() {
        let configs = [
            CorsConfig {
                credentials: true,
                ..origins(&[r".*", r"https?://.*:\d+", "http://a.test"])
            },
            origins(&["http://a.test", "*"]),
            origins(&["http://a.test"]),
            CorsConfig::default(),
        ];
        let weird: &[&[u8]] = &[
            b"null",
            b"http://",
            b"://",
            b"http://[::1",
            b"http://a.test:99999999999999999999",
            b"\xff\xfe",
            b"http://\xc3(",
            b" ",
            b"@@@",
            b"[]:]",
            b"http://@:",
        ];
        for cfg in configs {
            let c = cors(cfg);
            for w in weird {
                let mut rq = HeaderMap::new();
                rq.insert(ORIGIN, HeaderValue::from_bytes(w).expect("value"));
                rq.insert(
                    ACCESS_CONTROL_REQUEST_METHOD,
                    HeaderValue::from_static("GET"),
                );
                let _ = c.access(&Method::OPTIONS, &rq);
                let mut resp = HeaderMap::new();
                c.header_filter(&Method::GET, &rq, &mut resp);
            }
        }
        // ".*" by host: a hostless origin is matched as a whole and echoed verbatim
        let c = cors(origins(&[".*"]));
        assert_eq!(acao_for(&c, "null").as_deref(), Some("null"));
        assert_eq!(acao_for(&c, "http://").as_deref(), Some("http://"));
        let mut rq = HeaderMap::new();
        rq.insert(
            ORIGIN,
            HeaderValue::from_bytes(b"http://\xff.test:80").expect("value"),
        );
        let mut resp = HeaderMap::new();
        c.header_filter(&Method::GET, &rq, &mut resp);
        assert_eq!(
            resp.get(ACCESS_CONTROL_ALLOW_ORIGIN)
                .map(HeaderValue::as_bytes),
            Some(&b"http://\xff.test"[..])
        );
    }

    #[test]
    fn regex_byte_semantics_and_fallbacks() {
        // '.' matches a non-UTF-8 byte (PCRE without UTF)
        let c = cors(origins(&[r"a.\.test"]));
        let mut rq = HeaderMap::new();
        rq.insert(
            ORIGIN,
            HeaderValue::from_bytes(b"http://a\xff.test").expect("value"),
        );
        let mut resp = HeaderMap::new();
        c.header_filter(&Method::GET, &rq, &mut resp);
        assert!(resp.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_some());
        // Unicode-only syntax still accepted
        let c = cors(origins(&[r"\p{L}+\.test"]));
        assert_eq!(
            acao_for(&c, "http://ab.test").as_deref(),
            Some("http://ab.test")
        );
        // a trailing (?x) comment swallows Kong's '$' and our wrapper: start-only matching
        let c = cors(origins(&["(?x) foo # comment"]));
        assert_eq!(
            acao_for(&c, "http://foobar.test").as_deref(),
            Some("http://foobar.test")
        );
        assert_eq!(acao_for(&c, "http://xfoo.test"), None);
    }

    #[test]
    fn new_reports_every_error_with_index() {
        let cfg = CorsConfig {
            origins: vec![
                "http://ok.test".into(),
                "[".into(),
                "*".into(),
                "".into(),
                "(?<=a)b".into(),
            ],
            methods: vec!["GET".into(), "get".into(), "".into(), "PURGE".into()],
            headers: vec!["X-A".into(), "".into(), "bad\nvalue".into()],
            exposed_headers: vec!["".into()],
            ..CorsConfig::default()
        };
        let errs = Cors::new(cfg).expect_err("invalid");
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "origins.1",
                "origins.3",
                "origins.4",
                "methods.1",
                "methods.2",
                "methods.3",
                "headers.1",
                "headers.2",
                "exposed_headers.0"
            ]
        );
        assert!(
            errs[0].1.starts_with("'[' is not a valid regex: "),
            "{}",
            errs[0].1
        );
        assert!(!errs[0].1.contains('\n'));
        assert_eq!(errs[1].1, "length must be at least 1");
        assert!(errs[2].1.starts_with("'(?<=a)b' is not a valid regex: "));
        assert_eq!(
            errs[3].1,
            "expected one of: GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS, TRACE, CONNECT"
        );
        assert_eq!(errs[6].1, "length must be at least 1");
        assert_eq!(errs[7].1, "'bad\\nvalue' is not a valid header value");
        assert!(Cors::new(origins(&["*", "http://a.test", r"(.*\.)?b\.test"])).is_ok());
    }
}
