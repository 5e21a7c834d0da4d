//! Route matching and route priority, as Kong 3.x does it with `router_flavor = traditional_compatible`
//! (reference: `kong/router/transform.lua`, `atc.lua`, `compat.lua`; spec: kong-behaviour.md §2.1–2.2).
//!
//! This module owns:
//! - compiling the configured routes ([`RouteSpec`]) into an immutable [`Router`] (all regexes are compiled
//!   here, once, and every compile error is reported);
//! - splitting a route with several paths into sub-routes (one per distinct prefix length, one for all its
//!   regex paths), each competing with its own [`PriorityKey`];
//! - selecting the winning route for a request ([`Router::find`]) and listing every matching route, best
//!   first, for `portcullis explain` ([`Router::candidates`]);
//! - expression routes (a route with `expression`, Kong's `expressions` flavor), compiled and matched by
//!   Kong's own ATC engine in [`expressions`]: they outrank every traditional route, as in Kong, and are
//!   tried first; requests fall through to the traditional routes when none matches.
//!
//! It does not own path normalization (done before, the router gets the normalized path), `strip_path` and
//! upstream URI joining (the caller uses [`RouteMatch::matched_len`]), protocols/https redirects, disabled
//! services or serviceless routes: those are the callers' business.
//!
//! Deliberate choices where Kong's behaviour is not reproduced byte for byte:
//! - Hosts are compared ASCII-case-insensitively (Kong's router compares the Host header verbatim). Clients
//!   send lower-case hosts in practice, and DNS names are case-insensitive; the request host is never
//!   lower-cased into a new string, the comparison itself ignores ASCII case (no allocation).
//! - Remaining ties after the priority key are broken by configuration order (earlier route wins). Kong
//!   breaks them by route UUID (the greater UUID wins in the ATC router), which is not meaningful for a
//!   configuration file.
//! - A non-UTF-8 path is matched on its bytes. (Kong hands the path to the ATC router as a UTF-8 string;
//!   a non-UTF-8 path makes the router fail and the request gets a 404 whatever the routes.) A header value
//!   that is not UTF-8 simply does not match (Kong: the router fails, 404).
//! - Priority follows Kong's documented 64-bit layout (fields set, plain hosts, header count, regex,
//!   regex_priority, prefix length; see [`PriorityKey`]). Kong computes that value with LuaJIT 32-bit shifts
//!   for its number-valued parts, so in real Kong the plain-host bit and the regex bit outrank the field
//!   count; [`PriorityKey::kong_atc_priority`] reproduces the value Kong really uses.
//! - Captures of header regexes are not mixed into `uri_captures` (Kong's ATC router collects captures of
//!   every regex predicate of the matcher into one map, so a header regex can overwrite a path capture).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;

use http::{HeaderMap, HeaderName};

mod expressions;

/// Checks a route `expression` as Kong's route schema does (syntax, fields, types), without building a
/// router: the error is Kong's `Router Expression failed validation: ...` message, on one line.
pub fn validate_expression(expression: &str) -> Result<(), String> {
    expressions::validate(expression)
}

/// One route as configured (already validated and migrated to format 3.0 by the config stage).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSpec {
    /// Exact, upper-case methods; empty = not set.
    pub methods: Vec<String>,
    /// `"a.com"`, `"*.a.com"`, `"a.*"`, optionally with a `":port"` suffix; empty = not set.
    pub hosts: Vec<String>,
    /// Header name -> values; a value `"~*re"` is a case-insensitive regex; empty = not set.
    pub headers: Vec<(String, Vec<String>)>,
    /// `"/prefix"` or `"~/regex"` (the regex source is after `~`); empty = not set.
    pub paths: Vec<String>,
    /// Priority among regex paths (higher first); ignored for prefix paths, as in Kong.
    pub regex_priority: i64,
    /// An ATC expression (Kong's `expressions` flavor). A route with an expression must not set methods,
    /// hosts, headers or paths; it outranks every route without one.
    pub expression: Option<String>,
    /// Order among expression routes (higher first, 0..2^46-1 in Kong); ignored without `expression`.
    pub priority: u64,
    /// The route's protocols (`"http"`, `"https"`); empty = both. Only expression routes look at it: like
    /// Kong's expressions flavor, an http-only expression route does not match https requests.
    pub protocols: Vec<String>,
}

/// A route that could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterError {
    /// Index of the route in the slice given to [`Router::new`].
    pub route: usize,
    /// `"paths"`, `"headers"` or `"route"` (the route as a whole).
    pub field: &'static str,
    /// Index in that field: the path index, or the index of the `(name, values)` header entry.
    pub index: usize,
    /// E.g. `invalid regex: '/(' (regex parse error: unclosed group)`.
    pub message: String,
}

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "route {}: {}[{}]: {}",
            self.route, self.field, self.index, self.message
        )
    }
}

impl std::error::Error for RouterError {}

/// Kong's message for a route that sets `expression` and traditional matching fields
/// (`validate_route` in `kong/db/schema/entities/routes.lua`).
pub const EXPRESSION_WITH_FIELDS: &str = "Router Expression failed validation: cannot set 'expression' with 'methods', 'hosts', 'paths', 'headers', 'snis', 'sources' or 'destinations' simultaneously";

/// What the router looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// Request method, compared exactly.
    pub method: &'a str,
    /// The request's Host header (or `:authority`) verbatim, may carry `":port"`.
    pub host: Option<&'a str>,
    /// Used for hosts with `:port` when the Host header has no port.
    pub listener_port: u16,
    /// The NORMALIZED request path (bytes; may be non-UTF-8), no query.
    pub path: &'a [u8],
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The raw query string (after `?`, not decoded). Only expression routes read it (`http.queries.*`).
    pub query: Option<&'a str>,
    /// The request came over TLS: `net.protocol` is `https`, else `http` (Kong: the listener's scheme,
    /// not X-Forwarded-Proto). Only expression routes read it.
    pub tls: bool,
    /// The client address after real-IP processing (`net.src.ip`). Only expression routes read it.
    pub client_ip: Option<std::net::IpAddr>,
    /// The TCP peer's port (`net.src.port`). Only expression routes read it.
    pub client_port: Option<u16>,
}

/// The winning route of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// Index of the route in the slice given to [`Router::new`].
    pub route: usize,
    /// Length of the matched path text at the start of `path`: the prefix path's length, or for a regex path
    /// the length of the whole regex match. None when the route has no paths. For an expression route,
    /// the length of the `http.path` value its matcher recorded (Kong strips that many bytes from the
    /// start of the path), None when it recorded none.
    pub matched_len: Option<usize>,
    /// uri_captures of a regex path: numbered (0 = whole match) and named. Empty for prefix paths (no
    /// allocation then).
    pub captures: Captures,
}

/// Captures of a regex path (Kong's `uri_captures`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captures {
    /// Group 0 is the whole match; `None` for a group that did not participate. Kong leaves such groups out
    /// of `uri_captures`, and gives no `uri_captures` at all when the regex has no group besides 0.
    pub numbered: Vec<Option<String>>,
    /// Named groups that participated in the match, in the regex's group order.
    pub named: Vec<(String, String)>,
}

impl Captures {
    /// True when nothing was captured (prefix path, or no path).
    pub fn is_empty(&self) -> bool {
        self.numbered.is_empty() && self.named.is_empty()
    }
}

/// A route that matches a request, for `portcullis explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Index of the route in the slice given to [`Router::new`].
    pub route: usize,
    /// The route path that matched, as configured (with its `~` for a regex); None when the route has no
    /// paths, or is an expression route (`key.expression`).
    pub matched_path: Option<String>,
    /// Priority of the (sub-)route that matched.
    pub key: PriorityKey,
}

/// Kong's priority, compared field by field (higher wins).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PriorityKey {
    /// An expression route: Kong's `EXPRESSION_ONLY_BIT`, above every traditional route.
    pub expression: bool,
    /// An expression route's `priority` (0 for traditional routes).
    pub priority: u64,
    /// Number of fields set among methods, hosts, headers, paths.
    pub fields: u8,
    /// Hosts are set and none has a wildcard.
    pub plain_hosts: bool,
    /// Number of header rules (keys), capped at 255 as in Kong.
    pub header_count: u8,
    /// The sub-route is the route's regex paths.
    pub regex: bool,
    /// The route's regex_priority for a regex sub-route, 0 otherwise.
    pub regex_priority: i64,
    /// Length of the sub-route's prefix paths, 0 for a regex sub-route or a route without paths.
    pub prefix_len: usize,
}

impl PriorityKey {
    /// One short English sentence saying which criterion makes `self` beat `other` (or lose to it).
    pub fn why_beats(&self, other: &PriorityKey) -> String {
        if self.expression != other.expression {
            let (traditional, expression_wins) = if self.expression {
                (other, true)
            } else {
                (self, false)
            };
            let kind = if traditional.regex || traditional.prefix_len > 0 {
                "path"
            } else {
                "traditional"
            };
            return if expression_wins {
                format!("expression route outranks {kind} routes")
            } else {
                format!("{kind} route loses to expression routes")
            };
        }
        if self.priority != other.priority {
            let word = if self.priority > other.priority {
                "higher"
            } else {
                "lower"
            };
            return format!(
                "{word} priority ({} {} {})",
                self.priority,
                cmp_sign(self.priority.cmp(&other.priority)),
                other.priority
            );
        }
        if self.fields != other.fields {
            let word = if self.fields > other.fields {
                "more"
            } else {
                "fewer"
            };
            return format!(
                "{word} fields set ({} {} {})",
                self.fields,
                cmp_sign(self.fields.cmp(&other.fields)),
                other.fields
            );
        }
        if self.plain_hosts != other.plain_hosts {
            return if self.plain_hosts {
                "plain hosts beat wildcard hosts".to_string()
            } else {
                "wildcard hosts lose to plain hosts".to_string()
            };
        }
        if self.header_count != other.header_count {
            let word = if self.header_count > other.header_count {
                "more"
            } else {
                "fewer"
            };
            return format!(
                "{word} header rules ({} {} {})",
                self.header_count,
                cmp_sign(self.header_count.cmp(&other.header_count)),
                other.header_count
            );
        }
        if self.regex != other.regex {
            return if self.regex {
                "regex path beats prefix path".to_string()
            } else {
                "prefix path loses to regex path".to_string()
            };
        }
        if self.regex_priority != other.regex_priority {
            let word = if self.regex_priority > other.regex_priority {
                "higher"
            } else {
                "lower"
            };
            return format!(
                "{word} regex_priority ({} {} {})",
                self.regex_priority,
                cmp_sign(self.regex_priority.cmp(&other.regex_priority)),
                other.regex_priority
            );
        }
        if self.prefix_len != other.prefix_len {
            let word = if self.prefix_len > other.prefix_len {
                "longer"
            } else {
                "shorter"
            };
            return format!(
                "{word} prefix ({} {} {})",
                self.prefix_len,
                cmp_sign(self.prefix_len.cmp(&other.prefix_len)),
                other.prefix_len
            );
        }
        "tie (file order decides)".to_string()
    }

