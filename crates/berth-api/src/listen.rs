//! Where the API is served: a unix socket (mode 0660, root's and a group's, as dockerd's
//! `--group`), and TCP addresses, plain or with TLS (dockerd's `-H tcp://`, `--tls`,
//! `--tlsverify`). Every listener serves the same router, hijacked connections (attach,
//! exec) included, until its shutdown future resolves.
//!
//! TLS is rustls through tokio-rustls: the server's certificate chain and key from PEM
//! files, and with `--tlsverify` a client certificate that chains to the given CA is
//! required. Handshakes run in tasks of their own (at most [`HANDSHAKE_TIMEOUT`] each),
//! so that a client that connects and says nothing holds no one else up; a failed
//! handshake is logged and the connection dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use berth_engine::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// How long a TLS client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} from {path}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the CA certificates of {path} cannot verify clients")]
    ClientVerifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("the server certificate and key do not make a TLS configuration")]
    Config(#[source] rustls::Error),
}

/// The PEM files of a TLS listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// With `--tlsverify`: the CA certificates a client's certificate must chain to.
    pub client_ca: Option<PathBuf>,
    /// Clients that present no certificate are let through too (a certificate they do
    /// present must still chain to `client_ca`): the console, where a token also signs in.
    pub client_certificate_optional: bool,
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        what: "certificates",
        path: path.to_owned(),
        source,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// The rustls server configuration for `files`.
pub fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Pem {
        what: "a private key",
        path: files.key.clone(),
        source,
    })?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates(ca)? {
                roots.add(certificate).map_err(TlsError::Config)?;
            }
            let mut verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots));
            if files.client_certificate_optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: ca.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    // The docker CLI speaks HTTP/1.1 (and upgrades connections for attach and exec).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the API on `listener` until `shutdown` resolves.
async fn serve_on<L>(
    engine: Arc<Engine>,
    listener: L,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let app = crate::router(engine);
    let service = tower::service_fn(move |request: Request<Body>| {
        let app = app.clone();
        async move {
            match crate::version::route_version(request) {
                Ok(request) => app.oneshot(request).await,
                Err(response) => Ok(*response),
            }
        }
    });
    axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service(service),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Serves the API on a unix socket until `shutdown` resolves (see [`bind_socket`]).
pub async fn serve_unix(
    engine: Arc<Engine>,
    socket: &Path,
    group: Option<u32>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = bind_socket(socket, group)?;
    serve_on(engine, listener, shutdown).await
}

/// Binds the API socket at `socket`, mode 0660, owned by this process's user and by
/// `group` (as dockerd's `--group`; `None`: the user's own group). A connection needs
/// write permission on the socket: only that user and the group's members get in,
/// whatever the umask. The socket is made under a temporary name and renamed into
/// place once its mode and group are set, so that no one can connect to it before.
fn bind_socket(socket: &Path, group: Option<u32>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut staged = socket.as_os_str().to_owned();
    staged.push(format!(".{}.new", std::process::id()));
    let staged = PathBuf::from(staged);
    let _ = std::fs::remove_file(&staged);
    let listener = UnixListener::bind(&staged)?;
    let finished = std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660))
        .and_then(|()| std::os::unix::fs::chown(&staged, None, group))
        .and_then(|()| std::fs::rename(&staged, socket));
    if let Err(error) = finished {
        let _ = std::fs::remove_file(&staged);
        return Err(error);
    }
    Ok(listener)
}

/// Binds `address` for [`serve_tcp`] (separately, so that the caller learns of an
/// address in use before it says it serves).
pub async fn bind_tcp(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves the API on a bound TCP `listener`, with TLS when `tls` is given, until
/// `shutdown` resolves.
pub async fn serve_tcp(
    engine: Arc<Engine>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => serve_on(engine, listener, shutdown).await,
        Some(config) => serve_on(engine, TlsListener::new(listener, config), shutdown).await,
    }
}

/// TCP connections after their TLS handshake, as axum's listener.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` in a task of its own, each handshake in a task of its own.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let acceptor = TlsAcceptor::from(config);
        let (sender, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors, say: wait a little rather than spin.
                        tracing::warn!(%error, "accepting a TCP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, handed) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = handed.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::info!(%peer, %error, "a TLS handshake failed")
                        }
                        Err(_) => tracing::info!(%peer, "a TLS handshake timed out"),
                    }
                });
                if sender.is_closed() {
                    return;
                }
            }
        });
        Self { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task is gone (it never returns while this listener lives).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
