//! Request-path handling that must agree byte for byte with Kong 3.x.
//!
//! This module owns every transformation a path goes through between the client and the
//! upstream, plus the config-time checks and rewrites that depend on the same rules:
//!
//! ```text
//!   raw request path ──check_nginx_uri──▶ (400 or go on) ──normalize──▶ normalized bytes
//!                                                                             │
//!                                                           (router matches here)
//!                                                                             │
//!   upstream path ◀──upstream_path_v0── escape(normalized) ◀──────────────────┘
//!
//!   config:  legacy path ──migrate_legacy_path──▶ 3.0 path ──validate_prefix_path──▶ ok / message
//! ```
//!
//! * [`check_nginx_uri`] is the part of nginx's request-line parsing that answers 400 before
//!   Kong runs (bad escapes, `%00`, `..` above the root).
//! * [`normalize`] is `kong/tools/uri.lua: normalize(uri, true)` (kong-behaviour.md 2.3).
//! * [`escape`] is `kong/tools/uri.lua: escape`, applied to the normalized path before it is
//!   proxied.
//! * [`upstream_path_v0`] is `get_upstream_uri_v0` (+ `sanitize_uri_postfix`) from
//!   `kong/router/utils.lua` (kong-behaviour.md 2.4). `traditional_compatible` always joins this
//!   way, whatever the route's `path_handling` says.
//! * [`validate_prefix_path`] is `validate_path_with_regexes` from `kong/db/schema/typedefs.lua`
//!   minus the regex compilation (kong-behaviour.md section 1).
//! * [`migrate_legacy_path`] is `kong/db/migrations/migrate_path_280_300.lua`, run for
//!   `_format_version` 1.1 / 2.1 files.
//!
//! Nothing here knows about routes, services or HTTP types; callers pass plain strings so the
//! rules can be tested as tables.

use std::borrow::Cow;
use std::fmt;

/// nginx's `ngx_http_validate_host`, the part that answers 400 ("client sent invalid
/// host header"): no control bytes, spaces or DEL, no `/` or `\\`, no `..`. Routing on
/// such a Host while the upstream reads it another way is what it prevents.
pub fn valid_host(host: &str) -> bool {
    // One pass (`str::contains` sets up a substring searcher: ~450 instructions for
    // a short Host, on every request).
    let mut prev = 0u8;
    !host.is_empty()
        && !host.bytes().any(|b| {
            let bad =
                b <= 0x20 || b == 0x7f || b == b'/' || b == b'\\' || (b == b'.' && prev == b'.');
            prev = b;
            bad
        })
}

/// True when a normalized path holds an overlong UTF-8 form (a `C0`/`C1` lead byte,
/// `E0 80..9F`, `F0 80..8F`): never text in any client's encoding, only a way to spell
/// `.`, `/` or `\` that a lax decoder upstream would read as those (`/api/%C0%AE/mcp`
/// as `/api/./mcp`). The gateway answers 400 where nginx and Kong forward it.
pub fn has_overlong_utf8(normalized: &[u8]) -> bool {
    normalized.iter().enumerate().any(|(i, &b)| match b {
        0xC0 | 0xC1 => true,
        0xE0 => normalized
            .get(i + 1)
            .is_some_and(|n| (0x80..=0x9F).contains(n)),
        0xF0 => normalized
            .get(i + 1)
            .is_some_and(|n| (0x80..=0x8F).contains(n)),
        _ => false,
    })
}

/// A raw request path the gateway must answer with 400: a `%` not followed by two hex digits
/// (from [`normalize`]), or anything else nginx refuses (from [`check_nginx_uri`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathError;

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid percent-encoding in path")
    }
}

impl std::error::Error for PathError {}

/// Kong's `RESERVED_CHARS` (`!*'();:@&=+$,/?%#[]`): decoding one of these would change what the
/// path means (`%2F` is not a separator), so their escapes survive normalization.
const fn is_reserved(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'*'
            | b'\''
            | b'('
            | b')'
            | b';'
            | b':'
            | b'@'
            | b'&'
            | b'='
            | b'+'
            | b'$'
            | b','
            | b'/'
            | b'?'
            | b'%'
            | b'#'
            | b'['
            | b']'
    )
}

/// Bytes `escape` passes through untouched; everything else becomes `%XX`.
/// `%` is kept because the only `%` left after normalization starts a reserved escape.
const KEEP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'#'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'/'
                    | b':'
                    | b';'
                    | b'='
                    | b'?'
                    | b'@'
                    | b'['
                    | b']'
                    | b'%'
            );
        i += 1;
    }
    t
};

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

const fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The value of a well-formed `%XX` at the start of `s`.
fn escape_at(s: &[u8]) -> Option<u8> {
    match s {
        [b'%', hi, lo, ..] => Some((hex_val(*hi)? << 4) | hex_val(*lo)?),
        _ => None,
    }
}

/// How a malformed `%` is treated. Requests never reach Kong with one (nginx answers 400), but
/// config-time callers must mimic Kong's regex-based decoder, which simply leaves it in place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Malformed {
    Reject,
    Keep,
}

