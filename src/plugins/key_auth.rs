//! key-auth (PRIORITY 1250): identifies the consumer by an API key in a header, the
//! query string or the body. Keys are looked up by digest (see `consumers.rs`).

use super::{AuthOutcome, Flow, RequestCtx, run_auth, set_consumer};
use crate::yaml::raw::{Node, Value};
use crate::yaml::walk::Ctx;
use http::{HeaderName, HeaderValue, StatusCode};

#[derive(Debug)]
pub struct KeyAuth {
    pub key_names: Vec<KeyName>,
    pub hide_credentials: bool,
    pub anonymous: Option<String>,
    pub key_in_header: bool,
    pub key_in_query: bool,
    pub key_in_body: bool,
    pub run_on_preflight: bool,
    pub www_authenticate: HeaderValue,
}

#[derive(Debug)]
pub struct KeyName {
    pub name: String,
    /// The header spellings to look for: `api_key` also matches `api-key` (nginx
    /// treats `_` and `-` alike in header lookups).
    pub headers: Vec<HeaderName>,
}

pub fn decode(config: Option<&Node>, ctx: &mut Ctx<'_>) -> Option<KeyAuth> {
    let what = "plugin 'key-auth'.config";
    let mut out = KeyAuth {
        key_names: vec![key_name("apikey")?],
        hide_credentials: false,
        anonymous: None,
        key_in_header: true,
        key_in_query: true,
        key_in_body: false,
        run_on_preflight: true,
        www_authenticate: HeaderValue::from_static("Key"),
    };
    let Some(config) = config.filter(|c| !matches!(c.value, Value::Null)) else {
        return Some(out);
    };
    let mut f = ctx.fields(config, what)?;
    let before = ctx.errors.len();
    if let Some(n) = f.get("key_names") {
        let names = ctx.strings(Some(n), &format!("{what}.key_names"));
        let mut list = Vec::new();
        for (name, pos) in names {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                ctx.err(
                    pos,
                    format!(
                        "{what}.key_names: '{name}' is illegal: only [A-Za-z0-9_-] are allowed"
                    ),
                );
                continue;
            }
            if let Some(k) = key_name(&name) {
                list.push(k);
            }
        }
        if list.is_empty() && ctx.errors.len() == before {
            ctx.err(
                n.pos,
                format!("{what}.key_names: length must be at least 1"),
            );
        }
        out.key_names = list;
    }
    let b = |ctx: &mut Ctx<'_>, f: &mut crate::yaml::walk::Fields<'_>, key: &str, d: bool| {
        ctx.opt_bool(f.get(key), &format!("{what}.{key}"), d)
    };
    out.hide_credentials = b(ctx, &mut f, "hide_credentials", false);
    out.key_in_header = b(ctx, &mut f, "key_in_header", true);
    out.key_in_query = b(ctx, &mut f, "key_in_query", true);
    out.key_in_body = b(ctx, &mut f, "key_in_body", false);
    out.run_on_preflight = b(ctx, &mut f, "run_on_preflight", true);
    out.anonymous = ctx.opt_string(f.get("anonymous"), &format!("{what}.anonymous"));
    if let Some(v) = super::decode_realm(ctx, f.get("realm"), what, "Key") {
        out.www_authenticate = v;
    }
    f.finish(ctx, what);
    (ctx.errors.len() == before).then_some(out)
}

fn key_name(name: &str) -> Option<KeyName> {
    let lower = name.to_ascii_lowercase();
    let mut headers = vec![HeaderName::from_bytes(lower.as_bytes()).ok()?];
    for (from, to) in [('_', '-'), ('-', '_')] {
        if lower.contains(from)
            && let Ok(h) = HeaderName::from_bytes(lower.replace(from, &to.to_string()).as_bytes())
            && !headers.contains(&h)
        {
            headers.push(h);
        }
    }
    Some(KeyName {
        name: name.to_string(),
        headers,
    })
}

/// What was found for one key name.
enum Found {
    None,
    One(Key, Source),
    Duplicate,
}

/// A key as found: a header's value is shared, not copied.
enum Key {
    Header(HeaderValue),
    Decoded(Vec<u8>),
}

