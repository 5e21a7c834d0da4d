//! request-transformer (PRIORITY 801), as Kong's `access.lua`: replace.uri, then
//! http_method, then headers, body and querystring, each applying remove → rename →
//! replace → add → append. Values are templates (`lua::Template`) rendered in order,
//! every entry, whether or not its operation then applies (as Kong's `iter` does).
//!
//! Headers: names are case-insensitive and, as in `ngx.req.get_headers()`, a
//! lookup that misses retries with `_` as `-`; `replace` only touches a present
//! header (Host always: it sets the upstream Host), `add` only an absent one (never
//! Host), `append` adds another value. An empty value is sent as a single space, as
//! Kong's `set_headers` does. Templates see the headers as they were before this
//! plugin changed them (Kong applies its header table at the end).
//!
//! Bodies: JSON and x-www-form-urlencoded; remove/rename/replace apply only to a
//! non-empty body, add/append also to an empty one; a body that is not valid JSON is
//! left alone; a changed body gets its new Content-Length. Multipart bodies are left
//! untouched (Kong rewrites them; Portcullis does not parse multipart).

use super::{Flow, RequestCtx};
use crate::error::GatewayError;
use crate::lua::args::{ArgValue, Args};
use crate::lua::{self, LuaError, Session, Template};
use crate::yaml::raw::{Node, Pos, Value as Yaml};
use crate::yaml::walk::Ctx;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value as Json;

#[derive(Debug, Default)]
pub struct RequestTransformer {
    http_method: Option<Method>,
    remove: Removes,
    rename: Renames,
    replace: Sets,
    replace_uri: Option<Template>,
    add: Sets,
    append: Sets,
    uses_lua: bool,
    /// Lua templates among the body / querystring entries (rendered after the
    /// headers may have changed).
    body_lua: bool,
    query_lua: bool,
}

#[derive(Debug, Default)]
struct Removes {
    headers: Vec<HeaderName>,
    querystring: Vec<Vec<u8>>,
    body: Vec<String>,
}

#[derive(Debug, Default)]
struct Renames {
    headers: Vec<(HeaderName, HeaderName)>,
    querystring: Vec<(Vec<u8>, Template)>,
    body: Vec<(String, Template)>,
}

/// `name:value` lists; a header entry with an empty value does nothing (Kong renders
/// nothing for it) but is valid.
#[derive(Debug, Default)]
struct Sets {
    headers: Vec<(HeaderName, Option<Template>)>,
    querystring: Vec<(Vec<u8>, Template)>,
    body: Vec<(String, Template)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Multipart,
    Form,
}

/// Kong's `get_content_type`: a case-insensitive substring test, JSON first.
fn body_kind(h: &HeaderMap) -> Option<BodyKind> {
    let ct = h.get(CONTENT_TYPE)?.to_str().ok()?.to_ascii_lowercase();
    if ct.contains("application/json") {
        Some(BodyKind::Json)
    } else if ct.contains("multipart/form-data") {
        Some(BodyKind::Multipart)
    } else if ct.contains("application/x-www-form-urlencoded") {
        Some(BodyKind::Form)
    } else {
        None
    }
}

fn moves_body_to_query(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD || *m == Method::TRACE
}

impl RequestTransformer {
    fn has_body_ops(&self) -> bool {
        !(self.remove.body.is_empty()
            && self.rename.body.is_empty()
            && self.replace.body.is_empty()
            && self.add.body.is_empty()
            && self.append.body.is_empty())
    }

    fn has_query_ops(&self) -> bool {
        !(self.remove.querystring.is_empty()
            && self.rename.querystring.is_empty()
            && self.replace.querystring.is_empty()
            && self.add.querystring.is_empty()
            && self.append.querystring.is_empty())
    }

    fn has_header_ops(&self) -> bool {
        !(self.remove.headers.is_empty()
            && self.rename.headers.is_empty()
            && self.replace.headers.is_empty()
            && self.add.headers.is_empty()
            && self.append.headers.is_empty())
    }

