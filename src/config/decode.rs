//! Stage 2: the positioned tree → `model::Config`, Kong's declarative schema.
//!
//! Every field is checked (unknown fields, types, ranges, references, uniqueness)
//! and every error is collected with its file:line:column. Plugins are decoded by
//! their own modules (`crate::plugins`) so each plugin's schema lives beside its code.

use super::model::*;
use crate::path;
use crate::plugins;
use crate::yaml::raw::{Node, Pos, Value};
use crate::yaml::walk::{Ctx, Fields};
use std::collections::HashMap;
use std::sync::Arc;

const MAX_TIMEOUT: i64 = (1 << 31) - 2;

/// A reference written as a string (name or id) to be resolved once everything is read.
struct Ref {
    target: String,
    pos: Pos,
}

/// A top-level plugin's (index, route, service, consumer) references.
type PluginRefs = (usize, Option<Ref>, Option<Ref>, Option<Ref>);

#[derive(Default)]
struct Pending {
    route_service: Vec<(usize, Ref)>,
    plugin_refs: Vec<PluginRefs>,
    keyauth: Vec<(Node, Option<usize>)>,
    basicauth: Vec<(Node, Option<usize>)>,
    acls: Vec<(Node, Option<usize>)>,
}

fn entity_id(kind: &str, key: &str) -> String {
    // Stable ids: the same config keeps the same ids across reloads, as Kong's
    // declarative loader does for named entities.
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("portcullis:{kind}:{key}").as_bytes(),
    )
    .to_string()
}

pub fn decode(root: &Node, ctx: &mut Ctx<'_>) -> Config {
    let mut cfg = Config {
        transform: true,
        ..Config::default()
    };
    let Some(mut top) = ctx.fields(root, "declarative config") else {
        return cfg;
    };
    let mut pending = Pending::default();
    // Sized once: grown one push at a time, 10,000 routes would pass through a
    // 16,384-slot vector at the load's peak.
    cfg.routes.reserve_exact(route_count(root));

    match top.get("_format_version") {
        None => ctx.err(
            top.pos,
            "_format_version: required field missing (one of '1.1', '2.1', '3.0')",
        ),
        Some(n) => {
            let v = match &n.value {
                Value::Str(s) => Some(s.clone()),
                Value::Float(f) => Some(format!("{f:.1}")),
                Value::Int(i) => Some(format!("{i}.0")),
                _ => None,
            };
            match v.as_deref() {
                Some(v @ ("1.1" | "2.1" | "3.0")) => cfg.format_version = v.to_string(),
                _ => ctx.err(
                    n.pos,
                    "_format_version: expected one of: '1.1', '2.1', '3.0'".to_string(),
                ),
            }
        }
    }
    cfg.transform = ctx.opt_bool(top.get("_transform"), "_transform", true);
    // Kong 3.x accepts these top-level keys in exported files; they carry nothing we use.
    let _ = top.get("_workspace");

    for n in ctx.seq(top.get("services"), "services") {
        decode_service(n, &mut cfg, &mut pending, ctx);
    }
    for n in ctx.seq(top.get("routes"), "routes") {
        decode_route(n, None, &mut cfg, &mut pending, ctx);
    }
    for n in ctx.seq(top.get("consumers"), "consumers") {
        decode_consumer(n, &mut cfg, &mut pending, ctx);
    }
    for n in ctx.seq(top.get("plugins"), "plugins") {
        decode_plugin(n, Scope::default(), true, &mut cfg, &mut pending, ctx);
    }
    for n in ctx.seq(top.get("keyauth_credentials"), "keyauth_credentials") {
        pending.keyauth.push((n.clone(), None));
    }
    for n in ctx.seq(top.get("basicauth_credentials"), "basicauth_credentials") {
        pending.basicauth.push((n.clone(), None));
    }
    for n in ctx.seq(top.get("acls"), "acls") {
        pending.acls.push((n.clone(), None));
    }
    for kind in [
        "upstreams",
        "targets",
        "certificates",
        "snis",
        "ca_certificates",
        "vaults",
        "keys",
        "key_sets",
        "workspaces",
        "parameters",
        "filter_chains",
        "jwt_secrets",
        "hmacauth_credentials",
        "oauth2_credentials",
    ] {
        if let Some(n) = top.get(kind)
            && !ctx.seq(Some(n), kind).is_empty()
        {
            ctx.err(
                n.pos,
                format!("{kind}: this entity is not supported by Portcullis (remove it)"),
            );
        }
    }
    top.finish(ctx, "declarative config");

    resolve(&mut cfg, pending, ctx);
    check_uniqueness(&cfg, ctx);
    // The config lives as long as its snapshot: no spare capacity (10,000 routes grown
    // one push at a time leave 6,384 empty `Route` slots, 1.5 MiB).
    cfg.services.shrink_to_fit();
    cfg.routes.shrink_to_fit();
    cfg.consumers.shrink_to_fit();
    cfg.plugins.shrink_to_fit();
    cfg
}

