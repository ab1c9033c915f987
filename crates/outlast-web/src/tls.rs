//! TLS for the peer port (mutual TLS 1.3 between sites) and, optionally, the API.
//!
//! # Peer traffic
//! Every peer connection is TLS 1.3 with a certificate on both ends, issued by the
//! cluster's CA. A site's certificate names it `<site>.outlast` (a DNS name in its subject
//! alternative names): a dialling site checks that the answering site's certificate names
//! the site it meant to reach, and the answering site checks that the certificate of the
//! caller names the site the request says it comes from (see `outlast`'s `peer.rs`).
//!
//! The CA comes from one of two places:
//! - files (`[tls] ca`, `cert`, `key`): an operator's CA, certificates made by
//!   `outlast certs` or `outlast init` or any PKI. The files are read again when they change
//!   (checked every [`RELOAD_EVERY`]) or on SIGHUP, so a certificate is rotated without a
//!   restart; a file that does not load keeps the previous material and is counted.
//! - the cluster secret (no `[tls]`): the CA's Ed25519 key is derived from the secret, and
//!   each agent signs a certificate for itself with it when it starts. Whoever holds the
//!   secret can join, exactly as with the MAC that signs each request, and nothing travels
//!   in clear; TLS 1.3's ephemeral key exchange gives forward secrecy in both modes.
//!
//! A certificate from another CA, an expired one, one that names another site, or no
//! certificate at all is refused during the handshake and counted by reason
//! (`outlast_peer_tls_refused_total{reason}`, status `peer_tls.refused`).
//!
//! Session resumption is off: every connection is verified against the CA of the moment,
//! so a rotated CA takes effect for the next connection, never a resumed one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

/// How often certificate files are checked for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The DNS name a site's peer certificate carries.
pub fn peer_name(site: &str) -> String {
    format!("{site}.outlast")
}

/// Where the peer port's trust comes from.
#[derive(Debug, Clone)]
pub enum PeerTrust {
    /// The operator's CA and this site's certificate and key (PEM files).
    Files(Files),
    /// A CA keyed from the cluster secret.
    Secret(String),
}

/// PEM files: the CA certificate(s), this site's chain, its private key.
#[derive(Debug, Clone)]
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error("{0}")]
    Build(String),
}

fn file_err(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

fn build_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Build(e.to_string())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What one load gives: the roots to trust and the certificate to show.
struct Material {
    roots: RootCertStore,
    key: Arc<CertifiedKey>,
    /// The shown certificate's end of validity (Unix seconds).
    not_after: Option<i64>,
}

/// Reads a PEM file's certificates (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = outlast_core::files::read_text(path, 1 << 20).map_err(|e| file_err(path, e))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "holds no certificate (BEGIN CERTIFICATE)"));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = outlast_core::files::read_text(path, 1 << 20).map_err(|e| file_err(path, e))?;
    PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|e| file_err(path, format!("no private key in it: {e}")))
}

/// The end of a certificate's validity, Unix seconds.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(c.validity().not_after.timestamp())
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_err(key_path, format!("the key cannot sign: {e}")))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|_| file_err(key_path, "the key is not the certificate's key"))?;
    Ok(Arc::new(ck))
}

fn load_files(f: &Files, site: &str) -> Result<Material, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(&f.ca)? {
        roots
            .add(c)
            .map_err(|e| file_err(&f.ca, format!("not a usable CA certificate: {e}")))?;
    }
    let chain = read_certs(&f.cert)?;
    let leaf = chain[0].clone();
    let key = certified(chain, read_key(&f.key)?, &f.key)?;
    // A certificate that does not name this site, or does not chain to the CA, is caught
    // here rather than by every peer refusing it.
    check_leaf(&roots, &key.cert, site).map_err(|why| file_err(&f.cert, why))?;
    Ok(Material {
        roots,
        key,
        not_after: not_after(&leaf),
    })
}

/// Why `chain` would be refused as `site`'s peer certificate under `roots`, now.
fn check_leaf(
    roots: &RootCertStore,
    chain: &[CertificateDer<'static>],
    site: &str,
) -> Result<(), String> {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots.clone()),
        provider(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(peer_name(site)).map_err(|e| e.to_string())?;
    let now = UnixTime::since_unix_epoch(Duration::from_millis(outlast_core::clock::unix_ms()));
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], now)
        .map(drop)
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(c) => match reason(&c) {
                "wrong-name" => format!(
                    "the certificate does not name this site (it needs the DNS name {})",
                    peer_name(site)
                ),
                "unknown-ca" => "the certificate is not issued by the [tls] ca".to_string(),
                "expired" => "the certificate has expired".to_string(),
                _ => format!("the certificate is refused: {c}"),
            },
            other => other.to_string(),
        })
}

