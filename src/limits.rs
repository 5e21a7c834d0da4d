//! Request and connection limits, shared by the listeners (`server`, which sizes
//! hyper's buffers from them) and the proxy (which checks each request head). Their
//! nginx/Kong answers are described in `server`.

use crate::error::GatewayError;
use std::time::Duration;

/// Request and connection limits (flags `--max-header-bytes`, `--max-uri-bytes`,
/// `--header-timeout`, `--max-connections`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Request line plus headers (name, value, `: ` and CRLF each). nginx's
    /// `large_client_header_buffers 4 8k` allows about 32 KiB.
    pub max_header_bytes: usize,
    /// Request target (path and query). nginx: one 8 KiB buffer for the request line.
    pub max_uri_bytes: usize,
    /// TLS handshake + first request head, and each later HTTP/1.1 request head.
    pub header_timeout: Duration,
    /// Open client connections across the proxy listeners.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 32 * 1024,
            max_uri_bytes: 8 * 1024,
            header_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

impl Limits {
    /// The gateway error for a request head over a limit, if it is.
    pub fn check_head(&self, parts: &http::request::Parts) -> Option<GatewayError> {
        let target = parts.uri.path_and_query().map_or(1, |p| p.as_str().len());
        if target > self.max_uri_bytes {
            return Some(GatewayError::UriTooLong);
        }
        // "METHOD target HTTP/1.1\r\n", then "name: value\r\n" per header.
        let mut size = parts.method.as_str().len() + target + 11;
        for (name, value) in &parts.headers {
            size += name.as_str().len() + value.len() + 4;
            if size > self.max_header_bytes {
                return Some(GatewayError::HeaderTooLarge);
            }
        }
        None
    }
}
