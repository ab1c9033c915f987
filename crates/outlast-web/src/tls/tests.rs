use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// A CA with certificates for `sites` in `dir`; the Files of `site`.
fn pki(dir: &Path, sites: &[&str], days: u32) -> issue::Pem {
    let ca = issue::ca("shop", 3650).expect("ca");
    write(dir, "ca.pem", &ca.cert);
    write(dir, "ca.key", &ca.key);
    for s in sites {
        let c = issue::site(&ca, s, &["127.0.0.1".to_string()], days).expect("site");
        write(dir, &format!("{s}.pem"), &c.cert);
        write(dir, &format!("{s}.key"), &c.key);
    }
    ca
}

fn files(dir: &Path, site: &str) -> Files {
    Files {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{site}.pem")),
        key: dir.join(format!("{site}.key")),
    }
}

/// `client` dials `server` expecting `expect_site`; the server's view of the client's
/// certificate, or the error the handshake ended with on either side.
async fn handshake(
    client: &PeerTls,
    server: &PeerTls,
    expect_site: &str,
) -> Result<Arc<CertificateDer<'static>>, String> {
    handshake_with(client.client_config(), server, expect_site).await
}

/// A client that trusts `ca` (so it goes on to show its certificate) and shows `cert`,
/// whatever it is: what a stranger or an old member would send.
fn rogue(ca: &Path, cert: &Path, key: &Path) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca).expect("ca") {
        roots.add(c).expect("root");
    }
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(read_certs(cert).expect("cert"), read_key(key).expect("key"))
        .expect("client auth")
}

async fn handshake_with(
    client: ClientConfig,
    server: &PeerTls,
    expect_site: &str,
) -> Result<Arc<CertificateDer<'static>>, String> {
    let (a, b) = tokio::io::duplex(1 << 16);
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from(peer_name(expect_site)).expect("name");
    let srv = tokio::spawn(async move {
        let mut s = acceptor.accept(b).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        s.write_all(b"pong!").await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        let cert = s
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c[0].clone().into_owned());
        cert.map(Arc::new)
            .ok_or_else(|| "no client certificate".to_string())
    });
    let cli = async {
        let mut c = connector
            .connect(name, a)
            .await
            .map_err(|e| e.to_string())?;
        c.write_all(b"ping!").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let c = tokio::time::timeout(Duration::from_secs(5), cli)
        .await
        .map_err(|_| "client timed out".to_string())?;
    let s = tokio::time::timeout(Duration::from_secs(5), srv)
        .await
        .map_err(|_| "server timed out".to_string())?
        .map_err(|e| e.to_string())?;
    c?;
    s
}

#[tokio::test]
async fn sites_keyed_from_one_secret_talk_and_another_secret_is_refused() {
    let east = PeerTls::new(PeerTrust::Secret("s3cret".into()), "east").expect("east");
    let west = PeerTls::new(PeerTrust::Secret("s3cret".into()), "west").expect("west");
    let cert = handshake(&east, &west, "west").await.expect("same secret");
    assert!(names_site(&cert, "east"));
    assert!(!names_site(&cert, "west"));
    // Dialling west but expecting east: west's certificate does not name east.
    let err = handshake(&east, &west, "east")
        .await
        .expect_err("wrong name");
    assert!(
        err.contains("NotValidForName") || err.contains("name"),
        "{err}"
    );
    assert_eq!(east.view().refused.get("wrong-name"), Some(&1));
    let other = PeerTls::new(PeerTrust::Secret("another".into()), "mallory").expect("m");
    // Either end refuses the other's CA: the caller refuses the answer...
    handshake(&other, &west, "west")
        .await
        .expect_err("another secret");
    assert_eq!(other.view().refused.get("unknown-ca"), Some(&1));
    // ...and a member refuses a stranger that answers in a peer's place.
    handshake(&west, &other, "mallory")
        .await
        .expect_err("another secret");
    assert_eq!(west.view().refused.get("unknown-ca"), Some(&1));
}

