//! `Router::find` at 10, 1 000 and 10 000 routes, for three route shapes: prefix
//! paths, regex paths, and hosts (each route its own host, with a shared prefix path).
//! Requests cycle over the routes (and one miss in eight), so the cost measured is the
//! average over the table, not one hot entry. Target: ≤ 1 µs at 10 000 routes.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use portcullis::router::{RequestInfo, RouteSpec, Router};

#[derive(Clone, Copy)]
enum Shape {
    Prefix,
    Regex,
    Hosts,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Prefix => "prefix",
            Shape::Regex => "regex",
            Shape::Hosts => "hosts",
        }
    }

    fn spec(self, i: usize) -> RouteSpec {
        let mut s = RouteSpec::default();
        match self {
            Shape::Prefix => s.paths = vec![format!("/api/v{}/svc{i}", i % 7)],
            Shape::Regex => {
                s.paths = vec![format!(r"~/api/v{}/svc{i}/(?<id>\d+)$", i % 7)];
            }
            Shape::Hosts => {
                s.hosts = vec![format!("api{i}.example.test")];
                s.paths = vec!["/api".into()];
            }
        }
        s
    }

    /// (host, path) of a request for route `i`; `miss` gives one no route takes.
    fn request(self, i: usize, miss: bool) -> (String, String) {
        let top = if miss { "none" } else { "api" };
        match self {
            Shape::Prefix => (
                "api.example.test".into(),
                format!("/{top}/v{}/svc{i}/items", i % 7),
            ),
            Shape::Regex => (
                "api.example.test".into(),
                format!("/{top}/v{}/svc{i}/42", i % 7),
            ),
            Shape::Hosts => (format!("{top}{i}.example.test"), "/api/items".into()),
        }
    }
}

/// Requests per case; a power of two so cycling is a mask.
const REQUESTS: usize = 1024;

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    for shape in [Shape::Prefix, Shape::Regex, Shape::Hosts] {
        let mut g = c.benchmark_group(format!("router_find_{}", shape.name()));
        for n in [10_usize, 1_000, 10_000] {
            let specs: Vec<RouteSpec> = (0..n).map(|i| shape.spec(i)).collect();
            let router = match Router::new(&specs) {
                Ok(r) => r,
                Err(e) => panic!("bench routes do not compile: {e:?}"),
            };
            // Spread over the table: a multiplicative step visits routes out of order.
            let reqs: Vec<(String, String)> = (0..REQUESTS)
                .map(|k| shape.request((k * 7919) % n, k % 8 == 7))
                .collect();
            for (k, (host, path)) in reqs.iter().enumerate() {
                let found = router.find(&info(host, path, &headers)).map(|m| m.route);
                let want = (k % 8 != 7).then_some((k * 7919) % n);
                assert_eq!(found, want, "{} {host}{path}", shape.name());
            }
            g.bench_with_input(BenchmarkId::from_parameter(n), &router, |b, router| {
                let mut k = 0;
                b.iter(|| {
                    k = (k + 1) & (REQUESTS - 1);
                    let (host, path) = &reqs[k];
                    router.find(black_box(&info(host, path, &headers)))
                })
            });
        }
        g.finish();
    }
}

fn info<'a>(host: &'a str, path: &'a str, headers: &'a HeaderMap) -> RequestInfo<'a> {
    RequestInfo {
        method: "GET",
        host: Some(host),
        listener_port: 8000,
        path: path.as_bytes(),
        headers,
        query: None,
        tls: false,
        client_ip: None,
        client_port: None,
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
