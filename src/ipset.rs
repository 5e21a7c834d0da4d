//! IP address sets and real-client-IP resolution.
//!
//! This module owns:
//!
//! * [`IpSet`]: the parsed form of Kong's IP/CIDR lists (`ip-restriction`'s `allow`/`deny`, kong.conf's
//!   `trusted_ips`), with the validation message Kong uses for a bad entry and an O(log n) membership test.
//! * [`real_client_ip`]: nginx's realip module (`set_real_ip_from` / `real_ip_header` / `real_ip_recursive`, i.e.
//!   `ngx_http_realip_handler` + `ngx_http_get_forwarded_addr`), which turns the TCP peer into Kong's
//!   `$remote_addr` (behaviour reference §4).
//! * [`parse_forwarded_addr`]: the address syntax nginx accepts inside those headers.
//!
//! It does no I/O and knows nothing about plugins or configuration files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderName};

/// A set of IPv4/IPv6 addresses and CIDR ranges with O(log n) membership: ranges are converted to `[start,end]` intervals
/// (u32 for v4, u128 for v6), sorted and merged at build time; lookup is a binary search. 100k entries must cost about
/// what 10 do. IPv4-mapped IPv6 addresses (::ffff:1.2.3.4) are looked up as IPv4.
///
/// Entries written in IPv4-mapped form (`::ffff:10.0.0.0/104`, `::ffff:1.2.3.4`) are stored as the IPv4 range they
/// denote, so they match both `10.x` and `::ffff:10.x` clients. A wider IPv6 range that merely overlaps the mapped
/// block (`::/0`, `::/64`) stays IPv6-only and does not match IPv4 clients, exactly as nginx's `ngx_cidr_match`
/// behaves (`::/0` means "every IPv6 client", not "everyone").
#[derive(Debug, Clone, Default)]
pub struct IpSet {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

impl IpSet {
    /// Parse entries like "10.0.0.1", "10.0.0.0/8", "::1", "fe80::/8", "::/0", "0.0.0.0/0". A CIDR with host bits set
    /// (10.0.0.1/8) is accepted and masked (as Kong/nginx do). Errors: one per bad entry, (index, message) with
    /// message exactly `"invalid ip or cidr range: '<entry>'"`. Report ALL bad entries.
    ///
    /// Indexes are 0-based. Addresses use the strict textual forms (no leading zeros in IPv4 octets, no zone ids, no
    /// surrounding whitespace, no brackets); the prefix length is decimal digits, at most 32 (v4) or 128 (v6).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<IpSet, Vec<(usize, String)>> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut errors = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let entry = entry.as_ref();
            match parse_entry(entry) {
                Some(Interval::V4(start, end)) => v4.push((start, end)),
                Some(Interval::V6(start, end)) => v6.push((start, end)),
                None => errors.push((index, format!("invalid ip or cidr range: '{entry}'"))),
            }
        }
        if errors.is_empty() {
            Ok(IpSet {
                v4: Ranges::build(v4),
                v6: Ranges::build(v6),
            })
        } else {
            Err(errors)
        }
    }

    /// Whether `ip` lies in one of the set's ranges. `::ffff:a.b.c.d` is looked up as `a.b.c.d`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.v4.contains(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.v4.contains(u32::from(v4)),
                None => self.v6.contains(u128::from(v6)),
            },
        }
    }

    /// True when the set was built from no entries (nothing is ever contained).
    pub fn is_empty(&self) -> bool {
        self.v4.starts.is_empty() && self.v6.starts.is_empty()
    }

    /// Number of disjoint intervals left after merging (IPv4 plus IPv6); for diagnostics and tests.
    pub fn interval_count(&self) -> usize {
        self.v4.starts.len() + self.v6.starts.len()
    }
}

/// One parsed entry as an inclusive interval.
enum Interval {
    V4(u32, u32),
    V6(u128, u128),
}

/// Parse one `ip` or `ip/prefix` entry into its (masked) inclusive interval.
fn parse_entry(entry: &str) -> Option<Interval> {
    let (addr, prefix) = match entry.split_once('/') {
        Some((addr, prefix)) => (addr, Some(parse_prefix(prefix)?)),
        None => (entry, None),
    };
    if let Ok(v4) = addr.parse::<Ipv4Addr>() {
        let (start, end) = cidr_bounds_u32(u32::from(v4), prefix.unwrap_or(32))?;
        return Some(Interval::V4(start, end));
    }
    let v6 = addr.parse::<Ipv6Addr>().ok()?;
    let prefix = prefix.unwrap_or(128);
    let (start, end) = cidr_bounds_u128(u128::from(v6), prefix)?;
    // Entirely inside ::ffff:0:0/96: this is an IPv4 range written in mapped form.
    if prefix >= 96 && start >> 32 == 0xffff {
        let low = |x: u128| u32::try_from(x & u128::from(u32::MAX)).ok();
        return Some(Interval::V4(low(start)?, low(end)?));
    }
    Some(Interval::V6(start, end))
}

