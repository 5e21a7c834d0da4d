//! Query strings and form bodies the way OpenResty reads and writes them
//! (`ngx.decode_args` / `ngx.req.get_uri_args`, `ngx.encode_args`), shared by
//! request-transformer and the Lua PDK so both see the same arguments.

use crate::context::form_decode;

/// One argument value: `?a=x` is `Str("x")`, `?a` (no `=`) is `Flag` (Lua `true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgValue {
    Str(Vec<u8>),
    Flag,
}

/// Arguments grouped by name, in order of first appearance (a Lua table keeps no
/// order; keeping the client's makes results deterministic and readable).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Args(pub Vec<(Vec<u8>, Vec<ArgValue>)>);

impl Args {
    /// `ngx.decode_args`: split at `&`, `+` and `%XX` decoded, empty names skipped,
    /// repeated names collected in order.
    pub fn parse(s: &[u8]) -> Args {
        let mut out = Args::default();
        for pair in s.split(|&b| b == b'&') {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (
                    &pair[..i],
                    ArgValue::Str(form_decode(pair.get(i + 1..).unwrap_or_default())),
                ),
                None => (pair, ArgValue::Flag),
            };
            if k.is_empty() {
                continue;
            }
            out.push(form_decode(k), v);
        }
        out
    }

    pub fn get(&self, name: &[u8]) -> Option<&Vec<ArgValue>> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    /// Appends a value under `name` (a repeated argument).
    pub fn push(&mut self, name: Vec<u8>, v: ArgValue) {
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some((_, vals)) => vals.push(v),
            None => self.0.push((name, vec![v])),
        }
    }

    /// Replaces every value of `name` with one value (appended at the end if absent).
    pub fn set(&mut self, name: &[u8], v: ArgValue) {
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some((_, vals)) => *vals = vec![v],
            None => self.0.push((name.to_vec(), vec![v])),
        }
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Vec<ArgValue>> {
        let i = self.0.iter().position(|(k, _)| k == name)?;
        Some(self.0.remove(i).1)
    }

    /// Kong's `rename(tbl, old, new)`: moves the value(s) of `old` to `new`, replacing
    /// what `new` had; the renamed argument keeps `old`'s place. False when absent.
    pub fn rename(&mut self, old: &[u8], new: &[u8]) -> bool {
        if old == new {
            return false;
        }
        let Some(mut i) = self.0.iter().position(|(k, _)| k == old) else {
            return false;
        };
        if let Some(j) = self.0.iter().position(|(k, _)| k == new) {
            self.0.remove(j);
            if j < i {
                i -= 1;
            }
        }
        if let Some(entry) = self.0.get_mut(i) {
            entry.0 = new.to_vec();
        }
        true
    }

    /// `ngx.encode_args`: `name=value` pairs joined by `&`, a flag as the bare name,
    /// both escaped as URI components.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (k, vals) in &self.0 {
            for v in vals {
                if !out.is_empty() {
                    out.push('&');
                }
                escape_component(k, &mut out);
                if let ArgValue::Str(v) = v {
                    out.push('=');
                    escape_component(v, &mut out);
                }
            }
        }
        out
    }
}

/// `ngx.escape_uri` (component): everything but `A-Za-z0-9-._~` becomes `%XX`.
pub fn escape_component(s: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// `ngx.unescape_uri`: `%XX` decoded (`+` is kept, unlike form decoding).
pub fn unescape_uri(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && let (Some(a), Some(b)) = (
                s.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                s.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            out.push((a * 16 + b) as u8);
            i += 3;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode() {
        let a = Args::parse(b"a=1&b&c=&a=x+y%21&&=v&d=%zz");
        assert_eq!(
            a.0,
            vec![
                (
                    b"a".to_vec(),
                    vec![
                        ArgValue::Str(b"1".to_vec()),
                        ArgValue::Str(b"x y!".to_vec())
                    ]
                ),
                (b"b".to_vec(), vec![ArgValue::Flag]),
                (b"c".to_vec(), vec![ArgValue::Str(vec![])]),
                (b"d".to_vec(), vec![ArgValue::Str(b"%zz".to_vec())]),
            ]
        );
        assert_eq!(a.encode(), "a=1&a=x%20y%21&b&c=&d=%25zz");
    }

    #[test]
    fn rename_keeps_place_and_replaces_target() {
        let mut a = Args::parse(b"x=1&old=2&new=3&z=4");
        assert!(a.rename(b"old", b"new"));
        assert_eq!(a.encode(), "x=1&new=2&z=4");
        let mut a = Args::parse(b"new=3&old=2");
        assert!(a.rename(b"old", b"new"));
        assert_eq!(a.encode(), "new=2");
        assert!(!a.rename(b"missing", b"y"));
    }

    #[test]
    fn unescape() {
        assert_eq!(unescape_uri(b"a%20b+c%2"), b"a b+c%2");
    }
}
