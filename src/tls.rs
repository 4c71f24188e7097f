//! TLS on the gRPC port: `--tls-cert` and `--tls-key` (PEM), and `--tls-client-ca` to
//! require client certificates (mTLS). The files are looked at every second and the
//! acceptor rebuilt when they change, as cert-manager rotates them; a change that does
//! not load keeps the configuration in use.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use ring::digest;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::METRICS;

/// Longest a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the certificate, its key and the client CA (for mTLS) are.
#[derive(Clone, Debug)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) client_ca: Option<PathBuf>,
}

/// The server's TLS configuration, as last loaded from its files.
pub(crate) struct ReloadingTls {
    files: TlsFiles,
    current: RwLock<(Arc<ServerConfig>, [u8; 32])>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingTls {
    /// Loads the files; the error names what is wrong (never key material).
    pub(crate) fn load(files: TlsFiles) -> Result<Self, (&'static str, String)> {
        let (config, digest) = build(&files)?;
        Ok(Self {
            files,
            current: RwLock::new((Arc::new(config), digest)),
        })
    }

    fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(current.0.clone())
    }

    fn reload(&self) {
        let Ok(digest) = files_digest(&self.files) else {
            return;
        };
        if self.current.read().unwrap_or_else(|p| p.into_inner()).1 == digest {
            return;
        }
        match build(&self.files) {
            Ok((config, digest)) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                    (Arc::new(config), digest);
                tracing::info!("TLS certificate files reloaded");
            }
            // Mid-rotation (the key written before the certificate, say): try again later.
            Err((flag, why)) => {
                METRICS.tls_reload_errors.inc();
                tracing::warn!(flag, %why, "TLS files do not load; keeping the ones in use")
            }
        }
    }

    /// Looks at the files for changes while the gateway holds this configuration.
    pub(crate) fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        crate::reload::every_second(self, Self::reload)
    }
}

/// Accepts TCP connections on `listener` and hands out those whose TLS handshake
/// succeeded; handshakes run concurrently, so a slow client holds up nobody else.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                // The server stopped taking connections.
                _ = tx.closed() => return,
            };
            // Small answers would otherwise wait for delayed ACKs.
            let _ = stream.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A digest of the files' bytes, to notice a change; the error names the file that
/// cannot be read, by its flag.
fn files_digest(files: &TlsFiles) -> Result<[u8; 32], (&'static str, String)> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for (flag, path) in [
        ("--tls-cert", Some(&files.cert)),
        ("--tls-key", Some(&files.key)),
        ("--tls-client-ca", files.client_ca.as_ref()),
    ]
    .into_iter()
    .filter_map(|(flag, p)| Some((flag, p?)))
    {
        let bytes = std::fs::read(path)
            .map_err(|e| (flag, format!("cannot read {}: {e}", path.display())))?;
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(&bytes);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

fn read_certs(
    path: &Path,
    flag: &'static str,
) -> Result<Vec<CertificateDer<'static>>, (&'static str, String)> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| (flag, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err((flag, format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

/// The rustls configuration the files describe, and a digest of the files.
fn build(files: &TlsFiles) -> Result<(ServerConfig, [u8; 32]), (&'static str, String)> {
    let digest = files_digest(files)?;
    let certs = read_certs(&files.cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        (
            "--tls-key",
            format!("{}: no PEM private key ({e})", files.key.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("--tls-cert", e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca, "--tls-client-ca")? {
                roots
                    .add(cert)
                    .map_err(|e| ("--tls-client-ca", e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ("--tls-client-ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ("--tls-key", format!("does not match --tls-cert: {e}")))?;
    // gRPC over HTTP/2 first; HTTP/1.1 for gRPC-Web clients that offer only it (browsers
    // behind some proxies): `src/server.rs` serves both on this port.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, digest))
}
