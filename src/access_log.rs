//! One line per request on stdout, written when the response body has been fully
//! sent (or abandoned), so the byte count is the real one: nginx `combined` (what
//! Supabase's log pipeline parses) or JSON.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::io::Write;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::body::{BoxError, ResponseBody};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Combined,
    Json,
    Off,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "combined" => Ok(Format::Combined),
            "json" => Ok(Format::Json),
            "off" => Ok(Format::Off),
            other => Err(format!(
                "invalid access log format '{other}' (expected combined, json or off)"
            )),
        }
    }
}

/// What the log line needs; filled in as the request goes.
pub struct Record {
    pub format: Format,
    pub client_ip: IpAddr,
    pub remote_user: Option<String>,
    pub method: String,
    pub target: String,
    pub version: &'static str,
    pub status: u16,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    pub route: Option<std::sync::Arc<str>>,
    pub service: Option<std::sync::Arc<str>>,
    pub request_id: String,
    pub start: Instant,
    pub upstream_ms: Option<u128>,
    /// mcp-policy's verdict: JSON-RPC method, tool/resource/prompt, allowed.
    pub mcp: Option<(String, Option<String>, bool)>,
}

impl Record {
    fn write(&self, bytes: u64) {
        let line = match self.format {
            Format::Off => return,
            Format::Combined => self.combined(bytes),
            Format::Json => self.json(bytes),
        };
        let mut out = std::io::stdout().lock();
        // A closed stdout must not take the gateway down; the line is lost, that's all.
        let _ = out.write_all(line.as_bytes());
    }

    pub fn combined(&self, bytes: u64) -> String {
        let time = chrono::Local::now().format("%d/%b/%Y:%H:%M:%S %z");
        let dash = |o: &Option<String>| match o {
            Some(s) if !s.is_empty() => escape(s),
            _ => "-".to_string(),
        };
        format!(
            "{} - {} [{}] \"{} {} {}\" {} {} \"{}\" \"{}\"\n",
            self.client_ip,
            dash(&self.remote_user),
            time,
            escape(&self.method),
            escape(&self.target),
            self.version,
            self.status,
            bytes,
            dash(&self.referer),
            dash(&self.user_agent),
        )
    }

    pub fn json(&self, bytes: u64) -> String {
        let mut v = serde_json::json!({
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "route": self.route.as_deref(),
            "service": self.service.as_deref(),
            "method": self.method,
            "path": self.target,
            "status": self.status,
            "bytes": bytes,
            "latency_ms": self.start.elapsed().as_millis() as u64,
            "upstream_latency_ms": self.upstream_ms.map(|m| m as u64),
            "client_ip": self.client_ip.to_string(),
            "request_id": self.request_id,
        });
        if let Some((method, name, allowed)) = &self.mcp {
            v["mcp_method"] = method.as_str().into();
            v["mcp_name"] = name.as_deref().into();
            v["mcp_decision"] = if *allowed { "allowed" } else { "denied" }.into();
        }
        let mut s = v.to_string();
        s.push('\n');
        s
    }
}

/// The line for a request hyper refused before it was parsed (bad request line, head
/// or target too large): there is no method or target, so the request field is `"-"`
/// (combined) or null (JSON), and `error` says why.
pub fn write_rejected(
    format: Format,
    client_ip: IpAddr,
    status: u16,
    bytes: u64,
    request_id: &str,
    error: &str,
) {
    let line = match format {
        Format::Off => return,
        Format::Combined => format!(
            "{client_ip} - - [{}] \"-\" {status} {bytes} \"-\" \"-\"\n",
            chrono::Local::now().format("%d/%b/%Y:%H:%M:%S %z")
        ),
        Format::Json => {
            let mut s = serde_json::json!({
                "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "route": null,
                "service": null,
                "method": null,
                "path": null,
                "status": status,
                "bytes": bytes,
                "latency_ms": 0,
                "upstream_latency_ms": null,
                "client_ip": client_ip.to_string(),
                "request_id": request_id,
                "error": error,
            })
            .to_string();
            s.push('\n');
            s
        }
    };
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}

/// nginx's default log escaping: `"`, `\`, control and non-ASCII bytes become \xHH.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Wraps a response body, counts the bytes sent and, when the body ends (or the
/// client goes away), writes the log line (if logging is on) and counts the request
/// in the metrics.
pub struct LoggedBody {
    inner: ResponseBody,
    bytes: u64,
    record: Option<Box<Record>>,
    metrics: Option<crate::metrics::Finish>,
}

impl LoggedBody {
    pub fn new(
        inner: ResponseBody,
        record: Option<Box<Record>>,
        metrics: crate::metrics::Finish,
    ) -> LoggedBody {
        LoggedBody {
            inner,
            bytes: 0,
            record,
            metrics: Some(metrics),
        }
    }
    fn finish(&mut self) {
        if let Some(r) = self.record.take() {
            r.write(self.bytes);
        }
        if let Some(m) = self.metrics.take() {
            m.done();
        }
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_carries_the_mcp_verdict() {
        let mut r = Record {
            format: Format::Json,
            client_ip: "127.0.0.1".parse().unwrap(),
            remote_user: None,
            method: "POST".into(),
            target: "/mcp".into(),
            version: "HTTP/1.1",
            status: 200,
            referer: None,
            user_agent: None,
            route: None,
            service: None,
            request_id: "r".into(),
            start: Instant::now(),
            upstream_ms: None,
            mcp: None,
        };
        let plain: serde_json::Value = serde_json::from_str(&r.json(0)).unwrap();
        assert!(plain.get("mcp_method").is_none());
        r.mcp = Some(("tools/call".into(), Some("execute_sql".into()), false));
        let v: serde_json::Value = serde_json::from_str(&r.json(0)).unwrap();
        assert_eq!(v["mcp_method"], "tools/call");
        assert_eq!(v["mcp_name"], "execute_sql");
        assert_eq!(v["mcp_decision"], "denied");
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("a\"b\\c\x01é"), "a\\x22b\\x5Cc\\x01\\xC3\\xA9");
    }
}