#[tokio::test]
async fn certificate_files_another_ca_and_an_expired_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    pki(dir.path(), &["east", "west"], 365);
    let east = PeerTls::new(PeerTrust::Files(files(dir.path(), "east")), "east").expect("east");
    let west = PeerTls::new(PeerTrust::Files(files(dir.path(), "west")), "west").expect("west");
    let cert = handshake(&east, &west, "west").await.expect("same CA");
    assert!(names_site(&cert, "east"));
    assert!(east.view().not_after.is_some());

    // Another CA's certificate for "east" is refused by west.
    let other = tempfile::tempdir().expect("dir");
    pki(other.path(), &["east"], 365);
    let stranger = rogue(
        &dir.path().join("ca.pem"),
        &other.path().join("east.pem"),
        &other.path().join("east.key"),
    );
    handshake_with(stranger, &west, "west")
        .await
        .expect_err("other CA");
    assert_eq!(west.view().refused.get("unknown-ca"), Some(&1));

    // A certificate of this CA that has expired.
    let ca = issue::Pem {
        cert: std::fs::read_to_string(dir.path().join("ca.pem")).expect("ca"),
        key: std::fs::read_to_string(dir.path().join("ca.key")).expect("key"),
    };
    let ca_key = rcgen::KeyPair::from_pem(&ca.key).expect("k");
    let ca_cert = rcgen::CertificateParams::from_ca_cert_pem(&ca.cert)
        .expect("p")
        .self_signed(&ca_key)
        .expect("c");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = site_params("east", &[]).expect("params");
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let old = p.signed_by(&key, &ca_cert, &ca_key).expect("sign");
    let exp = tempfile::tempdir().expect("dir");
    write(exp.path(), "ca.pem", &ca.cert);
    write(exp.path(), "east.pem", &old.pem());
    write(exp.path(), "east.key", &key.serialize_pem());
    let old_member = rogue(
        &dir.path().join("ca.pem"),
        &exp.path().join("east.pem"),
        &exp.path().join("east.key"),
    );
    handshake_with(old_member, &west, "west")
        .await
        .expect_err("expired");
    assert_eq!(west.view().refused.get("expired"), Some(&1));
    // Loading it as this site's own certificate says why.
    let err = PeerTls::new(PeerTrust::Files(files(exp.path(), "east")), "east")
        .err()
        .expect("an expired certificate does not load");
    assert!(err.to_string().contains("expired"), "{err}");
}

#[tokio::test]
async fn a_rotated_certificate_is_used_without_a_restart_and_a_bad_file_keeps_the_old() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = pki(dir.path(), &["east", "west"], 365);
    let east = PeerTls::new(PeerTrust::Files(files(dir.path(), "east")), "east").expect("east");
    let west = PeerTls::new(PeerTrust::Files(files(dir.path(), "west")), "west").expect("west");
    let before = handshake(&east, &west, "west").await.expect("before");
    assert!(!east.reload(false).expect("unchanged"), "nothing changed");
    let renewed = issue::site(&ca, "east", &[], 30).expect("renew");
    write(dir.path(), "east.pem", &renewed.cert);
    write(dir.path(), "east.key", &renewed.key);
    assert!(east.reload(false).expect("reload"), "the change is seen");
    let after = handshake(&east, &west, "west").await.expect("after");
    assert_ne!(before, after, "the renewed certificate is shown");
    // A half-written key: refused, the renewed one stays, counted.
    write(
        dir.path(),
        "east.key",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n",
    );
    assert!(east.reload(false).is_err());
    assert_eq!(east.view().reload_failures, 1);
    let still = handshake(&east, &west, "west").await.expect("still");
    assert_eq!(still, after);
}

#[test]
fn a_certificate_for_another_site_does_not_load_as_this_one() {
    let dir = tempfile::tempdir().expect("dir");
    pki(dir.path(), &["east"], 365);
    let mut f = files(dir.path(), "east");
    f.key = dir.path().join("east.key");
    let err = PeerTls::new(PeerTrust::Files(f), "west")
        .err()
        .expect("refused");
    assert!(err.to_string().contains("west.outlast"), "{err}");
}
