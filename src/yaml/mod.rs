//! The positioned YAML tree and the walker that reads it while collecting every error
//! with its file:line:col. The bottom layer: it imports no other module of the crate,
//! and every module that reads configuration (config, plugins, lua, tls) uses it.

pub mod raw;
pub mod walk;

pub use walk::{ConfigError, ConfigErrors};