/// A prefix length: ASCII decimal digits, at least one (leading zeros allowed, as Kong's `%d+` pattern does).
/// Values above 128 come back as 129; the caller's range check rejects them.
fn parse_prefix(text: &str) -> Option<u32> {
    if text.is_empty() {
        return None;
    }
    text.bytes().try_fold(0u32, |value, b| {
        b.is_ascii_digit()
            .then(|| (value * 10 + u32::from(b - b'0')).min(129))
    })
}

fn cidr_bounds_u32(addr: u32, prefix: u32) -> Option<(u32, u32)> {
    if prefix > 32 {
        return None;
    }
    // A shift by the full width (prefix 32) leaves no host bits.
    let host_mask = u32::MAX.checked_shr(prefix).unwrap_or(0);
    let start = addr & !host_mask;
    Some((start, start | host_mask))
}

fn cidr_bounds_u128(addr: u128, prefix: u32) -> Option<(u128, u128)> {
    if prefix > 128 {
        return None;
    }
    let host_mask = u128::MAX.checked_shr(prefix).unwrap_or(0);
    let start = addr & !host_mask;
    Some((start, start | host_mask))
}

/// Unsigned integers usable as interval bounds.
trait Bound: Copy + Ord {
    fn successor(self) -> Option<Self>;
}

impl Bound for u32 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Bound for u128 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// Sorted, disjoint, non-adjacent inclusive intervals, stored as two parallel arrays so that the binary search only
/// touches the (densely packed) start values.
#[derive(Debug, Clone, Default)]
struct Ranges<T> {
    starts: Vec<T>,
    ends: Vec<T>,
}

impl<T: Bound> Ranges<T> {
    /// Sort and merge overlapping or adjacent intervals.
    fn build(mut intervals: Vec<(T, T)>) -> Self {
        intervals.sort_unstable();
        let mut merged: Vec<(T, T)> = Vec::with_capacity(intervals.len());
        for (start, end) in intervals {
            if let Some(last) = merged.last_mut() {
                // `None` successor: the previous interval already reaches the top of the address space.
                let touches = last.1.successor().is_none_or(|next| start <= next);
                if touches {
                    last.1 = last.1.max(end);
                    continue;
                }
            }
            merged.push((start, end));
        }
        let (starts, ends) = merged.into_iter().unzip();
        Ranges { starts, ends }
    }

    fn contains(&self, x: T) -> bool {
        // Index of the first interval starting after `x`; the candidate is the one before it.
        let after = self.starts.partition_point(|&start| start <= x);
        after
            .checked_sub(1)
            .and_then(|i| self.ends.get(i))
            .is_some_and(|&end| x <= end)
    }
}

/// nginx realip semantics: if `peer` is in `trusted` and the request has the `header`, the client address is taken from
/// that header's value(s) (the value is a comma-separated list with optional spaces, for any header name, not only
/// X-Forwarded-For). recursive=false: the LAST address in the list. recursive=true: walk right to left skipping
/// addresses that are in `trusted`; the first untrusted one is the client; if all are trusted, the leftmost.
/// Untrusted peer or no header → `peer`.
///
/// Details, all as nginx (`ngx_http_realip_handler`, `ngx_http_get_forwarded_addr[_internal]`) does them:
///
/// * Header lines: for `X-Forwarded-For` every line is used, in order, as if joined with `", "`. For any other header
///   (X-Real-IP, custom names) only the FIRST line is read, since nginx stops at the first matching header there.
/// * List elements are separated by `' '` and `','` (runs of them, empty elements skipped).
/// * Unparsable element: if it is the first one examined, the result is `peer`; later in a recursive walk, the walk
///   stops there and the result is the last address that did parse (which was trusted, or the walk would have stopped
///   before it) — nginx's `NGX_DONE`.
/// * Ports ARE accepted (nginx ≥ 1.11.0, so every OpenResty that Kong 3.x ships; `ngx_parse_addr_port`): `1.2.3.4:8080`, `[2001:db8::1]:8080`, `[::1]`;
///   the port is dropped. See [`parse_forwarded_addr`] for the exact syntax.
/// * The returned address is the one parsed: an `::ffff:a.b.c.d` element is returned as that IPv6 address (it is
///   still checked against `trusted` as IPv4).
pub fn real_client_ip(
    peer: IpAddr,
    trusted: &IpSet,
    header: &HeaderName,
    recursive: bool,
    headers: &HeaderMap,
) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    // HeaderName is always lowercase.
    if header.as_str() == "x-forwarded-for" {
        let elements = headers
            .get_all(header)
            .iter()
            .rev()
            .flat_map(|line| list_elements_rev(line.as_bytes()));
        walk(peer, trusted, recursive, elements)
    } else {
        let elements = headers
            .get(header)
            .into_iter()
            .flat_map(|line| list_elements_rev(line.as_bytes()));
        walk(peer, trusted, recursive, elements)
    }
}