/// Kong's normalisation (kong-behaviour.md 2.3) of a raw request path WITHOUT the query string.
///
/// Decodes `%XX` (hex any case) for every byte except the reserved set ``!*'();:@&=+$,/?%#[]``
/// (those escapes are kept, uppercased), then removes dot segments (RFC 3986 5.2.4, clamping at
/// the root) and merges runs of `/`. Decoding happens first, so `%2E%2E` is a dot segment.
///
/// The result may contain arbitrary bytes (decoded UTF-8 or even invalid UTF-8), hence `Vec<u8>`.
/// A malformed escape (`%` not followed by two hex digits) is an error.
pub fn normalize(raw: &str) -> Result<Vec<u8>, PathError> {
    normalize_bytes(raw.as_bytes(), Malformed::Reject)
}

fn normalize_bytes(raw: &[u8], malformed: Malformed) -> Result<Vec<u8>, PathError> {
    // Decoding only shrinks and dot removal works in place: this is the one allocation.
    let mut buf = Vec::with_capacity(raw.len());
    percent_decode_into(raw, &mut buf, malformed)?;
    remove_dot_segments(&mut buf);
    Ok(buf)
}

fn percent_decode_into(
    raw: &[u8],
    out: &mut Vec<u8>,
    malformed: Malformed,
) -> Result<(), PathError> {
    let mut i = 0;
    while i < raw.len() {
        let Some(pct) = raw[i..].iter().position(|&b| b == b'%') else {
            out.extend_from_slice(&raw[i..]);
            break;
        };
        out.extend_from_slice(&raw[i..i + pct]);
        i += pct;
        match escape_at(&raw[i..]) {
            Some(v) if is_reserved(v) => {
                out.extend_from_slice(&[
                    b'%',
                    raw[i + 1].to_ascii_uppercase(),
                    raw[i + 2].to_ascii_uppercase(),
                ]);
                i += 3;
            }
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None if malformed == Malformed::Keep => {
                // Kong's gsub resumes scanning right after the lone `%`.
                out.push(b'%');
                i += 1;
            }
            None => return Err(PathError),
        }
    }
    Ok(())
}

/// One step of Kong's dot-segment loop, decided on the unread rest of the path.
enum Step {
    /// Drop this many input bytes.
    Skip(usize),
    /// `/../` inside the path: drop the last output segment, then drop three bytes.
    PopSkip(usize),
    /// A whole-rest `/.` or `/..`: the rest becomes `/`, optionally after popping a segment.
    Root { pop: bool },
    /// Copy a segment (`/name`, or a leading relative `name`) of this length to the output.
    Segment(usize),
}

/// Kong's variant of RFC 3986 5.2.4 with slash merging, done in place.
///
/// The output is always a prefix-compacted copy of what was read (write index <= read index), so
/// no second buffer is needed. Every output segment has its only `/` at its first byte, which lets
/// "pop a segment" be "truncate at the last `/`" instead of keeping a stack of segment starts.
fn remove_dot_segments(buf: &mut Vec<u8>) {
    if !buf.contains(&b'.') && !buf.windows(2).any(|w| w == b"//") {
        return;
    }
    let len = buf.len();
    let (mut r, mut w) = (0, 0);
    while r < len {
        // Arm order matters: it is the order of Kong's if/elseif chain.
        let step = match &buf[r..] {
            b"/." => Step::Root { pop: false },
            b"/.." => Step::Root { pop: true },
            b"." | b".." => Step::Skip(len - r),
            [b'.', b'.', b'/', ..] => Step::Skip(3),
            [b'.', b'/', ..] => Step::Skip(2),
            [b'/', b'.', b'/', ..] => Step::Skip(2),
            [b'/', b'.', b'.', b'/', ..] => Step::PopSkip(3),
            [b'/', b'/', ..] => Step::Skip(1),
            rest => Step::Segment(
                rest[1..]
                    .iter()
                    .position(|&b| b == b'/')
                    .map_or(rest.len(), |p| p + 1),
            ),
        };
        match step {
            Step::Skip(n) => r += n,
            Step::PopSkip(n) => {
                w = pop_segment(buf, w);
                r += n;
            }
            Step::Root { pop } => {
                if pop {
                    w = pop_segment(buf, w);
                }
                buf[w] = b'/';
                w += 1;
                r = len;
            }
            Step::Segment(n) => {
                buf.copy_within(r..r + n, w);
                w += n;
                r += n;
            }
        }
    }
    buf.truncate(w);
}

fn pop_segment(buf: &[u8], w: usize) -> usize {
    buf[..w].iter().rposition(|&b| b == b'/').unwrap_or(0)
}

