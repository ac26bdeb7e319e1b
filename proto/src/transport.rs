//! gRPC transports: mutual TLS between nodes, plain HTTP/2 on the local unix socket.
//!
//! TLS is done here with rustls (ring provider) rather than inside tonic, for two reasons:
//! a node's certificate changes while it runs (renewal, promotion, demotion), so the server
//! resolves its certificate per handshake from [`Credentials`]; and the peer's identity
//! (node id and role from its certificate) is parsed once per connection and handed to every
//! handler as a request extension ([`PeerInfo`]).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::security::{CertInfo, MANAGER_SERVER_NAME};

/// gRPC metadata key with which a follower names the leader's address when it refuses a call
/// that only the leader serves; the caller retries there.
pub const LEADER_METADATA: &str = "x-shoal-leader";

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("bad PEM in {what}: {source}")]
    Pem {
        what: &'static str,
        source: rustls::pki_types::pem::Error,
    },
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("cannot reach {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("invalid address {0:?}")]
    BadAddress(String),
    #[error("{addr} presented no CA certificate")]
    NoCaPresented { addr: String },
    #[error("connecting to {addr}: {source}")]
    Grpc {
        addr: String,
        source: tonic::transport::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's key material: its certificate chain (leaf, then root CA), key and the root CA.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub info: CertInfo,
    certified: Arc<CertifiedKey>,
}

impl Identity {
    pub fn new(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Identity, TransportError> {
        let info = CertInfo::from_pem(cert_pem).map_err(|_| TransportError::Pem {
            what: "node certificate",
            source: rustls::pki_types::pem::Error::NoItemsFound,
        })?;
        let mut chain = parse_certs(cert_pem, "node certificate")?;
        chain.extend(parse_certs(ca_pem, "CA certificate")?);
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TransportError::Pem {
                what: "node key",
                source: e,
            })?;
        let signing = provider().key_provider.load_private_key(key)?;
        Ok(Identity {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            ca_pem: ca_pem.to_string(),
            info,
            certified: Arc::new(CertifiedKey::new(chain, signing)),
        })
    }

    fn roots(&self) -> Result<RootCertStore, TransportError> {
        let mut roots = RootCertStore::empty();
        for c in parse_certs(&self.ca_pem, "CA certificate")? {
            roots.add(c)?;
        }
        Ok(roots)
    }
}

fn parse_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::Pem { what, source: e })
}

/// The node's current identity, shared by its server and clients and replaced on renewal.
#[derive(Default, Debug)]
pub struct Credentials {
    current: RwLock<Option<Arc<Identity>>>,
}

impl Credentials {
    pub fn new(identity: Option<Identity>) -> Arc<Credentials> {
        Arc::new(Credentials {
            current: RwLock::new(identity.map(Arc::new)),
        })
    }
    pub fn get(&self) -> Option<Arc<Identity>> {
        self.current.read().expect("credentials lock").clone()
    }
    pub fn set(&self, identity: Option<Identity>) {
        *self.current.write().expect("credentials lock") = identity.map(Arc::new);
    }
}

#[derive(Debug)]
struct Resolver(Arc<Credentials>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.get().map(|i| i.certified.clone())
    }
}

/// Server TLS: present the node's current certificate; ask for a client certificate signed
/// by the root CA but allow none (the Join call is open to token holders without one).
pub fn server_config(creds: Arc<Credentials>) -> Result<Arc<ServerConfig>, TransportError> {
    let identity = creds.get().ok_or(TransportError::BadAddress(
        "no node certificate yet".to_string(),
    ))?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(identity.roots()?), provider())
            .allow_unauthenticated()
            .build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Resolver(creds)));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client TLS trusting `ca_pem`, presenting `identity` when given.
