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
//! Files: this one is the public matcher (the types, [`Router::find`], [`Router::candidates`]);
//! `traditional.rs` compiles traditional routes ([`Router::new`]) and ranks them ([`PriorityKey`]);
//! `expressions.rs` is the ATC side; `tests.rs` the unit tests.
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

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;

use http::{HeaderMap, HeaderName};

mod expressions;
#[cfg(test)]
mod tests;
mod traditional;

pub use traditional::PriorityKey;

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
    // A byte scan: a host is a few bytes, too short for the searcher `find` sets up.
    if let Some(i) = s.bytes().position(|b| b == b':') {
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
/// prefix, the best rank (position in the sorted sub-route list) of a sub-route having that prefix. The
/// same flat trie indexes regex sub-routes by their literal prefix ([`RegexIndex`]), a node's value
/// being a list number there.
///
/// Stored flat: the nodes in one vector, every node's children as a run (sorted by byte) of one edge
/// vector, both without spare capacity: 24 bytes a node instead of a vector of children each (about
/// 100 bytes a node for 10,000 prefixes).
#[derive(Debug, Default)]
struct PrefixTrie {
    nodes: Vec<TrieNode>,
    /// (byte, child node), each node's run sorted by byte.
    edges: Vec<(u8, u32)>,
}

#[derive(Debug, Clone, Copy)]
struct TrieNode {
    /// The node's value (a rank, or a list number); `usize::MAX` when none.
    value: usize,
    /// The node's children: `edges[first..first + len]`.
    first: u32,
    len: u32,
}

impl TrieNode {
    fn value(&self) -> Option<usize> {
        (self.value != usize::MAX).then_some(self.value)
    }
}

/// A [`PrefixTrie`] being built (children in a growable vector per node), with a value of type `V`
/// per node.
#[derive(Debug, Default)]
struct TrieBuilder<V> {
    nodes: Vec<BuilderNode<V>>,
}

#[derive(Debug, Default)]
struct BuilderNode<V> {
    /// Sorted by byte.
    children: Vec<(u8, usize)>,
    value: V,
}

impl<V: Default> TrieBuilder<V> {
    /// The value of `key`'s node, created (with its path) when missing.
    fn entry(&mut self, key: &[u8]) -> &mut V {
        if self.nodes.is_empty() {
            self.nodes.push(BuilderNode::default());
        }
        let mut node = 0;
        for &b in key {
            let next = self.nodes.len();
            let children = &mut self.nodes[node].children;
            node = match children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => children[i].1,
                Err(i) => {
                    children.insert(i, (b, next));
                    self.nodes.push(BuilderNode::default());
                    next
                }
            };
        }
        &mut self.nodes[node].value
    }

    /// The flat trie (same node numbering), each node's value mapped by `value`.
    fn finish(self, mut value: impl FnMut(V) -> Option<usize>) -> PrefixTrie {
        let mut edges = Vec::with_capacity(self.nodes.iter().map(|n| n.children.len()).sum());
        let nodes = self
            .nodes
            .into_iter()
            .map(|n| {
                let first = edges.len() as u32;
                edges.extend(n.children.iter().map(|&(b, child)| (b, child as u32)));
                TrieNode {
                    value: value(n.value).unwrap_or(usize::MAX),
                    first,
                    len: n.children.len() as u32,
                }
            })
            .collect();
        PrefixTrie { nodes, edges }
    }
}

impl TrieBuilder<Option<usize>> {
    /// Records a prefix of the sub-route of this rank (the best rank per prefix is kept).
    fn insert(&mut self, key: &[u8], rank: usize) {
        let best = self.entry(key);
        *best = Some(best.map_or(rank, |b| b.min(rank)));
    }
}

impl PrefixTrie {
    /// Calls `f(length, value)` for every node with a value along `path`: the root (length 0), then
    /// the nodes of `path`'s prefixes, shortest first.
    fn walk(&self, path: &[u8], mut f: impl FnMut(usize, usize)) {
        let Some(mut node) = self.nodes.first().copied() else {
            return;
        };
        if let Some(v) = node.value() {
            f(0, v);
        }
        for (depth, &b) in path.iter().enumerate() {
            let start = node.first as usize;
            let Some(children) = self.edges.get(start..start + node.len as usize) else {
                break;
            };
            // Most nodes have one child or a handful (digits): a scan beats a search.
            let child = if children.len() <= 8 {
                children.iter().find(|c| c.0 == b).map(|c| c.1)
            } else {
                children
                    .binary_search_by_key(&b, |c| c.0)
                    .ok()
                    .map(|i| children[i].1)
            };
            let Some(next) = child.and_then(|c| self.nodes.get(c as usize)) else {
                break;
            };
            node = *next;
            if let Some(v) = node.value() {
                f(depth + 1, v);
            }
        }
    }

    /// Best (lowest) rank among the prefixes of `path`, with that prefix's length.
    fn best_match(&self, path: &[u8]) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        self.walk(path, |len, rank| {
            if best.is_none_or(|(br, _)| rank < br) {
                best = Some((rank, len));
            }
        });
        best
    }
}