/// The 400s nginx's URI parser (`ngx_http_parse_complex_uri`, `merge_slashes on`) answers before
/// Kong sees the request; run it on the raw path (no query) before [`normalize`].
///
/// Rejected: a malformed `%XX`, an escaped NUL (`%00`), and any `..` segment that would climb
/// above the root. nginx judges the climb on its own fully decoded view, where `%2F` and `%2E`
/// are `/` and `.`, so `/a%2F..%2F..` is rejected although Kong's [`normalize`] would keep the
/// `%2F`. Kong itself never sees these paths, which is why [`normalize`] alone clamps at the root.
pub fn check_nginx_uri(raw: &str) -> Result<(), PathError> {
    #[derive(Clone, Copy)]
    enum St {
        Usual,
        Slash,
        Dot,
        DotDot,
    }
    // nginx rewinds its output buffer on `/..` and fails when the rewind passes the start. With
    // slashes merged, that happens exactly when the `/` of `/..` is the only `/` written so far,
    // so counting written slashes replaces the buffer.
    fn climb(slashes: &mut usize) -> Result<(), PathError> {
        if *slashes <= 1 {
            return Err(PathError);
        }
        *slashes -= 1;
        Ok(())
    }
    let bytes = raw.as_bytes();
    let (mut st, mut slashes, mut i) = (St::Usual, 0usize, 0);
    while i < bytes.len() {
        let mut ch = bytes[i];
        if ch == b'%' {
            ch = escape_at(&bytes[i..]).ok_or(PathError)?;
            i += 3;
            match ch {
                0 => return Err(PathError),
                // Decoded `%`, `#` and `?` are plain data to nginx, never syntax.
                b'%' | b'#' | b'?' => {
                    st = St::Usual;
                    continue;
                }
                _ => {}
            }
        } else {
            i += 1;
            if ch == b'?' || ch == b'#' {
                break;
            }
        }
        st = match (st, ch) {
            (St::Usual, b'/') => {
                slashes += 1;
                St::Slash
            }
            (St::Slash, b'/') => St::Slash,
            (St::Slash, b'.') => St::Dot,
            (St::Dot, b'/') => St::Slash,
            (St::Dot, b'.') => St::DotDot,
            (St::DotDot, b'/') => {
                climb(&mut slashes)?;
                St::Slash
            }
            _ => St::Usual,
        };
    }
    if let St::DotDot = st {
        climb(&mut slashes)?;
    }
    Ok(())
}

/// Re-escapes a normalized path for sending upstream: every byte outside
/// `A-Za-z0-9 - . _ ~ ! # $ & ' ( ) * + , / : ; = ? @ [ ] %` becomes `%XX` (uppercase hex).
///
/// Borrows when nothing needs escaping, which is the common case.
pub fn escape(normalized: &[u8]) -> Cow<'_, str> {
    let extra = normalized
        .iter()
        .filter(|&&b| !KEEP[usize::from(b)])
        .count();
    if extra == 0 {
        // All kept bytes are ASCII, so this cannot fail; the fallthrough only avoids a panic path.
        if let Ok(s) = std::str::from_utf8(normalized) {
            return Cow::Borrowed(s);
        }
    }
    let mut out = String::with_capacity(normalized.len() + 2 * extra);
    for &b in normalized {
        if KEEP[usize::from(b)] {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(b & 0x0f)]));
        }
    }
    Cow::Owned(out)
}

/// Length of `escape(normalized)` without building it.
///
/// The router matches on normalized bytes but [`upstream_path_v0`] works on the escaped path;
/// escaping is per byte, so `escaped_len(&normalized[..n])` converts a match length `n` into the
/// `strip` argument.
pub fn escaped_len(normalized: &[u8]) -> usize {
    normalized
        .iter()
        .map(|&b| if KEEP[usize::from(b)] { 1 } else { 3 })
        .sum()
}

/// `sanitize_uri_postfix`: the prefix may end right before a dot segment that normalization kept
/// because it was glued to the prefix (`/route./req` with prefix `/route`).
fn sanitize_postfix(p: &str) -> &str {
    if p == "." || p == ".." {
        ""
    } else if let Some(rest) = p.strip_prefix("./") {
        rest
    } else if let Some(rest) = p.strip_prefix("../") {
        rest
    } else {
        p
    }
}

/// Kong's v0 upstream path join (kong-behaviour.md 2.4, `get_upstream_uri_v0`).
///
/// * `service_path`: the service's path (`None` = `/`).
/// * `request_path`: the normalized request path, already [`escape`]d for upstream.
/// * `strip`: `Some(prefix_len)` when the route has `strip_path=true` and its matched path text
///   (prefix path, or the full text matched by a regex path) is `request_path[..prefix_len]`;
///   `None` when `strip_path=false` or the route matched without a path (host-only route).
///
/// Kong does run the strip branch for a host-only route with `strip_path=true` (prefix `/`), but
/// on a normalized path that yields exactly the no-strip result, so `None` covers both.
/// A `prefix_len` past the end (a caller bug) strips everything rather than panicking.
pub fn upstream_path_v0(
    service_path: Option<&str>,
    request_path: &str,
    strip: Option<usize>,
) -> String {
    let base = service_path.unwrap_or("/");
    let req = request_path;
    let req_tail = req.get(1..).unwrap_or("");
    let mut out = String::with_capacity(base.len() + req.len() + 1);

    if let Some(base_trimmed) = base.strip_suffix('/') {
        match strip {
            Some(n) => {
                let post = sanitize_postfix(req.get(n..).unwrap_or(""));
                if post.is_empty() {
                    if base == "/" {
                        out.push('/');
                    } else if req.ends_with('/') {
                        out.push_str(base);
                    } else {
                        out.push_str(base_trimmed);
                    }
                } else if post.starts_with('/') {
                    out.push_str(base_trimmed);
                    out.push_str(post);
                } else {
                    out.push_str(base);
                    out.push_str(post);
                }
            }
            None => {
                out.push_str(base);
                out.push_str(req_tail);
            }
        }
    } else {
        match strip {
            Some(n) => {
                let post = sanitize_postfix(req.get(n..).unwrap_or(""));
                out.push_str(base);
                if post.is_empty() {
                    if req.len() > 1 && req.ends_with('/') {
                        out.push('/');
                    }
                } else {
                    if !post.starts_with('/') {
                        out.push('/');
                    }
                    out.push_str(post);
                }
            }
            None => {
                out.push_str(base);
                if req != "/" {
                    out.push_str(req);
                }
            }
        }
    }
    out
}

