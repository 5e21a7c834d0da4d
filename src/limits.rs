//! Request and connection limits, shared by the listeners (`server`, which sizes
//! hyper's buffers from them) and the proxy (which checks each request head). Their
//! nginx/Kong answers are described in `server`.

use crate::error::GatewayError;
use std::time::Duration;

/// Request and connection limits (flags `--max-header-bytes`, `--max-uri-bytes`,
/// `--header-timeout`, `--max-connections`, `--idle-timeout`, `--send-timeout`,
/// `--body-timeout` and the `--h2-*` ones).
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
    /// An HTTP/2 connection with no stream open this long gets GOAWAY (nginx's
    /// `keepalive_timeout` for HTTP/2). Zero: never.
    pub idle_timeout: Duration,
    /// A response the client does not take for this long (socket not read, HTTP/2
    /// window kept shut) closes the connection (nginx's `send_timeout`). Zero: never.
    pub send_timeout: Duration,
    /// A request body that a plugin reads whole must arrive within this (else 408,
    /// nginx's `client_body_timeout`). Zero: no limit.
    pub body_timeout: Duration,
    /// HTTP/2 streams a client may have open at once (nginx's
    /// `http2_max_concurrent_streams`); more are refused with RST_STREAM.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams the client opened and reset before they were served
    /// (CVE-2023-44487, rapid reset), over which the connection gets GOAWAY.
    pub h2_max_pending_resets: usize,
    /// HTTP/2 streams the gateway had to reset for protocol errors, over which the
    /// connection gets GOAWAY.
    pub h2_max_error_resets: usize,
    /// Response bytes buffered per HTTP/2 stream for a client that is not reading.
    pub h2_max_send_buffer: usize,
    /// Interval of HTTP/2 PINGs to the client; one unanswered for 20 s closes the
    /// connection. Zero: no pings.
    pub h2_keepalive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 32 * 1024,
            max_uri_bytes: 8 * 1024,
            header_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            h2_max_concurrent_streams: 128,
            h2_max_pending_resets: 20,
            h2_max_error_resets: 1024,
            h2_max_send_buffer: 400 * 1024,
            h2_keepalive: Duration::ZERO,
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
