//! TLS with rustls (the `ring` provider): the HTTPS listener's certificate and the
//! client side for `https` upstreams.
//!
//! Server side: the certificate comes from PEM files (`--tls-cert`/`--tls-key`) or,
//! without them, is generated at start (self-signed for `localhost`, as Kong does).
//! It sits in an `ArcSwap` behind a `ResolvesServerCert`, so a reload swaps it for
//! new handshakes while established connections keep theirs. The files are re-read on
//! every config reload ([`with_certs`]); a bad certificate or key fails the reload
//! like a bad config does (nothing is swapped, the error lands in /status).
//!
//! Client side: upstream certificates are verified against the system roots
//! (rustls-native-certs: /etc/ssl/certs, or `SSL_CERT_FILE`/`SSL_CERT_DIR`), unless the
//! service says `tls_verify: false`.

use crate::yaml::raw::Pos;
use crate::yaml::{ConfigError, ConfigErrors};
use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// The process's crypto provider (ring), passed explicitly everywhere so nothing
/// depends on a process-wide default being installed.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// The HTTPS listener's certificate, swappable at run time.
pub struct ServerCerts {
    current: ArcSwap<CertifiedKey>,
    files: Option<CertFiles>,
    /// sha256 of the certificate and key files in force (file mode only).
    hash: Mutex<[u8; 32]>,
}

struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl std::fmt::Debug for ServerCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.files {
            Some(files) => write!(
                f,
                "ServerCerts({}, {})",
                files.cert.display(),
                files.key.display()
            ),
            None => f.write_str("ServerCerts(self-signed)"),
        }
    }
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A certificate read and checked, not yet serving.
pub struct Pending {
    key: CertifiedKey,
    hash: [u8; 32],
}

fn file_error(path: &Path, message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: path.display().to_string(),
        pos: Pos { line: 1, col: 1 },
        message,
    }])
}

impl ServerCerts {
    /// Loads the certificate chain and its private key from PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<ServerCerts, ConfigErrors> {
        let files = CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        };
        let loaded = files.read()?;
        Ok(ServerCerts {
            current: ArcSwap::from_pointee(loaded.key),
            files: Some(files),
            hash: Mutex::new(loaded.hash),
        })
    }

    /// A certificate generated now for `localhost` (Kong's default when no
    /// certificate is configured). It changes at every start; clients must not pin it.
    pub fn self_signed() -> Result<ServerCerts, String> {
        let generated = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
        let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
            .map_err(|e| format!("cannot use the generated key: {e}"))?;
        let ck = CertifiedKey::from_der(vec![generated.cert.der().clone()], key, &provider())
            .map_err(|e| format!("cannot use the generated certificate: {e}"))?;
        Ok(ServerCerts {
            current: ArcSwap::from_pointee(ck),
            files: None,
            hash: Mutex::new([0; 32]),
        })
    }

    pub fn is_self_signed(&self) -> bool {
        self.files.is_none()
    }

    /// The certificate chain new handshakes get (the leaf first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }

    /// A rustls server config resolving to this certificate, offering HTTP/2 and
    /// HTTP/1.1 by ALPN.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let resolver: Arc<dyn ResolvesServerCert> = Arc::clone(self) as _;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Re-reads the files: `Ok(None)` when their bytes did not change (or the
    /// certificate is self-signed), `Ok(Some)` with the new certificate checked,
    /// or every problem found, as `file:1:1: message`.
    pub fn check(&self) -> Result<Option<Pending>, ConfigErrors> {
        let Some(files) = &self.files else {
            return Ok(None);
        };
        let hash = files.hash()?;
        if hash == *self.hash.lock().unwrap_or_else(PoisonError::into_inner) {
            return Ok(None);
        }
        files.read().map(Some)
    }

    /// Serves `p` to new handshakes.
    pub fn install(&self, p: Pending) {
        self.current.store(Arc::new(p.key));
        *self.hash.lock().unwrap_or_else(PoisonError::into_inner) = p.hash;
        if let Some(files) = &self.files {
            tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
        }
    }
}

impl CertFiles {
    fn bytes(&self) -> Result<(Vec<u8>, Vec<u8>), ConfigErrors> {
        let cert = std::fs::read(&self.cert).map_err(|e| {
            file_error(
                &self.cert,
                format!("cannot read the TLS certificate file: {e}"),
            )
        })?;
        let key = std::fs::read(&self.key)
            .map_err(|e| file_error(&self.key, format!("cannot read the TLS key file: {e}")))?;
        Ok((cert, key))
    }

    fn hash(&self) -> Result<[u8; 32], ConfigErrors> {
        let (cert, key) = self.bytes()?;
        Ok(digest(&cert, &key))
    }

