//! TLS and mTLS on the gRPC port, with certificates made for the test by rcgen: only
//! clients that trust the server (and, with mTLS, that the server trusts) get in, and
//! rotated certificate files take effect without a restart.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use audit_gateway::pb::{self, audit_service_client::AuditServiceClient};
use confluence_sim::SimulatorConfig;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::common::{spawn_simulator, test_config};

/// A CA and what it signs, as PEM.
struct Pki {
    ca: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let ca = params.self_signed(&key).expect("CA").pem();
        Self {
            ca,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate and key for `names`, for a server or a client.
    fn issue(&self, names: &[&str], client: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("audit-gateway-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write");
    path
}

/// A client of `port` over TLS trusting `ca`, presenting `identity` if given.
async fn client(
    port: u16,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<AuditServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .expect("uri")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(AuditServiceClient::new(channel))
}

/// Whether a `GetSince` over `c` succeeds.
async fn reads(c: Result<AuditServiceClient<Channel>, tonic::transport::Error>) -> bool {
    match c {
        Ok(mut c) => c
            .get_since(pb::GetSinceRequest {
                limit: Some(3),
                ..Default::default()
            })
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// A gateway on a free port serving TLS with a certificate `pki` issued for localhost
/// (files in `dir`, which rotation tests rewrite), requiring client certificates `pki`
/// signed when `mtls`; `tweak` changes the rest.
async fn tls_gateway(
    dir: &Path,
    pki: &Pki,
    confluence: &str,
    mtls: bool,
    tweak: impl FnOnce(&mut audit_gateway::GatewayConfig),
) -> TlsGateway {
    let (cert, key) = pki.issue(&["localhost"], false);
    let mut config = test_config(confluence);
    config.tls_cert = Some(write(dir, "cert.pem", &cert));
    config.tls_key = Some(write(dir, "key.pem", &key));
    if mtls {
        config.tls_client_ca = Some(write(dir, "clients.pem", &pki.ca));
    }
    tweak(&mut config);
    let gateway = audit_gateway::Gateway::bind(config).await.expect("starts");
    let port = gateway.local_addr().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TlsGateway { port, stop, server }
}

/// A gateway [`tls_gateway`] started.
struct TlsGateway {
    port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), audit_gateway::ServeError>>,
}

impl TlsGateway {
    /// Stops it; whether it stopped cleanly.
    async fn stop(self) -> bool {
        let _ = self.stop.send(());
        matches!(self.server.await, Ok(Ok(())))
    }
}

#[tokio::test]
async fn tls_and_mtls_let_in_only_the_right_clients_and_certificates_rotate() {
    let dir = temp_dir("tls");
    let pki = Pki::new("gateway test CA");
    let client_id = pki.issue(&["siem"], true);
    let rogue = Pki::new("somebody else's CA");
    let rogue_id = rogue.issue(&["intruder"], true);

    let sim = spawn_simulator(SimulatorConfig {
        records: 20,
        ..Default::default()
    })
    .await;
    let gateway = tls_gateway(&dir, &pki, &sim.base_url(), true, |_| {}).await;
    let port = gateway.port;

    // mTLS: a client the CA signed reads; one without a certificate, with another CA's,
    // or one that does not trust the server, does not.
    assert!(reads(client(port, &pki.ca, Some(&client_id)).await).await);
    assert!(!reads(client(port, &pki.ca, None).await).await);
    assert!(!reads(client(port, &pki.ca, Some(&rogue_id)).await).await);
    assert!(!reads(client(port, &rogue.ca, Some(&client_id)).await).await);
    // Plaintext gets nowhere.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect()
        .await
        .map(AuditServiceClient::new);
    assert!(!reads(plain).await);

    // The `get` command speaks TLS and mTLS too.
    let ca_file = write(&dir, "ca.pem", &pki.ca);
    let id_cert = write(&dir, "client.pem", &client_id.0);
    let id_key = write(&dir, "client-key.pem", &client_id.1);
    let gateway_url = format!("https://localhost:{port}");
    let cli = move |with_identity: bool| {
        let mut cmd = crate::common::binary();
        cmd.args(["get", "--gateway", &gateway_url, "--limit", "2", "--tls-ca"])
            .arg(&ca_file);
        if with_identity {
            cmd.arg("--client-cert")
                .arg(&id_cert)
                .arg("--client-key")
                .arg(&id_key);
        }
        cmd.output()
    };
    let ok =
        tokio::task::spawn_blocking(move || cli(true).and_then(|a| cli(false).map(|b| (a, b))))
            .await
            .expect("joins")
            .expect("the binary runs");
    assert!(
        ok.0.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.0.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.0.stdout).contains("\"results\""));
    assert!(!ok.1.status.success(), "no client certificate, yet read");

    // cert-manager rotates the server certificate to one from a new CA: new connections
    // get it without a restart.
    let next = Pki::new("the next CA");
    let (cert2, key2) = next.issue(&["localhost"], false);
    write(&dir, "key.pem", &key2);
    write(&dir, "cert.pem", &cert2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reads(client(port, &next.ca, Some(&client_id)).await).await {
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!reads(client(port, &pki.ca, Some(&client_id)).await).await);

    assert!(gateway.stop().await, "stops cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A gRPC-Web call to the health service over TLS from a client that offers only
/// HTTP/1.1 in ALPN, as some browsers behind proxies do: the raw status line and body.
async fn grpc_web_over_http1(port: u16, ca: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::CertificateDer, pki_types::pem::PemObject};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots
            .add(cert.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name =
        rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let mut tls = connector.connect(name, tcp).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // An empty HealthCheckRequest in one gRPC-Web frame.
    let body = [0u8, 0, 0, 0, 0];
    let head = format!(
        "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(&body).await?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.or_else(|e| {
        // A server closing without close_notify after `Connection: close` is fine here.
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(0)
        } else {
            Err(e)
        }
    })?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn grpc_web_clients_offering_only_http1_get_in_over_tls() {
    let dir = temp_dir("tls-http1");
    let pki = Pki::new("gateway test CA");
    let sim = spawn_simulator(SimulatorConfig {
        records: 5,
        ..Default::default()
    })
    .await;
    let gateway = tls_gateway(&dir, &pki, &sim.base_url(), false, |_| {}).await;
    let port = gateway.port;

    let answer = grpc_web_over_http1(port, &pki.ca)
        .await
        .expect("a TLS handshake and an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("grpc-status:0"), "{answer}");
    // HTTP/2 clients still get h2.
    assert!(reads(client(port, &pki.ca, None).await).await);

    gateway.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// With mTLS, the client certificate's name is the caller: each certificate has its own
/// `--caller-max-streams`.
#[tokio::test]
async fn with_mtls_each_client_certificate_is_a_caller_of_its_own() {
    let dir = temp_dir("mtls-callers");
    let pki = Pki::new("gateway test CA");
    let siem = pki.issue(&["siem.example.com"], true);
    let billing = pki.issue(&["billing.example.com"], true);
    let sim = spawn_simulator(SimulatorConfig {
        records: 5000,
        ..Default::default()
    })
    .await;
    let gateway = tls_gateway(&dir, &pki, &sim.base_url(), true, |c| {
        c.caller_max_streams = Some(1);
    })
    .await;
    let port = gateway.port;
    let stream = pb::StreamSinceRequest {
        number: Some(30),
        units: pb::TimeUnit::Days.into(),
        page_size: Some(10),
        ..Default::default()
    };
    let mut a = client(port, &pki.ca, Some(&siem)).await.expect("connects");
    let mut b = client(port, &pki.ca, Some(&billing))
        .await
        .expect("connects");
    // Left unread, it holds siem's one stream.
    let first = a.stream_since(stream.clone()).await.expect("siem's first");
    let refused = a
        .stream_since(stream.clone())
        .await
        .expect_err("siem's second");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let other = b.stream_since(stream).await.expect("billing's own");
    drop((first, other));
    assert!(gateway.stop().await, "stops cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}
