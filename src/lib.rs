pub mod config;
pub mod cors;
pub mod ipset;
pub mod path;
pub mod router;