    /// The body is read for body operations, and when http_method turns a form post
    /// into a GET/HEAD/TRACE (its arguments move to the query string).
    pub fn needs_body(&self) -> bool {
        self.has_body_ops() || self.http_method.as_ref().is_some_and(moves_body_to_query)
    }

    pub fn explain(&self) -> String {
        let mut parts = Vec::new();
        if self.replace_uri.is_some() {
            parts.push("replaces the upstream path".to_string());
        }
        if let Some(m) = &self.http_method {
            parts.push(format!("sets the method to {m}"));
        }
        for (what, n) in [
            ("headers", self.has_header_ops()),
            ("querystring", self.has_query_ops()),
            ("body", self.has_body_ops()),
        ] {
            if n {
                parts.push(format!("transforms the {what}"));
            }
        }
        if parts.is_empty() {
            "passes (nothing configured)".into()
        } else {
            parts.join(", ")
        }
    }

    pub fn access(&self, req: &mut RequestCtx<'_>) -> Flow {
        match lua::session(req, "request-transformer", self.uses_lua, |s| {
            self.execute(s)
        }) {
            Ok(()) => Flow::Continue,
            Err(e) => {
                tracing::error!(
                    plugin = "request-transformer",
                    request_id = req.request_id,
                    error = %e,
                    "[request-transformer] failed to transform the request"
                );
                Flow::Respond(GatewayError::Internal.response(
                    req.headers,
                    req.method == Method::HEAD,
                    req.request_id,
                ))
            }
        }
    }

    fn execute(&self, s: &mut Session<'_, '_>) -> Result<(), LuaError> {
        self.transform_uri(s)?;
        self.transform_method(s)?;
        if self.has_header_ops() {
            self.transform_headers(s)?;
        }
        if self.has_body_ops() {
            self.transform_body(s)?;
        }
        if self.has_query_ops() {
            self.transform_querystring(s)?;
        }
        Ok(())
    }

    fn transform_uri(&self, s: &mut Session<'_, '_>) -> Result<(), LuaError> {
        let Some(t) = &self.replace_uri else {
            return Ok(());
        };
        let path = s.render(t)?;
        if path.first() != Some(&b'/') {
            return Err(LuaError(format!(
                "replace.uri rendered '{}': path must start with /",
                String::from_utf8_lossy(&path)
            )));
        }
        s.ctx.upstream.path = Some(crate::path::escape(&path).into_owned());
        Ok(())
    }

    fn transform_method(&self, s: &mut Session<'_, '_>) -> Result<(), LuaError> {
        let Some(m) = &self.http_method else {
            return Ok(());
        };
        s.ctx.upstream.method = Some(m.clone());
        if !moves_body_to_query(m) || body_kind(s.ctx.headers) != Some(BodyKind::Form) {
            return Ok(());
        }
        let Some(body) = s.ctx.body.as_deref() else {
            return Ok(());
        };
        let params = Args::parse(body);
        if params.0.is_empty() {
            return Ok(());
        }
        let mut q = Args::parse(s.ctx.uri.query().unwrap_or("").as_bytes());
        for (k, vals) in params.0 {
            for v in vals {
                q.push(k.clone(), v);
            }
        }
        set_query(s.ctx.uri, &q.encode())
    }

