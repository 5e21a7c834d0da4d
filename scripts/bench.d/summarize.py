#!/usr/bin/env python3
"""Tables for scripts/bench, in Markdown.

  summarize.py [--shared] RAW.log     the tables of a run (medians over repetitions)
  summarize.py --line 'rep=1 ...'     one progress line for one measured run

Each run names its reference row (`ref=case:proxy`); a ratio is taken within one
repetition (the two runs were back to back), then the median and the min–max of the
per-repetition ratios are shown. With --shared (proxy and load on one core) no ratio
is shown: such figures measure the scheduler, not the proxy.
"""
import re
import statistics as st
import sys
from collections import defaultdict

CASES = {
    "plain": ("plain route, 2 B body", "nginx"),
    "body-1k": ("1 KiB body", "nginx"),
    "body-100k": ("100 KiB body", "nginx"),
    "supabase": ("Supabase /rest/v1/ chain", "nginx plain"),
    "routes-10k": ("10,000 routes", "own plain, run just before"),
    "cidrs-100k": ("100,000-CIDR allow-list", "own plain, run just before"),
    "reload": ("reload every 2 s", "own plain, run just before"),
    "idle-1000": ("1,000 idle connections + load", "nginx, same case"),
    "tls": ("TLS (HTTP/1.1, keep-alive)", "nginx TLS"),
}
PROXIES = ["nginx", "portcullis", "baseline", "floor"]
# Below this share of its core the proxy was not the bottleneck (the load side, or another
# process on the machine, was): its rate says little about the proxy.
SATURATED = 85


def parse(line):
    return dict(re.findall(r"(\w+)=(\S+)", line))


def metrics(r):
    """The figures of one run, as numbers (latencies in ms, CPU in µs per request, RSS in MiB)."""
    clk, ticks = float(r["clk"]), float(r["cpu_ticks"])
    reqs, wall = max(float(r["reqs"]), 1.0), max(float(r["wall"]), 1e-9)
    m = {
        "rps": float(r["rps"]),
        "p50": float(r["p50_us"]) / 1000,
        "p99": float(r["p99_us"]) / 1000,
        "p999": float(r["p999_us"]) / 1000,
        "max": float(r["max_us"]) / 1000,
        "cpu_req": ticks / clk / reqs * 1e6,
        "cpu_pct": ticks / clk / wall * 100,
        "rss": float(r["rss_kb"]) / 1024,
        "errors": int(r["errors"]),
    }
    for k in ("idle_rss_kb", "conns_rss_kb"):
        if k in r:
            m[k[:-3]] = float(r[k]) / 1024
    for k in ("reloads_tried", "reloads_done", "idle_conns"):
        if k in r and r[k].isdigit():
            m[k] = int(r[k])
    return m


def progress(line):
    r = parse(line)
    m = metrics(r)
    return (f"  rep {r['rep']} {r['case']:<11} {r['proxy']:<11} {m['rps']:>9,.0f} req/s  p50 {m['p50']:.2f}  "
            f"p99 {m['p99']:.2f}  p99.9 {m['p999']:.2f} ms  {m['cpu_req']:.1f} µs/req  CPU {m['cpu_pct']:.0f} %  "
            f"{m['rss']:.1f} MiB  errors {m['errors']}")


def med(xs):
    return st.median(xs) if xs else float("nan")


