//! An authorization server's signing keys (a JWKS), fetched over HTTP(S), cached and
//! refreshed, for `oauth2-resource`.
//!
//! Why it is shaped this way:
//! - Plugins decide synchronously, so nothing here blocks: the plugin reads the key set
//!   (an `ArcSwap`, lock-free) and, when it needs a fetch (keys never loaded, or a token
//!   names an unknown `kid`), hands the proxy a future to await ([`KeyRing::refresh`]),
//!   then decides again. Fetches run on the request's own task, never on a blocked
//!   runtime thread.
//! - One fetch at a time per key source (a `tokio::sync::Mutex`); requests that waited
//!   behind a fetch that completed meanwhile do not fetch again (`generation`).
//! - Fetches are rate-limited (`min_interval`, measured from the end of the previous
//!   attempt, successful or not), so tokens with made-up `kid`s cannot turn the gateway
//!   into a JWKS flood.
//! - Keys expire from the cache after the server's `Cache-Control: max-age` (capped by
//!   `max_ttl`); a stale set keeps serving while a background refresh runs.
//! - Rotation: a key that disappears from a newer JWKS is kept for one cache lifetime
//!   after its removal — what any cache would have done anyway — so tokens signed just
//!   before the rotation, and a lagging replica of the authorization server, don't
//!   cause a burst of 401s.
//! - Key rings are shared process-wide by source and settings, so a config reload does
//!   not throw the keys away and refetch them.

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

/// The most a JWKS or metadata document may weigh.
const DOC_LIMIT: usize = 1 << 20;
/// A fetch is a small document from a nearby server: a total deadline is right here
/// (unlike proxied streams), so a hung authorization server cannot hold requests.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the keys come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A JWKS URL.
    Jwks(String),
    /// An RFC 8414 (or OpenID discovery) document whose `issuer` must equal `issuer`
    /// and whose `jwks_uri` names the keys.
    Discovery { url: String, issuer: String },
}

impl Source {
    pub fn url(&self) -> &str {
        match self {
            Source::Jwks(u) | Source::Discovery { url: u, .. } => u,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Settings {
    /// The least time between two fetches.
    pub min_interval: Duration,
    /// The longest a fetched set is considered fresh (the server's max-age is honoured
    /// below this).
    pub max_ttl: Duration,
}

/// One verification key.
pub struct Entry {
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// The JWK's own `alg`, when it names one: the token's `alg` must then match.
    pub alg: Option<Algorithm>,
    pub params: KeyKind,
    /// When a key no longer listed by the server stops being accepted.
    retire_at: Option<Instant>,
}

/// The key's type, to check a token's `alg` against it (no alg confusion).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Whether a token signed with `alg` may be verified with this key.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("params", &self.params)
            .finish()
    }
}

/// The keys as of the last successful fetch.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Entry>,
    loaded_at: Option<Instant>,
    ttl: Duration,
}

impl KeySet {
    pub fn is_loaded(&self) -> bool {
        self.loaded_at.is_some()
    }

    /// The key for a token's `kid` and `alg`. Without a `kid`, the one key that fits
    /// `alg`, if exactly one does.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm, now: Instant) -> Option<&Entry> {
        let mut live = self
            .keys
            .iter()
            .filter(move |e| e.retire_at.is_none_or(|t| now < t));
        match kid {
            Some(kid) => live.find(|e| e.kid.as_deref() == Some(kid)),
            None => {
                let mut fitting = live.filter(|e| e.params.fits(alg));
                let first = fitting.next();
                match fitting.next() {
                    None => first,
                    Some(_) => None,
                }
            }
        }
    }

    fn stale(&self, now: Instant) -> bool {
        self.loaded_at
            .is_none_or(|t| now.duration_since(t) >= self.ttl)
    }
}

