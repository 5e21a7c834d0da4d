//! contains() cost for a small and a large IpSet: with interval merging and binary search, 100k entries should cost
//! about what 10 do (a few extra comparisons), not 10 000 times more.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis::ipset::IpSet;

/// SplitMix64, so the bench needs no RNG crate and is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `n` entries, 3/4 IPv4 (/16../32) and 1/4 IPv6 (/48../128 inside 2001:db8::/32).
fn entries(n: usize, rng: &mut Rng) -> Vec<String> {
    (0..n)
        .map(|i| {
            let r = rng.next();
            if i % 4 != 3 {
                let prefix = 16 + (r % 17);
                format!("{}/{prefix}", Ipv4Addr::from((r >> 32) as u32))
            } else {
                let prefix = 48 + (r % 81);
                let addr =
                    (0x2001_0db8_u128 << 96) | (u128::from(rng.next()) << 32) | u128::from(r >> 32);
                format!("{}/{prefix}", Ipv6Addr::from(addr))
            }
        })
        .collect()
}

/// Probe count; a power of two so that cycling through them is a mask, not a division.
const PROBES: usize = 1024;

/// `PROBES` probe addresses (a mix of v4, v6 in the populated block, and mapped v4).
fn probes(rng: &mut Rng) -> Vec<IpAddr> {
    (0..PROBES)
        .map(|i| {
            let r = rng.next();
            match i % 4 {
                0 | 1 => IpAddr::V4(Ipv4Addr::from(r as u32)),
                2 => IpAddr::V6(Ipv6Addr::from(
                    (0x2001_0db8_u128 << 96) | (u128::from(r) << 32),
                )),
                _ => IpAddr::V6(Ipv4Addr::from(r as u32).to_ipv6_mapped()),
            }
        })
        .collect()
}

fn bench_contains(c: &mut Criterion) {
    let mut rng = Rng(0x1b5e_7000_0000_0001);
    let probes = probes(&mut rng);
    let mut group = c.benchmark_group("ipset_contains");
    for n in [10_usize, 100_000] {
        let set = match IpSet::parse(&entries(n, &mut rng)) {
            Ok(set) => set,
            Err(errors) => panic!("bench entries failed to parse: {errors:?}"),
        };
        group.bench_with_input(BenchmarkId::from_parameter(n), &set, |b, set| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (PROBES - 1);
                set.contains(black_box(probes[i]))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_contains);
criterion_main!(benches);