/// How many routes the file declares (nested in services and top-level), whether
/// valid or not.
fn route_count(root: &Node) -> usize {
    fn get<'a>(n: &'a Node, key: &str) -> Option<&'a Node> {
        match &n.value {
            Value::Map(m) => m.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn items(n: Option<&Node>) -> &[Node] {
        match n.map(|n| &n.value) {
            Some(Value::Seq(s)) => s,
            _ => &[],
        }
    }
    let nested: usize = items(get(root, "services"))
        .iter()
        .map(|s| items(get(s, "routes")).len())
        .sum();
    nested + items(get(root, "routes")).len()
}

fn decode_service(n: &Node, cfg: &mut Config, pending: &mut Pending, ctx: &mut Ctx<'_>) {
    let Some(mut f) = ctx.fields(n, "service") else {
        return;
    };
    let name = ctx.opt_string(f.get("name"), "service.name");
    let id = ctx
        .opt_string(f.get("id"), "service.id")
        .unwrap_or_else(|| match &name {
            Some(nm) => entity_id("services", nm),
            None => entity_id("services", &format!("#{}", cfg.services.len())),
        });
    let what = match &name {
        Some(nm) => format!("service '{nm}'"),
        None => "service".to_string(),
    };

    let mut protocol = None;
    let mut host = None;
    let mut port = None;
    let mut path: Option<String> = None;
    if let Some(url_node) = f.get("url")
        && let Some(url) = ctx.string(url_node, &format!("{what}.url"))
    {
        match parse_service_url(&url) {
            Ok((p, h, po, pa)) => {
                protocol = Some(p);
                host = Some(h);
                port = Some(po);
                path = pa;
            }
            Err(e) => ctx.err(url_node.pos, format!("{what}.url: {e}")),
        }
        for field in ["host", "port", "path"] {
            if let Some(p) = f.key_pos(field) {
                ctx.err(
                    p,
                    format!("{what}: '{field}' cannot be set together with 'url'"),
                );
            }
        }
    }
    if let Some(pn) = f.get("protocol")
        && let Some(p) = ctx.string(pn, &format!("{what}.protocol"))
    {
        match Protocol::parse(&p) {
            Some(p) => protocol = Some(p),
            None => ctx.err(
                pn.pos,
                format!(
                    "{what}.protocol: expected one of: http, https, ws, wss ('{p}' is not supported)"
                ),
            ),
        }
    }
    let protocol = protocol.unwrap_or(Protocol::Http);
    if let Some(hn) = f.get("host") {
        host = ctx.string(hn, &format!("{what}.host"));
        if let Some(h) = &host
            && !valid_hostname(h)
        {
            ctx.err(hn.pos, format!("{what}.host: invalid hostname '{h}'"));
        }
    }
    if let Some(pn) = f.get("port") {
        port = ctx
            .int(pn, &format!("{what}.port"), 0, 65535)
            .map(|p| p as u16);
    }
    if let Some(pn) = f.get("path") {
        path = ctx.opt_string(Some(pn), &format!("{what}.path"));
        if let Some(p) = &path
            && let Err(e) = validate_service_path(p)
        {
            ctx.err(pn.pos, format!("{what}.path: {e}"));
        }
    }
    let host = match host {
        Some(h) => h,
        None => {
            ctx.err(f.pos, format!("{what}: 'host' or 'url' is required"));
            String::new()
        }
    };
    let port = port.unwrap_or(protocol.default_port());
    let retries = ctx
        .opt_int(f.get("retries"), &format!("{what}.retries"), 0, 32767)
        .unwrap_or(5) as u32;
    let mut timeout = |ctx: &mut Ctx<'_>, key: &str| {
        ctx.opt_int(f.get(key), &format!("{what}.{key}"), 1, MAX_TIMEOUT)
            .unwrap_or(60_000) as u64
    };
    let connect_timeout_ms = timeout(ctx, "connect_timeout");
    let write_timeout_ms = timeout(ctx, "write_timeout");
    let read_timeout_ms = timeout(ctx, "read_timeout");
    let enabled = ctx.opt_bool(f.get("enabled"), &format!("{what}.enabled"), true);
    let tls_verify = match f.get("tls_verify") {
        None
        | Some(Node {
            value: Value::Null, ..
        }) => None,
        Some(n) => ctx.bool(n, &format!("{what}.tls_verify")),
    };
    accept_ignored(&mut f, ctx, &what);
    for key in ["client_certificate", "ca_certificates", "tls_verify_depth"] {
        if let Some(n) = f.get(key)
            && !is_empty(n)
        {
            ctx.err(
                n.pos,
                format!("{what}.{key}: not supported by Portcullis (remove it)"),
            );
        }
    }

    let index = cfg.services.len();
    cfg.services.push(Service {
        id,
        name,
        pos: n.pos,
        protocol,
        host,
        port,
        path,
        retries,
        connect_timeout_ms,
        write_timeout_ms,
        read_timeout_ms,
        enabled,
        tls_verify,
    });
    let routes = f.get("routes");
    for r in ctx.seq(routes, &format!("{what}.routes")) {
        decode_route(r, Some(index), cfg, pending, ctx);
    }
    let plugins = f.get("plugins");
    for p in ctx.seq(plugins, &format!("{what}.plugins")) {
        let scope = Scope {
            service: Some(index),
            ..Scope::default()
        };
        decode_plugin(p, scope, false, cfg, pending, ctx);
    }
    f.finish(ctx, &what);
}

