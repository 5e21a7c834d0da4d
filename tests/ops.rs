//! Operations, black box: TLS (configured, self-signed, reloaded), HTTP/2 over TLS and
//! h2c with streamed bodies, /metrics after known traffic, graceful drain on SIGTERM,
//! the header timeout against slowloris, Kong's answers for oversized heads and URIs,
//! the connection limit, https upstreams (trusted, untrusted, tls_verify: false) and
//! large upstream response headers.
//!
//! In-process gateways (`server::run`, `run_tls`, `run_status` on 127.0.0.1:0) where
//! the test needs to reach inside; the real binary for signals, flags and the access
//! log. No fixed ports; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::process::{Finished, GatewayBuilder, GatewayProcess};
use common::{Resp, echo_handler, echo_upstream, echoed, get, send, serve_upstream};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::body::BoxError;
use portcullis::proxy::{Gateway, Settings};
use portcullis::server::Limits;
use portcullis::tls::ServerCerts;
use portcullis::upstream::ClientCache;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::HashMap;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------
// Harness: an in-process gateway with all three listeners
// ---------------------------------------------------------------------------------

struct Gw {
    addr: SocketAddr,
    tls: Option<SocketAddr>,
    status: SocketAddr,
    gw: Arc<Gateway>,
    config: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Opts {
    settings: Settings,
    clients: ClientCache,
    certs: Option<ServerCerts>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            settings: Settings {
                access_log: portcullis::access_log::Format::Off,
                ..Settings::default()
            },
            clients: ClientCache::default(),
            certs: None,
        }
    }
}

async fn start(yaml: &str, o: Opts) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, yaml).unwrap();
    let snap = match portcullis::config::load(config.to_str().unwrap(), 1, &o.clients) {
        Ok(s) => s,
        Err(e) => panic!("test config invalid:\n{e}"),
    };
    let mut gateway = Gateway::new(snap, o.settings, o.clients);
    let with_tls = o.certs.is_some();
    gateway.tls = o.certs.map(Arc::new);
    let gw = Arc::new(gateway);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let shutdown = move || {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    };
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(portcullis::server::run(Arc::clone(&gw), l, shutdown()));
    let tls = if with_tls {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(portcullis::server::run_tls(Arc::clone(&gw), l, shutdown()));
        Some(a)
    } else {
        None
    };
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let status = l.local_addr().unwrap();
    tokio::spawn(portcullis::server::run_status(
        Arc::clone(&gw),
        l,
        shutdown(),
    ));
    Gw {
        addr,
        tls,
        status,
        gw,
        config,
        stop,
        _dir: dir,
    }
}

fn echo_cfg(up: SocketAddr) -> String {
    format!(
        "_format_version: \"3.0\"\nservices:\n  - name: echo-svc\n    url: http://{up}/\n    routes:\n      - name: echo-route\n        paths: [/echo]\n        strip_path: false\n"
    )
}

// ---------------------------------------------------------------------------------
// Certificates and TLS clients
// ---------------------------------------------------------------------------------

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn self_signed(names: &[&str]) -> Pair {
    let g =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    Pair {
        cert_pem: g.cert.pem(),
        key_pem: g.signing_key.serialize_pem(),
        der: g.cert.der().clone(),
    }
}

/// A CA and a server certificate it signed for localhost and 127.0.0.1.
struct TestCa {
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    leaf: Pair,
}

fn test_ca() -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Portcullis test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    TestCa {
        ca_der: ca.der().clone(),
        ca_pem: ca.pem(),
        leaf: Pair {
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
            der: leaf.der().clone(),
        },
    }
}