/// The CA's key when it is derived from the cluster secret: PKCS#8 v1 around an Ed25519
/// seed.
fn secret_ca(secret: &str) -> Result<(rcgen::Certificate, rcgen::KeyPair), TlsError> {
    let seed = blake3::derive_key("outlast 2026 peer CA ed25519 seed", secret.as_bytes());
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&seed);
    let key = rcgen::KeyPair::try_from(pkcs8).map_err(build_err)?;
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        "outlast cluster CA (keyed from the cluster secret)",
    );
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = p.self_signed(&key).map_err(build_err)?;
    Ok((cert, key))
}

fn load_secret(secret: &str, site: &str) -> Result<Material, TlsError> {
    let (ca, ca_key) = secret_ca(secret)?;
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(build_err)?;
    let leaf = site_params(site, &[])
        .map_err(build_err)?
        .signed_by(&leaf_key, &ca, &ca_key)
        .map_err(build_err)?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).map_err(build_err)?;
    let key_der = PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let key = certified(vec![leaf.der().clone()], key_der, Path::new("(derived)"))?;
    Ok(Material {
        roots,
        key,
        not_after: None,
    })
}

/// A site certificate's parameters: its peer name (and `extra` names or addresses, for
/// the API), for both ends of a connection.
fn site_params(site: &str, extra: &[String]) -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut names = vec![peer_name(site)];
    names.extend(extra.iter().cloned());
    let mut p = rcgen::CertificateParams::new(names)?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("outlast site {site}"));
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

/// The refusal reason a certificate error is counted under.
fn reason(e: &CertificateError) -> &'static str {
    match e {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not-yet-valid"
        }
        // Both mean "not issued by this cluster's CA": no issuer of that name, or one of
        // the same name with another key (another cluster's CA named alike).
        CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown-ca",
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "wrong-name"
        }
        CertificateError::BadEncoding => "bad-encoding",
        _ => "invalid",
    }
}

/// What is in force now.
struct Current {
    key: Arc<CertifiedKey>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<dyn ServerCertVerifier>,
    not_after: Option<i64>,
    /// The files' (length, modified) when they were read.
    stamp: Vec<(u64, Option<std::time::SystemTime>)>,
    loaded_ms: u64,
}

/// The shared, swappable state behind the configs' resolvers and verifiers.
struct Live {
    current: RwLock<Current>,
    refused: Mutex<BTreeMap<String, u64>>,
    reload_failures: Mutex<u64>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("outlast peer TLS")
    }
}

impl Live {
    fn now(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, why: &str) {
        metrics::counter!("outlast_peer_tls_refused_total", "reason" => why.to_string())
            .increment(1);
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(why.to_string())
            .or_default() += 1;
    }

    // Handshake signatures: what the webpki verifiers of either end do, with the one
    // provider's algorithms (they do not change when certificates are reloaded).
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = provider().signature_verification_algorithms;
        self.counted(rustls::crypto::verify_tls13_signature(
            message, cert, dss, &algs,
        ))
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn counted<T>(&self, r: Result<T, rustls::Error>) -> Result<T, rustls::Error> {
        if let Err(e) = &r {
            let why = match e {
                rustls::Error::InvalidCertificate(c) => reason(c),
                rustls::Error::NoCertificatesPresented => "no-certificate",
                _ => "invalid",
            };
            self.count(why);
        }
        r
    }
}

#[derive(Debug)]
struct Resolver(Arc<Live>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.now().key.clone())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.now().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct ClientCheck(Arc<Live>);