    fn transform_headers(&self, s: &mut Session<'_, '_>) -> Result<(), LuaError> {
        // Kong renders against the headers as they were and applies its header table
        // at the end; so every value is rendered first, then the operations change the
        // request's headers in place (Host aside: Kong's table has none, so remove never
        // touches it, rename only moves one an earlier rename put there, and only a Host
        // value given by the config replaces it). The
        // same template in two entries (Supabase's add and replace of
        // Authorization) renders once: nothing changes between the two renders.
        let sets = [
            &self.replace.headers,
            &self.add.headers,
            &self.append.headers,
        ];
        let mut values: Vec<Option<HeaderValue>> =
            Vec::with_capacity(sets.iter().map(|l| l.len()).sum());
        for (i, (name, t)) in sets.into_iter().flatten().enumerate() {
            let Some(t) = t else {
                values.push(None);
                continue;
            };
            let earlier = sets
                .into_iter()
                .flatten()
                .take(i)
                .position(|(_, e)| e.as_ref().is_some_and(|e| e.same(t)));
            let v = match earlier {
                Some(j) if !t.may_vary() => values.get(j).cloned().flatten(),
                _ => render_header(s, name, Some(t))?,
            };
            values.push(v);
        }
        if self.body_lua || self.query_lua {
            s.keep_template_headers();
        }
        let w = &mut *s.ctx.headers;
        let mut new_host: Option<HeaderValue> = None;

        for name in &self.remove.headers {
            if *name != HOST && w.contains_key(name) {
                w.remove(name);
            }
        }
        for (old, new) in &self.rename.headers {
            // Kong's table holds a Host only once a rename has put one there.
            if old == new || (*old == HOST && new_host.is_none()) {
                continue;
            }
            let Some(found) = lookup(w, old) else {
                continue;
            };
            let values: Vec<HeaderValue> = w.get_all(&found).iter().cloned().collect();
            if found == *old {
                w.remove(old);
            }
            w.remove(new);
            if *new == HOST {
                new_host = values.last().cloned();
            }
            for v in values {
                w.append(new.clone(), v);
            }
        }
        let mut rendered = values.into_iter();
        for (name, _) in &self.replace.headers {
            let Some(v) = rendered.next().flatten() else {
                continue;
            };
            if *name == HOST {
                new_host = Some(v);
            } else if lookup(w, name).is_some() {
                w.insert(name.clone(), v);
            }
        }
        for (name, _) in &self.add.headers {
            let Some(v) = rendered.next().flatten() else {
                continue;
            };
            if *name != HOST && lookup(w, name).is_none() {
                w.insert(name.clone(), v);
            }
        }
        for (name, _) in &self.append.headers {
            let Some(v) = rendered.next().flatten() else {
                continue;
            };
            if *name == HOST {
                continue;
            }
            if let Some(found) = lookup(w, name)
                && found != *name
            {
                // `headers[name]` found the `-` spelling: its values are copied.
                let values: Vec<HeaderValue> = w.get_all(&found).iter().cloned().collect();
                for old in values {
                    w.append(name.clone(), old);
                }
            }
            w.append(name.clone(), v);
        }
        if let Some(h) = new_host {
            s.ctx.upstream.host = Some(h.clone());
            s.ctx.headers.insert(HOST, h);
        }
        Ok(())
    }

