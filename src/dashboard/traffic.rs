//! The dashboard's traffic history: a ring of samples of the counters the gateway
//! already keeps (`portcullis_http_requests_total` and
//! `portcullis_upstream_duration_seconds`), taken once a second by a task on the
//! status listener's runtime. The proxy does nothing more per request for it: the
//! sampler reads the same atomics /metrics reads.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

/// How often the counters are sampled.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Samples kept: five minutes at one a second (plus one, for the first difference).
pub const SAMPLES: usize = 301;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Route name → requests answered so far, by status class (summed over services).
    pub routes: BTreeMap<String, [u64; 5]>,
    /// Service name → cumulative upstream latency buckets `(le seconds, count)`,
    /// ascending, ending with +Inf (summed over routes).
    pub services: BTreeMap<String, Vec<(f64, u64)>>,
}

impl Sample {
    /// Reads a sample from [`crate::metrics::Metrics::render_traffic`]'s text.
    pub fn parse(text: &str, at: SystemTime) -> Sample {
        let mut s = Sample {
            at_ms: at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ..Sample::default()
        };
        for line in text.lines() {
            let Some((name, labels, value)) = split_line(line) else {
                continue;
            };
            match name {
                "http_requests_total" => {
                    let (Some(route), Some(class)) =
                        (label(&labels, "route"), label(&labels, "status_class"))
                    else {
                        continue;
                    };
                    let Some(i) = CLASSES.iter().position(|c| *c == class) else {
                        continue;
                    };
                    s.routes.entry(route.to_string()).or_default()[i] += value as u64;
                }
                "upstream_duration_seconds_bucket" => {
                    let (Some(service), Some(le)) =
                        (label(&labels, "service"), label(&labels, "le"))
                    else {
                        continue;
                    };
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        match le.parse::<f64>() {
                            Ok(v) => v,
                            Err(_) => continue,
                        }
                    };
                    let buckets = s.services.entry(service.to_string()).or_default();
                    match buckets.iter_mut().find(|(b, _)| *b == le) {
                        Some((_, n)) => *n += value as u64,
                        None => {
                            buckets.push((le, value as u64));
                            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                        }
                    }
                }
                _ => {}
            }
        }
        s
    }
}

/// A sample line's labels, unescaped.
type Labels = Vec<(String, String)>;

/// `name{labels} value` → (name, labels, value); None for comments and other lines.
fn split_line(line: &str) -> Option<(&str, Labels, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let brace = line.find('{')?;
    let name = &line[..brace];
    let mut labels = Vec::new();
    let mut rest = &line[brace + 1..];
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(r) = rest.strip_prefix('}') {
            rest = r;
            break;
        }
        let eq = rest.find("=\"")?;
        let key = rest[..eq].to_string();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return None,
                },
                '"' => {
                    end = Some(eq + 2 + i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        rest = &rest[end?..];
        labels.push((key, value));
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, labels, value))
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The last [`SAMPLES`] samples, oldest first.
#[derive(Default)]
pub struct Ring {
    samples: VecDeque<Sample>,
}

