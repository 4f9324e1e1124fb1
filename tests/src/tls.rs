//! The emulator's private CA and server certificate, generated at start.
//!
//! Lattice services with custom domain names present a certificate from the customer's CA
//! (AWS Private CA in the pattern this project replaces); clients trust that CA explicitly.
//! The emulator does the same with a CA that exists only for its lifetime: one CA, one
//! server certificate for every service host and configured name (`*.example.com`), and
//! the CA certificate in PEM for clients' `--ca-file`.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The certificate material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen refused the parameters (e.g. a name that is not a valid DNS name).
    #[error("cannot generate the emulator's certificates for {names:?}: {source}")]
    Generate {
        /// Names that were asked for.
        names: Vec<String>,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// rustls refused the certificate or the key.
    #[error("cannot build the TLS server configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// No DNS name to put in the certificate.
    #[error("no DNS name for the server certificate: configure services with hosts or tls_names")]
    NoNames,
}

/// A private CA and the server configuration using a certificate it issued.
pub struct ServerTls {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The CA certificate, DER (for clients built in-process).
    pub ca_der: CertificateDer<'static>,
    /// rustls server configuration with ALPN `h2`, `http/1.1`.
    pub server_config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// The crypto provider used everywhere in this crate: ring (no aws-lc in this tree).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Generates a CA and a server certificate for `names` (DNS names, `*.` wildcards allowed).
pub fn generate(names: &[String]) -> Result<ServerTls, TlsError> {
    if names.is_empty() {
        return Err(TlsError::NoNames);
    }
    let generate_err = |source| TlsError::Generate {
        names: names.to_vec(),
        source,
    };
    let now = time::OffsetDateTime::now_utc();
    // Backdated a day so clients with a slightly late clock still accept it.
    let not_before = now - time::Duration::days(1);
    let not_after = now + time::Duration::days(365);

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(generate_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "lattice-emulator private CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate().map_err(generate_err)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(generate_err)?;

    let mut leaf_params = CertificateParams::new(names.to_vec()).map_err(generate_err)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.not_before = not_before;
    leaf_params.not_after = not_after;
    let leaf_key = KeyPair::generate().map_err(generate_err)?;
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .map_err(generate_err)?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone(), ca_cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        server_config: Arc::new(config),
    })
}