impl Key {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Header(v) => v.as_bytes(),
            Key::Decoded(v) => v,
        }
    }
}

#[derive(Clone, Copy)]
enum Source {
    Header,
    Query,
    Body,
}

impl KeyAuth {
    pub fn access(&self, req: &mut RequestCtx<'_>) -> Flow {
        if !self.run_on_preflight && req.method == http::Method::OPTIONS {
            return Flow::Continue;
        }
        run_auth(
            req,
            self.anonymous.as_deref(),
            &self.www_authenticate,
            |req| self.authenticate(req),
        )
    }

    fn find(&self, req: &RequestCtx<'_>, k: &KeyName) -> Found {
        if self.key_in_header {
            let mut values = k.headers.iter().flat_map(|h| req.headers.get_all(h).iter());
            if let Some(first) = values.next() {
                if values.next().is_some() {
                    return Found::Duplicate;
                }
                return Found::One(Key::Header(first.clone()), Source::Header);
            }
        }
        if self.key_in_query {
            match query_values(req.uri.query(), &k.name) {
                QueryHit::None | QueryHit::Flag => {}
                QueryHit::One(v) => return Found::One(Key::Decoded(v), Source::Query),
                QueryHit::Many => return Found::Duplicate,
            }
        }
        if self.key_in_body
            && let Some(body) = req.body.as_deref()
        {
            let ctype = req
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if let Some(v) = super::body_field(ctype, body, &k.name) {
                return Found::One(Key::Decoded(v.into_bytes()), Source::Body);
            }
        }
        Found::None
    }

    fn authenticate(&self, req: &mut RequestCtx<'_>) -> AuthOutcome {
        let mut key: Option<(Key, usize, Source)> = None;
        for (i, k) in self.key_names.iter().enumerate() {
            match self.find(req, k) {
                Found::None => continue,
                Found::Duplicate => {
                    return AuthOutcome::Fail(StatusCode::UNAUTHORIZED, "Duplicate API key found");
                }
                Found::One(v, src) => {
                    key = Some((v, i, src));
                    break;
                }
            }
        }
        let Some((key, idx, src)) = key else {
            return AuthOutcome::Fail(StatusCode::UNAUTHORIZED, "No API key found in request");
        };
        if self.hide_credentials {
            let k = &self.key_names[idx];
            match src {
                Source::Header => {
                    for h in &k.headers {
                        req.headers.remove(h);
                    }
                }
                Source::Query => {
                    *req.uri = super::remove_query_arg(req.uri, &k.name);
                }
                Source::Body => {
                    if let Some(body) = req.body.as_deref_mut() {
                        let ctype = req
                            .headers
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        super::remove_body_field(&ctype, body, &k.name);
                    }
                }
            }
        }
        if key.as_bytes().is_empty() {
            return AuthOutcome::Fail(StatusCode::UNAUTHORIZED, "No API key found in request");
        }
        let Some(cred) = req.consumers.by_key(key.as_bytes()) else {
            return AuthOutcome::Fail(StatusCode::UNAUTHORIZED, "Unauthorized");
        };
        let (consumer, id) = (cred.consumer, cred.id.clone());
        set_consumer(req, Some(consumer), Some(id));
        AuthOutcome::Ok
    }
}

pub enum QueryHit {
    None,
    /// `?apikey` with no `=`: Kong's get_query gives `true`, which is not a key.
    Flag,
    One(Vec<u8>),
    Many,
}

/// The decoded value(s) of a query argument, as `kong.request.get_query()` sees them.
pub fn query_values(query: Option<&str>, name: &str) -> QueryHit {
    let Some(q) = query else {
        return QueryHit::None;
    };
    let mut hit = QueryHit::None;
    for pair in q.split('&') {
        let (k, v) = match pair.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (pair, None),
        };
        if super::form_decode(k.as_bytes()) != name.as_bytes() {
            continue;
        }
        hit = match (hit, v) {
            (QueryHit::None, None) => QueryHit::Flag,
            (QueryHit::None, Some(v)) => QueryHit::One(super::form_decode(v.as_bytes())),
            _ => QueryHit::Many,
        };
    }
    hit
}
