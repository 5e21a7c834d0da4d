//! Kong's entities (services, routes, consumers, credentials, ACL groups, plugin
//! scopes) with defaults filled in and every reference resolved to an index. Produced
//! by `config::decode`; read by `consumers`, plugins and the proxy. They hold no
//! plugin, so they sit below `plugins`; `config::model::Config` gathers them with the
//! compiled plugins.

use crate::yaml::raw::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Https,
    Ws,
    Wss,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "http" => Some(Protocol::Http),
            "https" => Some(Protocol::Https),
            "ws" => Some(Protocol::Ws),
            "wss" => Some(Protocol::Wss),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Ws => "ws",
            Protocol::Wss => "wss",
        }
    }
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Wss)
    }
    pub fn default_port(self) -> u16 {
        if self.is_tls() { 443 } else { 80 }
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub id: String,
    pub name: Option<String>,
    pub pos: Pos,
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub path: Option<String>,
    pub retries: u32,
    pub connect_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub enabled: bool,
    pub tls_verify: Option<bool>,
}

impl Service {
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub id: String,
    pub name: Option<String>,
    pub pos: Pos,
    pub service: Option<usize>,
    /// true when the route accepts plain http (protocols contains "http").
    pub http: bool,
    /// true when the route accepts https.
    pub https: bool,
    pub methods: Vec<String>,
    pub hosts: Vec<String>,
    pub headers: Vec<(String, Vec<String>)>,
    /// Format-3.0 paths: "/prefix" or "~/regex".
    pub paths: Vec<String>,
    pub strip_path: bool,
    pub preserve_host: bool,
    pub regex_priority: i64,
    pub https_redirect_status_code: u16,
    /// An ATC expression (Kong's expressions flavor); such a route sets no methods, hosts,
    /// headers or paths.
    pub expression: Option<String>,
    /// Where the expression's value is in the file.
    pub expression_pos: Pos,
    /// Order among expression routes (higher first); 0 for other routes.
    pub priority: u64,
}

impl Route {
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

#[derive(Debug, Clone)]
pub struct Consumer {
    pub id: String,
    pub username: Option<String>,
    pub custom_id: Option<String>,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct KeyAuthCredential {
    pub id: String,
    pub consumer: usize,
    pub key: String,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct BasicAuthCredential {
    pub id: String,
    pub consumer: usize,
    pub username: String,
    pub password: String,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct Acl {
    pub id: String,
    pub consumer: usize,
    pub group: String,
    pub pos: Pos,
}

/// Where a plugin is attached. Kong's precedence picks the most specific one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scope {
    pub route: Option<usize>,
    pub service: Option<usize>,
    pub consumer: Option<usize>,
}

impl Scope {
    /// Kong's precedence rank (lower = more specific; config/plugins iterator order):
    /// Route+Service+Consumer, Route+Consumer, Service+Consumer, Route+Service,
    /// Consumer, Route, Service, Global.
    pub fn rank(&self) -> u8 {
        match (
            self.route.is_some(),
            self.service.is_some(),
            self.consumer.is_some(),
        ) {
            (true, true, true) => 0,
            (true, false, true) => 1,
            (false, true, true) => 2,
            (true, true, false) => 3,
            (false, false, true) => 4,
            (true, false, false) => 5,
            (false, true, false) => 6,
            (false, false, false) => 7,
        }
    }

    pub fn label(&self) -> &'static str {
        match (
            self.route.is_some(),
            self.service.is_some(),
            self.consumer.is_some(),
        ) {
            (false, false, false) => "global",
            (false, true, false) => "service",
            (true, false, false) => "route",
            (true, true, false) => "route+service",
            (_, _, true) => "consumer",
        }
    }
}
