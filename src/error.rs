//! Every response the gateway makes up itself (no route, upstream failures, plugin
//! refusals) is rendered here, in Kong's formats, so the status/message pairs live in
//! exactly one place.

use crate::body::{self, Body};
use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

/// The `Server` header of every response and the `User-Agent` of the gateway's own
/// requests (jwks).
pub const SERVER: &str = concat!("portcullis/", env!("CARGO_PKG_VERSION"));

/// Why the gateway answers instead of the upstream. One exhaustive match below maps
/// each to Kong's status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// No route matched (client).
    NoRoute,
    /// A route matched but it has no service (config).
    NoService,
    /// The route accepts only https and the request came over http.
    HttpsRequired,
    /// Malformed request (client): bad path escape, missing Host, ...
    BadRequest,
    /// TRACE is refused, as nginx/Kong do.
    MethodNotAllowed,
    /// The request head is larger than `--max-header-bytes` (nginx's 494, which Kong
    /// answers as 400).
    HeaderTooLarge,
    /// The request target is longer than `--max-uri-bytes`.
    UriTooLong,
    /// Upstream refused, reset, or sent an invalid response.
    UpstreamInvalid,
    /// Connect/read/write timeout towards the upstream.
    UpstreamTimeout,
    /// The upstream's host name did not resolve.
    NameResolution,
    /// A bug or an impossible state on our side.
    Internal,
}

/// Which of Kong's two error producers renders this (they negotiate the body differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Producer {
    /// `kong.response.error`: type from Accept only, default JSON.
    Kong,
    /// nginx error_page handler: Accept, else request Content-Type, else text/plain.
    Nginx,
}

impl GatewayError {
    pub fn parts(&self) -> (StatusCode, &'static str, Producer) {
        match self {
            GatewayError::NoRoute => (
                StatusCode::NOT_FOUND,
                "no Route matched with those values",
                Producer::Kong,
            ),
            GatewayError::NoService => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no Service found with those values",
                Producer::Kong,
            ),
            GatewayError::HttpsRequired => (
                StatusCode::UPGRADE_REQUIRED,
                "Please use HTTPS protocol",
                Producer::Kong,
            ),
            GatewayError::BadRequest => (StatusCode::BAD_REQUEST, "Bad request", Producer::Nginx),
            GatewayError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                Producer::Nginx,
            ),
            GatewayError::HeaderTooLarge => (
                StatusCode::BAD_REQUEST,
                "Request header or cookie too large",
                Producer::Nginx,
            ),
            GatewayError::UriTooLong => (StatusCode::URI_TOO_LONG, "URI too long", Producer::Nginx),
            GatewayError::UpstreamInvalid => (
                StatusCode::BAD_GATEWAY,
                "An invalid response was received from the upstream server",
                Producer::Nginx,
            ),
            GatewayError::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "The upstream server is timing out",
                Producer::Nginx,
            ),
            GatewayError::NameResolution => (
                StatusCode::SERVICE_UNAVAILABLE,
                "name resolution failed",
                Producer::Nginx,
            ),
            GatewayError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "An unexpected error occurred",
                Producer::Nginx,
            ),
        }
    }

    /// A short stable name, for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "no_route",
            GatewayError::NoService => "no_service",
            GatewayError::HttpsRequired => "https_required",
            GatewayError::BadRequest => "bad_request",
            GatewayError::MethodNotAllowed => "method_not_allowed",
            GatewayError::HeaderTooLarge => "header_too_large",
            GatewayError::UriTooLong => "uri_too_long",
            GatewayError::UpstreamInvalid => "invalid_response",
            GatewayError::UpstreamTimeout => "timeout",
            GatewayError::NameResolution => "name_resolution",
            GatewayError::Internal => "internal",
        }
    }

    pub fn response(&self, req: &HeaderMap, head: bool, request_id: &str) -> Response<Body> {
        let (status, msg, producer) = self.parts();
        let format = match producer {
            Producer::Kong => Format::from_accept(req),
            Producer::Nginx => Format::from_accept_or_type(req),
        };
        let mut resp = render(format, status, msg, request_id, head);
        if *self == GatewayError::HttpsRequired {
            let h = resp.headers_mut();
            h.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("Upgrade"),
            );
            h.insert(
                http::header::UPGRADE,
                HeaderValue::from_static("TLS/1.2, HTTP/1.1"),
            );
        }
        resp
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Html,
    Xml,
    Plain,
}

impl Format {
    fn from_mime(m: &str) -> Option<Format> {
        let m = m.trim().to_ascii_lowercase();
        Some(match m.as_str() {
            "text/html" => Format::Html,
            "application/json" => Format::Json,
            "application/xml" => Format::Xml,
            "text/plain" => Format::Plain,
            "*/*" => Format::Json,
            "text/*" => Format::Plain,
            "application/*" => Format::Json,
            _ => return None,
        })
    }