    fn transform_body(&self, s: &mut Session<'_, '_>) -> Result<(), LuaError> {
        let Some(kind) = body_kind(s.ctx.headers) else {
            return Ok(());
        };
        let Some(body) = s.ctx.body.as_deref().cloned() else {
            return Ok(());
        };
        let new = match kind {
            BodyKind::Json => self.transform_json(s, &body)?,
            BodyKind::Form => self.transform_form(s, &body)?,
            BodyKind::Multipart => {
                tracing::debug!(
                    plugin = "request-transformer",
                    "multipart bodies are not transformed"
                );
                None
            }
        };
        if let Some(new) = new {
            if self.query_lua {
                s.keep_template_headers();
            }
            s.ctx
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(new.len()));
            if let Some(b) = s.ctx.body.as_deref_mut() {
                *b = Bytes::from(new);
            }
        }
        Ok(())
    }

    fn transform_json(
        &self,
        s: &mut Session<'_, '_>,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, LuaError> {
        let has_body = !body.is_empty();
        let mut p = match serde_json::from_slice::<Json>(body) {
            Ok(Json::Object(m)) => m,
            // Kong's cjson would index an array or a scalar as a table; leave them be.
            Ok(_) if has_body => return Ok(None),
            Err(_) if has_body => return Ok(None),
            _ => serde_json::Map::new(),
        };
        // cjson decodes `null` to a truthy light userdata; only `false` and absence
        // are falsy.
        let truthy = |v: Option<&Json>| !matches!(v, None | Some(Json::Bool(false)));
        let mut changed = false;
        if has_body {
            for name in &self.remove.body {
                p.remove(name);
                changed = true;
            }
            for (old, t) in &self.rename.body {
                let new = lossy(s.render(t)?);
                if *old != new && truthy(p.get(old)) {
                    if let Some(v) = p.remove(old) {
                        p.insert(new, v);
                    }
                    changed = true;
                }
            }
            for (name, t) in &self.replace.body {
                let v = lossy(s.render(t)?);
                if truthy(p.get(name)) {
                    p.insert(name.clone(), Json::String(v));
                    changed = true;
                }
            }
        }
        for (name, t) in &self.add.body {
            let v = lossy(s.render(t)?);
            if !truthy(p.get(name)) {
                p.insert(name.clone(), Json::String(v));
                changed = true;
            }
        }
        for (name, t) in &self.append.body {
            let v = Json::String(lossy(s.render(t)?));
            let appended = match p.remove(name) {
                Some(Json::String(old)) => Json::Array(vec![Json::String(old), v]),
                Some(Json::Array(mut a)) => {
                    a.push(v);
                    Json::Array(a)
                }
                // `table.insert` on a decoded object adds the key [1].
                Some(Json::Object(mut o)) => {
                    o.insert("1".into(), v);
                    Json::Object(o)
                }
                _ => Json::Array(vec![v]),
            };
            p.insert(name.clone(), appended);
            changed = true;
        }
        Ok(changed.then(|| Json::Object(p).to_string().into_bytes()))
    }

    fn transform_form(
        &self,
        s: &mut Session<'_, '_>,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, LuaError> {
        let has_body = !body.is_empty();
        let mut p = Args::parse(body);
        let mut changed = false;
        if has_body {
            for name in &self.remove.body {
                p.remove(name.as_bytes());
                changed = true;
            }
            for (old, t) in &self.rename.body {
                let new = s.render(t)?;
                changed |= p.rename(old.as_bytes(), &new);
            }
            for (name, t) in &self.replace.body {
                let v = s.render(t)?;
                if p.contains(name.as_bytes()) {
                    p.set(name.as_bytes(), ArgValue::Str(v));
                    changed = true;
                }
            }
        }
        for (name, t) in &self.add.body {
            let v = s.render(t)?;
            if !p.contains(name.as_bytes()) {
                p.set(name.as_bytes(), ArgValue::Str(v));
                changed = true;
            }
        }
        for (name, t) in &self.append.body {
            let v = s.render(t)?;
            p.push(name.as_bytes().to_vec(), ArgValue::Str(v));
            changed = true;
        }
        Ok(changed.then(|| p.encode().into_bytes()))
    }

    fn transform_querystring(&self, s: &mut Session<'_, '_>) -> Result<(), LuaError> {
        let mut q = Args::parse(s.ctx.uri.query().unwrap_or("").as_bytes());
        for name in &self.remove.querystring {
            q.remove(name);
        }
        for (old, t) in &self.rename.querystring {
            let new = s.render(t)?;
            q.rename(old, &new);
        }
        for (name, t) in &self.replace.querystring {
            let v = s.render(t)?;
            if q.contains(name) {
                q.set(name, ArgValue::Str(v));
            }
        }
        for (name, t) in &self.add.querystring {
            let v = s.render(t)?;
            if !q.contains(name) {
                q.set(name, ArgValue::Str(v));
            }
        }
        for (name, t) in &self.append.querystring {
            let v = s.render(t)?;
            q.push(name.clone(), ArgValue::Str(v));
        }
        set_query(s.ctx.uri, &q.encode())
    }
}

/// The key `headers[name]` finds: the name itself, else its `_`→`-` spelling.
fn lookup(h: &HeaderMap, name: &HeaderName) -> Option<HeaderName> {
    if h.contains_key(name) {
        return Some(name.clone());
    }
    if name.as_str().contains('_') {
        let alt = HeaderName::from_bytes(name.as_str().replace('_', "-").as_bytes()).ok()?;
        if h.contains_key(&alt) {
            return Some(alt);
        }
    }
    None
}

/// Renders a header value; "" is sent as " " (Kong's `normalize_multi_header`).
fn render_header(
    s: &mut Session<'_, '_>,
    name: &HeaderName,
    t: Option<&Template>,
) -> Result<Option<HeaderValue>, LuaError> {
    let Some(t) = t else {
        return Ok(None);
    };
    let mut v = s.render(t)?;
    if v.is_empty() {
        v.push(b' ');
    }
    HeaderValue::from_bytes(&v).map(Some).map_err(|_| {
        LuaError(format!(
            "invalid value for header '{name}': {:?}",
            String::from_utf8_lossy(&v)
        ))
    })
}

fn lossy(v: Vec<u8>) -> String {
    String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn set_query(uri: &mut http::Uri, q: &str) -> Result<(), LuaError> {
    let mut pq = uri.path().to_string();
    if !q.is_empty() {
        pq.push('?');
        pq.push_str(q);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|_| LuaError(format!("invalid query string '{q}'")))?,
    );
    *uri = http::Uri::from_parts(parts)
        .map_err(|_| LuaError(format!("invalid query string '{q}'")))?;
    Ok(())
}

// ------------------------------------------------------------------ config

/// Kong's `^([^:]+):*(.-)$`: the name ends at the first `:`, all the colons that
/// follow are dropped, the value is the rest, untrimmed (`h: v` gives " v").
fn split_entry(s: &str) -> Option<(&str, &str)> {
    let end = s.find(':').unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    Some((&s[..end], s[end..].trim_start_matches(':')))
}

/// Kong's `validate_header_name`.
fn header_name(name: &str) -> Option<HeaderName> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return None;
    }
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()
}