fn write_pair(dir: &Path, p: &Pair) -> (PathBuf, PathBuf) {
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&cert, &p.cert_pem).unwrap();
    std::fs::write(&key, &p.key_pem).unwrap();
    (cert, key)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate: for looking at what the server presents.
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `addr` for "localhost", trusting `root` (None: anything).
async fn tls_connect(
    addr: SocketAddr,
    root: Option<&CertificateDer<'static>>,
    alpn: &[&[u8]],
) -> Result<Tls, std::io::Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut cfg = match root {
        Some(r) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(r.clone()).unwrap();
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    tokio::time::timeout(
        WAIT,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("TLS handshake timed out")
}

fn peer_cert(s: &Tls) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// One HTTP/1.1 request over an established stream.
async fn h1_over<S>(io: S, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder()
        .method(method)
        .uri(target)
        .header("host", "localhost");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tokio::time::timeout(WAIT, sender.send_request(b.body(empty()).unwrap()))
        .await
        .expect("response timed out")
        .unwrap();
    collect(resp).await
}

/// `f`, or a panic after `WAIT`.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

fn empty() -> http_body_util::Full<Bytes> {
    http_body_util::Full::new(Bytes::new())
}

async fn collect(resp: Response<Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body timed out")
        .unwrap()
        .to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

// ---------------------------------------------------------------------------------
// 1. TLS
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn tls_with_configured_cert_and_forwarded_proto_https() {
    let up = echo_upstream().await;
    let pair = self_signed(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &pair);
    let yaml = format!(
        "{}      - name: secure\n        paths: [/secure]\n        protocols: [https]\n",
        echo_cfg(up)
    );
    let g = start(
        &yaml,
        Opts {
            certs: Some(ServerCerts::from_files(&cert, &key).unwrap()),
            ..Opts::default()
        },
    )
    .await;
    let tls_addr = g.tls.unwrap();

    let s = tls_connect(tls_addr, Some(&pair.der), &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(peer_cert(&s), pair.der);
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = h1_over(s, "GET", "/echo/x", &[]).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(echoed(&j, "x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        echoed(&j, "x-forwarded-port"),
        Some(tls_addr.port().to_string())
    );

    // An https-only route: served over TLS, 426 over plain http.
    let s = tls_connect(tls_addr, Some(&pair.der), &[]).await.unwrap();
    assert_eq!(h1_over(s, "GET", "/secure", &[]).await.status, 200);
    assert_eq!(get(g.addr, "/secure").await.status, 426);
    // Over plain http the same route reports http.
    let j = get(g.addr, "/echo/y").await.json();
    assert_eq!(echoed(&j, "x-forwarded-proto").as_deref(), Some("http"));

    // A client that does not trust the certificate gets no connection.
    let other = self_signed(&["localhost"]);
    assert!(tls_connect(tls_addr, Some(&other.der), &[]).await.is_err());
}

#[tokio::test]
async fn certificate_files_reload_with_the_config() {
    let up = echo_upstream().await;
    let first = self_signed(&["localhost"]);
    let certs_dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(certs_dir.path(), &first);
    let g = start(
        &echo_cfg(up),
        Opts {
            certs: Some(ServerCerts::from_files(&cert, &key).unwrap()),
            ..Opts::default()
        },
    )
    .await;
    let tls_addr = g.tls.unwrap();
    let reload = |gw: Arc<Gateway>, path: PathBuf| async move {
        tokio::task::spawn_blocking(move || {
            portcullis::reload::reload(&gw, &path).map_err(|e| e.to_string())
        })
        .await
        .unwrap()
    };

    // A keep-alive connection made on the first certificate.
    let old = tls_connect(tls_addr, Some(&first.der), &[b"http/1.1"])
        .await
        .unwrap();
    let (mut old_conn, conn) = hyper::client::conn::http1::handshake(TokioIo::new(old))
        .await
        .unwrap();
    tokio::spawn(conn);

    // New files: the reload (config unchanged) swaps the certificate.
    let second = self_signed(&["localhost"]);
    write_pair(certs_dir.path(), &second);
    assert_eq!(
        reload(Arc::clone(&g.gw), g.config.clone()).await,
        Ok(portcullis::reload::Outcome::Unchanged(1))
    );
    let s = tls_connect(tls_addr, Some(&second.der), &[]).await.unwrap();
    assert_eq!(peer_cert(&s), second.der);
    assert!(tls_connect(tls_addr, Some(&first.der), &[]).await.is_err());
    // The connection made before the swap goes on.
    let req = Request::get("/echo/old")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let r = collect(bounded(old_conn.send_request(req)).await.unwrap()).await;
    assert_eq!(r.status, 200);

    // A bad certificate fails the reload like a bad config: the current one stays.
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = reload(Arc::clone(&g.gw), g.config.clone())
        .await
        .unwrap_err();
    assert!(
        err.starts_with(&format!("{}:1:1: ", cert.display())),
        "{err}"
    );
    let s = tls_connect(tls_addr, Some(&second.der), &[]).await.unwrap();
    assert_eq!(peer_cert(&s), second.der);
    let st = get(g.status, "/status").await.json();
    assert!(
        st["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("server.crt"),
        "{st}"
    );
    // A key that does not match the certificate is refused too.
    let third = self_signed(&["localhost"]);
    std::fs::write(&cert, &third.cert_pem).unwrap();
    let err = reload(Arc::clone(&g.gw), g.config.clone())
        .await
        .unwrap_err();
    assert!(err.contains("cannot be used with the key"), "{err}");
    let m = metrics(g.status).await;
    assert_eq!(
        m.get("portcullis_config_reloads_total{outcome=\"failed\"}"),
        Some(&2.0)
    );
    assert_eq!(
        m.get("portcullis_config_reloads_total{outcome=\"unchanged\"}"),
        Some(&1.0)
    );
}

// ---------------------------------------------------------------------------------
// 2. HTTP/2: over TLS (ALPN) and cleartext prior knowledge, streaming both ways
// ---------------------------------------------------------------------------------

/// An upstream that streams the request body straight back.
async fn stream_echo_upstream() -> SocketAddr {
    serve_upstream(|req: Request<Incoming>| async move {
        let body = req.into_body().map_err(|e| Box::new(e) as BoxError).boxed();
        Response::builder()
            .header("content-type", "application/octet-stream")
            .body(body)
            .unwrap()
    })
    .await
}

type H2Sender =
    hyper::client::conn::http2::SendRequest<http_body_util::combinators::BoxBody<Bytes, BoxError>>;

/// Sends a POST whose body is written chunk by chunk, and checks that each chunk comes
/// back before the next one is sent: both bodies stream through the gateway.
async fn streamed_roundtrip(mut sender: H2Sender, uri: &str) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let body = StreamBody::new(common::tokio_stream_from(rx)).boxed();
    let req = Request::post(uri).body(body).unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"chunk-1;"))))
        .await
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("no response head while the request body is still open")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert!(resp.headers().get("x-kong-request-id").is_some());
    let mut body = resp.into_body();
    let mut got = Vec::new();
    for i in 1..=3 {
        let want = format!("chunk-{i};");
        while got.len() < want.len() {
            let f = tokio::time::timeout(WAIT, body.frame())
                .await
                .unwrap_or_else(|_| {
                    panic!("chunk {i} did not come back while the request was open")
                })
                .unwrap()
                .unwrap();
            if let Ok(d) = f.into_data() {
                got.extend_from_slice(&d);
            }
        }
        assert_eq!(String::from_utf8_lossy(&got), want);
        got.clear();
        if i < 3 {
            let next = format!("chunk-{};", i + 1);
            tx.send(Ok(Frame::data(Bytes::from(next)))).await.unwrap();
        }
    }
    drop(tx);
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn http2_over_tls_by_alpn_with_streamed_bodies() {
    let up = stream_echo_upstream().await;
    let g = start(
        &echo_cfg(up),
        Opts {
            certs: Some(ServerCerts::self_signed().unwrap()),
            ..Opts::default()
        },
    )
    .await;
    let s = tls_connect(g.tls.unwrap(), None, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    streamed_roundtrip(sender, "https://localhost/echo/stream").await;
}

#[tokio::test]
async fn h2c_prior_knowledge_with_streamed_bodies() {
    let up = stream_echo_upstream().await;
    let g = start(&echo_cfg(up), Opts::default()).await;
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    streamed_roundtrip(sender.clone(), "http://localhost/echo/stream").await;

    // The upstream hears HTTP/1.1 with the client's protocol named in Via.
    let up2 = echo_upstream().await;
    let g2 = start(&echo_cfg(up2), Opts::default()).await;
    let tcp = TcpStream::connect(g2.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://localhost/echo/v")
        .body(
            http_body_util::Empty::<Bytes>::new()
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap();
    let r = collect(bounded(sender.send_request(req)).await.unwrap()).await;
    let j = r.json();
    assert_eq!(j["version"], "HTTP/1.1");
    assert!(echoed(&j, "via").unwrap().starts_with("2 portcullis/"));
    assert_eq!(echoed(&j, "host").as_deref(), Some(&*up2.to_string()));
}

// ---------------------------------------------------------------------------------
// 3. Metrics
// ---------------------------------------------------------------------------------

/// /metrics as `series → value` (series written as in the text, labels included).
async fn metrics(status: SocketAddr) -> HashMap<String, f64> {
    let r = get(status, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = r.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse::<f64>().unwrap())
        })
        .collect()
}

/// Polls /metrics until `check` holds (counts land when response bodies end).
async fn metrics_until(
    status: SocketAddr,
    check: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = metrics(status).await;
        if check(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "metrics never matched: {m:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_count_known_traffic() {
    let up = echo_upstream().await;
    // A port with nothing listening: connection refused, 502.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let yaml = format!(
        "{}  - name: dead-svc\n    url: http://{dead_addr}/\n    retries: 0\n    routes:\n      - name: dead-route\n        paths: [/dead]\n",
        echo_cfg(up)
    );
    let g = start(&yaml, Opts::default()).await;
    for _ in 0..3 {
        assert_eq!(get(g.addr, "/echo/a").await.status, 200);
    }
    assert_eq!(get(g.addr, "/echo/status-503").await.status, 503);
    for _ in 0..2 {
        assert_eq!(get(g.addr, "/nowhere").await.status, 404);
    }
    assert_eq!(get(g.addr, "/dead").await.status, 502);
    // One connection held open.
    let mut held = TcpStream::connect(g.addr).await.unwrap();
    held.write_all(b"GET /echo/held HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = bounded(held.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let gw = Arc::clone(&g.gw);
    let path = g.config.clone();
    tokio::task::spawn_blocking(move || portcullis::reload::reload(&gw, &path))
        .await
        .unwrap()
        .unwrap();

    let req = |route: &str, service: &str, class: &str| {
        format!(
            "portcullis_http_requests_total{{route=\"{route}\",service=\"{service}\",status_class=\"{class}\"}}"
        )
    };
    let (ok, unavailable, nf, bad) = (
        req("echo-route", "echo-svc", "2xx"),
        req("echo-route", "echo-svc", "5xx"),
        req("", "", "4xx"),
        req("dead-route", "dead-svc", "5xx"),
    );
    let m = metrics_until(g.status, |m| m.get(&ok) == Some(&4.0)).await;
    assert_eq!(m.get(&unavailable), Some(&1.0), "{m:#?}");
    assert_eq!(m.get(&nf), Some(&2.0));
    assert_eq!(m.get(&bad), Some(&1.0));
    let h = "{route=\"echo-route\",service=\"echo-svc\"}";
    assert_eq!(
        m.get(&format!("portcullis_request_duration_seconds_count{h}")),
        Some(&5.0)
    );
    assert_eq!(
        m.get(&format!("portcullis_upstream_duration_seconds_count{h}")),
        Some(&5.0)
    );
    assert_eq!(
        m.get(
            "portcullis_request_duration_seconds_bucket{le=\"+Inf\",route=\"echo-route\",service=\"echo-svc\"}"
        ),
        Some(&5.0),
        "{m:#?}"
    );
    // The failed exchange is not an upstream latency but an upstream error.
    assert_eq!(
        m.get(
            "portcullis_upstream_duration_seconds_count{route=\"dead-route\",service=\"dead-svc\"}"
        ),
        None
    );
    assert_eq!(
        m.get("portcullis_upstream_errors_total{service=\"dead-svc\",kind=\"invalid_response\"}"),
        Some(&1.0)
    );
    assert_eq!(
        m.get("portcullis_open_connections{listener=\"http\"}"),
        Some(&1.0)
    );
    // 3 + 1 + 2 + 1 one-shot connections, and the held one.
    assert_eq!(
        m.get("portcullis_connections_total{listener=\"http\"}"),
        Some(&8.0)
    );
    assert_eq!(
        m.get("portcullis_config_reloads_total{outcome=\"unchanged\"}"),
        Some(&1.0)
    );
    assert_eq!(m.get("portcullis_config_generation"), Some(&1.0));
    assert_eq!(m.get("portcullis_draining"), Some(&0.0));

    drop(held);
    metrics_until(g.status, |m| {
        m.get("portcullis_open_connections{listener=\"http\"}") == Some(&0.0)
    })
    .await;
}

// ---------------------------------------------------------------------------------
// 4. Limits: slowloris, oversized heads and URIs, the connection limit
// ---------------------------------------------------------------------------------

/// Reads until the server closes; panics if that takes longer than `WAIT`.
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection was not closed; got {:?}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn limits(f: impl FnOnce(&mut Limits)) -> Opts {
    let mut o = Opts::default();
    f(&mut o.settings.limits);
    o
}

#[tokio::test]
async fn slowloris_connections_are_closed_after_the_header_timeout() {
    let up = echo_upstream().await;
    let mut o = limits(|l| l.header_timeout = Duration::from_millis(700));
    o.certs = Some(ServerCerts::self_signed().unwrap());
    let g = start(&echo_cfg(up), o).await;

    // A partial header block, then nothing: closed without an answer (as nginx does).
    let started = Instant::now();
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"GET /echo/x HTTP/1.1\r\nHost: a\r\nX-Slow: 1")
        .await
        .unwrap();
    let got = read_to_close(&mut s).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );

    // Nothing at all, on plain and on TLS (no handshake).
    let started = Instant::now();
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    assert!(read_to_close(&mut s).await.is_empty());
    let mut t = TcpStream::connect(g.tls.unwrap()).await.unwrap();
    assert!(read_to_close(&mut t).await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(600));

    // Trickling bytes does not extend it: one byte every 200 ms.
    let started = Instant::now();
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    let trickle = b"GET /echo/x HTTP/1.1\r\nHost: a\r\nX-A: bbbbbbbbbbbbbbbbbbbbbbbb";
    let mut closed = false;
    for b in trickle {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !closed {
        assert!(read_to_close(&mut s).await.is_empty());
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // An ordinary request on time is served, and its idle keep-alive connection is
    // closed after the same timeout.
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"GET /echo/ok HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let got = read_to_close(&mut s).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );

    // A keep-alive connection's second head, sent only in part after the first
    // response, is cut the same way: one answer only, then the close.
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"GET /echo/ok HTTP/1.1\r\nHost: a\r\n\r\nGET /echo/second HTTP/1.1\r\nHost: a\r\nX-Slow: 1")
        .await
        .unwrap();
    let started = Instant::now();
    let got = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("/echo/second"), "{text}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(5),
        "{took:?}"
    );

    metrics_until(g.status, |m| {
        m.get("portcullis_connection_errors_total{reason=\"header_timeout\"}")
            .is_some_and(|v| *v >= 5.0)
    })
    .await;
}

#[tokio::test]
async fn oversized_heads_and_uris_get_kongs_answers() {
    let up = echo_upstream().await;
    // 4 KiB for the head; hyper's buffer can't go below 8 KiB, so heads between the two
    // are refused by the gateway and bigger ones on the wire: both answer like Kong.
    let g = start(
        &echo_cfg(up),
        limits(|l| {
            l.max_header_bytes = 4096;
            l.max_uri_bytes = 1024;
        }),
    )
    .await;
    let ok = send(
        g.addr,
        "GET",
        "/echo/x",
        &[("x-big", &"a".repeat(3000))],
        b"",
    )
    .await;
    assert_eq!(ok.status, 200);

    // 6 KiB of headers: 400, negotiated like any nginx error (JSON from Accept).
    let big = "a".repeat(6000);
    let r = send(
        g.addr,
        "GET",
        "/echo/x",
        &[("cookie", &big), ("accept", "application/json")],
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["message"], "Request header or cookie too large");
    assert_eq!(
        r.json()["request_id"].as_str(),
        r.header("x-kong-request-id").as_deref()
    );

    // 40 KiB: more than hyper holds; the same answer, written on the wire, then close.
    let huge = "a".repeat(40 * 1024);
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    let req = format!("GET /echo/x HTTP/1.1\r\nHost: a\r\nCookie: {huge}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let got = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    assert!(
        got.contains("\r\ncontent-type: text/plain; charset=utf-8\r\n"),
        "{got}"
    );
    assert!(got.contains("\r\nx-kong-request-id: "), "{got}");
    assert!(
        got.contains("\r\n\r\nRequest header or cookie too large\nrequest_id: "),
        "{got}"
    );

    // Too many header lines (hyper's 100) is the same refusal.
    let mut many = String::from("GET /echo/x HTTP/1.1\r\nHost: a\r\n");
    for i in 0..120 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let got = common::raw(g.addr, many.as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    assert!(got.contains("Request header or cookie too large"), "{got}");

    // A request target over the limit: 414.
    let long = format!("/echo/{}", "b".repeat(1100));
    let r = send(g.addr, "GET", &long, &[], b"").await;
    assert_eq!(r.status, 414);
    assert_eq!(r.text().lines().next(), Some("URI too long"));

    // A malformed request line: hyper's bare 400 becomes Kong's.
    let got = common::raw(g.addr, b"GET /a b c HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    assert!(got.contains("\r\n\r\nBad request\nrequest_id: "), "{got}");

    let m = metrics(g.status).await;
    assert_eq!(
        m.get("portcullis_connection_errors_total{reason=\"header_too_large\"}"),
        Some(&2.0)
    );
}

#[tokio::test]
async fn the_default_limits_follow_nginx() {
    let up = echo_upstream().await;
    let g = start(&echo_cfg(up), Opts::default()).await;
    // Under 8 KiB of target and 32 KiB of headers: fine.
    let target = format!("/echo/{}", "c".repeat(8000));
    assert_eq!(send(g.addr, "GET", &target, &[], b"").await.status, 200);
    let cookie = "d".repeat(30 * 1024);
    assert_eq!(
        send(g.addr, "GET", "/echo/x", &[("cookie", &cookie)], b"")
            .await
            .status,
        200
    );
    let target = format!("/echo/{}", "c".repeat(8200));
    assert_eq!(send(g.addr, "GET", &target, &[], b"").await.status, 414);
    let cookie = "d".repeat(33 * 1024);
    let got = common::raw(
        g.addr,
        format!("GET /echo/x HTTP/1.1\r\nHost: a\r\nCookie: {cookie}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    assert!(got.contains("Request header or cookie too large"), "{got}");
}

#[tokio::test]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    let up = echo_upstream().await;
    let g = start(&echo_cfg(up), limits(|l| l.max_connections = 1)).await;
    let request = b"GET /echo/x HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut buf = [0u8; 4096];

    let mut a = TcpStream::connect(g.addr).await.unwrap();
    a.write_all(request).await.unwrap();
    let n = tokio::time::timeout(WAIT, a.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    // The second connection is queued by the kernel, not answered, while A is open.
    let mut b = TcpStream::connect(g.addr).await.unwrap();
    b.write_all(request).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), b.read(&mut buf))
            .await
            .is_err(),
        "served beyond max_connections"
    );
    let m = metrics(g.status).await;
    assert_eq!(
        m.get("portcullis_open_connections{listener=\"http\"}"),
        Some(&1.0)
    );

    // A closes: B is accepted and answered.
    drop(a);
    let n = tokio::time::timeout(WAIT, b.read(&mut buf))
        .await
        .expect("the waiting connection was never served")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

// ---------------------------------------------------------------------------------
// 5. Upstream https, and large upstream headers
// ---------------------------------------------------------------------------------

/// An https upstream (echo) serving `pair`.
async fn tls_upstream(pair: &Pair) -> SocketAddr {
    let key = PrivateKeyDer::try_from(
        rustls::pki_types::pem::PemObject::from_pem_slice(pair.key_pem.as_bytes())
            .map(|k: PrivateKeyDer<'static>| k)
            .unwrap()
            .secret_der()
            .to_vec(),
    )
    .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pair.der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|req| async move {
                    Ok::<_, std::convert::Infallible>(echo_handler(req).await)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn https_cfg(up: SocketAddr, extra: &str) -> String {
    format!(
        "_format_version: \"3.0\"\nservices:\n  - name: tls-svc\n    url: https://127.0.0.1:{}/base\n    retries: 0\n{extra}    routes:\n      - paths: [/up]\n",
        up.port()
    )
}

#[tokio::test]
async fn https_upstreams_are_verified_unless_tls_verify_is_false() {
    let ca = test_ca();
    let up = tls_upstream(&ca.leaf).await;

    // Trusted (the test CA beside the system roots): proxied.
    let g = start(
        &https_cfg(up, ""),
        Opts {
            clients: ClientCache::with_extra_roots(vec![ca.ca_der.clone()]),
            ..Opts::default()
        },
    )
    .await;
    let r = get(g.addr, "/up/x?q=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["path"], "/base/x?q=1");
    assert_eq!(
        echoed(&j, "host").as_deref(),
        Some(&*format!("127.0.0.1:{}", up.port()))
    );

    // Untrusted (system roots only): 502, Kong's message.
    let g = start(&https_cfg(up, ""), Opts::default()).await;
    let r = get(g.addr, "/up/x").await;
    assert_eq!(r.status, 502);
    assert!(
        r.text()
            .starts_with("An invalid response was received from the upstream server"),
        "{}",
        r.text()
    );
    let m = metrics(g.status).await;
    assert_eq!(
        m.get("portcullis_upstream_errors_total{service=\"tls-svc\",kind=\"invalid_response\"}"),
        Some(&1.0)
    );

    // The same upstream with tls_verify: false.
    let g = start(&https_cfg(up, "    tls_verify: false\n"), Opts::default()).await;
    let r = get(g.addr, "/up/y").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/base/y");
}

#[tokio::test]
async fn large_upstream_response_headers_pass() {
    // 24 headers of 8 KiB: 192 KiB, more than Supabase's 160k proxy buffers.
    let up = serve_upstream(|_req: Request<Incoming>| async move {
        let mut b = Response::builder();
        for i in 0..24 {
            b = b.header(format!("x-big-{i}"), "v".repeat(8 * 1024));
        }
        b.body(portcullis::body::full("ok")).unwrap()
    })
    .await;
    let g = start(&echo_cfg(up), Opts::default()).await;
    let r = get(g.addr, "/echo/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
    for i in 0..24 {
        assert_eq!(r.header(&format!("x-big-{i}")).unwrap().len(), 8 * 1024);
    }
}

// ---------------------------------------------------------------------------------
// 6. The real binary: self-signed TLS, h2 in the access log, SIGTERM drain, health
// ---------------------------------------------------------------------------------

/// `portcullis run` on loopback with a clean environment (PATH, NO_COLOR, and `env`).
fn run_bin(config: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> GatewayBuilder {
    let mut cmd = GatewayProcess::run();
    cmd.envs(env)
        .args(["--listen", "127.0.0.1:0", "--status-listen", "127.0.0.1:0"]);
    if let Some(c) = config {
        cmd.config_yaml(c);
    }
    cmd.args(args);
    cmd
}

/// `portcullis health` against `status`.
fn health(status: SocketAddr) -> Finished {
    GatewayProcess::bin()
        .args(["health", "--status-listen", &status.to_string()])
        .finish(WAIT)
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_self_signed_tls_serves_h2_and_logs_combined() {
    let up = echo_upstream().await;
    let mut b = run_bin(
        Some(&echo_cfg(up)),
        &["--tls-listen", "127.0.0.1:0", "--access-log", "combined"],
        &[],
    )
    .ready_when(1, 1, true)
    .start();
    let tls_addr = b.tls_addr();
    assert!(
        b.stderr_text().contains("self-signed"),
        "{}",
        b.stderr_text()
    );

    // The certificate is generated for localhost: trusting it as its own root works.
    let s = tls_connect(tls_addr, None, &[]).await.unwrap();
    let cert = peer_cert(&s);
    drop(s);
    let s = tls_connect(tls_addr, Some(&cert), &[b"h2"]).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://localhost/echo/h2?x=1")
        .header("user-agent", "h2-test")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let r = collect(bounded(sender.send_request(req)).await.unwrap()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        echoed(&r.json(), "x-forwarded-proto").as_deref(),
        Some("https")
    );

    // nginx's combined format, with HTTP/2.0 as nginx writes it.
    let line = b.next_stdout_line(WAIT).await;
    let re = regex::Regex::new(
        r#"^(\S+) - (\S+) \[(\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "(\S+) (\S+) (HTTP/\d\.\d)" (\d{3}) (\d+) "([^"]*)" "([^"]*)"$"#,
    )
    .unwrap();
    let c = re
        .captures(&line)
        .unwrap_or_else(|| panic!("not combined: {line:?}"));
    assert_eq!(&c[1], "127.0.0.1");
    assert_eq!(&c[4], "GET");
    assert_eq!(&c[5], "/echo/h2?x=1");
    assert_eq!(&c[6], "HTTP/2.0");
    assert_eq!(&c[7], "200");
    assert_eq!(c[8].parse::<usize>().unwrap(), r.body.len());
    assert_eq!(&c[10], "h2-test");
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_tls_from_kong_env_and_upstream_ca_from_ssl_cert_file() {
    let ca = test_ca();
    let up = tls_upstream(&ca.leaf).await;
    let dir = tempfile::tempdir().unwrap();
    let server = self_signed(&["localhost"]);
    let (cert, key) = write_pair(dir.path(), &server);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let b = run_bin(
        Some(&https_cfg(up, "")),
        &["--tls-listen", "127.0.0.1:0"],
        &[
            ("KONG_SSL_CERT", cert.to_str().unwrap()),
            ("KONG_SSL_CERT_KEY", key.to_str().unwrap()),
            ("SSL_CERT_FILE", ca_file.to_str().unwrap()),
        ],
    )
    .ready_when(1, 1, true)
    .start();
    let tls_addr = b.tls_addr();
    let addr = b.proxy_addr();
    let s = tls_connect(tls_addr, Some(&server.der), &[]).await.unwrap();
    assert_eq!(peer_cert(&s), server.der);
    // The upstream's CA comes from SSL_CERT_FILE.
    let r = get(addr, "/up/z").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/base/z");

    // Half a certificate pair is refused at start.
    let mut b = run_bin(
        None,
        &["--tls-listen", "127.0.0.1:0"],
        &[("KONG_SSL_CERT", cert.to_str().unwrap())],
    )
    .spawn();
    assert_eq!(b.wait_exit(WAIT).await.code(), Some(2));
    assert!(
        b.stderr_text().contains("--tls-cert needs --tls-key"),
        "{}",
        b.stderr_text()
    );
    // An unusable certificate too, naming the file.
    let bad = dir.path().join("bad.crt");
    std::fs::write(&bad, "garbage").unwrap();
    let mut b = run_bin(
        None,
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            bad.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    )
    .spawn();
    assert_eq!(b.wait_exit(WAIT).await.code(), Some(1));
    assert!(
        b.stderr_text().contains("bad.crt:1:1:"),
        "{}",
        b.stderr_text()
    );
}

/// An upstream whose `/slow` answers after `delay`, telling the test when it starts.
async fn slow_upstream(delay: Duration) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let up = serve_upstream(move |_req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(());
            tokio::time::sleep(delay).await;
            Response::new(portcullis::body::full("slow done"))
        }
    })
    .await;
    (up, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_slow_request_finish_then_exits_0() {
    let (up, mut started) = slow_upstream(Duration::from_millis(1500)).await;
    let mut b = run_bin(
        Some(&echo_cfg(up)),
        &[
            "--tls-listen",
            "off",
            "--drain-timeout",
            "20",
            "--access-log",
            "off",
        ],
        &[],
    )
    .start();
    let addr = b.proxy_addr();
    let status = b.status_addr();
    let h = health(status);
    assert_eq!(h.status.code(), Some(0), "{h:?}");

    let inflight = tokio::spawn(async move { get(addr, "/echo/slow").await });
    tokio::time::timeout(WAIT, started.recv())
        .await
        .expect("the request never reached the upstream");
    let signalled = Instant::now();
    b.signal("TERM");

    // While draining: /health says 503 (so `portcullis health` fails) and the proxy
    // port takes no new connections.
    let deadline = Instant::now() + WAIT;
    loop {
        let r = get(status, "/health").await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(Instant::now() < deadline, "/health never said draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(health(status).status.code(), Some(1));
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting while draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The in-flight request completes, then the process exits 0.
    let r = tokio::time::timeout(WAIT, inflight).await.unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow done");
    assert_eq!(b.wait_exit(WAIT).await.code(), Some(0));
    assert!(signalled.elapsed() >= Duration::from_millis(500));
    assert!(b.stderr_text().contains("drained"), "{}", b.stderr_text());
    // Nothing answers any more.
    assert_eq!(health(status).status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_timeout_bounds_shutdown() {
    let (up, mut started) = slow_upstream(Duration::from_secs(60)).await;
    let mut b = run_bin(
        Some(&echo_cfg(up)),
        &[
            "--tls-listen",
            "off",
            "--drain-timeout",
            "1",
            "--access-log",
            "off",
        ],
        &[],
    )
    .start();
    let addr = b.proxy_addr();
    let inflight = tokio::spawn(async move {
        let s = TcpStream::connect(addr).await.unwrap();
        h1_over(s, "GET", "/echo/slow", &[]).await
    });
    tokio::time::timeout(WAIT, started.recv()).await.unwrap();
    let signalled = Instant::now();
    b.signal("TERM");
    assert_eq!(b.wait_exit(WAIT).await.code(), Some(0));
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(
        b.stderr_text().contains("drain timeout reached"),
        "{}",
        b.stderr_text()
    );
    // The cut-off request fails rather than hanging.
    assert!(tokio::time::timeout(WAIT, inflight).await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_limit_flags_and_env_twins() {
    let up = echo_upstream().await;
    let b = run_bin(
        Some(&echo_cfg(up)),
        &["--tls-listen", "off", "--max-uri-bytes", "100"],
        &[
            ("PORTCULLIS_MAX_HEADER_BYTES", "2000"),
            ("PORTCULLIS_HEADER_TIMEOUT", "0.5"),
            ("PORTCULLIS_MAX_CONNECTIONS", "5"),
            ("PORTCULLIS_ACCESS_LOG", "off"),
        ],
    )
    .start();
    let addr = b.proxy_addr();
    assert_eq!(get(addr, "/echo/x").await.status, 200);
    let r = get(addr, &format!("/echo/{}", "u".repeat(120))).await;
    assert_eq!(r.status, 414);
    let r = send(addr, "GET", "/echo/x", &[("x-pad", &"p".repeat(2500))], b"").await;
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Request header or cookie too large"));
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /echo/x HTTP/1.1\r\n").await.unwrap();
    assert!(read_to_close(&mut s).await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));

    // Invalid values are refused before listening.
    let mut bad = run_bin(
        None,
        &["--tls-listen", "off", "--drain-timeout", "soon"],
        &[],
    )
    .spawn();
    assert_eq!(bad.wait_exit(WAIT).await.code(), Some(2));
    let mut bad = run_bin(
        None,
        &["--tls-listen", "off", "--max-connections", "0"],
        &[],
    )
    .spawn();
    assert_eq!(bad.wait_exit(WAIT).await.code(), Some(2));
    assert!(bad.stderr_text().contains("--max-connections"));
}

#[test]
fn health_fails_when_nothing_answers() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let out = health(addr);
    assert_eq!(out.status.code(), Some(1));
    let out = GatewayProcess::bin()
        .args(["health", "--status-listen", "off"])
        .finish(WAIT);
    assert_eq!(out.status.code(), Some(1));
}