    /// The 64-bit priority that Kong 3.x (`get_priority` in `kong/router/transform.lua`) actually hands to
    /// the ATC router for this key. Informational; the router orders by the derived `Ord` instead.
    ///
    /// Kong's layout is documented as weight<<61 | plain_host<<60 | header_count<<52 | regex<<51 |
    /// regex_priority<<19 | prefix_len, but LuaJIT's `bit.lshift` on a plain Lua number is a 32-bit shift
    /// (shift count mod 32), so only the plain-host and regex bits (64-bit cdata constants) land where
    /// documented: the field count lands at bit 29, header_count at bit 20, regex_priority at bit 19, all
    /// OR-ed into one int32. Consequence in real Kong: a plain-host route, then a regex route, beats a
    /// route with more fields. When that int32 is negative (4 fields, negative or huge regex_priority) the
    /// conversion to uint64 depends on the LuaJIT build; this function sign-extends (current LuaJIT).
    pub fn kong_atc_priority(&self) -> u64 {
        if self.expression {
            // `bor(EXPRESSION_ONLY_BIT, priority)`: 64-bit cdata on both sides, no 32-bit truncation.
            return (0xFF << 56) | self.priority;
        }
        let weight = i32::from(self.fields).wrapping_shl(61);
        let headers = i32::from(self.header_count).wrapping_shl(52);
        let regex_priority = if self.regex {
            // LuaJIT `tobit`: the number modulo 2^32, as int32.
            (self.regex_priority as i32).wrapping_shl(19)
        } else {
            0
        };
        let max_length = (self.prefix_len & 0x7FFFF) as i32;
        let low = weight | headers | regex_priority | max_length;
        let mut value = i64::from(low) as u64;
        if self.plain_hosts {
            value |= 1 << 60;
        }
        if self.regex {
            value |= 1 << 51;
        }
        value
    }
}

fn cmp_sign(o: Ordering) -> &'static str {
    match o {
        Ordering::Less => "<",
        Ordering::Equal => "=",
        Ordering::Greater => ">",
    }
}

/// How a host pattern compares to the request host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKind {
    /// `a.com`
    Exact,
    /// `*.a.com`: the request host ends with `.a.com`.
    Suffix,
    /// `a.*`: the request host starts with `a.`.
    Prefix,
}

#[derive(Debug)]
struct HostPattern {
    kind: HostKind,
    /// Lower-cased, without the `*` and the port.
    text: Box<[u8]>,
    port: Option<u64>,
}

impl HostPattern {
    fn parse(raw: &str) -> HostPattern {
        let (host, port) = split_host_port(raw);
        let lower = host.to_ascii_lowercase();
        let (kind, text) = if let Some(rest) = lower.strip_prefix('*') {
            (HostKind::Suffix, rest)
        } else if let Some(rest) = lower.strip_suffix('*') {
            (HostKind::Prefix, rest)
        } else {
            (HostKind::Exact, lower.as_str())
        };
        HostPattern {
            kind,
            text: text.as_bytes().into(),
            port,
        }
    }

    fn matches(&self, host: &[u8], port: u64) -> bool {
        if let Some(p) = self.port
            && p != port
        {
            return false;
        }
        let t = &self.text[..];
        match self.kind {
            HostKind::Exact => host.eq_ignore_ascii_case(t),
            HostKind::Suffix => {
                host.len() >= t.len() && host[host.len() - t.len()..].eq_ignore_ascii_case(t)
            }
            HostKind::Prefix => host.len() >= t.len() && host[..t.len()].eq_ignore_ascii_case(t),
        }
    }
}

/// Kong's `split_host_port`: split at the first `:` when what follows is a number, else keep the whole
/// text as the host (so `[::1]:80` stays a host without port, exactly like Kong).
fn split_host_port(s: &str) -> (&str, Option<u64>) {
    if let Some(i) = s.find(':') {
        let rest = &s.as_bytes()[i + 1..];
        if !rest.is_empty() && rest.iter().all(u8::is_ascii_digit) {
            let port = rest.iter().fold(0u64, |acc, d| {
                acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            });
            return (&s[..i], Some(port));
        }
    }
    (s, None)
}

/// One header key of a route: any request value of that header must match one of the values.
#[derive(Debug)]
struct HeaderRule {
    name: HeaderName,
    /// Lower-cased plain values.
    exact: Vec<Box<str>>,
    /// `~*` values: Kong lower-cases the regex source and matches it against the lower-cased value.
    regexes: Vec<regex::Regex>,
}

impl HeaderRule {
    fn matches(&self, headers: &HeaderMap) -> bool {
        headers.get_all(&self.name).iter().any(|v| {
            // Kong's ATC context only takes UTF-8 strings.
            std::str::from_utf8(v.as_bytes()).is_ok_and(|s| self.value_matches(s))
        })
    }

    /// Kong: `lower(value) == lower(configured)` (the configured side lower-cased by Lua, ASCII only; the
    /// request side by the ATC router's `lower()`, Unicode), or `lower(value) ~ lower(regex source)`.
    fn value_matches(&self, value: &str) -> bool {
        let exact = if value.is_ascii() {
            self.exact.iter().any(|p| value.eq_ignore_ascii_case(p))
        } else {
            // Unicode lower-casing without allocating.
            self.exact
                .iter()
                .any(|p| value.chars().flat_map(char::to_lowercase).eq(p.chars()))
        };
        if exact || self.regexes.is_empty() {
            return exact;
        }
        if value.is_ascii() && !value.bytes().any(|b| b.is_ascii_uppercase()) {
            self.regexes.iter().any(|re| re.is_match(value))
        } else {
            let lower = value.to_lowercase();
            self.regexes.iter().any(|re| re.is_match(&lower))
        }
    }
}

/// The methods/hosts/headers conditions of one configured route (shared by its sub-routes).
#[derive(Debug)]
struct RouteRules {
    methods: Vec<Box<str>>,
    hosts: Vec<HostPattern>,
    headers: Vec<HeaderRule>,
}

impl RouteRules {
    fn is_unconditional(&self) -> bool {
        self.methods.is_empty() && self.hosts.is_empty() && self.headers.is_empty()
    }

    fn matches(&self, req: &Req<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| **m == *req.method) {
            return false;
        }
        if !self.hosts.is_empty() {
            let Some(host) = req.host else {
                return false;
            };
            if !self.hosts.iter().any(|h| h.matches(host, req.port)) {
                return false;
            }
        }
        self.headers.iter().all(|h| h.matches(req.headers))
    }
}

/// The path condition of one sub-route.
#[derive(Debug)]
enum PathRule {
    /// The route has no paths.
    Any,
    /// Prefix paths, all of the same length, as configured.
    Prefix(Vec<Box<str>>),
    /// Regex paths: (as configured, compiled `^`-anchored).
    Regex(Vec<(Box<str>, regex::bytes::Regex)>),
}

/// Which path of a sub-route matched.
#[derive(Debug, Clone, Copy)]
enum PathHit {
    NoPath,
    Prefix(usize),
    Regex(usize),
}

#[derive(Debug)]
struct SubRoute {
    route: usize,
    key: PriorityKey,
    path: PathRule,
}

/// The request as the matchers see it (Host split once).
struct Req<'a> {
    method: &'a str,
    host: Option<&'a [u8]>,
    /// The Host header's port, else the listener's (Kong's `net.dst.port`).
    port: u64,
    path: &'a [u8],
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    tls: bool,
    client_ip: Option<std::net::IpAddr>,
    client_port: Option<u16>,
}

impl<'a> Req<'a> {
    fn new(r: &RequestInfo<'a>) -> Req<'a> {
        let (host, port) = match r.host {
            Some(h) => {
                let (h, p) = split_host_port(h);
                (Some(h.as_bytes()), p)
            }
            None => (None, None),
        };
        Req {
            method: r.method,
            host,
            port: port.unwrap_or(u64::from(r.listener_port)),
            path: r.path,
            headers: r.headers,
            query: r.query,
            tls: r.tls,
            client_ip: r.client_ip,
            client_port: r.client_port,
        }
    }
}

/// Byte trie of the prefix paths of unconditional prefix sub-routes (no methods, hosts, headers): for each
/// prefix, the best rank (position in the sorted sub-route list) of a sub-route having that prefix.
#[derive(Debug, Default)]
struct PrefixTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Default)]
struct TrieNode {
    /// Sorted by byte.
    children: Vec<(u8, usize)>,
    best: Option<usize>,
}

impl PrefixTrie {
    fn insert(&mut self, key: &[u8], rank: usize) {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut node = 0;
        for &b in key {
            let next = self.nodes.len();
            let children = &mut self.nodes[node].children;
            node = match children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => children[i].1,
                Err(i) => {
                    children.insert(i, (b, next));
                    self.nodes.push(TrieNode::default());
                    next
                }
            };
        }
        let best = &mut self.nodes[node].best;
        *best = Some(best.map_or(rank, |b| b.min(rank)));
    }

    /// Best (lowest) rank among the prefixes of `path`, with that prefix's length.
    fn best_match(&self, path: &[u8]) -> Option<(usize, usize)> {
        let mut node = self.nodes.first()?;
        let mut best: Option<(usize, usize)> = node.best.map(|r| (r, 0));
        for (depth, b) in path.iter().enumerate() {
            let Ok(i) = node.children.binary_search_by_key(b, |c| c.0) else {
                break;
            };
            node = &self.nodes[node.children[i].1];
            if let Some(r) = node.best
                && best.is_none_or(|(br, _)| r < br)
            {
                best = Some((r, depth + 1));
            }
        }
        best
    }
}

/// Request hosts up to this length are lower-cased on the stack for the host index lookup.
const HOST_BUF: usize = 256;

/// The compiled routing table: immutable, `Send + Sync`, built once at config load.
#[derive(Debug)]
pub struct Router {
    /// Per configured route.
    rules: Vec<RouteRules>,
    /// All sub-routes, best first (priority key descending, then route index ascending). A sub-route's
    /// position is its rank.
    subs: Vec<SubRoute>,
    /// Ranks (ascending) of the sub-routes that are neither in `trie` nor in `by_host`.
    general: Vec<usize>,
    /// Unconditional prefix sub-routes.
    trie: PrefixTrie,
    /// Sub-routes whose hosts are all exact (no wildcard), by lower-cased host: ranks ascending.
    by_host: HashMap<Box<[u8]>, Vec<usize>>,
    /// Longest key of `by_host`.
    max_host_len: usize,
    /// The expression routes, tried before all the others; None when there are none (then `find`
    /// never builds an ATC context).
    expr: Option<expressions::ExprRouter>,
}