impl Ring {
    pub fn push(&mut self, s: Sample) {
        if self.samples.len() >= SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// The JSON of `/api/traffic`: per route, requests per second by status class
    /// between consecutive samples; per service, upstream latency percentiles over
    /// the window and since start.
    pub fn to_json(&self) -> serde_json::Value {
        let pairs: Vec<(&Sample, &Sample)> = self
            .samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .collect();
        let times: Vec<u64> = pairs.iter().map(|(_, b)| b.at_ms).collect();
        let mut names: Vec<&String> = self.samples.iter().flat_map(|s| s.routes.keys()).collect();
        names.sort();
        names.dedup();
        let zero = [0u64; 5];
        let routes: Vec<serde_json::Value> = names
            .iter()
            .map(|name| {
                let mut classes = serde_json::Map::new();
                let mut rps = vec![0.0f64; pairs.len()];
                for (ci, class) in CLASSES.iter().enumerate() {
                    let series: Vec<f64> = pairs
                        .iter()
                        .enumerate()
                        .map(|(k, (a, b))| {
                            let before = a.routes.get(*name).unwrap_or(&zero)[ci];
                            let after = b.routes.get(*name).unwrap_or(&zero)[ci];
                            let secs = b.at_ms.saturating_sub(a.at_ms).max(1) as f64 / 1000.0;
                            let v = after.saturating_sub(before) as f64 / secs;
                            rps[k] += v;
                            round2(v)
                        })
                        .collect();
                    classes.insert((*class).into(), serde_json::json!(series));
                }
                let total = self
                    .samples
                    .back()
                    .and_then(|s| s.routes.get(*name))
                    .unwrap_or(&zero);
                let totals: serde_json::Map<String, serde_json::Value> = CLASSES
                    .iter()
                    .zip(total.iter())
                    .map(|(c, n)| ((*c).to_string(), serde_json::json!(n)))
                    .collect();
                serde_json::json!({
                    "route": name,
                    "rps": rps.into_iter().map(round2).collect::<Vec<_>>(),
                    "classes": classes,
                    "totals": totals,
                })
            })
            .collect();
        let services: Vec<serde_json::Value> = match (self.samples.front(), self.samples.back()) {
            (Some(first), Some(last)) => last
                .services
                .iter()
                .map(|(name, now)| {
                    let before = first.services.get(name);
                    let window: Vec<(f64, u64)> = now
                        .iter()
                        .map(|(le, n)| {
                            let old = before
                                .and_then(|b| b.iter().find(|(l, _)| l == le))
                                .map_or(0, |(_, n)| *n);
                            (*le, n.saturating_sub(old))
                        })
                        .collect();
                    serde_json::json!({
                        "service": name,
                        "window_s": last.at_ms.saturating_sub(first.at_ms) / 1000,
                        "window": percentiles(&window),
                        "since_start": percentiles(now),
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        serde_json::json!({
            "interval_ms": INTERVAL.as_millis() as u64,
            "times": times,
            "routes": routes,
            "services": services,
        })
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn percentiles(buckets: &[(f64, u64)]) -> serde_json::Value {
    let count = buckets.last().map_or(0, |(_, n)| *n);
    let q = |q: f64| quantile(buckets, q).map(|s| round2(s * 1000.0));
    serde_json::json!({
        "count": count,
        "p50_ms": q(0.5),
        "p90_ms": q(0.9),
        "p99_ms": q(0.99),
    })
}

/// Prometheus' `histogram_quantile`: linear interpolation inside the bucket that holds
/// the rank; the highest finite bound when it falls in +Inf. None without observations.
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut prev = (0.0f64, 0u64);
    for &(le, n) in buckets {
        if n as f64 >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let inside = (n - prev.1) as f64;
            if inside == 0.0 {
                return Some(le);
            }
            return Some(prev.0 + (le - prev.0) * (rank - prev.1 as f64) / inside);
        }
        prev = (le, n);
    }
    Some(prev.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn samples_counts_and_buckets_from_the_metrics() {
        let m = Metrics::new();
        let h = m.route("r\"1", "s");
        for _ in 0..3 {
            h.observe(
                200,
                Duration::from_millis(3),
                Some(Duration::from_millis(3)),
            );
        }
        h.observe(503, Duration::from_millis(3), None);
        m.route("", "").observe(404, Duration::from_millis(1), None);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let a = Sample::parse(&m.render_traffic(), t0);
        assert_eq!(a.routes["r\"1"], [0, 3, 0, 0, 1]);
        assert_eq!(a.routes[""], [0, 0, 0, 1, 0]);
        let b = &a.services["s"];
        assert_eq!(b.last(), Some(&(f64::INFINITY, 3)));
        assert_eq!(b.iter().find(|(le, _)| *le == 0.0025), Some(&(0.0025, 0)));
        assert_eq!(b.iter().find(|(le, _)| *le == 0.005), Some(&(0.005, 3)));

        h.observe(
            200,
            Duration::from_millis(3),
            Some(Duration::from_millis(3)),
        );
        h.observe(
            200,
            Duration::from_millis(3),
            Some(Duration::from_millis(3)),
        );
        let mut ring = Ring::default();
        ring.push(a);
        ring.push(Sample::parse(&m.render_traffic(), t0 + INTERVAL * 2));
        let j = ring.to_json();
        let r = j["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == "r\"1")
            .unwrap();
        assert_eq!(r["rps"], serde_json::json!([1.0]));
        assert_eq!(r["classes"]["2xx"], serde_json::json!([1.0]));
        assert_eq!(r["totals"]["2xx"], 5);
        let s = &j["services"][0];
        assert_eq!(s["window"]["count"], 2);
        assert_eq!(s["since_start"]["count"], 5);
        let p50 = s["window"]["p50_ms"].as_f64().unwrap();
        assert!((2.5..=5.0).contains(&p50), "{p50}");
    }

    #[test]
    fn quantile_interpolates_like_prometheus() {
        let b = [(0.1, 0), (0.2, 10), (f64::INFINITY, 10)];
        assert_eq!(quantile(&b, 0.5), Some(0.15000000000000002));
        assert_eq!(quantile(&[(0.1, 0), (f64::INFINITY, 0)], 0.5), None);
        assert_eq!(quantile(&[(0.1, 1), (f64::INFINITY, 4)], 0.9), Some(0.1));
    }
}