struct Entry {
    text: String,
    pos: Pos,
    label: String,
}

struct Decoder<'c, 'e> {
    ctx: &'c mut Ctx<'e>,
    uses_lua: bool,
    /// Header templates compiled so far, by source (see `header_template`).
    compiled: Vec<(String, Template)>,
}

impl Decoder<'_, '_> {
    /// A header value's template: the same source as an earlier header entry's
    /// shares its compiled template (headers render in decode order, so a runtime
    /// error names the entry that rendered).
    fn header_template(&mut self, e: &Entry, value: &str) -> Option<Template> {
        if let Some((_, t)) = self.compiled.iter().find(|(src, _)| src == value) {
            return Some(t.clone());
        }
        let t = self.template(e, value)?;
        if t.is_lua() {
            self.compiled.push((value.to_string(), t.clone()));
        }
        Some(t)
    }

    fn template(&mut self, e: &Entry, value: &str) -> Option<Template> {
        match Template::compile(value, &e.label) {
            Ok(t) => {
                self.uses_lua |= t.is_lua();
                Some(t)
            }
            Err(err) => {
                self.ctx.err(
                    lua::error_pos(e.pos, &e.label, &err),
                    format!(
                        "{WHAT}.{}: value '{value}' is not in supported format, error: {err}",
                        e.label
                    ),
                );
                None
            }
        }
    }

    fn bad_header(&mut self, e: &Entry, name: &str) {
        self.ctx.err(
            e.pos,
            format!("{WHAT}.{}: '{name}' is not a valid header", e.label),
        );
    }

    /// `name:value` where the value must be non-empty (querystring and body).
    fn pair(&mut self, e: &Entry) -> Option<(String, Template)> {
        match split_entry(&e.text) {
            Some((name, value)) if !value.is_empty() => {
                let t = self.template(e, value)?;
                Some((name.to_string(), t))
            }
            Some((name, _)) => {
                self.ctx.err(
                    e.pos,
                    format!("{WHAT}.{}: key '{name}' has no value", e.label),
                );
                None
            }
            None => {
                self.ctx.err(
                    e.pos,
                    format!("{WHAT}.{}: '{}' has no key before ':'", e.label, e.text),
                );
                None
            }
        }
    }

