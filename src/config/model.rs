//! The validated configuration: Kong's entities (`crate::entities`, re-exported here)
//! and the compiled plugins attached to them. Produced by `decode`, consumed by
//! `compile`.

pub use crate::entities::*;
use crate::plugins::Plugin;
use crate::yaml::raw::Pos;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct PluginEntry {
    pub name: &'static str,
    pub pos: Pos,
    pub scope: Scope,
    pub enabled: bool,
    pub plugin: Arc<Plugin>,
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub format_version: String,
    pub transform: bool,
    pub services: Vec<Service>,
    pub routes: Vec<Route>,
    pub consumers: Vec<Consumer>,
    pub plugins: Vec<PluginEntry>,
    pub keyauth_credentials: Vec<KeyAuthCredential>,
    pub basicauth_credentials: Vec<BasicAuthCredential>,
    pub acls: Vec<Acl>,
}