/// Fields Kong accepts on every entity that change nothing at run time.
fn accept_ignored(f: &mut Fields<'_>, ctx: &mut Ctx<'_>, what: &str) {
    if let Some(t) = f.get("tags") {
        ctx.strings(Some(t), &format!("{what}.tags"));
    }
    let _ = f.get("created_at");
    let _ = f.get("updated_at");
}

fn is_empty(n: &Node) -> bool {
    match &n.value {
        Value::Null => true,
        Value::Seq(s) => s.is_empty(),
        _ => false,
    }
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && (h.parse::<std::net::IpAddr>().is_ok()
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::Ipv6Addr>()
                .is_ok()
            || h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'))
}

fn validate_service_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err("should start with: /".into());
    }
    if p.contains("//") {
        return Err("must not have empty segments".into());
    }
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let ok = b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Err(format!(
                    "invalid url-encoded value: '{}'",
                    &p[i..(i + 3).min(p.len())]
                ));
            }
            i += 3;
            continue;
        }
        let allowed = c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&c);
        if !allowed {
            return Err(format!(
                "invalid path: '{p}' (characters outside the RFC 3986 path set)"
            ));
        }
        i += 1;
    }
    Ok(())
}

/// Kong's `url` shorthand: scheme, host, port (80/443 by scheme), path (None when absent).
fn parse_service_url(url: &str) -> Result<(Protocol, String, u16, Option<String>), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("missing scheme in '{url}' (expected http://host[:port][/path])"))?;
    let protocol = Protocol::parse(&scheme.to_ascii_lowercase()).ok_or_else(|| {
        format!("unsupported scheme '{scheme}' (expected http, https, ws or wss)")
    })?;
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    if let Some(p) = path
        && (p.contains('?') || p.contains('#'))
    {
        return Err(format!("a query or fragment is not allowed in '{url}'"));
    }
    if authority.contains('@') {
        return Err(format!("userinfo is not allowed in '{url}'"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or_else(|| format!("invalid IPv6 host in '{url}'"))?;
        let host = &v6[..end];
        let after = &v6[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("invalid host in '{url}'")),
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() || !valid_hostname(&host) {
        return Err(format!("invalid host in '{url}'"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("invalid port '{p}' in '{url}'"))?,
        None => protocol.default_port(),
    };
    if let Some(p) = path {
        validate_service_path(p)?;
    }
    Ok((
        protocol,
        host.to_ascii_lowercase(),
        port,
        path.map(str::to_string),
    ))
}

fn decode_route(
    n: &Node,
    service: Option<usize>,
    cfg: &mut Config,
    pending: &mut Pending,
    ctx: &mut Ctx<'_>,
) {
    let Some(mut f) = ctx.fields(n, "route") else {
        return;
    };
    let name = ctx.opt_string(f.get("name"), "route.name");
    let id = ctx
        .opt_string(f.get("id"), "route.id")
        .unwrap_or_else(|| match &name {
            Some(nm) => entity_id("routes", nm),
            None => entity_id("routes", &format!("#{}", cfg.routes.len())),
        });
    let what = match &name {
        Some(nm) => format!("route '{nm}'"),
        None => "route".to_string(),
    };
    let index = cfg.routes.len();

    // protocols
    let mut http = true;
    let mut https = true;
    if let Some(pn) = f.get("protocols") {
        let list = ctx.strings(Some(pn), &format!("{what}.protocols"));
        if !list.is_empty() {
            http = false;
            https = false;
            for (p, pos) in list {
                match p.as_str() {
                    "http" => http = true,
                    "https" => https = true,
                    other => ctx.err(
                        pos,
                        format!(
                            "{what}.protocols: '{other}' is not supported by Portcullis (http, https)"
                        ),
                    ),
                }
            }
        }
    }

    // Kong skips the "must set one of" check when one of those fields is itself
    // invalid: a route whose only path is a bad regex gets that error, not two.
    let errors_before_matchers = ctx.errors.len();
    let mut methods = Vec::new();
    for (m, pos) in ctx.strings(f.get("methods"), &format!("{what}.methods")) {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            ctx.err(
                pos,
                format!("{what}.methods: invalid value '{m}': expected an uppercase method name"),
            );
        } else {
            methods.push(m);
        }
    }
    let mut hosts = Vec::new();
    for (h, pos) in ctx.strings(f.get("hosts"), &format!("{what}.hosts")) {
        match validate_route_host(&h) {
            Ok(()) => hosts.push(h.to_ascii_lowercase()),
            Err(e) => ctx.err(pos, format!("{what}.hosts: {e}")),
        }
    }
    let mut headers = Vec::new();
    if let Some(hn) = f.get("headers")
        && !matches!(hn.value, Value::Null)
    {
        if let Value::Map(entries) = &hn.value {
            for (k, v) in entries {
                if k.name.eq_ignore_ascii_case("host") {
                    ctx.err(
                        k.pos,
                        format!("{what}.headers: cannot contain 'host' header (use 'hosts')"),
                    );
                    continue;
                }
                if http::HeaderName::from_bytes(k.name.as_bytes()).is_err() {
                    ctx.err(
                        k.pos,
                        format!("{what}.headers: invalid header name '{}'", k.name),
                    );
                    continue;
                }
                let vals: Vec<String> = match &v.value {
                    Value::Seq(_) => ctx
                        .strings(Some(v), &format!("{what}.headers.{}", k.name))
                        .into_iter()
                        .map(|(s, _)| s)
                        .collect(),
                    _ => ctx
                        .string(v, &format!("{what}.headers.{}", k.name))
                        .into_iter()
                        .collect(),
                };
                if vals.is_empty() {
                    ctx.err(
                        v.pos,
                        format!("{what}.headers.{}: at least one value", k.name),
                    );
                    continue;
                }
                headers.push((k.name.to_ascii_lowercase(), vals));
            }
        } else {
            ctx.err(
                hn.pos,
                format!("{what}.headers: expected a map of name: [values]"),
            );
        }
    }

    let legacy = cfg.format_version == "1.1" || cfg.format_version == "2.1";
    let mut paths = Vec::new();
    for (p, pos) in ctx.strings(f.get("paths"), &format!("{what}.paths")) {
        let p = if legacy {
            path::migrate_legacy_path(&p)
        } else {
            p
        };
        if let Some(re) = p.strip_prefix('~') {
            if let Err(e) = path::validate_prefix_path(&p) {
                ctx.err(pos, format!("{what}.paths: {e}"));
                continue;
            }
            if !re.starts_with('/') {
                ctx.err(
                    pos,
                    format!("{what}.paths: should start with: / (fixed path) or ~/ (regex path)"),
                );
                continue;
            }
            if let Err(e) = regex::bytes::Regex::new(&format!("^{re}")) {
                let first = e.to_string();
                let first = first.lines().last().unwrap_or("").trim().to_string();
                ctx.err(
                    pos,
                    format!("{what}.paths: invalid regex: '{re}' ({first})"),
                );
                continue;
            }
        } else if let Err(e) = path::validate_prefix_path(&p) {
            ctx.err(pos, format!("{what}.paths: {e}"));
            continue;
        }
        paths.push(p);
    }
    let matchers_valid = ctx.errors.len() == errors_before_matchers;

    let strip_path = ctx.opt_bool(f.get("strip_path"), &format!("{what}.strip_path"), true);
    let preserve_host = ctx.opt_bool(
        f.get("preserve_host"),
        &format!("{what}.preserve_host"),
        false,
    );
    let regex_priority = ctx
        .opt_int(
            f.get("regex_priority"),
            &format!("{what}.regex_priority"),
            i64::from(i32::MIN),
            i64::from(i32::MAX),
        )
        .unwrap_or(0);
    let https_redirect_status_code = match f.get("https_redirect_status_code") {
        None => 426,
        Some(n) => match ctx.int(n, &format!("{what}.https_redirect_status_code"), 0, 999) {
            Some(c @ (426 | 301 | 302 | 307 | 308)) => c as u16,
            Some(_) => {
                ctx.err(
                    n.pos,
                    format!(
                        "{what}.https_redirect_status_code: expected one of: 426, 301, 302, 307, 308"
                    ),
                );
                426
            }
            None => 426,
        },
    };
    if let Some(n) = f.get("path_handling")
        && let Some(v) = ctx.string(n, &format!("{what}.path_handling"))
        && v != "v0"
        && v != "v1"
    {
        ctx.err(
            n.pos,
            format!("{what}.path_handling: expected one of: v0, v1"),
        );
    }
    for key in ["request_buffering", "response_buffering"] {
        ctx.opt_bool(f.get(key), &format!("{what}.{key}"), true);
    }
    for key in ["snis", "sources", "destinations"] {
        if let Some(n) = f.get(key)
            && !is_empty(n)
        {
            ctx.err(
                n.pos,
                format!("{what}.{key}: not supported by Portcullis (http routes only)"),
            );
        }
    }
    // Expression routes (Kong's expressions flavor; `validate_route` in routes.lua).
    let mut expression = None;
    let mut expression_pos = f.pos;
    if let Some(n) = f.get("expression")
        && !matches!(n.value, Value::Null)
    {
        expression_pos = n.pos;
        if let Some(e) = ctx.string(n, &format!("{what}.expression")) {
            if let Err(message) = crate::router::validate_expression(&e) {
                ctx.err(n.pos, format!("{what}.expression: {message}"));
            }
            expression = Some(e);
        }
    }
    let priority = ctx
        .opt_int(
            f.get("priority"),
            &format!("{what}.priority"),
            0,
            (1 << 46) - 1,
        )
        .unwrap_or(0) as u64;
    let traditional_set =
        !(methods.is_empty() && hosts.is_empty() && headers.is_empty() && paths.is_empty());
    if expression.is_some() {
        if traditional_set {
            ctx.err(
                expression_pos,
                format!("{what}: {}", crate::router::EXPRESSION_WITH_FIELDS),
            );
        }
        if regex_priority != 0 {
            ctx.err(
                f.key_pos("regex_priority").unwrap_or(expression_pos),
                format!(
                    "{what}: Router Expression failed validation: cannot set 'regex_priority' with 'expression' simultaneously"
                ),
            );
        }
    } else if priority != 0 && traditional_set {
        ctx.err(
            f.key_pos("priority").unwrap_or(f.pos),
            format!(
                "{what}: Router Expression failed validation: cannot set 'priority' with 'methods', 'hosts', 'paths', 'headers', 'snis', 'sources' or 'destinations' simultaneously"
            ),
        );
    }
    accept_ignored(&mut f, ctx, &what);

    if matchers_valid && expression.is_none() && !traditional_set {
        ctx.err(
            f.pos,
            format!(
                "{what}: must set one of 'methods', 'hosts', 'headers', 'paths', 'expression' when 'protocols' is 'http'"
            ),
        );
    }

    match (service, f.get("service")) {
        (Some(_), Some(sn)) => ctx.err(
            sn.pos,
            format!("{what}.service: a route nested under a service cannot name another service"),
        ),
        (None, Some(sn)) => {
            if let Some(target) = reference(sn, ctx, &format!("{what}.service")) {
                pending.route_service.push((index, target));
            }
        }
        _ => {}
    }

    methods.shrink_to_fit();
    hosts.shrink_to_fit();
    headers.shrink_to_fit();
    paths.shrink_to_fit();
    cfg.routes.push(Route {
        id,
        name,
        pos: n.pos,
        service,
        http,
        https,
        methods,
        hosts,
        headers,
        paths,
        strip_path,
        preserve_host,
        regex_priority,
        https_redirect_status_code,
        expression,
        expression_pos,
        priority,
    });

    let plugins = f.get("plugins");
    for p in ctx.seq(plugins, &format!("{what}.plugins")) {
        // A plugin nested in a route gets only `route` set, even inside a service (Kong).
        let scope = Scope {
            route: Some(index),
            ..Scope::default()
        };
        decode_plugin(p, scope, false, cfg, pending, ctx);
    }
    f.finish(ctx, &what);
}

fn validate_route_host(h: &str) -> Result<(), String> {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) if !n.contains(':') => (n, Some(p)),
        _ => (h, None),
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(format!("invalid port number in '{h}'"));
    }
    let stars = name.matches('*').count();
    if stars > 1 {
        return Err(format!(
            "invalid wildcard: must have at most one wildcard in '{h}'"
        ));
    }
    if stars == 1 && !(name.starts_with("*.") || name.ends_with(".*")) {
        return Err(format!(
            "invalid wildcard: must be placed at leftmost or rightmost label in '{h}'"
        ));
    }
    let bare = name.trim_start_matches("*.").trim_end_matches(".*");
    if !valid_hostname(bare) {
        return Err(format!("invalid hostname: '{h}'"));
    }
    Ok(())
}