/// Regex sub-routes without methods, hosts or headers whose every regex needs the path to start
/// with a literal (`~/api/v1/users/\d+` needs `/api/v1/users/`), by that literal: a request only
/// tries the regexes whose literal starts its path, not every regex of the table.
#[derive(Debug, Default)]
struct RegexIndex {
    trie: PrefixTrie,
    /// Ranks (ascending) per trie value.
    lists: Vec<Box<[usize]>>,
}

impl RegexIndex {
    fn new(builder: TrieBuilder<Vec<usize>>) -> RegexIndex {
        let mut lists = Vec::new();
        let trie = builder.finish(|mut ranks| {
            if ranks.is_empty() {
                return None;
            }
            ranks.sort_unstable();
            ranks.dedup();
            lists.push(ranks.into_boxed_slice());
            Some(lists.len() - 1)
        });
        RegexIndex { trie, lists }
    }

    /// Ranks (ascending, no duplicates) of the indexed sub-routes whose literal starts `path`:
    /// borrowed when one literal does (the usual case), merged only when several do.
    fn candidates(&self, path: &[u8]) -> Cow<'_, [usize]> {
        let mut found: Cow<'_, [usize]> = Cow::Borrowed(&[]);
        if self.lists.is_empty() {
            return found;
        }
        let mut merged = false;
        self.trie.walk(path, |_, i| {
            let Some(list) = self.lists.get(i) else {
                return;
            };
            if found.is_empty() {
                found = Cow::Borrowed(list);
            } else {
                found.to_mut().extend_from_slice(list);
                merged = true;
            }
        });
        if merged {
            let all = found.to_mut();
            all.sort_unstable();
            all.dedup();
        }
        found
    }
}

/// Request hosts up to this length are lower-cased on the stack for the host index lookup.
const HOST_BUF: usize = 256;

/// The compiled routing table: immutable, `Send + Sync`, built once at config load.
#[derive(Debug)]
pub struct Router {
    /// Per configured route; None for a route without methods, hosts or headers (most
    /// routes: 8 bytes each then, not a `RouteRules` of three vectors).
    rules: Vec<Option<Box<RouteRules>>>,
    /// All sub-routes, best first (priority key descending, then route index ascending). A sub-route's
    /// position is its rank.
    subs: Vec<SubRoute>,
    /// Ranks (ascending) of the sub-routes that are in none of `trie`, `by_regex` and `by_host`.
    general: Vec<usize>,
    /// Unconditional prefix sub-routes.
    trie: PrefixTrie,
    /// Unconditional regex sub-routes whose regexes all start with a literal.
    by_regex: RegexIndex,
    /// Sub-routes whose hosts are all exact (no wildcard), by lower-cased host: ranks ascending.
    by_host: HashMap<Box<[u8]>, Vec<usize>>,
    /// Longest key of `by_host`.
    max_host_len: usize,
    /// The expression routes, tried before all the others; None when there are none (then `find`
    /// never builds an ATC context).
    expr: Option<expressions::ExprRouter>,
}

impl Router {
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
        let regex = self.by_regex.candidates(r.path);
        // Walk `general`, the host's bucket and the regex candidates together in rank order (each
        // ascending; they are disjoint).
        let lists = [&self.general[..], bucket, &regex[..]];
        let mut at = [0usize; 3];
        loop {
            let mut next: Option<(usize, usize)> = None;
            for (li, list) in lists.iter().enumerate() {
                if let Some(&rank) = list.get(at[li])
                    && next.is_none_or(|(best, _)| rank < best)
                {
                    next = Some((rank, li));
                }
            }
            let Some((rank, li)) = next else {
                break;
            };
            at[li] += 1;
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

    /// The route's methods, hosts and headers accept the request (a route without any does).
    fn rules_match(&self, route: usize, r: &Req<'_>) -> bool {
        self.rules[route]
            .as_ref()
            .is_none_or(|rules| rules.matches(r))
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
        if !self.rules_match(sub.route, r) {
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
        if let PathRule::Regex(regexes) = &sub.path {
            if !self.rules_match(sub.route, r) {
                return None;
            }
            // One search per regex (configuration order, the first that matches wins) gives the
            // captures too.
            let (re, caps) = regexes
                .iter()
                .find_map(|(_, re)| re.captures(r.path).map(|caps| (re, caps)))?;
            let whole = caps.get(0)?.len();
            return Some(RouteMatch {
                route: sub.route,
                matched_len: Some(whole),
                captures: captures_of(re, &caps),
            });
        }
        let matched_len = match (&sub.path, self.match_sub(sub, r)?) {
            (PathRule::Prefix(p), PathHit::Prefix(i)) => Some(p[i].len()),
            _ => None,
        };
        Some(RouteMatch {
            route: sub.route,
            matched_len,
            captures: Captures::default(),
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