impl Router {
    /// Compile all routes (regexes compiled here, never per request). Route index = position in the slice.
    /// Returns every error, not only the first.
    pub fn new(routes: &[RouteSpec]) -> Result<Router, Vec<RouterError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::with_capacity(routes.len());
        let mut subs = Vec::with_capacity(routes.len());
        let mut expression_routes = Vec::new();

        for (ri, spec) in routes.iter().enumerate() {
            if spec.expression.is_some() {
                if !(spec.methods.is_empty()
                    && spec.hosts.is_empty()
                    && spec.headers.is_empty()
                    && spec.paths.is_empty())
                {
                    errors.push(RouterError {
                        route: ri,
                        field: "expression",
                        index: 0,
                        message: EXPRESSION_WITH_FIELDS.to_string(),
                    });
                }
                expression_routes.push((ri, spec));
                // Keeps `rules` indexed by route; an expression route has no sub-routes.
                rules.push(RouteRules {
                    methods: Vec::new(),
                    hosts: Vec::new(),
                    headers: Vec::new(),
                });
                continue;
            }
            let route_rules = compile_rules(ri, spec, &mut errors);
            let fields = [
                !spec.methods.is_empty(),
                !spec.hosts.is_empty(),
                !spec.headers.is_empty(),
                !spec.paths.is_empty(),
            ]
            .iter()
            .filter(|set| **set)
            .count() as u8;
            if fields == 0 {
                errors.push(RouterError {
                    route: ri,
                    field: "route",
                    index: 0,
                    message: "must set one of 'methods', 'hosts', 'headers', 'paths'".to_string(),
                });
            }
            let base = PriorityKey {
                expression: false,
                priority: 0,
                fields,
                plain_hosts: !spec.hosts.is_empty() && !spec.hosts.iter().any(|h| h.contains('*')),
                header_count: spec.headers.len().min(255) as u8,
                regex: false,
                regex_priority: 0,
                prefix_len: 0,
            };
            for (key, path) in compile_paths(ri, spec, base, &mut errors) {
                subs.push(SubRoute {
                    route: ri,
                    key,
                    path,
                });
            }
            rules.push(route_rules);
        }
        let expr = if expression_routes.is_empty() {
            None
        } else {
            match expressions::ExprRouter::new(&expression_routes) {
                Ok(x) => Some(x),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            }
        };
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.route);
            return Err(errors);
        }

        // Stable: sub-routes of one route never tie (their keys differ).
        subs.sort_by(|a, b| b.key.cmp(&a.key).then(a.route.cmp(&b.route)));

        let mut trie = PrefixTrie::default();
        let mut general = Vec::new();
        let mut by_host: HashMap<Box<[u8]>, Vec<usize>> = HashMap::new();
        let mut max_host_len = 0;
        for (rank, sub) in subs.iter().enumerate() {
            let route_rules = &rules[sub.route];
            match &sub.path {
                PathRule::Prefix(prefixes) if route_rules.is_unconditional() => {
                    for p in prefixes {
                        trie.insert(p.as_bytes(), rank);
                    }
                }
                _ if !route_rules.hosts.is_empty()
                    && route_rules.hosts.iter().all(|h| h.kind == HostKind::Exact) =>
                {
                    for h in &route_rules.hosts {
                        let ranks = by_host.entry(h.text.clone()).or_default();
                        // Same host with several ports: list the sub-route once.
                        if ranks.last() != Some(&rank) {
                            ranks.push(rank);
                        }
                        max_host_len = max_host_len.max(h.text.len());
                    }
                }
                _ => general.push(rank),
            }
        }
        Ok(Router {
            rules,
            subs,
            general,
            trie,
            by_host,
            max_host_len,
            expr,
        })
    }

    /// Ranks of the exact-host sub-routes for this request host (compared ASCII-case-insensitively).
    fn host_bucket(&self, host: Option<&[u8]>) -> &[usize] {
        let Some(host) = host else {
            return &[];
        };
        if host.len() > self.max_host_len {
            return &[];
        }
        let found = if !host.iter().any(u8::is_ascii_uppercase) {
            self.by_host.get(host)
        } else if host.len() <= HOST_BUF {
            let mut buf = [0u8; HOST_BUF];
            let lower = &mut buf[..host.len()];
            lower.copy_from_slice(host);
            lower.make_ascii_lowercase();
            self.by_host.get(&*lower)
        } else {
            self.by_host.get(host.to_ascii_lowercase().as_slice())
        };
        found.map_or(&[], Vec::as_slice)
    }

    /// The winning route for a request, or None (the gateway answers 404).
    pub fn find<'p>(&self, req: &RequestInfo<'p>) -> Option<RouteMatch> {
        let r = Req::new(req);
        if let Some(expr) = &self.expr
            && let Some(m) = expr.find(&r)
        {
            return Some(m);
        }
        let plain = self.trie.best_match(r.path);
        let limit = plain.map_or(usize::MAX, |(rank, _)| rank);
        let bucket = self.host_bucket(r.host);
        // Walk `general` and the host's bucket together in rank order (both ascending, disjoint).
        let (mut gi, mut bi) = (0, 0);
        loop {
            let rank = match (self.general.get(gi), bucket.get(bi)) {
                (Some(&g), Some(&b)) if g < b => {
                    gi += 1;
                    g
                }
                (_, Some(&b)) => {
                    bi += 1;
                    b
                }
                (Some(&g), None) => {
                    gi += 1;
                    g
                }
                (None, None) => break,
            };
            if rank > limit {
                break;
            }
            let sub = &self.subs[rank];
            if let Some(m) = self.match_full(sub, &r) {
                return Some(m);
            }
        }
        plain.map(|(rank, len)| RouteMatch {
            route: self.subs[rank].route,
            matched_len: Some(len),
            captures: Captures::default(),
        })
    }

    /// For `portcullis explain`: every (sub-)route that matches this request, best first, with its priority
    /// key. A route with several paths may appear once per matching sub-route. The first entry is what
    /// [`Router::find`] returns.
    pub fn candidates(&self, req: &RequestInfo<'_>) -> Vec<Candidate> {
        let r = Req::new(req);
        let mut out: Vec<Candidate> = match &self.expr {
            Some(expr) => expr
                .candidates(&r)
                .into_iter()
                .map(|(route, priority)| Candidate {
                    route,
                    matched_path: None,
                    key: PriorityKey {
                        expression: true,
                        priority,
                        ..PriorityKey::default()
                    },
                })
                .collect(),
            None => Vec::new(),
        };
        out.extend(self.subs.iter().filter_map(|sub| {
            let hit = self.match_sub(sub, &r)?;
            let matched_path = match (&sub.path, hit) {
                (PathRule::Prefix(p), PathHit::Prefix(i)) => Some(p[i].to_string()),
                (PathRule::Regex(p), PathHit::Regex(i)) => Some(p[i].0.to_string()),
                _ => None,
            };
            Some(Candidate {
                route: sub.route,
                matched_path,
                key: sub.key,
            })
        }));
        out
    }

    /// Does the sub-route match, and with which path. Cheap conditions first, regexes last.
    fn match_sub(&self, sub: &SubRoute, r: &Req<'_>) -> Option<PathHit> {
        let hit = match &sub.path {
            PathRule::Any => PathHit::NoPath,
            PathRule::Prefix(prefixes) => PathHit::Prefix(
                prefixes
                    .iter()
                    .position(|p| r.path.starts_with(p.as_bytes()))?,
            ),
            PathRule::Regex(_) => PathHit::Regex(0),
        };
        if !self.rules[sub.route].matches(r) {
            return None;
        }
        if let PathRule::Regex(regexes) = &sub.path {
            // ATC evaluates the OR-ed paths in configuration order: the first that matches wins.
            return regexes
                .iter()
                .position(|(_, re)| re.is_match(r.path))
                .map(PathHit::Regex);
        }
        Some(hit)
    }

    fn match_full(&self, sub: &SubRoute, r: &Req<'_>) -> Option<RouteMatch> {
        let hit = self.match_sub(sub, r)?;
        let (matched_len, captures) = match (&sub.path, hit) {
            (PathRule::Prefix(p), PathHit::Prefix(i)) => (Some(p[i].len()), Captures::default()),
            (PathRule::Regex(p), PathHit::Regex(i)) => {
                let re = &p[i].1;
                let caps = re.captures(r.path)?;
                let whole = caps.get(0)?.len();
                (Some(whole), captures_of(re, &caps))
            }
            _ => (None, Captures::default()),
        };
        Some(RouteMatch {
            route: sub.route,
            matched_len,
            captures,
        })
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn captures_of(re: &regex::bytes::Regex, caps: &regex::bytes::Captures<'_>) -> Captures {
    Captures {
        numbered: caps
            .iter()
            .map(|m| m.map(|m| lossy(m.as_bytes())))
            .collect(),
        named: re
            .capture_names()
            .flatten()
            .filter_map(|n| caps.name(n).map(|m| (n.to_string(), lossy(m.as_bytes()))))
            .collect(),
    }
}

/// `regex parse error: unclosed group` out of the regex crate's multi-line message.
fn regex_error_summary(e: &regex::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default().trim();
    let detail = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "));
    match detail {
        Some(d) if first.ends_with(':') => format!("{first} {d}"),
        _ => first.to_string(),
    }
}

fn invalid_regex(src: &str, e: &regex::Error) -> String {
    format!("invalid regex: '{src}' ({})", regex_error_summary(e))
}

fn compile_rules(ri: usize, spec: &RouteSpec, errors: &mut Vec<RouterError>) -> RouteRules {
    let mut headers = Vec::with_capacity(spec.headers.len());
    for (hi, (name, values)) in spec.headers.iter().enumerate() {
        // Kong looks the header up as `lower(name)` with `_` and `-` interchangeable (ngx's get_headers);
        // nginx drops request headers whose name has `_`, so the `-` form is the one that can arrive.
        let normalized = name.to_ascii_lowercase().replace('_', "-");
        let header_name = match HeaderName::from_bytes(normalized.as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                errors.push(RouterError {
                    route: ri,
                    field: "headers",
                    index: hi,
                    message: format!("invalid header name: '{name}'"),
                });
                continue;
            }
        };
        let mut exact = Vec::new();
        let mut regexes = Vec::new();
        for v in values {
            if let Some(src) = v.strip_prefix("~*") {
                // Kong lower-cases the whole value, regex source included (so `\D` becomes `\d`, as there).
                match regex::Regex::new(&src.to_ascii_lowercase()) {
                    Ok(re) => regexes.push(re),
                    Err(e) => errors.push(RouterError {
                        route: ri,
                        field: "headers",
                        index: hi,
                        message: invalid_regex(src, &e),
                    }),
                }
            } else {
                exact.push(v.to_ascii_lowercase().into_boxed_str());
            }
        }
        headers.push(HeaderRule {
            name: header_name,
            exact,
            regexes,
        });
    }
    RouteRules {
        methods: spec.methods.iter().map(|m| m.as_str().into()).collect(),
        hosts: spec.hosts.iter().map(|h| HostPattern::parse(h)).collect(),
        headers,
    }
}