def main(args):
    shared = "--shared" in args
    files = [a for a in args if not a.startswith("--")]
    runs = defaultdict(dict)  # (case, proxy) -> rep -> metrics
    refs = {}
    notes = defaultdict(dict)
    for f in files:
        for line in open(f):
            if line.startswith("note check_ms"):
                r = parse(line)
                notes[(r["case"], r["proxy"])]["check_ms"] = int(r["ms"])
                continue
            if not line.startswith("rep="):
                continue
            r = parse(line)
            runs[(r["case"], r["proxy"])][r["rep"]] = metrics(r)
            refs[(r["case"], r["proxy"])] = tuple(r["ref"].split(":", 1))

    def ratio(key, metric):
        ref = refs[key]
        if ref == key:
            return "ref"
        if shared:
            return "—"
        rs = [m[metric] / runs[ref][rep][metric]
              for rep, m in runs[key].items()
              if ref in runs and rep in runs[ref] and runs[ref][rep][metric] > 0]
        if not rs:
            return "?"
        if len(rs) == 1:
            return f"{rs[0]:.2f}"
        return f"{med(rs):.2f} ({min(rs):.2f}–{max(rs):.2f})"

    def val(key, metric):
        return med([m[metric] for m in runs[key].values() if metric in m])

    unsaturated = []

    def cpu_cell(k):
        pct = val(k, "cpu_pct")
        if pct < SATURATED and k[0] != "reload":
            unsaturated.append(k)
            return f"{pct:.0f} †"
        return f"{pct:.0f}"

    keys = sorted(runs, key=lambda k: (list(CASES).index(k[0]) if k[0] in CASES else 99,
                                       PROXIES.index(k[1]) if k[1] in PROXIES else 99, k[1]))
    reps = max((len(v) for v in runs.values()), default=0)
    print(f"## Results ({reps} repetition{'s' if reps != 1 else ''}; medians; × = median of the per-repetition ratios to the "
          "row named in “vs”, min–max in brackets)\n")
    print("| case | proxy | vs | req/s | × | p50 ms | × | p99 ms | × | p99.9 ms | × | CPU/req µs | × | "
          "peak RSS MiB | × | CPU % | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in keys:
        case, proxy = k
        if case.endswith("/plain"):
            continue  # a reference run for the row below it
        label, vs = CASES.get(case, (case, "?"))
        errs = sum(m["errors"] for m in runs[k].values())
        print(f"| {label} | {proxy} | {vs} | {val(k, 'rps'):,.0f} | {ratio(k, 'rps')} | "
              f"{val(k, 'p50'):.2f} | {ratio(k, 'p50')} | {val(k, 'p99'):.2f} | {ratio(k, 'p99')} | "
              f"{val(k, 'p999'):.2f} | {ratio(k, 'p999')} | {val(k, 'cpu_req'):.1f} | {ratio(k, 'cpu_req')} | "
              f"{val(k, 'rss'):.1f} | {ratio(k, 'rss')} | {cpu_cell(k)} | {errs} |")

    if unsaturated:
        print(f"\n† the proxy used less than {SATURATED} % of its core: the load side (or another process on "
              "the machine) was the limit, so that row's rate says little about the proxy; run again on a quiet machine.")

    scale = [k for k in keys if k[0] in ("routes-10k", "cidrs-100k")]
    if scale:
        print("\n### Scale (against the same proxy's plain route, measured just before)\n")
        print("| case | proxy | req/s × own plain | p99 ms | peak RSS MiB | + MiB over own plain | config check ms |")
        print("|---|---|---|---|---|---|---|")
        for k in scale:
            plain = refs[k]
            delta = med([m["rss"] - runs[plain][rep]["rss"] for rep, m in runs[k].items()
                         if plain in runs and rep in runs[plain]])
            ck = notes.get(k, {}).get("check_ms")
            print(f"| {CASES[k[0]][0]} | {k[1]} | {ratio(k, 'rps')} | {val(k, 'p99'):.2f} | {val(k, 'rss'):.1f} | "
                  f"{delta:+.1f} | {ck if ck is not None else '-'} |")

    rel = [k for k in keys if k[0] == "reload"]
    if rel:
        print("\n### Reload every 2 s under load\n")
        print("| proxy | reloads done / tried | failed requests | req/s × own plain | p99 ms | p99.9 ms | max ms |")
        print("|---|---|---|---|---|---|---|")
        for k in rel:
            done = sum(m.get("reloads_done", 0) for m in runs[k].values())
            tried = sum(m.get("reloads_tried", 0) for m in runs[k].values())
            errs = sum(m["errors"] for m in runs[k].values())
            print(f"| {k[1]} | {done} / {tried} | {errs} | {ratio(k, 'rps')} | {val(k, 'p99'):.2f} | "
                  f"{val(k, 'p999'):.2f} | {val(k, 'max'):.1f} |")

    idle = [k for k in keys if k[0] == "idle-1000"]
    if idle:
        n = med([m.get("idle_conns", 0) for k in idle for m in runs[k].values()])
        print("\n### Memory (largest process; fresh process per repetition)\n")
        print(f"| proxy | RSS idle MiB | RSS with {n:,.0f} idle connections | peak RSS, connections + load | "
              "req/s with the idle connections |")
        print("|---|---|---|---|---|")
        for k in idle:
            print(f"| {k[1]} | {val(k, 'idle_rss'):.1f} | {val(k, 'conns_rss'):.1f} | {val(k, 'rss'):.1f} | "
                  f"{val(k, 'rps'):,.0f} |")
    if shared:
        print("\n**The proxy and the load generator shared a core: no ratios are reported.**")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--line":
        print(progress(sys.argv[2]))
    else:
        main(sys.argv[1:])