/// A reference to another entity: a string (name or id) or a map `{ id: … }` / `{ name: … }`.
fn reference(n: &Node, ctx: &mut Ctx<'_>, what: &str) -> Option<Ref> {
    match &n.value {
        Value::Map(_) => {
            let mut f = ctx.fields(n, what)?;
            let t = ctx
                .opt_string(f.get("id"), what)
                .or_else(|| ctx.opt_string(f.get("name"), what))
                .or_else(|| ctx.opt_string(f.get("username"), what));
            f.finish(ctx, what);
            t.map(|target| Ref { target, pos: n.pos })
        }
        _ => ctx.string(n, what).map(|target| Ref { target, pos: n.pos }),
    }
}

fn decode_consumer(n: &Node, cfg: &mut Config, pending: &mut Pending, ctx: &mut Ctx<'_>) {
    let Some(mut f) = ctx.fields(n, "consumer") else {
        return;
    };
    let username = ctx.opt_string(f.get("username"), "consumer.username");
    let custom_id = ctx.opt_string(f.get("custom_id"), "consumer.custom_id");
    let what = match (&username, &custom_id) {
        (Some(u), _) => format!("consumer '{u}'"),
        (None, Some(c)) => format!("consumer with custom_id '{c}'"),
        _ => "consumer".into(),
    };
    if username.is_none() && custom_id.is_none() {
        ctx.err(
            f.pos,
            "consumer: at least one of these fields must be non-empty: 'custom_id', 'username'",
        );
    }
    let id = ctx
        .opt_string(f.get("id"), &format!("{what}.id"))
        .unwrap_or_else(|| {
            entity_id(
                "consumers",
                username.as_deref().or(custom_id.as_deref()).unwrap_or("?"),
            )
        });
    accept_ignored(&mut f, ctx, &what);
    let index = cfg.consumers.len();
    cfg.consumers.push(Consumer {
        id,
        username,
        custom_id,
        pos: n.pos,
    });
    let k = f.get("keyauth_credentials");
    for c in ctx.seq(k, &format!("{what}.keyauth_credentials")) {
        pending.keyauth.push((c.clone(), Some(index)));
    }
    let b = f.get("basicauth_credentials");
    for c in ctx.seq(b, &format!("{what}.basicauth_credentials")) {
        pending.basicauth.push((c.clone(), Some(index)));
    }
    let a = f.get("acls");
    for c in ctx.seq(a, &format!("{what}.acls")) {
        pending.acls.push((c.clone(), Some(index)));
    }
    let p = f.get("plugins");
    for pn in ctx.seq(p, &format!("{what}.plugins")) {
        let scope = Scope {
            consumer: Some(index),
            ..Scope::default()
        };
        decode_plugin(pn, scope, false, cfg, pending, ctx);
    }
    f.finish(ctx, &what);
}

