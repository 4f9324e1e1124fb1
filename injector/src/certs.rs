//! The serving certificate: generated at start for the Service's DNS names (a fresh CA per
//! replica, whose PEM is published as the webhook's caBundle), or read from mounted files
//! (cert-manager).

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate a certificate for {names:?}: {source}")]
    Generate {
        names: Vec<String>,
        source: rcgen::Error,
    },
    #[error("cannot read certificates from {path}: {source}")]
    ReadCert {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCert { path: String },
    #[error("cannot read a private key from {path}: {source}")]
    ReadKey {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the certificate and key do not make a TLS server configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A certificate chain and its key, ready to serve.
pub struct Serving {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The CA's PEM when generated here (what to publish), `None` when mounted.
    pub ca_pem: Option<String>,
}

/// The DNS names the API server may use for `service.namespace`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A new CA (valid one year, backdated a day) and a leaf for `names` signed by it.
pub fn generate(names: &[String]) -> Result<Serving, CertError> {
    let err = |source| CertError::Generate {
        names: names.to_vec(),
        source,
    };
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::days(1);
    let not_after = now + time::Duration::days(365);

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("lattice-injector CA for {}", names[0]),
    );
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;

    let mut leaf = CertificateParams::new(names.to_vec()).map_err(err)?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.last().cloned().unwrap_or_default(),
    );
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let leaf_key = KeyPair::generate().map_err(err)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).map_err(err)?;

    Ok(Serving {
        chain: vec![leaf_cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        ca_pem: Some(ca_cert.pem()),
    })
}

/// A mounted PEM chain and key (`--tls-cert`, `--tls-key`).
pub fn load(cert: &Path, key: &Path) -> Result<Serving, CertError> {
    let cert_path = cert.display().to_string();
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| CertError::ReadCert {
            path: cert_path.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCert { path: cert_path });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| CertError::ReadKey {
        path: key.display().to_string(),
        source,
    })?;
    Ok(Serving {
        chain,
        key,
        ca_pem: None,
    })
}

pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS server configuration (ALPN h2 and http/1.1: the API server speaks either).
pub fn server_config(serving: &Serving) -> Result<Arc<ServerConfig>, CertError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(serving.chain.clone(), serving.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_and_reloaded_certificates_serve() {
        let names = service_names("lattice-injector", "lattice-egress");
        assert_eq!(
            names[3],
            "lattice-injector.lattice-egress.svc.cluster.local"
        );
        let s = generate(&names).unwrap();
        server_config(&s).unwrap();
        assert!(s
            .ca_pem
            .as_deref()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));

        let dir = std::env::temp_dir().join(format!("injector-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_pem = match &s.key {
            PrivateKeyDer::Pkcs8(k) => rcgen::KeyPair::try_from(k.secret_pkcs8_der())
                .unwrap()
                .serialize_pem(),
            _ => unreachable!(),
        };
        let cert_pem = pem_of(&s.chain[0]);
        std::fs::write(dir.join("tls.crt"), cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), key_pem).unwrap();
        std::fs::write(dir.join("empty"), "").unwrap();
        let loaded = load(&dir.join("tls.crt"), &dir.join("tls.key")).unwrap();
        assert_eq!(loaded.chain, s.chain);
        assert!(loaded.ca_pem.is_none());
        let e = load(&dir.join("empty"), &dir.join("tls.key"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("empty") && e.contains("no certificate"), "{e}");
        let e = load(&dir.join("tls.crt"), &dir.join("missing"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn pem_of(der: &CertificateDer<'_>) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    }
}