/// The non-empty elements of one header line, right to left.
fn list_elements_rev(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.rsplit(|&b| b == b' ' || b == b',')
        .filter(|element| !element.is_empty())
}

/// The realip walk over list elements given right to left, starting from the (trusted) peer.
fn walk<'a>(
    peer: IpAddr,
    trusted: &IpSet,
    recursive: bool,
    elements_rev: impl Iterator<Item = &'a [u8]>,
) -> IpAddr {
    let mut addr = peer;
    for element in elements_rev {
        if !trusted.contains(addr) {
            break;
        }
        match parse_forwarded_bytes(element) {
            Some(parsed) => addr = parsed,
            None => break,
        }
        if !recursive {
            break;
        }
    }
    addr
}

/// Parse one element of a real-IP header the way nginx's `ngx_parse_addr_port` does:
///
/// * `a.b.c.d`: nginx's lenient IPv4 form — exactly three dots, decimal octets ≤ 255, leading zeros allowed and read
///   as decimal (`010.0.0.1` = 10.0.0.1), an empty octet reads as 0. `255.255.255.255` is rejected (nginx uses it as
///   its parse-failure value).
/// * an IPv6 address in standard notation, embedded IPv4 allowed, no zone id (Rust's parser; nginx's own one also lets
///   through a few malformed spellings such as a single leading `:`, which are rejected here).
/// * `a.b.c.d:port`, `[v6]:port`, `[v6]` (and `[a.b.c.d]`, `[a.b.c.d]:port`), with port 1–65535 in decimal digits;
///   the port is dropped.
pub fn parse_forwarded_addr(text: &str) -> Option<IpAddr> {
    parse_forwarded_bytes(text.as_bytes())
}

fn parse_forwarded_bytes(text: &[u8]) -> Option<IpAddr> {
    if let Some(addr) = parse_plain_addr(text) {
        return Some(addr);
    }
    let (addr, port) = if let Some(rest) = text.strip_prefix(b"[") {
        let close = rest.iter().position(|&b| b == b']')?;
        let (inner, after) = rest.split_at(close);
        match after {
            [b']'] => return parse_plain_addr(inner),
            [b']', b':', port @ ..] => (inner, port),
            _ => return None,
        }
    } else {
        let colon = text.iter().position(|&b| b == b':')?;
        let (addr, port) = text.split_at(colon);
        (addr, port.get(1..)?)
    };
    parse_port(port)?;
    parse_plain_addr(addr)
}