fn decode_plugin(
    n: &Node,
    scope: Scope,
    top_level: bool,
    cfg: &mut Config,
    pending: &mut Pending,
    ctx: &mut Ctx<'_>,
) {
    let Some(mut f) = ctx.fields(n, "plugin") else {
        return;
    };
    let name = match f.get("name") {
        Some(nn) => ctx.string(nn, "plugin.name").map(|s| (s, nn.pos)),
        None => {
            ctx.err(f.pos, "plugin.name: required field missing");
            None
        }
    };
    let what = match &name {
        Some((nm, _)) => format!("plugin '{nm}'"),
        None => "plugin".into(),
    };
    let enabled = ctx.opt_bool(f.get("enabled"), &format!("{what}.enabled"), true);
    let _ = f.get("id");
    let _ = f.get("instance_name");
    if let Some(pn) = f.get("protocols") {
        for (p, pos) in ctx.strings(Some(pn), &format!("{what}.protocols")) {
            if !matches!(
                p.as_str(),
                "http" | "https" | "grpc" | "grpcs" | "tcp" | "tls"
            ) {
                ctx.err(pos, format!("{what}.protocols: unknown protocol '{p}'"));
            }
        }
    }
    accept_ignored(&mut f, ctx, &what);
    let mut refs = (None, None, None);
    for (key, slot) in [("route", 0), ("service", 1), ("consumer", 2)] {
        if let Some(rn) = f.get(key) {
            if matches!(rn.value, Value::Null) {
                continue;
            }
            if !top_level {
                ctx.err(
                    rn.pos,
                    format!(
                        "{what}.{key}: a nested plugin takes its {key} from where it is nested"
                    ),
                );
                continue;
            }
            let r = reference(rn, ctx, &format!("{what}.{key}"));
            match slot {
                0 => refs.0 = r,
                1 => refs.1 = r,
                _ => refs.2 = r,
            }
        }
    }
    let config = f.get("config");
    let plugin = name.and_then(|(nm, pos)| plugins::decode(&nm, pos, config, ctx));
    f.finish(ctx, &what);
    let Some(plugin) = plugin else {
        return;
    };
    let index = cfg.plugins.len();
    cfg.plugins.push(PluginEntry {
        name: plugin.name(),
        pos: n.pos,
        scope,
        enabled,
        plugin: Arc::new(plugin),
    });
    if top_level {
        pending.plugin_refs.push((index, refs.0, refs.1, refs.2));
    }
}