    /// `name:value` for headers: the colon is required, the value may be empty.
    fn header_pair(&mut self, e: &Entry) -> Option<(HeaderName, Option<Template>)> {
        let Some((name, value)) = split_entry(&e.text).filter(|_| e.text.contains(':')) else {
            self.ctx.err(
                e.pos,
                format!(
                    "{WHAT}.{}: '{}' must be of the form 'name:value'",
                    e.label, e.text
                ),
            );
            return None;
        };
        let Some(h) = header_name(name) else {
            self.bad_header(e, name);
            return None;
        };
        if value.is_empty() {
            return Some((h, None));
        }
        let t = self.header_template(e, value)?;
        Some((h, Some(t)))
    }

    fn name(&mut self, e: &Entry) -> Option<String> {
        match split_entry(&e.text) {
            Some((name, _)) => Some(name.to_string()),
            None => {
                self.ctx.err(
                    e.pos,
                    format!("{WHAT}.{}: '{}' has no name", e.label, e.text),
                );
                None
            }
        }
    }
}

/// One record's (`remove`, `add`, ...) string lists.
#[derive(Default)]
struct RawRecord {
    headers: Vec<Entry>,
    querystring: Vec<Entry>,
    body: Vec<Entry>,
    uri: Option<(String, Pos)>,
}

fn raw_record(
    ctx: &mut Ctx<'_>,
    n: Option<&Node>,
    what: &str,
    op: &str,
    with_uri: bool,
) -> RawRecord {
    let mut out = RawRecord::default();
    let Some(n) = n.filter(|n| !matches!(n.value, Yaml::Null)) else {
        return out;
    };
    let rec_what = format!("{what}.{op}");
    let Some(mut f) = ctx.fields(n, &rec_what) else {
        return out;
    };
    for field in ["headers", "querystring", "body"] {
        let list = ctx.strings(f.get(field), &format!("{rec_what}.{field}"));
        let entries = list
            .into_iter()
            .enumerate()
            .map(|(i, (text, pos))| Entry {
                text,
                pos,
                label: format!("{op}.{field}[{i}]"),
            })
            .collect();
        match field {
            "headers" => out.headers = entries,
            "querystring" => out.querystring = entries,
            _ => out.body = entries,
        }
    }
    if with_uri && let Some(u) = f.get("uri") {
        out.uri = ctx
            .opt_string(Some(u), &format!("{rec_what}.uri"))
            .map(|s| (s, u.pos));
    }
    f.finish(ctx, &rec_what);
    out
}

const WHAT: &str = "plugin 'request-transformer'.config";