/// IPv4 (nginx-lenient) first, then IPv6.
fn parse_plain_addr(text: &[u8]) -> Option<IpAddr> {
    if let Some(v4) = parse_v4_lenient(text) {
        return Some(IpAddr::V4(v4));
    }
    std::str::from_utf8(text)
        .ok()?
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

fn parse_v4_lenient(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut index = 0;
    let mut current: u16 = 0;
    for &b in text {
        match b {
            b'0'..=b'9' => {
                current = current * 10 + u16::from(b - b'0');
                if current > 255 {
                    return None;
                }
            }
            b'.' => {
                *octets.get_mut(index)? = u8::try_from(current).ok()?;
                index += 1;
                current = 0;
            }
            _ => return None,
        }
    }
    if index != 3 {
        return None;
    }
    octets[3] = u8::try_from(current).ok()?;
    let addr = Ipv4Addr::from(octets);
    (addr != Ipv4Addr::BROADCAST).then_some(addr)
}

/// Decimal digits (at least one, leading zeros allowed) with a value in 1..=65535.
fn parse_port(text: &[u8]) -> Option<u16> {
    if text.is_empty() {
        return None;
    }
    let mut value: u32 = 0;
    for &b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
        if value > u32::from(u16::MAX) {
            return None;
        }
    }
    u16::try_from(value).ok().filter(|&port| port != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const XFF_NAME: &str = "x-forwarded-for";

    fn set(entries: &[&str]) -> IpSet {
        match IpSet::parse(entries) {
            Ok(set) => set,
            Err(errors) => panic!("unexpected parse errors: {errors:?}"),
        }
    }

    fn ip(text: &str) -> IpAddr {
        match text.parse() {
            Ok(addr) => addr,
            Err(e) => panic!("bad test address {text}: {e}"),
        }
    }

    fn has(set: &IpSet, text: &str) -> bool {
        set.contains(ip(text))
    }

    #[test]
    fn v4_range_edges() {
        let s = set(&["10.0.0.0/8", "192.168.1.1", "172.16.0.0/12"]);
        assert!(!has(&s, "9.255.255.255"));
        assert!(has(&s, "10.0.0.0"));
        assert!(has(&s, "10.128.3.4"));
        assert!(has(&s, "10.255.255.255"));
        assert!(!has(&s, "11.0.0.0"));
        assert!(!has(&s, "192.168.1.0"));
        assert!(has(&s, "192.168.1.1"));
        assert!(!has(&s, "192.168.1.2"));
        assert!(!has(&s, "172.15.255.255"));
        assert!(has(&s, "172.16.0.0"));
        assert!(has(&s, "172.31.255.255"));
        assert!(!has(&s, "172.32.0.0"));
        assert!(!has(&s, "0.0.0.0"));
        assert!(!has(&s, "255.255.255.255"));
        // v4 entries never match real IPv6 addresses.
        assert!(!has(&s, "::a00:1"));
        assert!(!has(&s, "::1"));
    }

    #[test]
    fn v6_range_edges() {
        let s = set(&["fe80::/8", "::1", "2001:db8::/32", "2001:db9::1/128"]);
        assert!(!has(&s, "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert!(has(&s, "fe00::"));
        assert!(has(&s, "fe80::1"));
        assert!(has(&s, "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert!(!has(&s, "ff00::"));
        assert!(!has(&s, "::"));
        assert!(has(&s, "::1"));
        assert!(!has(&s, "::2"));
        assert!(!has(&s, "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert!(has(&s, "2001:db8::"));
        assert!(has(&s, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert!(!has(&s, "2001:db9::"));
        assert!(has(&s, "2001:db9::1"));
        assert!(!has(&s, "2001:db9::2"));
        assert!(!has(&s, "127.0.0.1"));
        assert!(!has(&s, "0.0.0.1"));
    }

    #[test]
    fn host_bits_are_masked() {
        let s = set(&["10.0.0.1/8", "2001:db8::1/32"]);
        assert!(has(&s, "10.0.0.0"));
        assert!(has(&s, "10.255.255.255"));
        assert!(has(&s, "2001:db8::"));
        assert!(!has(&s, "11.0.0.0"));
        assert_eq!(s.interval_count(), 2);
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let s = set(&[
            "10.0.0.0/24",
            "10.0.1.0/24",   // adjacent
            "10.0.0.128/25", // contained
            "10.0.1.200/29",
            "10.0.3.0/24", // gap at 10.0.2.0/24
            "10.0.2.255",  // bridges to 10.0.3.0
            "::/127",
            "::2/127", // adjacent to ::/127
            "::8/125",
        ]);
        // v4: [10.0.0.0, 10.0.1.255], [10.0.2.255, 10.0.3.255]; v6: [::0, ::3], [::8, ::f]
        assert_eq!(s.interval_count(), 4);
        assert!(has(&s, "10.0.1.255"));
        assert!(!has(&s, "10.0.2.0"));
        assert!(!has(&s, "10.0.2.254"));
        assert!(has(&s, "10.0.2.255"));
        assert!(has(&s, "10.0.3.255"));
        assert!(!has(&s, "10.0.4.0"));
        assert!(has(&s, "::3"));
        assert!(!has(&s, "::4"));
        assert!(!has(&s, "::7"));
        assert!(has(&s, "::8"));
        assert!(has(&s, "::f"));
        assert!(!has(&s, "::10"));

        // Duplicates and an interval ending at the very top of the space.
        let s = set(&[
            "255.255.255.255",
            "255.255.255.0/24",
            "255.255.255.255/32",
            "0.0.0.0",
        ]);
        assert_eq!(s.interval_count(), 2);
        assert!(has(&s, "255.255.255.0"));
        assert!(has(&s, "255.255.255.255"));
        assert!(has(&s, "0.0.0.0"));
        assert!(!has(&s, "0.0.0.1"));
        assert!(!has(&s, "255.255.254.255"));
    }

    #[test]
    fn everything_ranges() {
        let v4_all = set(&["0.0.0.0/0"]);
        assert!(has(&v4_all, "0.0.0.0"));
        assert!(has(&v4_all, "255.255.255.255"));
        assert!(has(&v4_all, "::ffff:1.2.3.4"));
        assert!(!has(&v4_all, "::1"));
        assert!(!has(&v4_all, "2001:db8::1"));

        let v6_all = set(&["::/0"]);
        assert!(has(&v6_all, "::"));
        assert!(has(&v6_all, "::1"));
        assert!(has(&v6_all, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert!(!has(&v6_all, "1.2.3.4"));
        // Mapped addresses are IPv4 clients; `::/0` is "all IPv6" (nginx's ngx_cidr_match agrees).
        assert!(!has(&v6_all, "::ffff:1.2.3.4"));

        let both = set(&["0.0.0.0/0", "::/0", "10.0.0.0/8", "::1"]);
        assert_eq!(both.interval_count(), 2);
        assert!(has(&both, "8.8.8.8"));
        assert!(has(&both, "2001:db8::1"));
    }

    #[test]
    fn mapped_addresses_are_looked_up_as_v4() {
        let s = set(&["192.168.0.0/16", "127.0.0.1"]);
        assert!(has(&s, "::ffff:192.168.3.4"));
        assert!(has(&s, "::ffff:127.0.0.1"));
        assert!(!has(&s, "::ffff:127.0.0.2"));
        assert!(!has(&s, "::ffff:10.0.0.1"));
        // IPv4-compatible (deprecated ::a.b.c.d) is not mapped.
        assert!(!has(&s, "::127.0.0.1"));

        // Entries written in mapped form denote the IPv4 range.
        let s = set(&["::ffff:10.0.0.0/104", "::ffff:1.2.3.4"]);
        assert_eq!(s.interval_count(), 2);
        assert!(has(&s, "10.1.2.3"));
        assert!(has(&s, "::ffff:10.1.2.3"));
        assert!(has(&s, "1.2.3.4"));
        assert!(!has(&s, "1.2.3.5"));
        assert!(!has(&s, "11.0.0.0"));
        assert!(!has(&s, "::a01:203"));
    }

    #[test]
    fn bad_entries_are_all_reported() {
        let entries = [
            "10.0.0.1",
            "hello",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "/8",
            "1.2.3",
            "01.2.3.4",
            " 10.0.0.1",
            "10.0.0.0/8/8",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "fe80::1%eth0",
            "[::1]",
            "",
            "::1",
            "::1/1x",
        ];
        let errors = match IpSet::parse(&entries) {
            Ok(s) => panic!("expected errors, got {s:?}"),
            Err(errors) => errors,
        };
        let expected: Vec<(usize, String)> = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 0 && *i != 15)
            .map(|(i, e)| (i, format!("invalid ip or cidr range: '{e}'")))
            .collect();
        assert_eq!(errors, expected);
        assert_eq!(
            errors[0],
            (1, "invalid ip or cidr range: 'hello'".to_string())
        );

        // Leading zeros in the prefix are fine (Kong matches `%d+`).
        assert!(has(&set(&["10.0.0.0/08"]), "10.9.9.9"));
        assert!(has(&set(&["10.0.0.0/0008"]), "10.9.9.9"));
        assert!(IpSet::parse(&["::/99999999999999999999999"]).is_err());
        assert!(has(&set(&["::/000128"]), "::"));
    }

    #[test]
    fn empty_set() {
        let empty: [&str; 0] = [];
        let s = set(&empty);
        assert!(s.is_empty());
        assert!(!has(&s, "0.0.0.0"));
        assert!(!has(&s, "::"));
        assert!(IpSet::default().is_empty());
        assert!(!set(&["::1"]).is_empty());
        assert!(!set(&["1.1.1.1"]).is_empty());
    }

    /// SplitMix64: a tiny deterministic PRNG for the randomized test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn u32(&mut self) -> u32 {
            (self.next() >> 32) as u32
        }
        fn u128(&mut self) -> u128 {
            (u128::from(self.next()) << 64) | u128::from(self.next())
        }
    }

    #[derive(Clone, Copy)]
    enum Net {
        V4(u32, u32),
        V6(u128, u32),
    }

    fn naive_contains(nets: &[Net], ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        nets.iter().any(|net| match (*net, ip) {
            (Net::V4(base, prefix), IpAddr::V4(a)) => {
                prefix == 0 || (u32::from(a) ^ base) >> (32 - prefix) == 0
            }
            (Net::V6(base, prefix), IpAddr::V6(a)) => {
                prefix == 0 || (u128::from(a) ^ base) >> (128 - prefix) == 0
            }
            _ => false,
        })
    }

    #[test]
    fn random_100k_cidrs_match_naive_linear_check() {
        const V6_BASE: u128 = 0x2001_0db8 << 96;
        let mut rng = Rng(0x5eed_1234_abcd_0042);
        let mut nets = Vec::with_capacity(100_000);
        let mut entries = Vec::with_capacity(100_000);
        for _ in 0..100_000 {
            if rng.below(10) < 7 {
                // Mostly /16../32 so that random probes hit the set only sometimes.
                let prefix = 16 + rng.below(17) as u32;
                let addr = rng.u32();
                entries.push(format!("{}/{prefix}", Ipv4Addr::from(addr)));
                let base = if prefix == 0 {
                    0
                } else {
                    addr & (u32::MAX << (32 - prefix))
                };
                nets.push(Net::V4(base, prefix));
            } else {
                // Inside 2001:db8::/32 so that ranges overlap and probes can hit.
                let prefix = 40 + rng.below(89) as u32;
                let addr = V6_BASE | (rng.u128() >> 32);
                entries.push(format!("{}/{prefix}", Ipv6Addr::from(addr)));
                let base = addr & (u128::MAX << (128 - prefix));
                nets.push(Net::V6(base, prefix));
            }
        }
        let s = match IpSet::parse(&entries) {
            Ok(s) => s,
            Err(errors) => panic!("{} unexpected errors, first {:?}", errors.len(), errors[0]),
        };
        assert!(s.interval_count() < 100_000, "overlaps should have merged");

        let mut probes: Vec<IpAddr> = Vec::new();
        for _ in 0..400 {
            probes.push(IpAddr::V4(Ipv4Addr::from(rng.u32())));
            probes.push(IpAddr::V6(Ipv6Addr::from(V6_BASE | (rng.u128() >> 32))));
            probes.push(IpAddr::V6(Ipv6Addr::from(rng.u128())));
        }
        // Edges of (and points inside) randomly chosen entries.
        for _ in 0..300 {
            match nets[rng.below(nets.len() as u64) as usize] {
                Net::V4(base, prefix) => {
                    let end = base | u32::MAX.checked_shr(prefix).unwrap_or(0);
                    for a in [base.wrapping_sub(1), base, end, end.wrapping_add(1)] {
                        probes.push(IpAddr::V4(Ipv4Addr::from(a)));
                        probes.push(IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped()));
                    }
                }
                Net::V6(base, prefix) => {
                    let end = base | u128::MAX.checked_shr(prefix).unwrap_or(0);
                    let inside = base + (rng.u128() % (end - base + 1));
                    for a in [base.wrapping_sub(1), base, inside, end, end.wrapping_add(1)] {
                        probes.push(IpAddr::V6(Ipv6Addr::from(a)));
                    }
                }
            }
        }
        let mut hits = 0;
        for probe in probes.iter().copied() {
            let expected = naive_contains(&nets, probe);
            assert_eq!(s.contains(probe), expected, "probe {probe}");
            hits += usize::from(expected);
        }
        // The probe mix must exercise both answers.
        assert!(
            hits > probes.len() / 10 && hits < probes.len() * 9 / 10,
            "hits {hits} of {}",
            probes.len()
        );
    }

    fn headers(name: &str, lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        let name = match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => name,
            Err(e) => panic!("bad header name {name}: {e}"),
        };
        for line in lines {
            match HeaderValue::from_str(line) {
                Ok(value) => map.append(name.clone(), value),
                Err(e) => panic!("bad header value {line}: {e}"),
            };
        }
        map
    }

    fn trusted_example() -> IpSet {
        set(&["127.0.0.1", "172.16.0.1", "192.168.0.1"])
    }

    const XFF_EXAMPLE: &str = "127.0.0.1, 10.0.0.1, 192.168.0.1, 127.0.0.1, 172.16.0.1";

    fn xff(peer: &str, trusted: &IpSet, recursive: bool, lines: &[&str]) -> IpAddr {
        real_client_ip(
            ip(peer),
            trusted,
            &HeaderName::from_static(XFF_NAME),
            recursive,
            &headers("x-forwarded-for", lines),
        )
    }

    #[test]
    fn section_4_example_recursive() {
        assert_eq!(
            xff("127.0.0.1", &trusted_example(), true, &[XFF_EXAMPLE]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn non_recursive_takes_last_address() {
        assert_eq!(
            xff("127.0.0.1", &trusted_example(), false, &[XFF_EXAMPLE]),
            ip("172.16.0.1")
        );
        assert_eq!(
            xff(
                "127.0.0.1",
                &trusted_example(),
                false,
                &["1.1.1.1, 2.2.2.2"]
            ),
            ip("2.2.2.2")
        );
        assert_eq!(
            xff("127.0.0.1", &trusted_example(), false, &["9.9.9.9"]),
            ip("9.9.9.9")
        );
    }

    #[test]
    fn all_trusted_gives_leftmost() {
        let t = trusted_example();
        assert_eq!(
            xff(
                "127.0.0.1",
                &t,
                true,
                &["172.16.0.1, 192.168.0.1,127.0.0.1"]
            ),
            ip("172.16.0.1")
        );
        assert_eq!(
            xff("127.0.0.1", &t, true, &["192.168.0.1"]),
            ip("192.168.0.1")
        );
    }

    #[test]
    fn untrusted_peer_or_missing_header_keeps_peer() {
        let t = trusted_example();
        assert_eq!(xff("10.9.9.9", &t, true, &[XFF_EXAMPLE]), ip("10.9.9.9"));
        assert_eq!(xff("10.9.9.9", &t, false, &[XFF_EXAMPLE]), ip("10.9.9.9"));
        assert_eq!(xff("127.0.0.1", &t, true, &[]), ip("127.0.0.1"));
        // No trusted_ips at all (Kong's default): the header is never honoured.
        assert_eq!(
            xff("127.0.0.1", &IpSet::default(), true, &[XFF_EXAMPLE]),
            ip("127.0.0.1")
        );
        // A different header is present but not the configured one.
        let other = headers("x-real-ip", &["5.5.5.5"]);
        assert_eq!(
            real_client_ip(
                ip("127.0.0.1"),
                &t,
                &HeaderName::from_static(XFF_NAME),
                true,
                &other
            ),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn multiple_xff_lines_are_one_list() {
        let t = trusted_example();
        let lines = [
            "127.0.0.1, 10.0.0.1",
            "192.168.0.1, 127.0.0.1",
            "172.16.0.1",
        ];
        assert_eq!(xff("127.0.0.1", &t, true, &lines), ip("10.0.0.1"));
        assert_eq!(xff("127.0.0.1", &t, false, &lines), ip("172.16.0.1"));
        assert_eq!(
            xff("127.0.0.1", &t, true, &["3.3.3.3", "127.0.0.1"]),
            ip("3.3.3.3")
        );
    }

    #[test]
    fn other_headers_use_first_line_only() {
        let t = trusted_example();
        let name = HeaderName::from_static("x-real-ip");
        let h = headers("x-real-ip", &["1.1.1.1", "2.2.2.2"]);
        assert_eq!(
            real_client_ip(ip("127.0.0.1"), &t, &name, false, &h),
            ip("1.1.1.1")
        );
        // The value is still a list, for any header.
        let h = headers("x-real-ip", &["4.4.4.4, 172.16.0.1"]);
        assert_eq!(
            real_client_ip(ip("127.0.0.1"), &t, &name, true, &h),
            ip("4.4.4.4")
        );
        assert_eq!(
            real_client_ip(ip("127.0.0.1"), &t, &name, false, &h),
            ip("172.16.0.1")
        );
        let custom = HeaderName::from_static("cf-connecting-ip");
        let h = headers("cf-connecting-ip", &["2001:db8::7"]);
        assert_eq!(
            real_client_ip(ip("127.0.0.1"), &t, &custom, false, &h),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn unparsable_elements() {
        let t = trusted_example();
        // The first element examined is garbage: keep the peer.
        assert_eq!(
            xff("127.0.0.1", &t, true, &["1.1.1.1, garbage"]),
            ip("127.0.0.1")
        );
        assert_eq!(
            xff("127.0.0.1", &t, false, &["1.1.1.1, garbage"]),
            ip("127.0.0.1")
        );
        assert_eq!(xff("127.0.0.1", &t, true, &["unknown"]), ip("127.0.0.1"));
        // Garbage further left in a recursive walk: the last address that parsed (nginx NGX_DONE).
        assert_eq!(
            xff("127.0.0.1", &t, true, &["1.1.1.1, garbage, 172.16.0.1"]),
            ip("172.16.0.1")
        );
        // Garbage left of an untrusted address is never reached.
        assert_eq!(
            xff("127.0.0.1", &t, true, &["garbage, 8.8.8.8, 172.16.0.1"]),
            ip("8.8.8.8")
        );
        // Separators only / empty elements.
        assert_eq!(xff("127.0.0.1", &t, true, &[", ,"]), ip("127.0.0.1"));
        assert_eq!(
            xff("127.0.0.1", &t, true, &["8.8.8.8,,  ,172.16.0.1,"]),
            ip("8.8.8.8")
        );
    }

    #[test]
    fn ports_and_brackets_as_nginx() {
        let t = trusted_example();
        assert_eq!(xff("127.0.0.1", &t, true, &["1.2.3.4:5678"]), ip("1.2.3.4"));
        assert_eq!(
            xff("127.0.0.1", &t, true, &["[2001:db8::1]:443"]),
            ip("2001:db8::1")
        );
        assert_eq!(
            xff("127.0.0.1", &t, true, &["[2001:db8::1]"]),
            ip("2001:db8::1")
        );
        assert_eq!(
            xff("127.0.0.1", &t, true, &["9.9.9.9, 172.16.0.1:80"]),
            ip("9.9.9.9")
        );
        assert_eq!(xff("127.0.0.1", &t, true, &["1.2.3.4:0"]), ip("127.0.0.1"));
        assert_eq!(
            xff("127.0.0.1", &t, true, &["1.2.3.4:65536"]),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn forwarded_addr_syntax() {
        let p = |s: &str| parse_forwarded_addr(s);
        assert_eq!(p("1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(p("010.000.0.1"), Some(ip("10.0.0.1")));
        assert_eq!(p("1..2.3"), Some(ip("1.0.2.3")));
        assert_eq!(p("255.255.255.255"), None);
        assert_eq!(p("255.255.255.254"), Some(ip("255.255.255.254")));
        assert_eq!(p("1.2.3.256"), None);
        assert_eq!(p("1.2.3"), None);
        assert_eq!(p("1.2.3.4.5"), None);
        assert_eq!(p("::1"), Some(ip("::1")));
        assert_eq!(p("::ffff:1.2.3.4"), Some(ip("::ffff:1.2.3.4")));
        assert_eq!(p("fe80::1%eth0"), None);
        assert_eq!(p("1.2.3.4:80"), Some(ip("1.2.3.4")));
        assert_eq!(p("1.2.3.4:00080"), Some(ip("1.2.3.4")));
        assert_eq!(p("1.2.3.4:65535"), Some(ip("1.2.3.4")));
        assert_eq!(p("1.2.3.4:"), None);
        assert_eq!(p("1.2.3.4:x"), None);
        assert_eq!(p("1.2.3.4:80:80"), None);
        assert_eq!(p("[::1]:8080"), Some(ip("::1")));
        assert_eq!(p("[::1]"), Some(ip("::1")));
        assert_eq!(p("[1.2.3.4]:80"), Some(ip("1.2.3.4")));
        assert_eq!(p("[::1]8080"), None);
        assert_eq!(p("[::1"), None);
        assert_eq!(p("[]:80"), None);
        assert_eq!(p(""), None);
        assert_eq!(p("unknown"), None);
        // A valid IPv6 address wins over an "address:port" reading.
        assert_eq!(p("fe80::1:80"), Some(ip("fe80::1:80")));
    }

    #[test]
    fn mapped_peer_and_elements() {
        let t = trusted_example();
        assert_eq!(
            xff("::ffff:127.0.0.1", &t, true, &[XFF_EXAMPLE]),
            ip("10.0.0.1")
        );
        // A mapped element is checked as IPv4 but returned as parsed.
        assert_eq!(
            xff(
                "127.0.0.1",
                &t,
                true,
                &["::ffff:7.7.7.7, ::ffff:172.16.0.1"]
            ),
            ip("::ffff:7.7.7.7")
        );
    }
}