/// The cached keys of one source, shared by every plugin instance that names it.
pub struct KeyRing {
    source: Source,
    settings: Settings,
    keys: ArcSwap<KeySet>,
    fetch_lock: tokio::sync::Mutex<()>,
    /// When the last fetch attempt ended.
    last_attempt: Mutex<Option<Instant>>,
    /// Completed fetch attempts.
    generation: AtomicU64,
    /// A background refresh is under way.
    background: AtomicBool,
    /// The discovered `jwks_uri` (Source::Discovery).
    discovered: Mutex<Option<String>>,
    /// Fetches made, for tests and logs.
    fetches: AtomicU64,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("source", &self.source)
            .finish()
    }
}

pub type WaitFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

type Registry = Mutex<HashMap<(Source, Settings), Weak<KeyRing>>>;

impl KeyRing {
    /// The process-wide ring for `source` with `settings` (a reload gets the same one
    /// back while any snapshot still uses it).
    pub fn shared(source: Source, settings: Settings) -> Arc<KeyRing> {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        let reg = REGISTRY.get_or_init(Registry::default);
        let mut map = reg.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, w| w.strong_count() > 0);
        let key = (source.clone(), settings);
        if let Some(ring) = map.get(&key).and_then(Weak::upgrade) {
            return ring;
        }
        let ring = Arc::new(KeyRing::new(source, settings));
        map.insert(key, Arc::downgrade(&ring));
        ring
    }

    pub fn new(source: Source, settings: Settings) -> KeyRing {
        KeyRing {
            source,
            settings,
            keys: ArcSwap::from_pointee(KeySet::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_attempt: Mutex::new(None),
            generation: AtomicU64::new(0),
            background: AtomicBool::new(false),
            discovered: Mutex::new(None),
            fetches: AtomicU64::new(0),
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Whether the rate limit allows a fetch now.
    pub fn may_fetch(&self, now: Instant) -> bool {
        let last = *self
            .last_attempt
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.is_none_or(|t| now.duration_since(t) >= self.settings.min_interval)
    }

    /// A fetch for the proxy to await. It does nothing when another fetch completed
    /// after this future was made, or when the rate limit forbids one.
    pub fn refresh(self: &Arc<Self>) -> WaitFuture {
        let ring = Arc::clone(self);
        let seen = self.generation.load(Ordering::Acquire);
        Box::pin(async move {
            let _one_at_a_time = ring.fetch_lock.lock().await;
            if ring.generation.load(Ordering::Acquire) != seen || !ring.may_fetch(Instant::now()) {
                return;
            }
            ring.fetch_now().await;
        })
    }

    /// When the set is past its lifetime, refresh it in the background (the stale keys
    /// keep serving meanwhile). Needs a Tokio runtime; without one (explain) it does
    /// nothing.
    pub fn refresh_if_stale(self: &Arc<Self>, now: Instant) {
        if !self.keys.load().stale(now) || !self.may_fetch(now) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let ring = Arc::clone(self);
        let fut = self.refresh();
        rt.spawn(async move {
            fut.await;
            ring.background.store(false, Ordering::Release);
        });
    }

    /// Fetches made so far.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    async fn fetch_now(&self) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch_keys().await;
        let now = Instant::now();
        match result {
            Ok((fetched, max_age)) => {
                // max() then min(), not clamp(): never panics whatever the settings.
                let ttl = max_age
                    .unwrap_or(self.settings.max_ttl)
                    .max(self.settings.min_interval)
                    .min(self.settings.max_ttl);
                let old = self.keys.load_full();
                let merged = merge(&old, fetched, now, ttl);
                tracing::info!(
                    source = self.source.url(),
                    keys = merged.len(),
                    ttl_s = ttl.as_secs(),
                    "authorization server keys loaded"
                );
                self.keys.store(Arc::new(KeySet {
                    keys: merged,
                    loaded_at: Some(now),
                    ttl,
                }));
            }
            Err(e) => {
                tracing::warn!(source = self.source.url(), error = %e, "fetching authorization server keys failed");
            }
        }
        *self
            .last_attempt
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(now);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    async fn fetch_keys(&self) -> Result<(Vec<Entry>, Option<Duration>), String> {
        let jwks_uri = match &self.source {
            Source::Jwks(u) => u.clone(),
            Source::Discovery { url, issuer } => {
                let known = self
                    .discovered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                match known {
                    Some(u) => u,
                    None => {
                        let (doc, _) = fetch_json(url).await?;
                        let found = discovered_jwks_uri(&doc, issuer)?;
                        *self
                            .discovered
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) = Some(found.clone());
                        found
                    }
                }
            }
        };
        let (doc, max_age) = fetch_json(&jwks_uri).await?;
        Ok((parse_jwks(&doc)?, max_age))
    }
}

/// The new set, plus the keys the server stopped listing, kept until one cache
/// lifetime after their removal.
fn merge(old: &KeySet, fetched: Vec<Entry>, now: Instant, ttl: Duration) -> Vec<Entry> {
    let mut out = fetched;
    for e in &old.keys {
        let still_listed = out.iter().any(|n| n.kid == e.kid && n.params == e.params);
        if still_listed || e.retire_at.is_some_and(|t| t <= now) {
            continue;
        }
        out.push(Entry {
            kid: e.kid.clone(),
            key: e.key.clone(),
            alg: e.alg,
            params: e.params,
            retire_at: Some(e.retire_at.unwrap_or(now + ttl)),
        });
    }
    out
}

/// The `jwks_uri` of an RFC 8414 / OpenID discovery document, after checking that it
/// is the configured issuer's (RFC 8414 §3.3: a mismatch must not be used).
pub fn discovered_jwks_uri(doc: &serde_json::Value, issuer: &str) -> Result<String, String> {
    let got = doc.get("issuer").and_then(|v| v.as_str()).unwrap_or("");
    if got != issuer {
        return Err(format!(
            "the metadata's issuer '{got}' is not the configured issuer '{issuer}'"
        ));
    }
    doc.get("jwks_uri")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| "the metadata has no jwks_uri".to_string())
}