pub fn client_config(
    ca_pem: &str,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, TransportError> {
    let mut roots = RootCertStore::empty();
    for c in parse_certs(ca_pem, "CA certificate")? {
        roots.add(c)?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(id) => {
            builder.with_client_cert_resolver(Arc::new(FixedClientCert(id.certified.clone())))
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Who is on the other end of a connection; inserted into every request's extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// `None`: no client certificate (only the Join call accepts that), or the local socket.
    pub cert: Option<CertInfo>,
    /// True for the local unix socket: the caller is root on this machine.
    pub local: bool,
}

/// A TLS connection accepted by [`serve_tls`].
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accept TCP connections and complete TLS handshakes concurrently (a slow or hostile client
/// cannot hold up the others); yields the established connections for tonic.
pub fn serve_tls(
    listener: TcpListener,
    creds: Arc<Credentials>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let cfg = match server_config(creds.clone()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "no server identity");
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                let hs = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                let tls = match hs {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| CertInfo::from_der(c).ok());
                let peer = PeerInfo {
                    remote_addr: Some(remote),
                    cert,
                    local: false,
                };
                let _ = tx.send(Ok(TlsConn { inner: tls, peer })).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn split_host_port(addr: &str) -> Result<(String, u16), TransportError> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|_| TransportError::BadAddress(addr.to_string()))?;
    Ok((sa.ip().to_string(), sa.port()))
}

/// A lazily connected gRPC channel to a manager at `addr` (IP:PORT) over mutual TLS.
/// How long connecting to a manager (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub fn tls_channel(addr: &str, cfg: Arc<ClientConfig>) -> Result<Channel, TransportError> {
    let (host, port) = split_host_port(addr)?;
    let target = format!("{host}:{port}");
    let connector = tower::service_fn(move |_uri: Uri| {
        let cfg = cfg.clone();
        let target = target.clone();
        async move {
            // Bounded here, not only by the endpoint: a manager cut off by a partition drops
            // packets, and a call forwarded to it must fail fast enough to be retried at
            // the manager elected meanwhile.
            let connect = async {
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(MANAGER_SERVER_NAME).expect("static server name");
                tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
            };
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer from {target} within {CONNECT_TIMEOUT:?}"),
                    )
                })??;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| TransportError::BadAddress(addr.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(ep.connect_with_connector_lazy(connector))
}

/// A gRPC channel to the local daemon's unix socket.
pub async fn unix_channel(path: PathBuf) -> Result<Channel, TransportError> {
    let display = path.display().to_string();
    let connector = tower::service_fn(move |_uri: Uri| {
        let path = path.clone();
        async move {
            let s = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, io::Error>(TokioIo::new(s))
        }
    });
    Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await
        .map_err(|e| TransportError::Grpc {
            addr: display,
            source: e,
        })
}

/// The local socket's connection: always trusted (the socket is root-only, mode 0600).
pub struct LocalConn(pub tokio::net::UnixStream);

impl Connected for LocalConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        PeerInfo {
            remote_addr: None,
            cert: None,
            local: true,
        }
    }
}

impl AsyncRead for LocalConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for LocalConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts on the local unix socket.
pub fn serve_unix(
    listener: tokio::net::UnixListener,
) -> impl tokio_stream::Stream<Item = Result<LocalConn, io::Error>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|r| r.map(LocalConn))
}

/// Connect once to `addr` without trusting it, to learn the CA certificate it presents. The
/// caller compares its digest with the join token before trusting it for anything.
pub async fn fetch_presented_ca(addr: &str) -> Result<String, TransportError> {
    #[derive(Debug)]
    struct Capture(Mutex<Vec<CertificateDer<'static>>>, Arc<CryptoProvider>);
    impl ServerCertVerifier for Capture {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let mut seen = self.0.lock().expect("capture lock");
            seen.push(end_entity.clone().into_owned());
            seen.extend(intermediates.iter().map(|c| c.clone().into_owned()));
            Ok(ServerCertVerified::assertion())
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
                &self.1.signature_verification_algorithms,
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
                &self.1.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.1.signature_verification_algorithms.supported_schemes()
        }
    }
    let (host, port) = split_host_port(addr)?;
    let capture = Arc::new(Capture(Mutex::new(Vec::new()), provider()));
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let conn_err = |source| TransportError::Connect {
        addr: addr.to_string(),
        source,
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| conn_err(io::Error::new(io::ErrorKind::TimedOut, "timed out")))?
    .map_err(conn_err)?;
    let name = ServerName::try_from(MANAGER_SERVER_NAME).expect("static server name");
    let _tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .map_err(|_| {
        conn_err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        ))
    })?
    .map_err(conn_err)?;
    let seen = capture.0.lock().expect("capture lock");
    // The chain is leaf, root: the root is the last one.
    let ca = seen
        .last()
        .filter(|_| seen.len() >= 2)
        .ok_or(TransportError::NoCaPresented {
            addr: addr.to_string(),
        })?;
    Ok(der_to_pem(ca))
}

fn der_to_pem(der: &[u8]) -> String {
    const TABLE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (chunk.get(1).copied().unwrap_or(0) as u32) << 8
            | chunk.get(2).copied().unwrap_or(0) as u32;
        for i in 0..4 {
            if i <= n {
                b64.push(TABLE[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_encoding_round_trips() {
        let ca = crate::security::RootCa::generate("c").unwrap();
        let der = parse_certs(&ca.cert_pem, "ca").unwrap().remove(0);
        let pem = der_to_pem(&der);
        assert_eq!(parse_certs(&pem, "ca").unwrap()[0], der);
    }
}
