//! The cost of one hot reload on a large config: `config::load_bytes` (parse, validate,
//! compile the router and plugin chains) plus the `ArcSwap::store` that publishes it.
//! 10 000 routes (1000 services × 10 routes, distinct hosts and paths, a few plugins);
//! the target is under 200 ms.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::config;
use portcullis::upstream::ClientCache;

const SERVICES: usize = 1000;
const ROUTES_PER_SERVICE: usize = 10;

/// A Kong declarative config with `SERVICES × ROUTES_PER_SERVICE` routes: every route
/// has its own path, every service its own host, every tenth service an
/// ip-restriction plugin, so the router and chains have realistic work to do.
fn generate() -> String {
    let mut y = String::from("_format_version: \"3.0\"\nservices:\n");
    for s in 0..SERVICES {
        let _ = write!(
            y,
            "  - name: svc{s}\n    url: http://127.0.0.1:{}/base{s}\n    routes:\n",
            10_000 + s
        );
        for r in 0..ROUTES_PER_SERVICE {
            let _ = write!(
                y,
                "      - name: svc{s}-r{r}\n        hosts: [svc{s}.example.test]\n        \
                 paths: [/api/v{r}/svc{s}]\n        methods: [GET, POST]\n        \
                 strip_path: {}\n",
                r % 2 == 0
            );
        }
        if s % 10 == 0 {
            let _ = write!(
                y,
                "    plugins:\n      - name: ip-restriction\n        config:\n          \
                 allow: [127.0.0.1, 10.{}.0.0/16]\n",
                s % 256
            );
        }
    }
    y
}

fn bench(c: &mut Criterion) {
    let yaml = generate();
    let clients = ClientCache::default();
    let first = match config::load_bytes("bench.yaml", yaml.as_bytes(), 1, &clients) {
        Ok(s) => s,
        Err(e) => panic!("generated config is invalid:\n{e}"),
    };
    assert_eq!(first.config.routes.len(), SERVICES * ROUTES_PER_SERVICE);
    let live = ArcSwap::from_pointee(first);

    let mut g = c.benchmark_group("reload");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    let mut generation = 1;
    g.bench_function("compile_and_swap_10k_routes", |b| {
        b.iter(|| {
            generation += 1;
            let snap = match config::load_bytes("bench.yaml", yaml.as_bytes(), generation, &clients)
            {
                Ok(s) => s,
                Err(e) => panic!("{e}"),
            };
            // The old snapshot is dropped here too, as on a real reload with no request
            // still holding it.
            live.store(Arc::new(snap));
            black_box(live.load().generation)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