    fn read(&self) -> Result<Pending, ConfigErrors> {
        let (cert_pem, key_pem) = self.bytes()?;
        let hash = digest(&cert_pem, &key_pem);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(&self.cert, format!("invalid PEM certificate: {e}")))?;
        if chain.is_empty() {
            return Err(file_error(
                &self.cert,
                "no certificate found (expected PEM 'BEGIN CERTIFICATE' blocks)".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| file_error(&self.key, format!("invalid PEM private key: {e}")))?;
        let ck = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
            file_error(
                &self.cert,
                format!(
                    "the certificate cannot be used with the key {}: {e}",
                    self.key.display()
                ),
            )
        })?;
        Ok(Pending { key: ck, hash })
    }
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(cert);
    h.update([0u8]);
    h.update(key);
    h.finalize().into()
}

/// Runs a config reload with the certificate files re-read first. A reload is all or
/// nothing: a bad certificate fails it before the config is looked at, and a new
/// certificate is installed only when the config part succeeds too.
pub fn with_certs<T>(
    certs: Option<&ServerCerts>,
    reload: impl FnOnce() -> Result<T, ConfigErrors>,
) -> Result<T, ConfigErrors> {
    let pending = match certs {
        Some(c) => c.check()?,
        None => None,
    };
    let out = reload()?;
    if let (Some(c), Some(p)) = (certs, pending) {
        c.install(p);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Client side (upstreams)
// ---------------------------------------------------------------------------------

/// The system roots, read once per process (reading /etc/ssl/certs takes a while).
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let mut store = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "while loading the system's CA certificates");
        }
        let (added, ignored) = store.add_parsable_certificates(found.certs);
        if ignored > 0 {
            tracing::debug!(added, ignored, "system CA certificates loaded");
        }
        if added == 0 {
            tracing::warn!(
                "no CA certificates found: https upstreams will fail verification (tls_verify: false skips it)"
            );
        }
        Arc::new(store)
    }))
}

/// A rustls client config for upstreams: verifying against the system roots plus
/// `extra_roots`, or not verifying at all (`tls_verify: false`). No ALPN is sent:
/// upstream requests are always HTTP/1.1 (and hyper-rustls insists on setting it).
pub fn client_config(
    verify: bool,
    extra_roots: &[CertificateDer<'static>],
) -> rustls::ClientConfig {
    let builder = match rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b,
        // Cannot happen with ring's provider; rustls' own default is the same provider.
        Err(e) => {
            tracing::error!(error = %e, "TLS client set-up failed; using rustls defaults");
            rustls::ClientConfig::builder()
        }
    };
    if verify {
        let mut roots = (*system_roots()).clone();
        let (_, ignored) = roots.add_parsable_certificates(extra_roots.iter().cloned());
        if ignored > 0 {
            tracing::warn!(
                ignored,
                "some extra CA certificates are invalid and were ignored"
            );
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    }
}

/// `tls_verify: false`: any certificate is accepted; the handshake signatures are
/// still checked, so the session is encrypted to whoever holds the presented key.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let g = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, g.cert.pem()).unwrap();
        std::fs::write(&key, g.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn reload_swaps_only_good_changed_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a.test");
        let certs = ServerCerts::from_files(&cert, &key).unwrap();
        let first = certs.chain();
        assert!(certs.check().unwrap().is_none(), "unchanged files");

        std::fs::write(&cert, "not a certificate").unwrap();
        let err = certs.check().err().unwrap().to_string();
        assert!(
            err.starts_with(&format!("{}:1:1: ", cert.display())),
            "{err}"
        );

        // A certificate with another key's private key.
        let (other_cert, _) = write_pair(dir.path(), "b.test");
        std::fs::copy(&other_cert, &cert).unwrap();
        let err = certs.check().err().unwrap().to_string();
        assert!(err.contains("cannot be used with the key"), "{err}");
        assert_eq!(certs.chain(), first);

        let (c2, k2) = write_pair(dir.path(), "c.test");
        std::fs::copy(&c2, &cert).unwrap();
        std::fs::copy(&k2, &key).unwrap();
        let failed: Result<(), ConfigErrors> = with_certs(Some(&certs), || {
            Err(file_error(Path::new("gateway.yaml"), "bad".into()))
        });
        assert!(failed.is_err());
        assert_eq!(certs.chain(), first, "a failed config keeps the old cert");
        with_certs(Some(&certs), || Ok(())).unwrap();
        assert_ne!(certs.chain(), first);
        assert!(certs.check().unwrap().is_none());
    }

    #[test]
    fn self_signed_and_client_configs_build() {
        let certs = Arc::new(ServerCerts::self_signed().unwrap());
        assert!(certs.is_self_signed());
        let cfg = certs.server_config().unwrap();
        assert_eq!(cfg.alpn_protocols[0], b"h2");
        assert!(client_config(true, &[]).alpn_protocols.is_empty());
        assert!(client_config(false, &[]).alpn_protocols.is_empty());
    }
}
