//! TLS on both sides, on rustls: the listener's certificate (clients connect with
//! `sslmode=require` or stronger, or PostgreSQL 17's direct TLS) and connections
//! to PostgreSQL (`disable` … `verify-full`, like libpq's `sslmode`).
//!
//! A listener certificate is loaded with the `tls-server-end-point` hash that
//! SCRAM-SHA-256-PLUS binds to, so a session always binds to the certificate its
//! own handshake used, even when the files are re-read in between.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// The ALPN protocol PostgreSQL 17 requires on direct TLS connections.
pub const ALPN: &[u8] = b"postgresql";

/// A TLS setting that cannot be used: the config field it belongs to
/// (`cert_file`, `key_file`, `ca_file`, `server_name` or `mode`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TlsError {
    pub field: &'static str,
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        field,
        message: message.into(),
    }
}

/// What the listener does with TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// SSLRequest is answered `N`; direct TLS connections are closed.
    #[default]
    Disable,
    /// TLS when the client asks for it, plain connections too.
    Allow,
    /// Plain connections are refused at startup with a FATAL error.
    Require,
}

/// A loaded listener certificate.
pub struct Listener {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// `tls-server-end-point` channel binding data of the certificate.
    pub end_point: Arc<[u8]>,
}

/// The listener's TLS settings with their certificate, loaded with the config.
/// A reload loads the files anew as part of the new config; open connections
/// keep the certificate they started with.
pub struct ClientTls {
    pub mode: ClientTlsMode,
    listener: Option<Arc<Listener>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    pub fn disabled() -> ClientTls {
        ClientTls {
            mode: ClientTlsMode::Disable,
            listener: None,
        }
    }

    /// Loads the certificate chain and key now, so a bad file is reported with
    /// the config rather than at the first client.
    pub fn load(mode: ClientTlsMode, cert: &Path, key: &Path) -> Result<ClientTls, TlsError> {
        Ok(ClientTls {
            mode,
            listener: Some(Arc::new(load_listener(cert, key)?)),
        })
    }

    /// The certificate to use for a new connection, unless TLS is off.
    pub fn listener(&self) -> Option<Arc<Listener>> {
        if self.mode == ClientTlsMode::Disable {
            return None;
        }
        self.listener.clone()
    }
}

fn load_listener(cert_file: &Path, key_file: &Path) -> Result<Listener, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            err(
                "cert_file",
                format!("cannot read certificates from {}: {e}", cert_file.display()),
            )
        })?;
    let Some(leaf) = certs.first() else {
        return Err(err(
            "cert_file",
            format!("no certificate in {}", cert_file.display()),
        ));
    };
    let end_point = end_point_hash(leaf).ok_or_else(|| {
        err(
            "cert_file",
            format!("{}: the certificate is not valid DER", cert_file.display()),
        )
    })?;
    // The key's contents never go into a message.
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        err(
            "key_file",
            format!("cannot read a private key from {}: {e}", key_file.display()),
        )
    })?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            err(
                "cert_file",
                format!(
                    "{} and {} do not make a usable certificate: {e}",
                    cert_file.display(),
                    key_file.display()
                ),
            )
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Listener {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        end_point,
    })
}

/// RFC 5929 `tls-server-end-point`: the certificate hashed with the hash of its
/// signature algorithm, SHA-256 for MD5, SHA-1 and anything unrecognised (as
/// PostgreSQL computes it, so libpq's binding matches).
fn end_point_hash(cert: &[u8]) -> Option<Arc<[u8]>> {
    const SHA384: &[&[u8]] = &[
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    ];
    const SHA512: &[&[u8]] = &[
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
    ];
    let oid = signature_algorithm(cert)?;
    Some(if SHA384.contains(&oid) {
        Sha384::digest(cert).to_vec().into()
    } else if SHA512.contains(&oid) {
        Sha512::digest(cert).to_vec().into()
    } else {
        Sha256::digest(cert).to_vec().into()
    })
}