/// Kong's `split_routes_and_services_by_path`: one sub-route per distinct prefix length and one for all the
/// regex paths (paths keep their configuration order inside a group).
fn compile_paths(
    ri: usize,
    spec: &RouteSpec,
    base: PriorityKey,
    errors: &mut Vec<RouterError>,
) -> Vec<(PriorityKey, PathRule)> {
    if spec.paths.is_empty() {
        return vec![(base, PathRule::Any)];
    }
    let mut regexes: Vec<(Box<str>, regex::bytes::Regex)> = Vec::new();
    let mut has_regex = false;
    let mut prefix_groups: Vec<(usize, Vec<Box<str>>)> = Vec::new();
    for (pi, p) in spec.paths.iter().enumerate() {
        if let Some(src) = p.strip_prefix('~') {
            has_regex = true;
            // Kong: `"^" .. src:gsub("?<", "?P<")` (anchored at the start only; the rewrite is textual).
            let anchored = format!("^{}", src.replace("?<", "?P<"));
            match regex::bytes::Regex::new(&anchored) {
                Ok(re) => regexes.push((p.as_str().into(), re)),
                Err(e) => errors.push(RouterError {
                    route: ri,
                    field: "paths",
                    index: pi,
                    message: invalid_regex(src, &e),
                }),
            }
        } else if let Some(group) = prefix_groups.iter_mut().find(|g| g.0 == p.len()) {
            group.1.push(p.as_str().into());
        } else {
            prefix_groups.push((p.len(), vec![p.as_str().into()]));
        }
    }
    let mut out = Vec::with_capacity(prefix_groups.len() + 1);
    if has_regex {
        let key = PriorityKey {
            regex: true,
            regex_priority: spec.regex_priority,
            ..base
        };
        out.push((key, PathRule::Regex(regexes)));
    }
    for (len, prefixes) in prefix_groups {
        let key = PriorityKey {
            prefix_len: len,
            ..base
        };
        out.push((key, PathRule::Prefix(prefixes)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn spec(
        methods: &[&str],
        hosts: &[&str],
        headers: &[(&str, &[&str])],
        paths: &[&str],
    ) -> RouteSpec {
        RouteSpec {
            methods: methods.iter().map(|s| s.to_string()).collect(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            ..RouteSpec::default()
        }
    }

    fn expr(e: &str, priority: u64) -> RouteSpec {
        RouteSpec {
            expression: Some(e.to_string()),
            priority,
            ..RouteSpec::default()
        }
    }

    fn paths(p: &[&str]) -> RouteSpec {
        spec(&[], &[], &[], p)
    }

    fn hosts(h: &[&str]) -> RouteSpec {
        spec(&[], h, &[], &[])
    }

    fn header_map(h: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in h {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).expect("test value"),
                HeaderValue::from_bytes(v.as_bytes()).expect("test value"),
            );
        }
        m
    }

    struct Q<'a> {
        method: &'a str,
        host: Option<&'a str>,
        port: u16,
        path: &'a [u8],
        headers: HeaderMap,
        query: Option<&'a str>,
        tls: bool,
        client: Option<(std::net::IpAddr, u16)>,
    }

    impl<'a> Q<'a> {
        fn new(path: &'a str) -> Self {
            Q {
                method: "GET",
                host: Some("example.org"),
                port: 8000,
                path: path.as_bytes(),
                headers: HeaderMap::new(),
                query: None,
                tls: false,
                client: None,
            }
        }
        fn query(mut self, q: &'a str) -> Self {
            self.query = Some(q);
            self
        }
        fn tls(mut self) -> Self {
            self.tls = true;
            self
        }
        fn client(mut self, ip: &str, port: u16) -> Self {
            self.client = Some((ip.parse().expect("test value"), port));
            self
        }
        fn bytes(path: &'a [u8]) -> Self {
            Q {
                path,
                ..Q::new("/")
            }
        }
        fn method(mut self, m: &'a str) -> Self {
            self.method = m;
            self
        }
        fn host(mut self, h: Option<&'a str>) -> Self {
            self.host = h;
            self
        }
        fn port(mut self, p: u16) -> Self {
            self.port = p;
            self
        }
        fn headers(mut self, h: &[(&str, &str)]) -> Self {
            self.headers = header_map(h);
            self
        }
        fn info(&self) -> RequestInfo<'_> {
            RequestInfo {
                method: self.method,
                host: self.host,
                listener_port: self.port,
                path: self.path,
                headers: &self.headers,
                query: self.query,
                tls: self.tls,
                client_ip: self.client.map(|c| c.0),
                client_port: self.client.map(|c| c.1),
            }
        }
        fn find(&self, r: &Router) -> Option<RouteMatch> {
            let m = r.find(&self.info());
            // find() and candidates() must agree.
            let c = r.candidates(&self.info());
            assert_eq!(m.as_ref().map(|m| m.route), c.first().map(|c| c.route));
            m
        }
        fn route(&self, r: &Router) -> Option<usize> {
            self.find(r).map(|m| m.route)
        }
    }

    fn router(routes: &[RouteSpec]) -> Router {
        Router::new(routes).expect("test value")
    }

    #[test]
    fn router_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Router>();
    }

    #[test]
    fn more_fields_beat_longer_prefix() {
        let r = router(&[
            paths(&["/a/very/long/path"]),
            spec(&[], &["*.org"], &[], &["/a"]),
            spec(&["GET"], &[], &[], &["/"]),
        ]);
        // hosts+paths (2 fields) beats the longer paths-only route; methods+paths ties on fields with it,
        // and the wildcard host does not count as plain, so the longer prefix decides between 1 and 2.
        assert_eq!(Q::new("/a/very/long/path").route(&r), Some(1));
        assert_eq!(
            Q::new("/a/very/long/path").host(Some("x.net")).route(&r),
            Some(2)
        );
        assert_eq!(Q::new("/b").method("POST").route(&r), None);
    }

    #[test]
    fn plain_hosts_beat_wildcard_hosts() {
        let r = router(&[
            spec(&[], &["*.example.org"], &[], &["/long/path"]),
            spec(&[], &["www.example.org", "example.org"], &[], &["/"]),
            spec(&[], &["www.example.org", "x.*"], &[], &["/long/path/x"]),
        ]);
        let q = Q::new("/long/path/x").host(Some("www.example.org"));
        assert_eq!(q.route(&r), Some(1));
        let c = r.candidates(&q.info());
        assert_eq!(c.iter().map(|c| c.route).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(
            c[0].key.why_beats(&c[1].key),
            "plain hosts beat wildcard hosts"
        );
        assert_eq!(
            c[1].key.why_beats(&c[0].key),
            "wildcard hosts lose to plain hosts"
        );
        assert_eq!(c[1].key.why_beats(&c[2].key), "longer prefix (12 > 10)");
    }

    #[test]
    fn more_header_rules_beat_longer_prefix() {
        // Kong spec: "more [headers] has priority over longer [paths]".
        let r = router(&[
            spec(&[], &[], &[("version", &["v1"])], &["/my-route/hello"]),
            spec(
                &[],
                &[],
                &[("version", &["v1"]), ("location", &["us-east"])],
                &["/my-route"],
            ),
        ]);
        let q = Q::new("/my-route/hello").headers(&[("version", "v1"), ("location", "us-east")]);
        assert_eq!(q.route(&r), Some(1));
        let c = r.candidates(&q.info());
        assert_eq!(c[0].key.why_beats(&c[1].key), "more header rules (2 > 1)");
        let q = Q::new("/my-route/hello").headers(&[("version", "v1")]);
        assert_eq!(q.route(&r), Some(0));
    }

    #[test]
    fn regex_beats_prefix_even_exact() {
        let r = router(&[paths(&["/route/fixture"]), paths(&["~/route/(fixture)"])]);
        let m = Q::new("/route/fixture").find(&r).expect("test value");
        assert_eq!(m.route, 1);
        assert_eq!(m.matched_len, Some(14));
        assert_eq!(
            m.captures.numbered,
            vec![Some("/route/fixture".into()), Some("fixture".into())]
        );
        let c = r.candidates(&Q::new("/route/fixture").info());
        assert_eq!(
            c[0].key.why_beats(&c[1].key),
            "regex path beats prefix path"
        );
        assert_eq!(
            c[1].key.why_beats(&c[0].key),
            "prefix path loses to regex path"
        );
        assert_eq!(c[0].matched_path.as_deref(), Some("~/route/(fixture)"));
        assert_eq!(c[1].matched_path.as_deref(), Some("/route/fixture"));
    }

    #[test]
    fn regex_priority_orders_regexes_only() {
        let mut low = paths(&["~/api"]);
        low.regex_priority = 0;
        let mut high = paths(&["~/api/v\\d"]);
        high.regex_priority = 5;
        let mut prefix = paths(&["/api/v1/longer"]);
        prefix.regex_priority = 100; // ignored for prefix paths
        let r = router(&[low, high, prefix]);
        assert_eq!(Q::new("/api/v1/longer").route(&r), Some(1));
        assert_eq!(Q::new("/api/x").route(&r), Some(0));
        let c = r.candidates(&Q::new("/api/v1/longer").info());
        assert_eq!(c.len(), 3);
        assert_eq!(
            c[0].key.why_beats(&c[1].key),
            "higher regex_priority (5 > 0)"
        );
        assert_eq!(c[2].key.regex_priority, 0);
        // negative regex_priority sorts below 0
        let mut neg = paths(&["~/neg"]);
        neg.regex_priority = -3;
        let r = router(&[neg, paths(&["~/n"])]);
        assert_eq!(Q::new("/neg").route(&r), Some(1));
    }

    #[test]
    fn longest_prefix_wins_and_ties_go_to_file_order() {
        let r = router(&[
            paths(&["/a"]),
            paths(&["/a/b"]),
            paths(&["/a/b"]),
            paths(&["/"]),
        ]);
        let m = Q::new("/a/b/c").find(&r).expect("test value");
        assert_eq!((m.route, m.matched_len), (1, Some(4)));
        assert!(m.captures.is_empty());
        assert_eq!(Q::new("/a/x").route(&r), Some(0));
        assert_eq!(Q::new("/x").route(&r), Some(3));
        // byte prefix, not segment prefix; case-sensitive
        assert_eq!(Q::new("/ab").route(&r), Some(0));
        assert_eq!(Q::new("/A/b").route(&r), Some(3));
        let c = r.candidates(&Q::new("/a/b").info());
        assert_eq!(
            c.iter().map(|c| c.route).collect::<Vec<_>>(),
            vec![1, 2, 0, 3]
        );
        assert_eq!(c[0].key.why_beats(&c[1].key), "tie (file order decides)");
        assert_eq!(c[1].key.why_beats(&c[2].key), "longer prefix (4 > 2)");
        assert_eq!(c[3].key.why_beats(&c[2].key), "shorter prefix (1 < 2)");
    }

    #[test]
    fn prefix_route_matches_route_req() {
        let r = router(&[paths(&["/route"])]);
        for p in ["/route", "/route/", "/routereq", "/route/x/y"] {
            assert_eq!(
                Q::new(p).find(&r).expect("test value").matched_len,
                Some(6),
                "{p}"
            );
        }
        assert_eq!(Q::new("/rout").route(&r), None);
        assert_eq!(Q::new("/Route").route(&r), None);
    }

    #[test]
    fn multi_path_route_is_split_by_prefix_length() {
        let r = router(&[paths(&["/a", "/abcdef"]), paths(&["/abc"])]);
        let m = Q::new("/abcdefg").find(&r).expect("test value");
        assert_eq!((m.route, m.matched_len), (0, Some(7)));
        let m = Q::new("/abcx").find(&r).expect("test value");
        assert_eq!((m.route, m.matched_len), (1, Some(4)));
        let m = Q::new("/ax").find(&r).expect("test value");
        assert_eq!((m.route, m.matched_len), (0, Some(2)));
        let c = r.candidates(&Q::new("/abcdefg").info());
        assert_eq!(
            c.iter()
                .map(|c| (
                    c.route,
                    c.matched_path.clone().expect("test value"),
                    c.key.prefix_len
                ))
                .collect::<Vec<_>>(),
            vec![
                (0, "/abcdef".to_string(), 7),
                (1, "/abc".to_string(), 4),
                (0, "/a".to_string(), 2)
            ]
        );
    }

    #[test]
    fn multi_path_split_with_hosts_and_regex() {
        // Kong spec "[both regex and prefix]" and "[overlapping prefixes]".
        let r = router(&[
            spec(&[], &["domain-1.org"], &[], &["~/some/thing/else", "/foo"]),
            spec(&[], &["domain-1.org"], &[], &["/foo/bar"]),
            spec(&[], &["domain-2.org"], &[], &["/foo", "/foo/bar/baz"]),
            spec(&[], &["domain-2.org"], &[], &["/foo/bar"]),
        ]);
        let q = |p, h| Q::new(p).host(Some(h));
        assert_eq!(q("/some/thing/else", "domain-1.org").route(&r), Some(0));
        assert_eq!(q("/foo/bar", "domain-1.org").route(&r), Some(1));
        assert_eq!(q("/foo/x", "domain-1.org").route(&r), Some(0));
        assert_eq!(q("/foo", "domain-2.org").route(&r), Some(2));
        assert_eq!(q("/foo/bar", "domain-2.org").route(&r), Some(3));
        assert_eq!(q("/foo/bar/baz", "domain-2.org").route(&r), Some(2));
    }

    #[test]
    fn several_regexes_first_matching_in_config_order() {
        let r = router(&[paths(&["~/x/(?<a>\\d+)", "/zz", "~/x/(?<b>\\w+)"])]);
        let m = Q::new("/x/12").find(&r).expect("test value");
        assert_eq!(m.captures.named, vec![("a".to_string(), "12".to_string())]);
        let m = Q::new("/x/ab").find(&r).expect("test value");
        assert_eq!(m.captures.named, vec![("b".to_string(), "ab".to_string())]);
        let c = r.candidates(&Q::new("/x/ab").info());
        assert_eq!(c[0].matched_path.as_deref(), Some("~/x/(?<b>\\w+)"));
    }

    #[test]
    fn wildcard_hosts() {
        let r = router(&[hosts(&["*.example.com"]), hosts(&["example.*"])]);
        let q = |h| Q::new("/").host(Some(h));
        assert_eq!(q("a.example.com").route(&r), Some(0));
        assert_eq!(q("a.b.example.com").route(&r), Some(0));
        assert_eq!(q("example.com").route(&r), Some(1));
        assert_eq!(q("example.org").route(&r), Some(1));
        assert_eq!(q("www.example.org").route(&r), None);
        assert_eq!(q("badexample.com").route(&r), None);
        assert_eq!(q("a.example.com:9999").route(&r), Some(0));
        assert_eq!(Q::new("/").host(None).route(&r), None);
    }

    #[test]
    fn hosts_compare_case_insensitively() {
        let r = router(&[hosts(&["Example.COM"]), hosts(&["*.Foo.com"])]);
        let q = |h| Q::new("/").host(Some(h));
        assert_eq!(q("example.com").route(&r), Some(0));
        assert_eq!(q("EXAMPLE.com:80").route(&r), Some(0));
        assert_eq!(q("x.FOO.COM").route(&r), Some(1));
        assert_eq!(q("exämple.com").route(&r), None);
        // host index: hosts longer than the stack buffer, and a request host longer than any pattern
        let long = format!("{}.com", "Ab".repeat(200));
        let r = router(&[hosts(&[&long]), hosts(&["x.com:8000", "X.com:9000"])]);
        let by_host = |h: &str| Q::new("/").host(Some(h)).route(&r);
        assert_eq!(by_host(&long.to_uppercase()), Some(0));
        assert_eq!(by_host(&format!("{long}:1")), Some(0));
        assert_eq!(by_host(&format!("a{long}")), None);
        assert_eq!(q("X.COM").route(&r), Some(1));
        assert_eq!(q("X.COM:9000").route(&r), Some(1));
        assert_eq!(q("X.COM:9001").route(&r), None);
    }

    #[test]
    fn host_with_port() {
        let r = router(&[hosts(&["a.com:8080"]), hosts(&["b.*:81", "c.com"])]);
        let q = |h, p| Q::new("/").host(Some(h)).port(p);
        assert_eq!(q("a.com:8080", 8000).route(&r), Some(0));
        assert_eq!(q("a.com", 8080).route(&r), Some(0));
        assert_eq!(q("a.com", 8000).route(&r), None);
        // the Host header's port wins over the listener port
        assert_eq!(q("a.com:9000", 8080).route(&r), None);
        assert_eq!(q("b.org:81", 8000).route(&r), Some(1));
        assert_eq!(q("b.org", 81).route(&r), Some(1));
        assert_eq!(q("b.org:82", 81).route(&r), None);
        assert_eq!(q("c.com:1", 1).route(&r), Some(1));
    }

    #[test]
    fn host_header_port_is_split_off_for_portless_hosts() {
        let r = router(&[spec(&[], &["h"], &[], &["/x"])]);
        for h in ["h", "h:80", "h:1234"] {
            assert_eq!(Q::new("/x").host(Some(h)).route(&r), Some(0), "{h}");
        }
        assert_eq!(Q::new("/x").host(Some("h:abc")).route(&r), None);
        // Kong's split_host_port: IPv6 literals are not split (first ':' is inside the brackets).
        let r = router(&[hosts(&["[::1]"]), hosts(&["[::1]:8000"])]);
        assert_eq!(Q::new("/").host(Some("[::1]")).route(&r), Some(0));
        assert_eq!(Q::new("/").host(Some("[::1]:8000")).route(&r), Some(1));
    }

    #[test]
    fn headers_exact_and_case_insensitive() {
        let r = router(&[spec(
            &[],
            &[],
            &[("X-Version", &["V1", "v2"]), ("x_location", &["us-East"])],
            &[],
        )]);
        let q = |h: &[(&str, &str)]| Q::new("/").headers(h);
        assert_eq!(
            q(&[("x-version", "v1"), ("x-location", "US-EAST")]).route(&r),
            Some(0)
        );
        assert_eq!(
            q(&[("x-version", "V2"), ("x-location", "us-east")]).route(&r),
            Some(0)
        );
        // both keys are required
        assert_eq!(q(&[("x-version", "v1")]).route(&r), None);
        // any of the request's values may match
        assert_eq!(
            q(&[
                ("x-version", "v9"),
                ("x-version", "v1"),
                ("x-location", "us-east")
            ])
            .route(&r),
            Some(0)
        );
        // a comma-separated line is one value
        assert_eq!(
            q(&[("x-version", "v1, v2"), ("x-location", "us-east")]).route(&r),
            None
        );
        // values are compared whole
        assert_eq!(
            q(&[("x-version", "v10"), ("x-location", "us-east")]).route(&r),
            None
        );
    }

    #[test]
    fn header_values_lowercase_like_kong() {
        // Kong lower-cases the configured value with Lua (ASCII only) and the request value with the ATC
        // router's lower() (Unicode): a configured non-ASCII upper-case letter can never match.
        let r = router(&[
            spec(&[], &[], &[("x-a", &["äB"])], &[]),
            spec(&[], &[], &[("x-b", &["ÄB"])], &[]),
        ]);
        let q = |h: &[(&str, &str)]| Q::new("/").headers(h).route(&r);
        assert_eq!(q(&[("x-a", "ÄB")]), Some(0));
        assert_eq!(q(&[("x-a", "äb")]), Some(0));
        assert_eq!(q(&[("x-b", "ÄB")]), None);
        assert_eq!(q(&[("x-b", "äb")]), None);
        // a non-UTF-8 value never matches
        let mut bad = Q::new("/");
        bad.headers.append(
            "x-a",
            HeaderValue::from_bytes(b"\xe4b").expect("opaque value"),
        );
        assert_eq!(bad.route(&r), None);
    }

    #[test]
    fn header_regex() {
        let r = router(&[
            spec(&[], &[], &[("x-v", &["~*^v\\d+$"])], &[]),
            spec(&[], &[], &[("x-w", &["~*BETA"])], &[]),
        ]);
        let q = |h: &[(&str, &str)]| Q::new("/").headers(h).route(&r);
        assert_eq!(q(&[("x-v", "V12")]), Some(0));
        assert_eq!(q(&[("x-v", "v1x")]), None);
        // unanchored, case-insensitive both ways
        assert_eq!(q(&[("x-w", "my-beta-1")]), Some(1));
        assert_eq!(q(&[("x-w", "MY-BETA")]), Some(1));
        assert_eq!(q(&[("x-w", "ÄBETA")]), Some(1));
        assert_eq!(q(&[("x-w", "bet")]), None);
        assert_eq!(q(&[]), None);
    }

    #[test]
    fn regex_path_anchored_at_start_only() {
        let r = router(&[paths(&["~/foo\\d"]), paths(&["~/a|/b"])]);
        let m = Q::new("/foo1/bar").find(&r).expect("test value");
        assert_eq!((m.route, m.matched_len), (0, Some(5)));
        assert_eq!(Q::new("/x/foo1").route(&r), None);
        // Kong only prepends '^': the second alternative of `^/a|/b` is unanchored (a Kong quirk).
        let m = Q::new("/x/b").find(&r).expect("test value");
        assert_eq!((m.route, m.matched_len), (1, Some(2)));
        assert_eq!(m.captures.numbered, vec![Some("/b".to_string())]);
    }

    #[test]
    fn named_captures_both_syntaxes() {
        let r = router(&[paths(&["~/users/(?<id>\\d+)/(?P<rest>[a-z]+)?(x)?"])]);
        let m = Q::new("/users/42/profile/more")
            .find(&r)
            .expect("test value");
        assert_eq!(m.matched_len, Some("/users/42/profile".len()));
        assert_eq!(
            m.captures.numbered,
            vec![
                Some("/users/42/profile".to_string()),
                Some("42".to_string()),
                Some("profile".to_string()),
                None
            ]
        );
        assert_eq!(
            m.captures.named,
            vec![
                ("id".to_string(), "42".to_string()),
                ("rest".to_string(), "profile".to_string())
            ]
        );
        let m = Q::new("/users/7/").find(&r).expect("test value");
        assert_eq!(m.captures.named, vec![("id".to_string(), "7".to_string())]);
    }

    #[test]
    fn non_utf8_path_bytes() {
        let r = router(&[
            paths(&["/caf"]),
            paths(&["~/raw/(?-u:(.))"]),
            paths(&["~/u/(.*)"]),
        ]);
        let m = Q::bytes(b"/caf\xff\xfe").find(&r).expect("test value");
        assert_eq!((m.route, m.matched_len), (0, Some(4)));
        let m = Q::bytes(b"/raw/\xffz").find(&r).expect("test value");
        assert_eq!((m.route, m.matched_len), (1, Some(6)));
        assert_eq!(m.captures.numbered[1].as_deref(), Some("\u{fffd}"));
        // in Unicode mode `.` does not match an invalid byte: the match stops before it
        let m = Q::bytes(b"/u/ok\xffmore").find(&r).expect("test value");
        assert_eq!((m.route, m.matched_len), (2, Some(5)));
        assert_eq!(m.captures.numbered[1].as_deref(), Some("ok"));
    }

    #[test]
    fn methods_are_exact() {
        let r = router(&[
            spec(&["GET", "HEAD"], &[], &[], &[]),
            spec(&["POST"], &[], &[], &["/p"]),
        ]);
        assert_eq!(Q::new("/").method("GET").route(&r), Some(0));
        assert_eq!(Q::new("/").method("HEAD").route(&r), Some(0));
        assert_eq!(Q::new("/").method("get").route(&r), None);
        assert_eq!(Q::new("/p").method("POST").route(&r), Some(1));
        assert_eq!(Q::new("/").method("POST").route(&r), None);
        let m = Q::new("/").method("GET").find(&r).expect("test value");
        assert_eq!(m.matched_len, None);
        assert!(m.captures.is_empty());
    }

    #[test]
    fn kong_test_host_and_uri_beat_method() {
        // Kong spec "[host] and [uri] have higher priority than [method]" (ties there go by UUID; none here).
        let r = router(&[
            hosts(&["domain-1.org", "domain-2.org"]),
            spec(&["TRACE"], &[], &[], &[]),
            paths(&["/my-route"]),
            spec(&[], &["domain-1.org", "domain-2.org"], &[], &["/route-4"]),
            spec(
                &["POST", "PUT", "PATCH"],
                &["domain-1.org", "domain-2.org"],
                &[],
                &[],
            ),
            spec(&["POST", "PUT", "PATCH"], &[], &[], &["/route-6"]),
        ]);
        assert_eq!(
            Q::new("/")
                .method("TRACE")
                .host(Some("domain-2.org"))
                .route(&r),
            Some(0)
        );
        assert_eq!(
            Q::new("/my-route")
                .method("TRACE")
                .host(Some("domain.org"))
                .route(&r),
            Some(2)
        );
        assert_eq!(
            Q::new("/route-4").host(Some("domain-1.org")).route(&r),
            Some(3)
        );
        assert_eq!(
            Q::new("/route-6")
                .method("PUT")
                .host(Some("domain-1.org"))
                .route(&r),
            Some(4)
        );
        assert_eq!(
            Q::new("/route-6")
                .method("PUT")
                .host(Some("x.org"))
                .route(&r),
            Some(5)
        );
    }

    #[test]
    fn errors_are_all_reported() {
        let routes = [
            paths(&["/ok", "~/(unclosed", "~/fine", "~/[z-a]"]),
            spec(
                &[],
                &[],
                &[("x", &["~*(", "ok"]), ("bad name", &["v"])],
                &[],
            ),
            RouteSpec::default(),
        ];
        let errs = Router::new(&routes).expect_err("must fail");
        let got: Vec<_> = errs.iter().map(|e| (e.route, e.field, e.index)).collect();
        assert_eq!(
            got,
            vec![
                (0, "paths", 1),
                (0, "paths", 3),
                (1, "headers", 0),
                (1, "headers", 1),
                (2, "route", 0)
            ]
        );
        assert_eq!(
            errs[0].message,
            "invalid regex: '/(unclosed' (regex parse error: unclosed group)"
        );
        assert!(
            errs[1]
                .message
                .starts_with("invalid regex: '/[z-a]' (regex parse error: ")
        );
        assert_eq!(errs[3].message, "invalid header name: 'bad name'");
        assert_eq!(
            errs[0].to_string(),
            format!("route 0: paths[1]: {}", errs[0].message)
        );
    }

    #[test]
    fn why_beats_sentences() {
        let k = PriorityKey {
            fields: 2,
            ..PriorityKey::default()
        };
        let one = PriorityKey {
            fields: 1,
            prefix_len: 50,
            ..PriorityKey::default()
        };
        assert_eq!(k.why_beats(&one), "more fields set (2 > 1)");
        assert_eq!(one.why_beats(&k), "fewer fields set (1 < 2)");
        assert!(k > one);
        let a = PriorityKey {
            fields: 1,
            prefix_len: 9,
            ..PriorityKey::default()
        };
        let b = PriorityKey {
            fields: 1,
            prefix_len: 5,
            ..PriorityKey::default()
        };
        assert_eq!(a.why_beats(&b), "longer prefix (9 > 5)");
        assert_eq!(a.why_beats(&a), "tie (file order decides)");
    }

    #[test]
    fn kong_atc_priority_matches_luajit() {
        // Values printed by LuaJIT 2.1 running Kong's get_priority arithmetic.
        let k =
            |fields, plain_hosts, header_count, regex, regex_priority, prefix_len| PriorityKey {
                expression: false,
                priority: 0,
                fields,
                plain_hosts,
                header_count,
                regex,
                regex_priority,
                prefix_len,
            };
        assert_eq!(
            k(2, true, 0, false, 0, 2).kong_atc_priority(),
            1152921505680588802
        );
        assert_eq!(k(3, false, 0, false, 0, 2).kong_atc_priority(), 1610612738);
        assert_eq!(
            k(1, false, 0, true, 0, 0).kong_atc_priority(),
            2251800350556160
        );
        assert_eq!(k(2, false, 0, false, 0, 5).kong_atc_priority(), 1073741829);
        assert_eq!(
            k(1, false, 0, true, 1024, 0).kong_atc_priority(),
            2251800350556160
        );
        assert_eq!(
            k(3, true, 2, false, 0, 7).kong_atc_priority(),
            1152921506219556871
        );
        assert_eq!(
            k(2, false, 1, true, 5, 0).kong_atc_priority(),
            2251800891097088
        );
        assert_eq!(
            k(1, true, 0, true, 100, 0).kong_atc_priority(),
            1155173305009831936
        );
        assert_eq!(
            k(3, false, 1, false, 0, 600000).kong_atc_priority(),
            1611737024
        );
    }

    // ---- expression routes ----

    fn expr_err(e: &str) -> String {
        validate_expression(e).expect_err("must be refused")
    }

    #[test]
    fn supabase_openapi_root_expression() {
        // kong.yml: rest-v1-openapi-root, then rest-v1 (`/rest/v1/`), then the dashboard (`/`).
        let r = router(&[
            expr(r#"http.path == "/rest/v1/""#, 0),
            paths(&["/rest/v1/"]),
            paths(&["/"]),
        ]);
        let m = Q::new("/rest/v1/").find(&r).expect("match");
        assert_eq!((m.route, m.matched_len), (0, Some(9)));
        assert!(m.captures.is_empty());
        // The query never reaches http.path.
        let m = Q::new("/rest/v1/")
            .query("select=x")
            .find(&r)
            .expect("match");
        assert_eq!((m.route, m.matched_len), (0, Some(9)));
        let m = Q::new("/rest/v1/todos").find(&r).expect("match");
        assert_eq!((m.route, m.matched_len), (1, Some(9)));
        assert_eq!(Q::new("/rest/v1").route(&r), Some(2));
        assert_eq!(Q::new("/rest/v1//").route(&r), Some(1));
    }

    #[test]
    fn expression_outranks_every_traditional_route() {
        let r = router(&[
            spec(
                &["GET"],
                &["example.org"],
                &[("x-a", &["1"])],
                &["~/api/v1/users$"],
            ),
            expr(r#"http.path ^= "/api""#, 0),
        ]);
        let q = Q::new("/api/v1/users").headers(&[("x-a", "1")]);
        assert_eq!(q.route(&r), Some(1));
        let c = r.candidates(&q.info());
        assert_eq!(
            c.iter().map(|c| c.route).collect::<Vec<_>>(),
            vec![1, 0],
            "{c:?}"
        );
        assert_eq!(
            c[0].key.why_beats(&c[1].key),
            "expression route outranks path routes"
        );
        assert_eq!(
            c[1].key.why_beats(&c[0].key),
            "path route loses to expression routes"
        );
        assert_eq!(c[0].matched_path, None);
        assert!(c[0].key.expression && !c[1].key.expression);
        // No expression match: the traditional routes as before.
        assert_eq!(Q::new("/other").route(&r), None);
        let host_only = router(&[hosts(&["example.org"]), expr(r#"http.method == "GET""#, 0)]);
        let c = host_only.candidates(&Q::new("/").info());
        assert_eq!(
            c[0].key.why_beats(&c[1].key),
            "expression route outranks traditional routes"
        );
    }

    #[test]
    fn expression_priority_then_file_order() {
        let r = router(&[
            expr(r#"http.path ^= "/a""#, 1),
            expr(r#"http.path ^= "/a/b""#, 5),
            expr(r#"http.path ^= "/a/b/c""#, 5),
        ]);
        assert_eq!(Q::new("/a/b/c").route(&r), Some(1));
        assert_eq!(Q::new("/a/bx").route(&r), Some(1));
        assert_eq!(Q::new("/a/x").route(&r), Some(0));
        let c = r.candidates(&Q::new("/a/b/c").info());
        assert_eq!(
            c.iter()
                .map(|c| (c.route, c.key.priority))
                .collect::<Vec<_>>(),
            vec![(1, 5), (2, 5), (0, 1)]
        );
        assert_eq!(c[0].key.why_beats(&c[1].key), "tie (file order decides)");
        assert_eq!(c[0].key.why_beats(&c[2].key), "higher priority (5 > 1)");
        assert_eq!(c[2].key.why_beats(&c[0].key), "lower priority (1 < 5)");
        // Kong's value: EXPRESSION_ONLY_BIT | priority, above any traditional route's.
        assert_eq!(c[0].key.kong_atc_priority(), 0xFF00_0000_0000_0005);
        // (A 4-field route's LuaJIT value is negative and sign-extends above it; see kong_atc_priority.)
        let top_traditional = PriorityKey {
            fields: 3,
            plain_hosts: true,
            header_count: 255,
            regex: true,
            regex_priority: 1000,
            ..PriorityKey::default()
        };
        assert!(c[2].key.kong_atc_priority() > top_traditional.kong_atc_priority());
        assert!(c[2].key > top_traditional);
    }

    #[test]
    fn expression_strip_lengths_follow_the_recorded_http_path() {
        let len = |e: &str, path: &str| {
            let r = router(&[expr(e, 0)]);
            Q::new(path).find(&r).map(|m| m.matched_len)
        };
        assert_eq!(len(r#"http.path ^= "/api/""#, "/api/users"), Some(Some(5)));
        assert_eq!(len(r#"http.path == "/api""#, "/api"), Some(Some(4)));
        // `~`: the whole text the regex matched (the regex is not anchored by the engine).
        assert_eq!(
            len(r##"http.path ~ r#"^/api/v[0-9]+"#"##, "/api/v12/x"),
            Some(Some(8))
        );
        assert_eq!(len(r#"http.path ~ "/v[0-9]""#, "/x/v1/y"), Some(Some(3)));
        // `=^` records its suffix; Kong strips that many bytes from the start.
        assert_eq!(len(r#"http.path =^ ".json""#, "/a/b.json"), Some(Some(5)));
        // Nothing recorded for http.path: nothing stripped.
        assert_eq!(len(r#"http.host == "example.org""#, "/a"), Some(None));
        assert_eq!(len(r#"http.path != "/b""#, "/a"), Some(None));
        assert_eq!(
            len(r#"http.path contains "pi" && http.method == "GET""#, "/api"),
            Some(None)
        );
        assert_eq!(len(r#"http.path ^= "/b""#, "/a"), None);
    }

    #[test]
    fn expression_logic_and_kong_precedence() {
        // ATC's `||` binds tighter than `&&`: this is GET && (/a || /b).
        let r = router(&[expr(
            r#"http.method == "GET" && http.path == "/a" || http.path == "/b""#,
            0,
        )]);
        assert_eq!(Q::new("/a").route(&r), Some(0));
        assert_eq!(Q::new("/b").route(&r), Some(0));
        assert_eq!(Q::new("/b").method("POST").route(&r), None);
        let r = router(&[expr(
            r#"(http.path == "/a" && http.method == "POST") || !(http.path ^= "/a")"#,
            0,
        )]);
        assert_eq!(Q::new("/a").method("POST").route(&r), Some(0));
        assert_eq!(Q::new("/a").route(&r), None);
        assert_eq!(Q::new("/b").route(&r), Some(0));
    }

    #[test]
    fn expression_headers_queries_and_net_fields() {
        let r = router(&[expr(r#"http.headers.x_api_key == "k1""#, 0)]);
        assert_eq!(
            Q::new("/").headers(&[("X-Api-Key", "k1")]).route(&r),
            Some(0)
        );
        assert_eq!(Q::new("/").headers(&[("x-api-key", "K1")]).route(&r), None);
        assert_eq!(Q::new("/").route(&r), None);
        // Every value must match, unless any() says otherwise.
        let two = [("x-api-key", "k1"), ("x-api-key", "k2")];
        assert_eq!(Q::new("/").headers(&two).route(&r), None);
        let any = router(&[expr(r#"any(lower(http.headers.x_api_key)) == "k2""#, 0)]);
        assert_eq!(Q::new("/").headers(&two).route(&any), Some(0));

        let r = router(&[expr(
            r#"http.queries.select == "a b" && http.queries.flag == """#,
            0,
        )]);
        assert_eq!(Q::new("/").query("select=a+b&flag").route(&r), Some(0));
        assert_eq!(Q::new("/").query("flag=&select=a%20b").route(&r), Some(0));
        assert_eq!(Q::new("/").query("select=a+b").route(&r), None);
        assert_eq!(Q::new("/").route(&r), None);

        let r = router(&[expr(r#"net.protocol == "https""#, 0)]);
        assert_eq!(Q::new("/").route(&r), None);
        assert_eq!(Q::new("/").tls().route(&r), Some(0));

        let r = router(&[expr(
            "net.src.ip in 10.0.0.0/8 && net.src.port >= 1024 && net.dst.port == 8000",
            0,
        )]);
        assert_eq!(Q::new("/").client("10.1.2.3", 40000).route(&r), Some(0));
        assert_eq!(
            Q::new("/").client("::ffff:10.1.2.3", 40000).route(&r),
            Some(0)
        );
        assert_eq!(Q::new("/").client("10.1.2.3", 80).route(&r), None);
        assert_eq!(Q::new("/").client("192.168.0.1", 40000).route(&r), None);
        // net.dst.port: the Host header's port first, else the listener's.
        assert_eq!(
            Q::new("/")
                .client("10.1.2.3", 40000)
                .host(Some("example.org:9000"))
                .route(&r),
            None
        );
        assert_eq!(Q::new("/").route(&r), None);
        // The deprecated net.port is net.dst.port.
        let r = router(&[expr("net.port == 8000", 0)]);
        assert_eq!(Q::new("/").route(&r), Some(0));

        let r = router(&[expr(r#"http.host =^ ".org" && http.method == "GET""#, 0)]);
        assert_eq!(
            Q::new("/").host(Some("example.org:8000")).route(&r),
            Some(0)
        );
        assert_eq!(Q::new("/").host(None).route(&r), None);
    }

    #[test]
    fn expression_path_segments() {
        let r = router(&[expr(
            r#"http.path.segments.0 == "rest" && http.path.segments.len == 3 && http.path.segments.1_2 == "v1/todos""#,
            0,
        )]);
        assert_eq!(Q::new("/rest/v1/todos").route(&r), Some(0));
        assert_eq!(Q::new("/rest/v1/todos/").route(&r), Some(0));
        assert_eq!(Q::new("/rest/v1/todos/1").route(&r), None);
        assert_eq!(Q::new("/rest/v1").route(&r), None);
        assert_eq!(Q::new("/").route(&r), None);
    }

    #[test]
    fn http_only_expression_route_does_not_match_https() {
        let mut only_http = expr(r#"http.path ^= "/""#, 0);
        only_http.protocols = vec!["http".to_string()];
        let mut only_https = expr(r#"http.path ^= "/""#, 0);
        only_https.protocols = vec!["https".to_string()];
        let r = router(&[only_http.clone(), paths(&["/"])]);
        assert_eq!(Q::new("/x").route(&r), Some(0));
        assert_eq!(Q::new("/x").tls().route(&r), Some(1));
        // https-only: matches plain http too (the proxy then answers 426 or redirects).
        let r = router(&[only_https]);
        assert_eq!(Q::new("/x").route(&r), Some(0));
    }

    #[test]
    fn expression_regex_captures() {
        let r = router(&[expr(r##"http.path ~ r#"^/u/(?P<id>\d+)/(\w+)"#"##, 0)]);
        let m = Q::new("/u/42/posts").find(&r).expect("match");
        assert_eq!(m.matched_len, Some(11));
        assert_eq!(
            m.captures.numbered,
            vec![
                Some("/u/42/posts".to_string()),
                Some("42".to_string()),
                Some("posts".to_string())
            ]
        );
        assert_eq!(m.captures.named, vec![("id".to_string(), "42".to_string())]);
        let plain = router(&[expr(r#"http.path ~ "^/u/""#, 0)]);
        assert!(
            Q::new("/u/1")
                .find(&plain)
                .expect("match")
                .captures
                .is_empty()
        );
    }

    #[test]
    fn expression_non_utf8_values_are_left_out() {
        let r = router(&[
            expr(r#"http.path ^= "/a""#, 0),
            expr(r#"http.method == "GET" && http.path.segments.len == 1"#, 0),
            paths(&["/"]),
        ]);
        assert_eq!(Q::bytes(b"/a\xff").route(&r), Some(2));
        let r = router(&[expr(r#"http.headers.x == "v""#, 0)]);
        assert_eq!(Q::new("/").headers(&[("x", "v\u{e9}")]).route(&r), None);
    }

    #[test]
    fn expression_errors() {
        assert_eq!(
            expr_err(r#"http.path = "/x""#),
            "Router Expression failed validation: expected binary_operator at 1:11"
        );
        assert_eq!(
            expr_err(r#"http.path == "/x" &&"#),
            "Router Expression failed validation: expected term at 1:21"
        );
        assert_eq!(
            expr_err(r#"http.paths == "/x""#),
            "Router Expression failed validation: Unknown LHS field ('http.paths')"
        );
        assert_eq!(
            expr_err(r#"http.path == "/" && net.src.port == "80""#),
            "Router Expression failed validation: Type mismatch between the LHS and RHS values of predicate ('net.src.port')"
        );
        assert_eq!(
            expr_err(r#"http.path ~ "(""#),
            "Router Expression failed validation: regex parse error: unclosed group at 1:13"
        );
        assert_eq!(
            expr_err(r#"http.path.segments.2_1 == "x""#),
            "Router Expression failed validation: illformed http.path.segments.* field ('http.path.segments.2_1')"
        );
        assert_eq!(
            expr_err(r#"tls.sni == "a.com""#),
            "Router Expression failed validation: field 'tls.sni' is not supported by Portcullis"
        );
        assert_eq!(
            expr_err(r#"foo(http.path) == "/""#),
            "Router Expression failed validation: unknown transformation function: foo at 1:1"
        );
        assert!(validate_expression("net.port == 80").is_ok());
        assert!(validate_expression(r#"http.path.segments.0_2 == "a/b/c""#).is_ok());

        let mut both = expr(r#"http.path == "/a""#, 0);
        both.paths = vec!["/a".to_string()];
        let errs = Router::new(&[
            paths(&["/ok"]),
            both,
            expr("http.nope == 1", 0),
            expr(r#"http.path == "/fine""#, 0),
        ])
        .expect_err("must fail");
        let got: Vec<_> = errs.iter().map(|e| (e.route, e.field)).collect();
        assert_eq!(got, vec![(1, "expression"), (2, "expression")]);
        assert_eq!(errs[0].message, EXPRESSION_WITH_FIELDS);
        assert_eq!(
            errs[1].message,
            "Router Expression failed validation: Unknown LHS field ('http.nope')"
        );
    }

    #[test]
    fn no_expression_routes_no_atc_router() {
        let r = router(&[paths(&["/"])]);
        assert!(r.expr.is_none());
        let r = router(&[paths(&["/"]), expr(r#"http.path == "/""#, 0)]);
        assert!(r.expr.is_some());
    }

    #[test]
    fn query_parsing_like_ngx_get_uri_args() {
        let q = expressions::tests_parse_query;
        assert_eq!(
            q("a=1&a=2&b&=x&c=%41%2&d=%zz+y&&e=caf%C3%A9"),
            vec![
                ("a".to_string(), "1".to_string()),
                ("a".to_string(), "2".to_string()),
                ("b".to_string(), String::new()),
                ("c".to_string(), "A%2".to_string()),
                ("d".to_string(), "%zz y".to_string()),
                ("e".to_string(), "caf\u{e9}".to_string()),
            ]
        );
        let many: String = (0..150).map(|i| format!("k{i}=v&")).collect();
        assert_eq!(q(&many).len(), 100);
    }

    // ---- randomized comparison of the indexed find() against a naive reference ----

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
        fn some(&mut self, items: &[&str], max: usize) -> Vec<String> {
            let n = 1 + self.below(max);
            (0..n).map(|_| self.pick(items).to_string()).collect()
        }
    }

    const METHODS: &[&str] = &["GET", "POST", "PUT"];
    const HOSTS: &[&str] = &[
        "a.com",
        "b.com",
        "*.a.com",
        "a.*",
        "a.com:8080",
        "*.b.com:81",
        "x.a.com",
        "B.com",
    ];
    const REQ_HOSTS: &[&str] = &[
        "a.com",
        "A.com",
        "a.com:8080",
        "x.a.com",
        "y.x.a.com",
        "b.com",
        "a.org",
        "x.b.com:81",
        "b.com:81",
        "a.com:",
        "x.b.com",
    ];
    const HDR_NAMES: &[&str] = &["x-a", "X_B"];
    const HDR_VALUES: &[&str] = &["1", "Two", "~*^t", "~*o$", "one"];
    const REQ_HDR_VALUES: &[&str] = &["1", "two", "TWO", "3", "one", "to", "t, o"];
    const PATHS: &[&str] = &[
        "/",
        "/a",
        "/ab",
        "/abc",
        "/b",
        "/a/b",
        "/abcd",
        "/ba",
        "/a/",
        "/c/a",
        "~/a",
        "~/a.c",
        "~/(?<x>b+)",
        "~/a/\\w+",
        "~/c|/b",
    ];

    fn random_route(rng: &mut Rng) -> RouteSpec {
        let plain = rng.chance(50);
        let mut r = RouteSpec {
            regex_priority: rng.below(5) as i64 - 1,
            ..RouteSpec::default()
        };
        if !plain {
            if rng.chance(30) {
                r.methods = rng.some(METHODS, 2);
            }
            if rng.chance(40) {
                r.hosts = rng.some(HOSTS, 2);
            }
            if rng.chance(30) {
                r.headers = (0..1 + rng.below(2))
                    .map(|i| (HDR_NAMES[i].to_string(), rng.some(HDR_VALUES, 2)))
                    .collect();
            }
        }
        if plain || rng.chance(60) {
            r.paths = rng.some(PATHS, 3);
            if plain {
                r.paths.retain(|p| !p.starts_with('~'));
                if r.paths.is_empty() {
                    r.paths.push("/a".to_string());
                }
            }
        }
        if r.methods.is_empty() && r.hosts.is_empty() && r.headers.is_empty() && r.paths.is_empty()
        {
            r.paths.push("/".to_string());
        }
        r
    }

    /// Straightforward reference: every route, every path, computed independently, best key then file
    /// order. Returns (route, matched_len).
    fn naive(
        routes: &[RouteSpec],
        regexes: &[Vec<Option<regex::bytes::Regex>>],
        header_res: &mut std::collections::HashMap<String, regex::Regex>,
        q: &Q<'_>,
    ) -> Option<(usize, Option<usize>)> {
        let mut best: Option<(PriorityKey, usize, Option<usize>)> = None;
        let (req_host, req_port) = match q.host {
            Some(h) => match h.split_once(':') {
                Some((a, b)) if !b.is_empty() && b.chars().all(|c| c.is_ascii_digit()) => (
                    Some(a.to_lowercase()),
                    b.parse::<u64>().expect("test value"),
                ),
                _ => (Some(h.to_lowercase()), u64::from(q.port)),
            },
            None => (None, u64::from(q.port)),
        };
        for (i, r) in routes.iter().enumerate() {
            if !r.methods.is_empty() && !r.methods.iter().any(|m| m == q.method) {
                continue;
            }
            if !r.hosts.is_empty() {
                let Some(h) = &req_host else { continue };
                let ok = r.hosts.iter().any(|pat| {
                    let pat = pat.to_lowercase();
                    let (pat, port) = match pat.split_once(':') {
                        Some((a, b)) => {
                            (a.to_string(), Some(b.parse::<u64>().expect("test value")))
                        }
                        None => (pat.clone(), None),
                    };
                    if port.is_some_and(|p| p != req_port) {
                        return false;
                    }
                    if let Some(s) = pat.strip_prefix('*') {
                        h.ends_with(s)
                    } else if let Some(s) = pat.strip_suffix('*') {
                        h.starts_with(s)
                    } else {
                        *h == pat
                    }
                });
                if !ok {
                    continue;
                }
            }
            let headers_ok = r.headers.iter().all(|(name, values)| {
                let name = name.to_lowercase().replace('_', "-");
                q.headers.get_all(name.as_str()).iter().any(|v| {
                    let v = v.to_str().expect("test value").to_lowercase();
                    values.iter().any(|want| match want.strip_prefix("~*") {
                        Some(re) => header_res
                            .entry(re.to_string())
                            .or_insert_with(|| {
                                regex::Regex::new(&re.to_lowercase()).expect("test value")
                            })
                            .is_match(&v),
                        None => v == want.to_lowercase(),
                    })
                })
            });
            if !headers_ok {
                continue;
            }
            let fields = [
                !r.methods.is_empty(),
                !r.hosts.is_empty(),
                !r.headers.is_empty(),
                !r.paths.is_empty(),
            ]
            .iter()
            .filter(|b| **b)
            .count() as u8;
            let base = PriorityKey {
                fields,
                plain_hosts: !r.hosts.is_empty() && r.hosts.iter().all(|h| !h.contains('*')),
                header_count: r.headers.len() as u8,
                ..PriorityKey::default()
            };
            let mut consider = |key: PriorityKey, len: Option<usize>| {
                let better = match &best {
                    None => true,
                    Some((bk, bi, _)) => key > *bk || (key == *bk && i < *bi),
                };
                if better {
                    best = Some((key, i, len));
                }
            };
            if r.paths.is_empty() {
                consider(base, None);
            }
            for (pi, p) in r.paths.iter().enumerate() {
                if p.starts_with('~') {
                    let re = regexes[i][pi].as_ref().expect("test value");
                    if let Some(m) = re.find(q.path) {
                        let key = PriorityKey {
                            regex: true,
                            regex_priority: r.regex_priority,
                            ..base
                        };
                        consider(key, Some(m.len()));
                    }
                } else if q.path.starts_with(p.as_bytes()) {
                    consider(
                        PriorityKey {
                            prefix_len: p.len(),
                            ..base
                        },
                        Some(p.len()),
                    );
                }
            }
        }
        best.map(|(_, i, len)| (i, len))
    }

    #[test]
    fn indexed_find_equals_naive_reference() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut checked = 0;
        let mut matched = 0;
        let mut header_res = std::collections::HashMap::new();
        for _ in 0..60 {
            let n = 1 + rng.below(80);
            let routes: Vec<RouteSpec> = (0..n).map(|_| random_route(&mut rng)).collect();
            let router = Router::new(&routes).expect("test value");
            let regexes: Vec<Vec<Option<regex::bytes::Regex>>> = routes
                .iter()
                .map(|r| {
                    r.paths
                        .iter()
                        .map(|p| {
                            p.strip_prefix('~').map(|s| {
                                regex::bytes::Regex::new(&format!("^{}", s.replace("?<", "?P<")))
                                    .expect("test value")
                            })
                        })
                        .collect()
                })
                .collect();
            for _ in 0..100 {
                let len = rng.below(7);
                let path: String = std::iter::once('/')
                    .chain((0..len).map(|_| ['/', 'a', 'b', 'c'][rng.below(4)]))
                    .collect();
                let mut hdrs: Vec<(&str, &str)> = Vec::new();
                for name in ["x-a", "x-b"] {
                    for _ in 0..rng.below(3) {
                        hdrs.push((name, rng.pick(REQ_HDR_VALUES)));
                    }
                }
                let host = if rng.chance(10) {
                    None
                } else {
                    Some(rng.pick(REQ_HOSTS))
                };
                let q = Q::new(&path)
                    .method(rng.pick(METHODS))
                    .host(host)
                    .port([8000, 8080, 81][rng.below(3)])
                    .headers(&hdrs);
                let got = q.find(&router).map(|m| (m.route, m.matched_len));
                let want = naive(&routes, &regexes, &mut header_res, &q);
                assert_eq!(
                    got, want,
                    "routes={routes:#?}\npath={path} host={host:?} method={} port={} headers={hdrs:?}",
                    q.method, q.port
                );
                let cands = router.candidates(&q.info());
                assert_eq!(cands.first().map(|c| c.route), want.map(|w| w.0));
                assert!(cands.windows(2).all(|w| w[0].key >= w[1].key));
                checked += 1;
                matched += usize::from(got.is_some());
            }
        }
        assert_eq!(checked, 6000);
        // the generator must exercise both outcomes
        assert!(matched > 1000 && matched < 5900, "matched {matched}");
    }
}