fn resolve(cfg: &mut Config, pending: Pending, ctx: &mut Ctx<'_>) {
    let svc_by = index_by(
        cfg.services
            .iter()
            .map(|s| (s.id.as_str(), s.name.as_deref())),
    );
    let cons_by = index_by(
        cfg.consumers
            .iter()
            .map(|c| (c.id.as_str(), c.username.as_deref())),
    );
    let lookup = |map: &HashMap<&str, usize>, r: &Ref, kind: &str, ctx: &mut Ctx<'_>| {
        let found = map.get(r.target.as_str()).copied();
        if found.is_none() {
            ctx.err(
                r.pos,
                format!(
                    "invalid reference '{}: {}' (no such entry in '{kind}s')",
                    kind, r.target
                ),
            );
        }
        found
    };
    for (route, r) in &pending.route_service {
        cfg.routes[*route].service = lookup(&svc_by, r, "service", ctx);
    }
    // Only plugins name routes: no index of 10,000 route ids and names without one.
    let route_by = if pending.plugin_refs.iter().any(|p| p.1.is_some()) {
        index_by(
            cfg.routes
                .iter()
                .map(|r| (r.id.as_str(), r.name.as_deref())),
        )
    } else {
        HashMap::new()
    };
    for (plugin, route, service, consumer) in &pending.plugin_refs {
        let scope = Scope {
            route: route
                .as_ref()
                .and_then(|r| lookup(&route_by, r, "route", ctx)),
            service: service
                .as_ref()
                .and_then(|r| lookup(&svc_by, r, "service", ctx)),
            consumer: consumer
                .as_ref()
                .and_then(|r| lookup(&cons_by, r, "consumer", ctx)),
        };
        cfg.plugins[*plugin].scope = scope;
    }
    for p in &cfg.plugins {
        if p.scope.consumer.is_some() && !p.plugin.consumer_scopable() {
            ctx.err(
                p.pos,
                format!(
                    "plugin '{}': cannot be applied to a consumer (consumer must be null)",
                    p.name
                ),
            );
        }
    }

    // Credentials: nested ones know their consumer; top-level ones name it.
    let consumer_of = |n: &Node,
                       nested: Option<usize>,
                       f: &mut Fields<'_>,
                       ctx: &mut Ctx<'_>,
                       what: &str|
     -> Option<usize> {
        match (nested, f.get("consumer")) {
            (Some(c), None) => Some(c),
            (Some(c), Some(cn)) => {
                // Kong allows repeating the parent; anything else is a conflict.
                let r = reference(cn, ctx, what)?;
                let id = lookup(&cons_by, &r, "consumer", ctx)?;
                if id != c {
                    ctx.err(
                        cn.pos,
                        format!("{what}: conflicts with the enclosing consumer"),
                    );
                }
                Some(c)
            }
            (None, Some(cn)) => {
                let r = reference(cn, ctx, what)?;
                lookup(&cons_by, &r, "consumer", ctx)
            }
            (None, None) => {
                ctx.err(n.pos, format!("{what}: required field missing"));
                None
            }
        }
    };

    for (i, (n, nested)) in pending.keyauth.iter().enumerate() {
        let Some(mut f) = ctx.fields(n, "keyauth_credential") else {
            continue;
        };
        let consumer = consumer_of(n, *nested, &mut f, ctx, "keyauth_credential.consumer");
        let key = ctx.opt_string(f.get("key"), "keyauth_credential.key");
        let id = ctx.opt_string(f.get("id"), "keyauth_credential.id");
        ctx.opt_int(f.get("ttl"), "keyauth_credential.ttl", 0, 100_000_000);
        accept_ignored(&mut f, ctx, "keyauth_credential");
        f.finish(ctx, "keyauth_credential");
        if let (Some(consumer), Some(key)) = (consumer, key) {
            cfg.keyauth_credentials.push(KeyAuthCredential {
                id: id.unwrap_or_else(|| entity_id("keyauth_credentials", &format!("#{i}"))),
                consumer,
                key,
                pos: n.pos,
            });
        }
    }
    for (i, (n, nested)) in pending.basicauth.iter().enumerate() {
        let Some(mut f) = ctx.fields(n, "basicauth_credential") else {
            continue;
        };
        let consumer = consumer_of(n, *nested, &mut f, ctx, "basicauth_credential.consumer");
        let username = match f.get("username") {
            Some(u) => ctx.string(u, "basicauth_credential.username"),
            None => {
                ctx.err(
                    n.pos,
                    "basicauth_credential.username: required field missing",
                );
                None
            }
        };
        let password = match f.get("password") {
            Some(p) => ctx.string(p, "basicauth_credential.password"),
            None => {
                ctx.err(
                    n.pos,
                    "basicauth_credential.password: required field missing",
                );
                None
            }
        };
        let id = ctx.opt_string(f.get("id"), "basicauth_credential.id");
        accept_ignored(&mut f, ctx, "basicauth_credential");
        f.finish(ctx, "basicauth_credential");
        if let (Some(consumer), Some(username), Some(password)) = (consumer, username, password) {
            cfg.basicauth_credentials.push(BasicAuthCredential {
                id: id.unwrap_or_else(|| entity_id("basicauth_credentials", &format!("#{i}"))),
                consumer,
                username,
                password,
                pos: n.pos,
            });
        }
    }
    for (i, (n, nested)) in pending.acls.iter().enumerate() {
        let Some(mut f) = ctx.fields(n, "acl") else {
            continue;
        };
        let consumer = consumer_of(n, *nested, &mut f, ctx, "acl.consumer");
        let group = match f.get("group") {
            Some(g) => ctx.string(g, "acl.group"),
            None => {
                ctx.err(n.pos, "acl.group: required field missing");
                None
            }
        };
        let id = ctx.opt_string(f.get("id"), "acl.id");
        accept_ignored(&mut f, ctx, "acl");
        f.finish(ctx, "acl");
        if let (Some(consumer), Some(group)) = (consumer, group) {
            cfg.acls.push(Acl {
                id: id.unwrap_or_else(|| entity_id("acls", &format!("#{i}"))),
                consumer,
                group,
                pos: n.pos,
            });
        }
    }
}