pub fn decode(config: Option<&Node>, ctx: &mut Ctx<'_>) -> Option<RequestTransformer> {
    let what = WHAT;
    let mut out = RequestTransformer::default();
    let Some(config) = config.filter(|c| !matches!(c.value, Yaml::Null)) else {
        return Some(out);
    };
    let mut f = ctx.fields(config, what)?;
    let before = ctx.errors.len();

    if let Some(n) = f.get("http_method")
        && let Some(m) = ctx.opt_string(Some(n), &format!("{what}.http_method"))
    {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            ctx.err(
                n.pos,
                format!("{what}.http_method: invalid value '{m}': must be uppercase letters"),
            );
        } else {
            match crate::lua::settable_method(&m) {
                Some(method) => out.http_method = Some(method),
                None => ctx.err(
                    n.pos,
                    format!(
                        "{what}.http_method: '{m}' cannot be set (Kong accepts GET, HEAD, PUT, POST, DELETE, OPTIONS, MKCOL, COPY, MOVE, PROPFIND, PROPPATCH, LOCK, UNLOCK, PATCH, TRACE)"
                    ),
                ),
            }
        }
    }
    let remove = raw_record(ctx, f.get("remove"), what, "remove", false);
    let rename = raw_record(ctx, f.get("rename"), what, "rename", false);
    let replace = raw_record(ctx, f.get("replace"), what, "replace", true);
    let add = raw_record(ctx, f.get("add"), what, "add", false);
    let append = raw_record(ctx, f.get("append"), what, "append", false);
    f.finish(ctx, what);

    let mut d = Decoder {
        ctx,
        uses_lua: false,
        compiled: Vec::new(),
    };
    for e in &remove.headers {
        if let Some(name) = d.name(e) {
            match header_name(&name) {
                Some(h) => out.remove.headers.push(h),
                None => d.bad_header(e, &name),
            }
        }
    }
    for e in &remove.querystring {
        if let Some(name) = d.name(e) {
            out.remove.querystring.push(name.into_bytes());
        }
    }
    for e in &remove.body {
        if let Some(name) = d.name(e) {
            out.remove.body.push(name);
        }
    }
    for e in &rename.headers {
        let Some((old, new)) = split_entry(&e.text).filter(|_| e.text.contains(':')) else {
            d.ctx.err(
                e.pos,
                format!(
                    "{WHAT}.{}: '{}' must be of the form 'old:new'",
                    e.label, e.text
                ),
            );
            continue;
        };
        match (header_name(old), header_name(new)) {
            (Some(o), Some(n)) => out.rename.headers.push((o, n)),
            (None, _) => d.bad_header(e, old),
            (_, None) => d.bad_header(e, new),
        }
    }
    for e in &rename.querystring {
        if let Some((k, t)) = d.pair(e) {
            out.rename.querystring.push((k.into_bytes(), t));
        }
    }
    for e in &rename.body {
        if let Some(p) = d.pair(e) {
            out.rename.body.push(p);
        }
    }
    for (rec, sets) in [
        (&replace, &mut out.replace),
        (&add, &mut out.add),
        (&append, &mut out.append),
    ] {
        for e in &rec.headers {
            if let Some(p) = d.header_pair(e) {
                sets.headers.push(p);
            }
        }
        for e in &rec.querystring {
            if let Some((k, t)) = d.pair(e) {
                sets.querystring.push((k.into_bytes(), t));
            }
        }
        for e in &rec.body {
            if let Some(p) = d.pair(e) {
                sets.body.push(p);
            }
        }
    }
    if let Some((uri, pos)) = &replace.uri {
        let e = Entry {
            text: uri.clone(),
            pos: *pos,
            label: "replace.uri".into(),
        };
        out.replace_uri = d.template(&e, uri);
    }
    out.uses_lua = d.uses_lua;
    let lua = |l: &[(Vec<u8>, Template)]| l.iter().any(|(_, t)| t.is_lua());
    out.query_lua = [
        &out.rename.querystring,
        &out.replace.querystring,
        &out.add.querystring,
        &out.append.querystring,
    ]
    .into_iter()
    .any(|l| lua(l));
    out.body_lua = [
        &out.rename.body,
        &out.replace.body,
        &out.add.body,
        &out.append.body,
    ]
    .into_iter()
    .any(|l| l.iter().any(|(_, t)| t.is_lua()));
    (d.ctx.errors.len() == before).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_like_kong() {
        assert_eq!(split_entry("h2:value:2"), Some(("h2", "value:2")));
        assert_eq!(split_entry("h::v"), Some(("h", "v")));
        assert_eq!(
            split_entry("Authorization: $(x)"),
            Some(("Authorization", " $(x)"))
        );
        assert_eq!(split_entry("name"), Some(("name", "")));
        assert_eq!(split_entry("name:"), Some(("name", "")));
        assert_eq!(split_entry(":v"), None);
    }

    #[test]
    fn header_names() {
        assert!(header_name("X-Foo_1").is_some());
        assert!(header_name("x foo").is_none());
        assert!(header_name("").is_none());
        assert!(header_name("$(x)").is_none());
    }
}
