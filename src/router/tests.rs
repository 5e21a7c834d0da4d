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
    let k = |fields, plain_hosts, header_count, regex, regex_priority, prefix_len| PriorityKey {
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
    if r.methods.is_empty() && r.hosts.is_empty() && r.headers.is_empty() && r.paths.is_empty() {
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
                    Some((a, b)) => (a.to_string(), Some(b.parse::<u64>().expect("test value"))),
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

#[test]
fn regex_literal_prefixes() {
    use super::traditional::literal_prefix as lp;
    assert_eq!(lp(r"/api/v1/users/(?<id>\d+)$"), "/api/v1/users/");
    assert_eq!(lp(r"/api/v1/users/\d+"), "/api/v1/users/");
    assert_eq!(lp("/files?x"), "/file");
    assert_eq!(lp("/ab*"), "/a");
    assert_eq!(lp("/ab{2}"), "/a");
    assert_eq!(lp("/ab+"), "/ab");
    assert_eq!(lp("/é?"), "/");
    assert_eq!(lp("/x.y"), "/x");
    assert_eq!(lp("/a|/b"), "");
    assert_eq!(lp("/a(?i)b"), "/a");
    assert_eq!(lp("^/a"), "");
    assert_eq!(lp("[/]a"), "");
    assert_eq!(lp("/plain"), "/plain");
    assert_eq!(lp(""), "");
}

/// Regex routes indexed by their literal prefix, beside ones that cannot be (alternation, no
/// literal, methods or hosts), prefix routes and regex_priority: the winner is always the one the
/// exhaustive ranking (`candidates`, checked inside `Q::find`) puts first.
#[test]
fn regex_index_agrees_with_exhaustive_ranking() {
    let mut routes = vec![
        paths(&[r"~/api/v1/users/(?<id>\d+)$"]),
        paths(&[r"~/api/v1/users/\d+/posts", "/api/v1/users/"]),
        paths(&[r"~/api/v\d/items"]),
        paths(&["~/zz|/q/a"]),
        paths(&[r"~.*/secret"]),
        spec(&["POST"], &[], &[], &[r"~/api/v1/users/\d+"]),
        spec(&[], &["example.org"], &[], &[r"~/api/v2/"]),
        paths(&[r"~/api/v1/use?rs/7", r"~/b/(\w+)"]),
        paths(&["/api"]),
    ];
    let mut prio = paths(&[r"~/api/v1/users/1$"]);
    prio.regex_priority = 5;
    routes.push(prio);
    let r = router(&routes);
    // Only the regexes without a literal prefix, and the route with a method, are tried for every request.
    let mut general: Vec<usize> = r.general.iter().map(|&k| r.subs[k].route).collect();
    general.sort_unstable();
    assert_eq!(general, vec![3, 4, 5]);
    for (path, want) in [
        ("/api/v1/users/1", Some(9)),
        ("/api/v1/users/22", Some(0)),
        ("/api/v1/users/22/posts", Some(1)),
        ("/api/v1/users/x", Some(1)),
        ("/api/v3/items", Some(2)),
        ("/x/q/a", Some(3)),
        ("/zz", Some(3)),
        ("/x/secret", Some(4)),
        ("/api/v2/z", Some(6)),
        ("/api/v1/usrs/7", Some(7)),
        ("/b/zz", Some(7)),
        ("/api/v9", Some(8)),
        ("/nothing", None),
    ] {
        assert_eq!(Q::new(path).route(&r), want, "{path}");
    }
    // More fields: the POST route outranks route 0 for a POST.
    assert_eq!(Q::new("/api/v1/users/22").method("POST").route(&r), Some(5));
    let m = Q::new("/api/v1/users/42").find(&r).expect("test value");
    assert_eq!(m.captures.named, vec![("id".to_string(), "42".to_string())]);
}