impl ClientCertVerifier for ClientCheck {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let v = self.0.now().client_verifier.clone();
        self.0
            .counted(v.verify_client_cert(end_entity, intermediates, now))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

#[derive(Debug)]
struct ServerCheck(Arc<Live>);

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let v = self.0.now().server_verifier.clone();
        self.0
            .counted(v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

fn stamp(f: &Files) -> Vec<(u64, Option<std::time::SystemTime>)> {
    [&f.ca, &f.cert, &f.key]
        .iter()
        .map(|p| match std::fs::metadata(p) {
            Ok(m) => (m.len(), m.modified().ok()),
            Err(_) => (0, None),
        })
        .collect()
}

fn current(
    m: Material,
    stamp: Vec<(u64, Option<std::time::SystemTime>)>,
) -> Result<Current, TlsError> {
    let roots = Arc::new(m.roots);
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(build_err)?;
    let server_verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(build_err)?;
    Ok(Current {
        key: m.key,
        client_verifier,
        server_verifier,
        not_after: m.not_after,
        stamp,
        loaded_ms: outlast_core::clock::unix_ms(),
    })
}

pub use outlast_core::status::PeerTlsView;

/// The peer port's TLS: both configs, and the reload of certificate files.
pub struct PeerTls {
    trust: PeerTrust,
    site: String,
    live: Arc<Live>,
    server: Arc<ServerConfig>,
    client: ClientConfig,
}

impl PeerTls {
    pub fn new(trust: PeerTrust, site: &str) -> Result<Self, TlsError> {
        let (material, st) = match &trust {
            PeerTrust::Files(f) => (load_files(f, site)?, stamp(f)),
            PeerTrust::Secret(s) => (load_secret(s, site)?, Vec::new()),
        };
        let live = Arc::new(Live {
            current: RwLock::new(current(material, st)?),
            refused: Mutex::new(BTreeMap::new()),
            reload_failures: Mutex::new(0),
        });
        let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(build_err)?
            .with_client_cert_verifier(Arc::new(ClientCheck(live.clone())))
            .with_cert_resolver(Arc::new(Resolver(live.clone())));
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(build_err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerCheck(live.clone())))
            .with_client_cert_resolver(Arc::new(Resolver(live.clone())));
        client.resumption = rustls::client::Resumption::disabled();
        Ok(Self {
            trust,
            site: site.to_string(),
            live,
            server: Arc::new(server),
            client,
        })
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The client config (reqwest takes it by value).
    pub fn client_config(&self) -> ClientConfig {
        self.client.clone()
    }

    /// Counts a refusal made after the handshake (a caller whose certificate names
    /// another site than its request).
    pub fn count_refusal(&self, why: &str) {
        self.live.count(why);
    }

    /// Reads the certificate files again when they changed, or when `force`d (SIGHUP).
    /// Ok(true) when new material is in force; on an error the previous stays.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let PeerTrust::Files(f) = &self.trust else {
            return Ok(false);
        };
        let st = stamp(f);
        if !force && self.live.now().stamp == st {
            return Ok(false);
        }
        let loaded = load_files(f, &self.site).and_then(|m| current(m, st.clone()));
        match loaded {
            Ok(c) => {
                *self.live.current.write().unwrap_or_else(|p| p.into_inner()) = c;
                metrics::counter!("outlast_peer_tls_reloads_total").increment(1);
                Ok(true)
            }
            Err(e) => {
                // Not tried again until the files change again (or SIGHUP).
                self.live
                    .current
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .stamp = st;
                *self
                    .live
                    .reload_failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) += 1;
                metrics::counter!("outlast_peer_tls_reload_failures_total").increment(1);
                Err(e)
            }
        }
    }

    /// The end of validity of the certificate in force (Unix seconds), with files.
    pub fn not_after_secs(&self) -> Option<i64> {
        self.live.now().not_after
    }

    pub fn view(&self) -> PeerTlsView {
        let c = self.live.now();
        PeerTlsView {
            mode: match self.trust {
                PeerTrust::Files(_) => "certificates",
                PeerTrust::Secret(_) => "secret",
            }
            .to_string(),
            refused: self
                .live
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            not_after: c
                .not_after
                .map(|s| outlast_core::clock::rfc3339(s.saturating_mul(1000))),
            loaded_ms: c.loaded_ms,
            reload_failures: *self
                .live
                .reload_failures
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        }
    }
}

/// Whether a verified peer certificate names `site`.
pub fn names_site(cert: &CertificateDer<'_>, site: &str) -> bool {
    let Ok(name) = ServerName::try_from(peer_name(site)) else {
        return false;
    };
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee.verify_is_valid_for_subject_name(&name).is_ok(),
        Err(_) => false,
    }
}

/// The certificate a peer showed, handed to request handlers as an extension.
#[derive(Debug, Clone)]
pub struct PeerCert(pub Arc<CertificateDer<'static>>);

/// A server config for the API from a certificate and key file (no client certificates).
pub fn api_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs(cert)?;
    let key = certified(chain, read_key(key)?, key)?;
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(build_err)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(key)));
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A CA and certificates made for a cluster (`outlast certs`, `outlast init`).
pub mod issue {
    use super::*;

    /// PEM text of a certificate and its key.
    pub struct Pem {
        pub cert: String,
        pub key: String,
    }

    fn validity(p: &mut rcgen::CertificateParams, days: u32) -> Result<(), TlsError> {
        let now = outlast_core::clock::unix_ms() as i64 / 1000;
        let at = |s: i64| time::OffsetDateTime::from_unix_timestamp(s).map_err(build_err);
        p.not_before = at(now - 3600)?;
        p.not_after = at(now + i64::from(days) * 86_400)?;
        Ok(())
    }

    /// A new CA for `cluster`, valid for `days`.
    pub fn ca(cluster: &str, days: u32) -> Result<Pem, TlsError> {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(build_err)?;
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("outlast cluster {cluster} CA"),
        );
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        validity(&mut p, days)?;
        let cert = p.self_signed(&key).map_err(build_err)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A certificate for `site` signed by the CA in `ca` (PEM), naming `site.outlast` and
    /// each of `extra` (IP addresses or DNS names, for clients of the API), valid `days`.
    pub fn site(ca: &Pem, site: &str, extra: &[String], days: u32) -> Result<Pem, TlsError> {
        let ca_key = rcgen::KeyPair::from_pem(&ca.key).map_err(build_err)?;
        let ca_params = rcgen::CertificateParams::from_ca_cert_pem(&ca.cert).map_err(build_err)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(build_err)?;
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(build_err)?;
        let mut p = site_params(site, extra).map_err(build_err)?;
        validity(&mut p, days)?;
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(build_err)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests;