    /// Kong's negotiation (kong/tools/http.lua): the Accept entry with the highest q
    /// (first on ties) picks the type; unknown types render JSON.
    fn best_of(accept: &str) -> Format {
        let mut best: Option<(f32, &str)> = None;
        for entry in accept.split(',') {
            let mut parts = entry.split(';');
            let mime = parts.next().unwrap_or("").trim();
            if mime.is_empty() {
                continue;
            }
            let mut q = 1.0f32;
            for p in parts {
                if let Some(v) = p.trim().strip_prefix("q=") {
                    q = v.trim().parse().unwrap_or(1.0);
                }
            }
            if best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, mime));
            }
        }
        best.and_then(|(_, m)| Format::from_mime(m))
            .unwrap_or(Format::Json)
    }

    pub fn from_accept(req: &HeaderMap) -> Format {
        match req.get(ACCEPT).and_then(|v| v.to_str().ok()) {
            Some(a) if !a.trim().is_empty() => Format::best_of(a),
            _ => Format::Json,
        }
    }

    pub fn from_accept_or_type(req: &HeaderMap) -> Format {
        if let Some(a) = req.get(ACCEPT).and_then(|v| v.to_str().ok())
            && !a.trim().is_empty()
        {
            return Format::best_of(a);
        }
        if let Some(ct) = req.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
            let mime = ct.split(';').next().unwrap_or("");
            return Format::from_mime(mime).unwrap_or(Format::Json);
        }
        Format::Plain
    }
}

/// Renders Kong's error templates (kong/templates/error_*.lua equivalents; the message
/// is inserted as is, like Kong does).
pub fn render(
    format: Format,
    status: StatusCode,
    msg: &str,
    request_id: &str,
    head: bool,
) -> Response<Body> {
    let (ctype, text) = render_text(format, msg, request_id);
    let len = text.len();
    let mut resp = Response::new(if head {
        body::empty()
    } else {
        body::full(text)
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// The content type and body of an error in `format` (for `render`, and for answers
/// written on the raw connection when hyper refuses a request head).
pub fn render_text(format: Format, msg: &str, request_id: &str) -> (&'static str, String) {
    match format {
        Format::Json => (
            "application/json; charset=utf-8",
            format!("{{\n  \"message\":\"{msg}\",\n  \"request_id\":\"{request_id}\"\n}}"),
        ),
        Format::Plain => (
            "text/plain; charset=utf-8",
            format!("{msg}\nrequest_id: {request_id}\n"),
        ),
        Format::Xml => (
            "application/xml; charset=utf-8",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<error>\n  <message>{msg}</message>\n  <requestid>{request_id}</requestid>\n</error>\n"
            ),
        ),
        Format::Html => (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html>\n<html>\n  <head>\n    <meta charset=\"utf-8\">\n    <title>Error</title>\n  </head>\n  <body>\n    <h1>Error</h1>\n    <p>{msg}.</p>\n    <p>request_id: {request_id}</p>\n  </body>\n</html>\n"
            ),
        ),
    }
}

/// `kong.response.exit(status, {message = ...})`: JSON without a request id.
pub fn json_message(status: StatusCode, msg: &str, head: bool) -> Response<Body> {
    let text = serde_json::json!({ "message": msg }).to_string();
    json_body(status, text, head)
}

pub fn json_body(status: StatusCode, text: String, head: bool) -> Response<Body> {
    let len = text.len();
    let mut resp = Response::new(if head {
        body::empty()
    } else {
        body::full(text)
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(accept: Option<&str>, ct: Option<&str>, producer: Producer) -> Format {
        let mut h = HeaderMap::new();
        if let Some(a) = accept {
            h.insert(ACCEPT, HeaderValue::from_str(a).unwrap());
        }
        if let Some(c) = ct {
            h.insert(CONTENT_TYPE, HeaderValue::from_str(c).unwrap());
        }
        match producer {
            Producer::Kong => Format::from_accept(&h),
            Producer::Nginx => Format::from_accept_or_type(&h),
        }
    }

    #[test]
    fn negotiation() {
        assert_eq!(fmt(None, None, Producer::Kong), Format::Json);
        assert_eq!(fmt(None, None, Producer::Nginx), Format::Plain);
        assert_eq!(
            fmt(None, Some("application/json"), Producer::Nginx),
            Format::Json
        );
        assert_eq!(
            fmt(None, Some("text/html; charset=x"), Producer::Nginx),
            Format::Html
        );
        assert_eq!(fmt(Some("text/html"), None, Producer::Kong), Format::Html);
        assert_eq!(
            fmt(
                Some("text/plain;q=0.5, application/xml"),
                None,
                Producer::Kong
            ),
            Format::Xml
        );
        assert_eq!(fmt(Some("text/*"), None, Producer::Kong), Format::Plain);
        assert_eq!(fmt(Some("image/png"), None, Producer::Kong), Format::Json);
        assert_eq!(fmt(Some("*/*"), None, Producer::Nginx), Format::Json);
        assert_eq!(
            fmt(Some("text/plain, text/html"), None, Producer::Kong),
            Format::Plain
        );
    }
}
