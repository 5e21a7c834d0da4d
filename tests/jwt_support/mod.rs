//! Test helpers for oauth2-resource: generated ES256/RS256 keys, minted tokens, and a
//! loopback authorization-server stub serving RFC 8414 metadata and a JWKS.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use crate::common::serve_upstream;
use base64::Engine;
use http::{Request, Response};
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A freshly generated signing key and its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    enc: EncodingKey,
    pub jwk: Value,
}

impl SigningKey {
    pub fn es256(kid: &str) -> SigningKey {
        let sk = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let point = sk.verifying_key().to_encoded_point(false);
        let der = sk.to_pkcs8_der().unwrap();
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            enc: EncodingKey::from_ec_der(der.as_bytes()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
            }),
        }
    }

    pub fn rs256(kid: &str) -> SigningKey {
        let sk = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let der = sk.to_pkcs1_der().unwrap();
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            enc: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                "n": b64(&sk.n().to_bytes_be()), "e": b64(&sk.e().to_bytes_be()),
            }),
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(Some(&self.kid), claims)
    }

    /// Signs with this key but names `kid` (None: no kid) in the header.
    pub fn sign_as(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, claims, &self.enc).unwrap()
    }
}

/// An unsigned token (`alg: none`).
pub fn unsigned(kid: &str, claims: &Value) -> String {
    let h = json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!(
        "{}.{}.",
        b64(h.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// An HS256 token signed with `secret`, naming `kid`.
pub fn hs256(kid: &str, secret: &[u8], claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).unwrap()
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A loopback authorization server: `GET /jwks` (counted) and the RFC 8414 metadata at
/// `/.well-known/oauth-authorization-server/auth/v1` for issuer `http://ADDR/auth/v1`.
pub struct AuthServer {
    pub addr: SocketAddr,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicU64>,
    /// Overrides the metadata's issuer (to test the RFC 8414 issuer check).
    metadata_issuer: Arc<Mutex<Option<String>>>,
}

impl AuthServer {
    pub async fn start(keys: &[&SigningKey]) -> AuthServer {
        let jwks: Arc<Mutex<Vec<Value>>> =
            Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()));
        let fetches = Arc::new(AtomicU64::new(0));
        let metadata_issuer: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let (j, f, m) = (jwks.clone(), fetches.clone(), metadata_issuer.clone());
        let addr_slot: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let slot = addr_slot.clone();
        let addr = serve_upstream(move |req: Request<Incoming>| {
            let (j, f, m, slot) = (j.clone(), f.clone(), m.clone(), slot.clone());
            async move {
                let me = slot.lock().unwrap().unwrap();
                let (status, doc) = match req.uri().path() {
                    "/jwks" => {
                        f.fetch_add(1, Ordering::SeqCst);
                        (200, json!({ "keys": *j.lock().unwrap() }))
                    }
                    "/.well-known/oauth-authorization-server/auth/v1" => {
                        let iss = m
                            .lock()
                            .unwrap()
                            .clone()
                            .unwrap_or(format!("http://{me}/auth/v1"));
                        (
                            200,
                            json!({
                                "issuer": iss,
                                "jwks_uri": format!("http://{me}/jwks"),
                                "authorization_endpoint": format!("http://{me}/auth/v1/oauth/authorize"),
                                "token_endpoint": format!("http://{me}/auth/v1/oauth/token"),
                            }),
                        )
                    }
                    _ => (404, json!({})),
                };
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .header("cache-control", "public, max-age=600")
                    .body(portcullis::body::full(doc.to_string()))
                    .unwrap()
            }
        })
        .await;
        *addr_slot.lock().unwrap() = Some(addr);
        AuthServer {
            addr,
            keys: jwks,
            fetches,
            metadata_issuer,
        }
    }

    pub fn issuer(&self) -> String {
        format!("http://{}/auth/v1", self.addr)
    }

    pub fn jwks_uri(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub fn set_keys(&self, keys: &[&SigningKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    pub fn set_metadata_issuer(&self, iss: &str) {
        *self.metadata_issuer.lock().unwrap() = Some(iss.into());
    }

    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }
}