/// Usable signature keys of a JWKS document. Keys for encryption, symmetric keys and
/// key types this gateway cannot verify are skipped, not fatal: one odd key must not
/// take the others down.
pub fn parse_jwks(doc: &serde_json::Value) -> Result<Vec<Entry>, String> {
    let list = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| "not a JWKS (no \"keys\" array)".to_string())?;
    let mut out = Vec::new();
    for raw in list {
        let kid = raw.get("kid").and_then(|k| k.as_str()).unwrap_or("");
        let jwk: Jwk = match serde_json::from_value(raw.clone()) {
            Ok(j) => j,
            Err(e) => {
                tracing::debug!(kid, error = %e, "skipping a JWK this gateway cannot use");
                continue;
            }
        };
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            continue;
        }
        let params = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyKind::P256,
                EllipticCurve::P384 => KeyKind::P384,
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => KeyKind::Ed25519,
                _ => continue,
            },
            // Symmetric keys have no business in a public JWKS: never verify with one.
            AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_) => continue,
            _ => continue,
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => match a.to_string().parse::<Algorithm>() {
                Ok(a) if params.fits(a) => Some(a),
                // An encryption alg, or one that contradicts the key type.
                _ => continue,
            },
        };
        let key = match DecodingKey::from_jwk(&jwk) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(kid, error = %e, "skipping an invalid JWK");
                continue;
            }
        };
        out.push(Entry {
            kid: jwk.common.key_id.clone(),
            key,
            alg,
            params,
            retire_at: None,
        });
    }
    Ok(out)
}

type FetchClient =
    Client<hyper_rustls::HttpsConnector<HttpConnector>, http_body_util::Empty<Bytes>>;

fn client() -> &'static FetchClient {
    static CLIENT: OnceLock<FetchClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::client_config(true, &[]))
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // No idle pool: fetches are minutes apart, and a pooled connection would be
        // tied to the runtime that opened it.
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(https)
    })
}

