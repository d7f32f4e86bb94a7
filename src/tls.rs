//! TLS settings from PEM files, shared by the server's `tls!` listeners,
//! dchan's client and `dchan tunnel`: rustls configurations (the `ring`
//! provider, TLS 1.2 and 1.3) and the name a client certificate proves.
//!
//! The certificate's name is its subject's common name (CN), or, with no
//! CN, its first DNS name; that is the user the access rules see.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The PEM files a TLS end point uses: its own certificate chain and key,
/// and the CA whose signature it asks of the other end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    /// This end's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// The CA certificates (PEM) the other end's certificate must chain
    /// to: on a server, client certificates are then required (mutual TLS).
    pub ca: Option<PathBuf>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

impl TlsFiles {
    /// A server's configuration: `cert` and `key` are required; with `ca`,
    /// every client must show a certificate that CA signed.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let (Some(cert), Some(key_path)) = (&self.cert, &self.key) else {
            return Err("a TLS listener needs a certificate and a key (cert, key)".into());
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.ca {
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                        .build()
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs(cert)?, key(key_path)?)
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        Ok(Arc::new(config))
    }

    /// A client's configuration: `ca` is required (the server's certificate
    /// must chain to it); `cert` and `key` together, when the server asks
    /// for a client certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let Some(ca) = &self.ca else {
            return Err("TLS needs the CA that signed the server's certificate (--ca)".into());
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots(ca)?);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(k)) => builder
                .with_client_auth_cert(certs(cert)?, key(k)?)
                .map_err(|e| format!("{}: {e}", cert.display()))?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("a client certificate needs both --cert and --key".into()),
        };
        Ok(Arc::new(config))
    }
}

/// The name a certificate proves: its subject's CN, else its first DNS name.
pub fn cert_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    if let Some(cn) = subject.iter_common_name().next()
        && let Ok(cn) = cn.as_str()
    {
        return Some(cn.to_string());
    }
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    })
}
