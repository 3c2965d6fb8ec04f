//! Self-signed TLS for `--tls`.

use std::sync::Arc;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A TLS acceptor plus the PEM of its self-signed certificate.
pub struct SelfSigned {
    /// Acceptor for incoming connections.
    pub acceptor: TlsAcceptor,
    /// The certificate in PEM form (trust it in clients).
    pub cert_pem: String,
}

/// Generates a self-signed certificate for `localhost`, `127.0.0.1` and `::1`.
pub fn self_signed() -> anyhow::Result<SelfSigned> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names)?;
    let cert_pem = ck.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(SelfSigned {
        acceptor: TlsAcceptor::from(Arc::new(cfg)),
        cert_pem,
    })
}