/// The OID of `Certificate.signatureAlgorithm`: SEQUENCE { tbsCertificate,
/// SEQUENCE { OID, params }, signature }. Only the lengths are walked.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (tag, outer, _) = der(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_tbs) = der(outer)?;
    let (tag, algorithm, _) = der(after_tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// One DER element: its tag, its contents and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, &b| (l << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// How the proxy's connections to one cluster use TLS, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    #[default]
    Disable,
    /// TLS if the server offers it, without checking its certificate.
    Prefer,
    /// TLS or no connection, without checking the certificate.
    Require,
    /// TLS with a certificate signed by the configured CA, any host name.
    VerifyCa,
    /// TLS with a certificate signed by the CA and naming the cluster's host.
    VerifyFull,
}

/// Ready-made TLS client settings for one cluster.
#[derive(Clone)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    connector: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn disabled() -> ServerTls {
        ServerTls {
            mode: ServerTlsMode::Disable,
            connector: None,
        }
    }

    /// Builds the client side for `host`; the verify modes need `ca_file`.
    pub fn new(
        mode: ServerTlsMode,
        host: &str,
        ca_file: Option<&Path>,
    ) -> Result<ServerTls, TlsError> {
        if mode == ServerTlsMode::Disable {
            return Ok(ServerTls::disabled());
        }
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            err(
                "server_name",
                format!("\"{host}\" is not a valid TLS server name"),
            )
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            ServerTlsMode::Disable => unreachable!("returned above"),
            ServerTlsMode::Prefer | ServerTlsMode::Require => Arc::new(Relaxed {
                provider: Arc::clone(&provider),
                chain: None,
            }),
            ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull => {
                let ca_file = ca_file
                    .ok_or_else(|| err("mode", "verify-ca and verify-full need tls.ca_file"))?;
                let ca_err =
                    |e: &dyn fmt::Display| err("ca_file", format!("{}: {e}", ca_file.display()));
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| {
                    err("ca_file", format!("cannot read {}: {e}", ca_file.display()))
                })? {
                    let cert = cert.map_err(|e| ca_err(&e))?;
                    roots.add(cert).map_err(|e| ca_err(&e))?;
                }
                if roots.is_empty() {
                    return Err(err(
                        "ca_file",
                        format!("no certificate in {}", ca_file.display()),
                    ));
                }
                let webpki = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| err("mode", e.to_string()))?;
                if mode == ServerTlsMode::VerifyCa {
                    Arc::new(Relaxed {
                        provider: Arc::clone(&provider),
                        chain: Some(webpki),
                    })
                } else {
                    webpki
                }
            }
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err("mode", e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(ServerTls {
            mode,
            connector: Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name)),
        })
    }

    /// Whether an SSLRequest goes first, and whether an `N` answer is fatal.
    pub fn requested(&self) -> bool {
        self.mode != ServerTlsMode::Disable
    }

    pub fn required(&self) -> bool {
        !matches!(self.mode, ServerTlsMode::Disable | ServerTlsMode::Prefer)
    }

    /// Runs the handshake on a socket whose SSLRequest was answered `S`.
    pub async fn connect<S>(&self, socket: S) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (connector, name) = self
            .connector
            .as_ref()
            .expect("connect is only called when TLS was requested");
        connector.connect(name.clone(), socket).await
    }
}

/// `prefer` and `require` (no `chain`): encryption without authentication of
/// the server, as libpq does for those modes. `verify-ca` (with `chain`): the
/// chain must lead to the CA, any host name. Handshake signatures are always
/// checked.
#[derive(Debug)]
struct Relaxed {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, name, ocsp, now) {
            // The name is checked after the chain, so this error means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walk_finds_the_signature_algorithm_or_gives_up() {
        // SEQUENCE { SEQUENCE {} , SEQUENCE { OID 1.2.840.10045.4.3.3 } }
        let cert = [
            0x30, 0x0e, 0x30, 0x00, 0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04,
            0x03, 0x03,
        ];
        assert_eq!(signature_algorithm(&cert), Some(&cert[8..]));
        assert_eq!(end_point_hash(&cert).unwrap().len(), 48, "SHA-384");
        assert!(end_point_hash(&cert[..10]).is_none());
        for bad in [&[][..], &[0x30], &[0x30, 0x85, 1, 1, 1, 1, 1], &cert[..10]] {
            assert_eq!(signature_algorithm(bad), None, "{bad:?}");
        }
    }
}
