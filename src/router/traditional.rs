//! The traditional router's compile step and Kong's route priority: each configured route
//! ([`RouteSpec`]) becomes its matching rules and its sub-routes (one per distinct prefix
//! length, one for all its regex paths), each ranked by its [`PriorityKey`]; the matcher
//! itself is in the parent module.

use super::*;

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
                rules.push(None);
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
            rules.push((!route_rules.is_unconditional()).then(|| Box::new(route_rules)));
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

        let mut trie: TrieBuilder<Option<usize>> = TrieBuilder::default();
        let mut by_regex: TrieBuilder<Vec<usize>> = TrieBuilder::default();
        let mut general = Vec::new();
        let mut by_host: HashMap<Box<[u8]>, Vec<usize>> = HashMap::new();
        let mut max_host_len = 0;
        for (rank, sub) in subs.iter().enumerate() {
            // An unconditional regex sub-route whose every regex has a literal prefix.
            if rules[sub.route].is_none()
                && let PathRule::Regex(regexes) = &sub.path
                && let Some(literals) = regexes
                    .iter()
                    .map(|(p, _)| {
                        let literal = literal_prefix(p.strip_prefix('~').unwrap_or(p));
                        (!literal.is_empty()).then_some(literal)
                    })
                    .collect::<Option<Vec<&str>>>()
            {
                for literal in literals {
                    by_regex.entry(literal.as_bytes()).push(rank);
                }
                continue;
            }
            let hosts = rules[sub.route].as_ref().map_or(&[][..], |r| &r.hosts[..]);
            match &sub.path {
                PathRule::Prefix(prefixes) if rules[sub.route].is_none() => {
                    for p in prefixes {
                        trie.insert(p.as_bytes(), rank);
                    }
                }
                _ if !hosts.is_empty() && hosts.iter().all(|h| h.kind == HostKind::Exact) => {
                    for h in hosts {
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
            trie: trie.finish(|best| best),
            by_regex: RegexIndex::new(by_regex),
            by_host,
            max_host_len,
            expr,
        })
    }
}

/// The literal text every match of the `^`-anchored regex path `src` starts with (Kong anchors a regex
/// path by prepending `^`): its characters up to the first one with a meaning in a regex, less the
/// last when a quantifier follows it. Empty when there is none, or when `src` has a `|` anywhere (a
/// top-level alternative is not anchored: `^/a|/b` matches `/x/b`).
pub(super) fn literal_prefix(src: &str) -> &str {
    if src.contains('|') {
        return "";
    }
    let mut end = 0;
    let mut last_start = 0;
    for (i, c) in src.char_indices() {
        match c {
            '?' | '*' | '{' => return &src[..last_start],
            '\\' | '.' | '+' | '(' | ')' | '[' | ']' | '}' | '^' | '$' => return &src[..end],
            _ => {
                last_start = i;
                end = i + c.len_utf8();
            }
        }
    }
    &src[..end]
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
