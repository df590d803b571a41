//! TLS of the public port (mutual TLS when a client CA is given) and of the connections to
//! the backends, with rustls on its default provider (aws-lc-rs, post-quantum key exchange preferred).

use rustls::crypto::aws_lc_rs::default_provider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The public port's TLS: the certificate chain and key it shows, and, for mutual TLS, the CA
/// a client's certificate must chain to. HTTP/2 only (ALPN h2), as gRPC speaks it.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = Arc::new(roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::new(default_provider()))
                .build()
                .map_err(|error| format!("client CA {}: {error}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .map_err(|error| format!("certificate {} and key {}: {error}", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// How the edge checks backends that serve TLS: their certificates must chain to `ca` (the
/// system's trust store when None); `identity` (certificate, key) is shown to backends that
/// ask for a client certificate.
pub fn client_config(ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> Result<ClientConfig, String> {
    let roots = match ca {
        Some(ca) => roots(ca)?,
        None => {
            let mut store = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            store
        }
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?
        .with_root_certificates(roots);
    // ALPN (h2) is set by the connector.
    match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|error| format!("client certificate {}: {error}", cert.display())),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// A client configuration that is never used to connect (backends without TLS): the
/// connector needs one.
pub fn unused_client_config() -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let found: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("certificate {}: {error}", path.display()))?
        .collect();
    let found = found.map_err(|error| format!("certificate {}: {error}", path.display()))?;
    if found.is_empty() {
        return Err(format!("certificate {}: no PEM certificate in it", path.display()));
    }
    Ok(found)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| format!("private key {}: {error}", path.display()))
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for certificate in certificates(path)? {
        store
            .add(certificate)
            .map_err(|error| format!("CA {}: {error}", path.display()))?;
    }
    Ok(store)
}