fn index_by<'a>(
    items: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> HashMap<&'a str, usize> {
    let mut m = HashMap::new();
    for (i, (id, name)) in items.enumerate() {
        m.entry(id).or_insert(i);
        if let Some(n) = name {
            m.entry(n).or_insert(i);
        }
    }
    m
}

fn check_uniqueness(cfg: &Config, ctx: &mut Ctx<'_>) {
    fn uniq<'a>(
        ctx: &mut Ctx<'_>,
        kind: &str,
        field: &str,
        items: impl Iterator<Item = (Option<&'a str>, Pos)>,
    ) -> Vec<Pos> {
        let mut seen = HashMap::new();
        let mut failed = Vec::new();
        for (v, pos) in items {
            let Some(v) = v else { continue };
            if seen.insert(v, pos).is_some() {
                ctx.err(
                    pos,
                    format!("uniqueness violation: '{kind}' entity with {field} set to '{v}' already declared"),
                );
                failed.push(pos);
            }
        }
        failed
    }
    // As Kong does, an entity whose name is already a duplicate is not reported again
    // for its primary key: the id is derived from the name, so it repeats too.
    let dup = uniq(
        ctx,
        "services",
        "name",
        cfg.services.iter().map(|s| (s.name.as_deref(), s.pos)),
    );
    uniq(
        ctx,
        "services",
        "primary key",
        cfg.services
            .iter()
            .filter(|s| !dup.contains(&s.pos))
            .map(|s| (Some(s.id.as_str()), s.pos)),
    );
    let dup = uniq(
        ctx,
        "routes",
        "name",
        cfg.routes.iter().map(|r| (r.name.as_deref(), r.pos)),
    );
    uniq(
        ctx,
        "routes",
        "primary key",
        cfg.routes
            .iter()
            .filter(|r| !dup.contains(&r.pos))
            .map(|r| (Some(r.id.as_str()), r.pos)),
    );
    uniq(
        ctx,
        "consumers",
        "username",
        cfg.consumers.iter().map(|c| (c.username.as_deref(), c.pos)),
    );
    uniq(
        ctx,
        "consumers",
        "custom_id",
        cfg.consumers
            .iter()
            .map(|c| (c.custom_id.as_deref(), c.pos)),
    );
    uniq(
        ctx,
        "keyauth_credentials",
        "key",
        cfg.keyauth_credentials
            .iter()
            .filter(|k| !k.key.is_empty())
            .map(|k| (Some(k.key.as_str()), k.pos)),
    );
    uniq(
        ctx,
        "basicauth_credentials",
        "username",
        cfg.basicauth_credentials
            .iter()
            .map(|b| (Some(b.username.as_str()), b.pos)),
    );
    let mut seen: HashMap<(&str, Scope), Pos> = HashMap::new();
    for p in &cfg.plugins {
        if seen.insert((p.name, p.scope), p.pos).is_some() {
            ctx.err(
                p.pos,
                format!(
                    "uniqueness violation: 'plugins' entity with name '{}' already declared at this {} level",
                    p.name,
                    p.scope.label()
                ),
            );
        }
    }
}