const MSG_START: &str = "should start with: / (fixed path) or ~/ (regex path)";
const MSG_EMPTY_SEGMENT: &str = "must not have empty segments";

/// `validate_path`'s character check (`^/[%w.\-_~/%:@!$&'()*+,;=]*$`). For route paths its
/// failure is ignored, but it also decides whether the percent-encoding check runs at all.
fn is_rfc3986_path(p: &str) -> bool {
    p.starts_with('/')
        && p.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'.' | b'-'
                        | b'_'
                        | b'~'
                        | b'/'
                        | b'%'
                        | b':'
                        | b'@'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        })
}

/// Kong's "invalid url-encoded value: '…'" check: the first `%` that does not start a valid
/// escape, shown with up to two following bytes — taken after valid escapes were replaced by
/// `___`, which is why `%%41` reports `'%__'`.
fn check_percent_encoding(p: &str) -> Result<(), String> {
    let bytes = p.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        if escape_at(&bytes[i..]).is_some() {
            i += 3;
            continue;
        }
        let mut shown = Vec::with_capacity(3);
        shown.push(b'%');
        let mut j = i + 1;
        while shown.len() < 3 && j < bytes.len() {
            if escape_at(&bytes[j..]).is_some() {
                let take = 3 - shown.len();
                shown.extend(std::iter::repeat_n(b'_', take));
                j += 3;
            } else {
                shown.push(bytes[j]);
                j += 1;
            }
        }
        return Err(format!(
            "invalid url-encoded value: '{}'",
            String::from_utf8_lossy(&shown)
        ));
    }
    Ok(())
}

/// Config validation of a route path (kong-behaviour.md section 1 "Path validation"), in Kong's
/// validator order:
///
/// 1. no `//` anywhere: "must not have empty segments";
/// 2. starts with `/` or `~/`: "should start with: / (fixed path) or ~/ (regex path)";
/// 3. prefix paths made only of RFC 3986 path characters must have valid `%XX` escapes:
///    "invalid url-encoded value: '%zz'" (Kong skips this check for other paths);
/// 4. prefix paths must already be normalized:
///    "non-normalized path, consider use '<normalized>' instead" (`/fo%6F`, `/a/../b` rejected,
///    `/a%2Fb` accepted).
///
/// A `~/` regex path passes after steps 1–2: compiling it is the caller's job
/// (`invalid regex: '…' (PCRE returned: …)`).
pub fn validate_prefix_path(p: &str) -> Result<(), String> {
    if p.contains("//") {
        return Err(MSG_EMPTY_SEGMENT.to_owned());
    }
    if !(p.starts_with('/') || p.starts_with("~/")) {
        return Err(MSG_START.to_owned());
    }
    if p.starts_with('~') {
        return Ok(());
    }
    if is_rfc3986_path(p) {
        check_percent_encoding(p)?;
    }
    // Kong's normalizer leaves a malformed `%` alone, so a path that skipped the percent check
    // (say `/a b%zz`) is compared as is instead of being rejected here.
    let normalized = normalize_bytes(p.as_bytes(), Malformed::Keep).unwrap_or_default();
    if normalized == p.as_bytes() {
        Ok(())
    } else {
        Err(format!(
            "non-normalized path, consider use '{}' instead",
            String::from_utf8_lossy(&normalized)
        ))
    }
}

/// Bytes that make a legacy path "plain" (`[a-zA-Z0-9.\-_~/%]`).
fn is_plain_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b'/' | b'%')
}

/// Kong's `is_not_regex`: an anchored PCRE `[…]*$`. PCRE's `$` also matches before a final
/// newline, so one trailing `\n` does not make a path a regex.
fn is_legacy_plain_path(p: &str) -> bool {
    p.strip_suffix('\n')
        .unwrap_or(p)
        .bytes()
        .all(is_plain_path_byte)
}

/// Characters escaped with `\` when a percent-escape decodes to them inside a legacy regex path;
/// the other metacharacters are reserved and stay percent-encoded.
fn is_regex_meta(b: u8) -> bool {
    matches!(b, b'.' | b'^' | b'-' | b'{' | b'}' | b'\\' | b'|')
}