/// GETs a JSON document; also returns the response's `Cache-Control: max-age`.
pub async fn fetch_json(url: &str) -> Result<(serde_json::Value, Option<Duration>), String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL '{url}': {e}"))?;
    let req = Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, crate::error::SERVER)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client()
            .request(req)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("GET {url}: status {}", resp.status()));
        }
        let max_age = max_age(resp.headers());
        let bytes = http_body_util::Limited::new(resp.into_body(), DOC_LIMIT)
            .collect()
            .await
            .map_err(|e| format!("GET {url}: body: {e}"))?
            .to_bytes();
        let doc =
            serde_json::from_slice(&bytes).map_err(|e| format!("GET {url}: not JSON: {e}"))?;
        Ok((doc, max_age))
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("GET {url}: no answer within {FETCH_TIMEOUT:?}"))?
}

/// `max-age` of Cache-Control; `no-store`/`no-cache` count as 0 (then the rate limit
/// is the floor).
fn max_age(h: &http::HeaderMap) -> Option<Duration> {
    let mut out = None;
    for v in h.get_all(http::header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for d in v.split(',') {
            let d = d.trim().to_ascii_lowercase();
            if d == "no-store" || d == "no-cache" {
                return Some(Duration::ZERO);
            }
            if let Some(n) = d.strip_prefix("max-age=")
                && let Ok(n) = n.trim_matches('"').parse::<u64>()
            {
                out = Some(Duration::from_secs(n));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec_jwk(kid: &str) -> serde_json::Value {
        // A valid P-256 point (the generator).
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
            "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"
        })
    }

    #[test]
    fn parse_skips_what_cannot_verify() {
        let doc = serde_json::json!({"keys": [
            ec_jwk("a"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hs"},
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "confused", "alg": "RS256",
             "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
             "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"},
            {"kty": "weird"}
        ]});
        let keys = parse_jwks(&doc).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("a"));
        assert_eq!(keys[0].alg, Some(Algorithm::ES256));
        assert!(parse_jwks(&serde_json::json!({"nope": 1})).is_err());
    }

    #[test]
    fn rotation_keeps_removed_keys_for_one_lifetime() {
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let first = KeySet {
            keys: parse_jwks(&serde_json::json!({"keys": [ec_jwk("old")]})).unwrap(),
            loaded_at: Some(now),
            ttl,
        };
        let fresh = parse_jwks(&serde_json::json!({"keys": [ec_jwk("new")]})).unwrap();
        let merged = KeySet {
            keys: merge(&first, fresh, now, ttl),
            loaded_at: Some(now),
            ttl,
        };
        assert!(merged.find(Some("new"), Algorithm::ES256, now).is_some());
        assert!(merged.find(Some("old"), Algorithm::ES256, now).is_some());
        let later = now + ttl + Duration::from_secs(1);
        assert!(merged.find(Some("old"), Algorithm::ES256, later).is_none());
        // Without a kid: ambiguous while both live.
        assert!(merged.find(None, Algorithm::ES256, now).is_none());
        assert!(merged.find(None, Algorithm::ES256, later).is_some());
        // A retired key is dropped by the next merge after its time.
        let again = merge(&merged, Vec::new(), later, ttl);
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn cache_control() {
        let mut h = http::HeaderMap::new();
        h.insert("cache-control", "public, max-age=600".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::from_secs(600)));
        h.insert("cache-control", "no-store".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::ZERO));
        assert_eq!(max_age(&http::HeaderMap::new()), None);
    }

    #[test]
    fn discovery_checks_issuer() {
        let doc = serde_json::json!({"issuer": "https://a/auth/v1", "jwks_uri": "http://k"});
        assert_eq!(
            discovered_jwks_uri(&doc, "https://a/auth/v1").unwrap(),
            "http://k"
        );
        assert!(discovered_jwks_uri(&doc, "https://a/auth/v1/").is_err());
    }
}