/// 3.0 stopped percent-decoding route paths, so the migration decodes a legacy regex one last
/// time: reserved escapes stay (uppercased), metacharacters come out backslash-escaped so the
/// regex still matches them literally, malformed escapes are left alone.
fn decode_legacy_regex(p: &str) -> Vec<u8> {
    let bytes = p.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match escape_at(&bytes[i..]) {
            Some(v) if is_reserved(v) => {
                out.extend_from_slice(&[
                    b'%',
                    bytes[i + 1].to_ascii_uppercase(),
                    bytes[i + 2].to_ascii_uppercase(),
                ]);
                i += 3;
            }
            Some(v) => {
                if is_regex_meta(v) {
                    out.push(b'\\');
                }
                out.push(v);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// The `_format_version` 1.1 / 2.1 migration of one route path (kong-behaviour.md section 1,
/// `migrate_path_280_300.lua`).
///
/// A path made only of `[a-zA-Z0-9.\-_~/%]` is a plain path and comes back normalized (malformed
/// escapes are kept, as Kong does). Anything else was a regex under 2.x and gets the `~` prefix,
/// with escapes of non-reserved characters decoded (regex metacharacters among them
/// backslash-escaped). If the result would not be UTF-8 (e.g. `%FF`), the path is returned
/// unchanged (with `~` for a regex) since Rust strings, unlike Lua's, cannot hold it.
pub fn migrate_legacy_path(p: &str) -> String {
    if is_legacy_plain_path(p) {
        return normalize_bytes(p.as_bytes(), Malformed::Keep)
            .ok()
            .and_then(|n| String::from_utf8(n).ok())
            .unwrap_or_else(|| p.to_owned());
    }
    let decoded = match String::from_utf8(decode_legacy_regex(p)) {
        Ok(s) => s,
        Err(_) => p.to_owned(),
    };
    let mut out = String::with_capacity(decoded.len() + 1);
    out.push('~');
    out.push_str(&decoded);
    out
}

/// The strip_path join for one matched request: the upstream path, and the length of
/// the stripped prefix in the escaped path (for `X-Forwarded-Prefix`). The router
/// measures its match on normalized bytes; the join works on the escaped path, where
/// the same prefix may be longer.
pub fn strip_and_join(
    service_path: Option<&str>,
    normalized: &[u8],
    escaped: &str,
    matched_len: Option<usize>,
    strip_path: bool,
) -> (String, Option<usize>) {
    let escaped_match = matched_len.map(|n| escaped_len(&normalized[..n.min(normalized.len())]));
    let strip = if strip_path { escaped_match } else { None };
    (
        upstream_path_v0(service_path, escaped, strip),
        escaped_match,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Vec<u8> {
        normalize(raw).unwrap_or_else(|e| panic!("normalize({raw:?}): {e}"))
    }

    #[test]
    fn overlong_utf8_is_spotted_after_normalizing() {
        for bad in [
            "/api/%C0%AE/mcp",
            "/%c0%af",
            "/%c1%9c",
            "/x/%e0%80%ae",
            "/%f0%80%80%ae",
        ] {
            assert!(has_overlong_utf8(&norm(bad)), "{bad}");
        }
        for good in [
            "/caf%C3%A9",
            "/%E0%A4%85",
            "/%F0%9F%98%80",
            "/plain",
            "/%e9",
        ] {
            assert!(!has_overlong_utf8(&norm(good)), "{good}");
        }
    }

    #[test]
    fn host_validation_follows_nginx() {
        for good in [
            "localhost",
            "a.b:8000",
            "[::1]:80",
            "LOCALHOST",
            "localhost.",
        ] {
            assert!(valid_host(good), "{good}");
        }
        for bad in [
            "", "a b", "a/b", "a\\b", "a..b", "..a", "a..", "a\tb", "a\u{7f}",
        ] {
            assert!(!valid_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn normalize_spec_examples() {
        let cases: &[(&str, &[u8])] = &[
            // kong-behaviour.md 2.3
            ("/foo/a/../bar", b"/foo/bar"),
            ("/foo//bar", b"/foo/bar"),
            ("/h%65llo", b"/hello"),
            ("/../../etc", b"/etc"),
            ("/a%2Fb/..", b"/"),
            ("/route%2E%2E/req", b"/route../req"),
            ("/a%2fb", b"/a%2Fb"),
            ("/%2e", b"/"),
            ("/a%20b", b"/a b"),
            ("/%41", b"/A"),
            ("/endel%C3%B8st", "/endeløst".as_bytes()),
            ("/route/../../etc", b"/etc"),
            // spec/01-unit/18-tools_uri_spec.lua
            ("", b""),
            ("/", b"/"),
            ("/a", b"/a"),
            ("/a/", b"/a/"),
            ("/a/b/c", b"/a/b/c"),
            ("/a/b/c/", b"/a/b/c/"),
            ("/a%2Fb%2Fc/", b"/a%2Fb%2Fc/"),
            (
                "/%20%21%23%24%25%26%27%28%29%2A%2B%2C%2F%3A%3B%3D%3F%40%5B%5D",
                b"/ %21%23%24%25%26%27%28%29%2A%2B%2C%2F%3A%3B%3D%3F%40%5B%5D",
            ),
            ("/a%2fb%2fc/", b"/a%2Fb%2Fc/"),
            ("/f%6f%6f", b"/foo"),
            ("/%6B%6f%6e%67", b"/kong"),
            ("/%2E", b"/"),
            ("/./", b"/"),
            ("/.", b"/"),
            ("/..", b"/"),
            ("/../", b"/"),
            ("/./.././../", b"/"),
            ("/a/b/c/./../../g", b"/a/g"),
            ("mid/content=5/../6", b"mid/6"),
            ("//", b"/"),
            ("/////", b"/"),
            ("/a//b//", b"/a/b/"),
            (
                "/%C3%A4/a/%2e./a%2E//a/%2e/./a/../a/%2e%2E/%5f%99%af%2f%2F",
                b"/\xC3\xA4/a./a/_\x99\xaf%2F%2F",
            ),
            // more dot-segment corners
            ("/a/b/..", b"/a/"),
            ("/a/b/.", b"/a/b/"),
            ("/a/.//b", b"/a/b"),
            ("/.a/..b/...", b"/.a/..b/..."),
            ("/a/%2e%2E/b", b"/b"),
            ("/a/.%2e", b"/"),
            ("/%00%ff", b"/\x00\xff"),
            ("/%7e%2D", b"/~-"),
        ];
        for &(raw, want) in cases {
            assert_eq!(norm(raw), want, "normalize({raw:?})");
        }
    }

    #[test]
    fn normalize_rejects_malformed_escapes() {
        for raw in ["/%", "/a%2", "/a%zz", "/%g0", "/%%41", "/a%2/b"] {
            assert_eq!(normalize(raw), Err(PathError), "normalize({raw:?})");
        }
        assert_eq!(PathError.to_string(), "invalid percent-encoding in path");
    }

    #[test]
    fn escape_table() {
        let keep = "/!#$%&'()*+,/:;=?@[]ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~";
        assert!(matches!(escape(keep.as_bytes()), Cow::Borrowed(s) if s == keep));
        let cases: &[(&[u8], &str)] = &[
            (b"/a b/c d", "/a%20b/c%20d"),
            ("/a😀".as_bytes(), "/a%F0%9F%98%80"),
            ("/endeløst".as_bytes(), "/endel%C3%B8st"),
            (b"/\"<>\\^`{|}", "/%22%3C%3E%5C%5E%60%7B%7C%7D"),
            (b"/\x00\x1f\x7f\xff", "/%00%1F%7F%FF"),
        ];
        for &(input, want) in cases {
            let got = escape(input);
            assert!(
                matches!(got, Cow::Owned(_)),
                "{input:?} should need escaping"
            );
            assert_eq!(got, want);
            assert_eq!(escaped_len(input), want.len());
        }
        assert_eq!(escaped_len(keep.as_bytes()), keep.len());
        // reserved escapes kept by normalize pass through as is
        assert!(matches!(escape(b"/a%2Fb"), Cow::Borrowed("/a%2Fb")));
    }

    #[test]
    fn normalize_then_escape_round_trip() {
        let n = norm("/%C3%A4/a%20b/%2f/x%3f");
        assert_eq!(escape(&n), "/%C3%A4/a%20b/%2F/x%3F");
    }

    /// How a route of the 2.4 table matched.
    #[derive(Clone, Copy, Debug)]
    enum Route {
        Prefix(&'static str),
        Regex(&'static str),
        HostOnly,
    }

    /// Runs one request the way the gateway does: normalize, match, escape, join.
    fn proxy_path(service: Option<&str>, route: Route, strip: bool, raw: &str) -> String {
        let normalized = norm(raw);
        let matched_len = match route {
            Route::Prefix(p) => {
                assert!(
                    normalized.starts_with(p.as_bytes()),
                    "{route:?} must match {raw:?}"
                );
                Some(p.len())
            }
            Route::Regex(re) => {
                let re =
                    regex::bytes::Regex::new(&format!("^{re}")).unwrap_or_else(|e| panic!("{e}"));
                let m = re
                    .find(&normalized)
                    .unwrap_or_else(|| panic!("{route:?} must match {raw:?}"));
                Some(m.end())
            }
            Route::HostOnly => None,
        };
        let escaped = escape(&normalized);
        let strip = matched_len
            .filter(|_| strip)
            .map(|n| escaped_len(&normalized[..n]));
        upstream_path_v0(service, &escaped, strip)
    }

    /// (service path, route, strip_path values, raw request path, upstream path)
    type JoinRow = (
        Option<&'static str>,
        Route,
        &'static [bool],
        &'static str,
        &'static str,
    );

    #[test]
    fn strip_path_v0_table() {
        use Route::*;
        // (service path, route, strip_path, raw request path, upstream path); kong-behaviour.md 2.4
        let rows: &[JoinRow] = &[
            (Some("/"), Prefix("/route"), &[true], "/route", "/"),
            (Some("/"), Prefix("/route"), &[true], "/route/", "/"),
            (Some("/"), Prefix("/route"), &[true], "/routereq", "/req"),
            (Some("/"), Prefix("/route/"), &[true], "/route/req", "/req"),
            (
                Some("/srv"),
                Prefix("/rou"),
                &[false],
                "/roureq",
                "/srv/roureq",
            ),
            (Some("/srv"), Prefix("/rou"), &[true], "/roureq", "/srv/req"),
            (Some("/srv/"), Prefix("/rou"), &[true], "/rou", "/srv"),
            (Some("/srv/"), Prefix("/rou"), &[false], "/rou", "/srv/rou"),
            (
                Some("/service"),
                Prefix("/"),
                &[true, false],
                "/",
                "/service",
            ),
            (
                Some("/service"),
                Prefix("/"),
                &[true, false],
                "/route/",
                "/service/route/",
            ),
            (
                Some("/service"),
                Prefix("/route"),
                &[true],
                "/route/",
                "/service/",
            ),
            (
                Some("/service"),
                Prefix("/route/"),
                &[true],
                "/route/",
                "/service/",
            ),
            (
                Some("/service/"),
                Prefix("/route"),
                &[true],
                "/route",
                "/service",
            ),
            (
                Some("/service/"),
                Prefix("/"),
                &[true, false],
                "/",
                "/service/",
            ),
            (
                Some("/service"),
                Prefix("/route"),
                &[true],
                "/route./req",
                "/service/req",
            ),
            (
                Some("/service"),
                Prefix("/route"),
                &[true],
                "/route%2E/req",
                "/service/req",
            ),
            (
                Some("/service"),
                Prefix("/route"),
                &[true],
                "/route../req",
                "/service/req",
            ),
            (
                Some("/service"),
                Prefix("/route"),
                &[false],
                "/route%2e%2E/req",
                "/service/route../req",
            ),
            (
                Some("/service"),
                HostOnly,
                &[true, false],
                "/route",
                "/service/route",
            ),
            // The same rows through a regex route: the prefix is the text the regex matched.
            (Some("/"), Regex("/[0]?route"), &[true], "/route", "/"),
            (Some("/"), Regex("/[0]?route"), &[true], "/route/", "/"),
            (Some("/"), Regex("/[0]?route"), &[true], "/routereq", "/req"),
            (
                Some("/"),
                Regex("/[0]?route"),
                &[true],
                "/0route/req",
                "/req",
            ),
            (
                Some("/service"),
                Regex("/[0]?route"),
                &[true],
                "/route/",
                "/service/",
            ),
            (
                Some("/service/"),
                Regex("/[0]?route"),
                &[true],
                "/route",
                "/service",
            ),
            (
                Some("/service"),
                Regex("/[0]?route"),
                &[true],
                "/route./req",
                "/service/req",
            ),
            (
                Some("/service"),
                Regex("/[0]?route"),
                &[true],
                "/route%2E/req",
                "/service/req",
            ),
            (
                Some("/service"),
                Regex("/[0]?route"),
                &[true],
                "/route../req",
                "/service/req",
            ),
            (
                Some("/service"),
                Regex("/[0]?route"),
                &[false],
                "/route%2e%2E/req",
                "/service/route../req",
            ),
            // no service path means "/"
            (None, Prefix("/route"), &[true], "/route/x", "/x"),
            (None, Prefix("/route"), &[false], "/route/x", "/route/x"),
            (None, HostOnly, &[true, false], "/", "/"),
            // escaping happens before the join; the strip length follows the escaped bytes
            (Some("/s"), Prefix("/r"), &[false], "/r/a%20b", "/s/r/a%20b"),
            (
                Some("/s"),
                Regex("/\u{e4}"),
                &[true],
                "/%C3%A4/x%7B",
                "/s/x%7B",
            ),
            (Some("/s/"), Prefix("/r"), &[true], "/r/%2F", "/s/%2F"),
            // `..` climbing above a route never reaches it: the normalized path is matched
            (
                Some("/s"),
                HostOnly,
                &[true, false],
                "/route/../../etc",
                "/s/etc",
            ),
        ];
        for &(service, route, strips, raw, want) in rows {
            for &strip in strips {
                assert_eq!(
                    proxy_path(service, route, strip, raw),
                    want,
                    "service={service:?} route={route:?} strip={strip} request={raw:?}"
                );
            }
        }
    }

    #[test]
    fn dot_dot_cannot_escape_a_route() {
        let n = norm("/route/../../etc");
        assert_eq!(n, b"/etc");
        assert!(!n.starts_with(b"/route"));
        // ...and in front of Kong, nginx does not even let the request through.
        assert_eq!(check_nginx_uri("/route/../../etc"), Err(PathError));
    }

    #[test]
    fn nginx_uri_check() {
        let ok = [
            "/",
            "",
            "/a/../b",
            "/a/..",
            "/.",
            "/./",
            "/...",
            "/..a/..",
            "/a..",
            "/a%2e%2e",
            "/a/%2e%2e",
            "/%25/..",
            "/a//..",
            "/route%2E%2E/req",
            "/a%2Fb",
            "/h%65llo",
            "/%C3%B8",
        ];
        for p in ok {
            assert_eq!(check_nginx_uri(p), Ok(()), "{p:?}");
        }
        let bad = [
            "/..",
            "/../",
            "/../../etc",
            "/route/../../etc",
            "/./..",
            "//..",
            "/a//..//..",
            "/%2e%2e/x",
            "/%2E.",
            "/..%2F",
            "/a%2F..%2F..%2Fx",
            "/%3F/../..",
            "/a%00",
            "/a%zz",
            "/a%",
            "/a%2",
            "/%g0",
        ];
        for p in bad {
            assert_eq!(check_nginx_uri(p), Err(PathError), "{p:?}");
        }
    }

    #[test]
    fn upstream_join_direct() {
        // request_path is already normalized + escaped here; strip lengths are raw numbers
        let cases: &[(Option<&str>, &str, Option<usize>, &str)] = &[
            (Some("/b/"), "/p/x", Some(2), "/b/x"),
            (Some("/b/"), "/p/", Some(2), "/b/"),
            (Some("/b/"), "/p", Some(2), "/b"),
            (Some("/b/"), "/px", Some(2), "/b/x"),
            (Some("/b/"), "/p/x", None, "/b/p/x"),
            (Some("/b"), "/p/x", Some(2), "/b/x"),
            (Some("/b"), "/p", Some(2), "/b"),
            (Some("/b"), "/p/", Some(2), "/b/"),
            (Some("/b"), "/px", Some(2), "/b/x"),
            (Some("/b"), "/p.", Some(2), "/b"),
            (Some("/b"), "/p..", Some(2), "/b"),
            (Some("/b"), "/p../", Some(2), "/b/"),
            (Some("/b/"), "/p.", Some(2), "/b"),
            (Some("/b"), "/", None, "/b"),
            (Some("/"), "/", Some(1), "/"),
            (Some("/"), "/", None, "/"),
            // out-of-range prefix length strips everything instead of panicking
            (Some("/b"), "/p", Some(9), "/b"),
        ];
        for &(service, req, strip, want) in cases {
            assert_eq!(
                upstream_path_v0(service, req, strip),
                want,
                "{service:?} {req:?} {strip:?}"
            );
        }
    }

    #[test]
    fn host_only_strip_equals_no_strip() {
        // Kong strips the prefix "/" for a host-only route with strip_path=true; None must agree.
        for base in ["/", "/s", "/s/"] {
            for req in ["/", "/a", "/a/", "/a/b", "/a./b", "/..a"] {
                assert_eq!(
                    upstream_path_v0(Some(base), req, Some(1)),
                    upstream_path_v0(Some(base), req, None),
                    "{base} {req}"
                );
            }
        }
    }

    #[test]
    fn validate_prefix_path_messages() {
        let ok = [
            "/",
            "/foo",
            "/foo/",
            "/a%2Fb",
            "/a%2F%3Fb/x",
            "/route../req",
            "/~user",
            "/a b",
            "/ø",
            "~/re",
            "~/a%zz",
        ];
        for p in ok {
            assert_eq!(validate_prefix_path(p), Ok(()), "{p:?}");
        }
        let bad: &[(&str, &str)] = &[
            (
                "foo",
                "should start with: / (fixed path) or ~/ (regex path)",
            ),
            ("", "should start with: / (fixed path) or ~/ (regex path)"),
            (
                "~foo",
                "should start with: / (fixed path) or ~/ (regex path)",
            ),
            ("//", "must not have empty segments"),
            ("/foo//bar", "must not have empty segments"),
            ("foo//bar", "must not have empty segments"),
            ("~/a//b", "must not have empty segments"),
            ("/fo%6F", "non-normalized path, consider use '/foo' instead"),
            ("/a/../b", "non-normalized path, consider use '/b' instead"),
            ("/a/./b", "non-normalized path, consider use '/a/b' instead"),
            (
                "/a%2fb",
                "non-normalized path, consider use '/a%2Fb' instead",
            ),
            ("/..", "non-normalized path, consider use '/' instead"),
            ("/a%zz", "invalid url-encoded value: '%zz'"),
            ("/a%2", "invalid url-encoded value: '%2'"),
            ("/a%", "invalid url-encoded value: '%'"),
            ("/%%41", "invalid url-encoded value: '%__'"),
        ];
        for &(p, msg) in bad {
            assert_eq!(validate_prefix_path(p), Err(msg.to_owned()), "{p:?}");
        }
        // Outside the RFC 3986 character set Kong skips the percent check; the normalization
        // check then sees the malformed escape unchanged and accepts the path.
        assert_eq!(validate_prefix_path("/a b%zz"), Ok(()));
        assert_eq!(
            validate_prefix_path("/a b%zz/%41"),
            Err("non-normalized path, consider use '/a b%zz/A' instead".to_owned())
        );
    }

    #[test]
    fn migrate_legacy_paths() {
        let cases: &[(&str, &str)] = &[
            // plain paths are normalized
            ("/prefix", "/prefix"),
            ("/", "/"),
            ("/fo%6F", "/foo"),
            ("/a/../b", "/b"),
            ("/a//b", "/a/b"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%20b", "/a b"),
            ("/endel%C3%B8st", "/endeløst"),
            ("/a%zz/%41", "/a%zz/A"),
            ("/~user-1_x.y", "/~user-1_x.y"),
            ("/%FF", "/%FF"),
            ("/prefix\n", "/prefix\n"),
            // anything else is a regex (spec 04-on-the-fly-migration_spec.lua)
            ("/regex.+", "~/regex.+"),
            ("/regex.+(", "~/regex.+("),
            ("/users/\\d+", "~/users/\\d+"),
            ("/a b", "~/a b"),
            ("/ø", "~/ø"),
            ("/$", "~/$"),
            // escapes inside regexes: non-reserved decoded, metachars backslashed, reserved kept
            (
                "/r.*/%41%2e%2D%5E%7b%7D%5c%7C",
                "~/r.*/A\\.\\-\\^\\{\\}\\\\\\|",
            ),
            ("/r.*/%2f%3f%25%28", "~/r.*/%2F%3F%25%28"),
            ("/r.*/%20x%zz", "~/r.*/ x%zz"),
            ("/r.*/%C3%B8", "~/r.*/ø"),
            ("/r.*/%FF", "~/r.*/%FF"),
        ];
        for &(input, want) in cases {
            assert_eq!(migrate_legacy_path(input), want, "migrate({input:?})");
        }
    }
}
