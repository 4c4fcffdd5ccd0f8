//! Published ports: listeners on the host's addresses that relay to a container.
//!
//! Container addresses live only inside Berth's namespace, so a published port is a
//! userspace relay (as Docker's `docker-proxy` is): a socket bound in the host's
//! namespace at `host_ip:host_port`, and for each TCP connection (or UDP client) a
//! socket created inside Berth's namespace and connected to `container_ip:port`.
//! Relays stop when their [`PublishedPort`] is dropped.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::netns::Namespace;

/// How long connecting to a container may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A UDP client that sent nothing for this long loses its relay socket.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            _ => None,
        }
    }
}

/// A relay from the host to a container; stops when dropped.
pub struct PublishedPort {
    /// Where it listens (the port the kernel chose when 0 was asked for).
    pub host: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for PublishedPort {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts relaying `host` (port 0: any free port) to `container` inside `namespace`.
pub async fn publish(
    namespace: &Namespace,
    protocol: Protocol,
    host: SocketAddr,
    container: SocketAddr,
) -> io::Result<PublishedPort> {
    match protocol {
        Protocol::Tcp => {
            let listener = TcpListener::bind(host).await?;
            let bound = listener.local_addr()?;
            let namespace = namespace.clone();
            let task = tokio::spawn(relay_tcp(listener, namespace, container));
            Ok(PublishedPort { host: bound, task })
        }
        Protocol::Udp => {
            let socket = UdpSocket::bind(host).await?;
            let bound = socket.local_addr()?;
            let namespace = namespace.clone();
            let task = tokio::spawn(relay_udp(Arc::new(socket), namespace, container));
            Ok(PublishedPort { host: bound, task })
        }
    }
}

/// A TCP connection to `target`, made from inside `namespace`.
async fn connect_inside(namespace: &Namespace, target: SocketAddr) -> io::Result<TcpStream> {
    let namespace = namespace.clone();
    let stream = tokio::task::spawn_blocking(move || {
        namespace.run(move || {
            let stream = std::net::TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        })
    })
    .await
    .map_err(io::Error::other)??;
    TcpStream::from_std(stream)
}

async fn relay_tcp(listener: TcpListener, namespace: Namespace, container: SocketAddr) {
    loop {
        let (mut client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "accepting on a published port failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let namespace = namespace.clone();
        tokio::spawn(async move {
            match connect_inside(&namespace, container).await {
                Ok(mut upstream) => {
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(error) => {
                    tracing::debug!(%peer, %container, %error, "published port: container unreachable");
                }
            }
        });
    }
}

async fn relay_udp(socket: Arc<UdpSocket>, namespace: Namespace, container: SocketAddr) {
    let clients: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buffer = vec![0u8; 65536];
    loop {
        let Ok((length, client)) = socket.recv_from(&mut buffer).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let existing = clients.lock().await.get(&client).cloned();
        let upstream = match existing {
            Some(upstream) => upstream,
            None => {
                let namespace = namespace.clone();
                let bind: SocketAddr = match container.ip() {
                    IpAddr::V4(_) => "0.0.0.0:0".parse().expect("constant address"),
                    IpAddr::V6(_) => "[::]:0".parse().expect("constant address"),
                };
                let made = namespace.run(move || {
                    let upstream = std::net::UdpSocket::bind(bind)?;
                    upstream.connect(container)?;
                    upstream.set_nonblocking(true)?;
                    Ok(upstream)
                });
                let Ok(upstream) = made.and_then(UdpSocket::from_std) else {
                    continue;
                };
                let upstream = Arc::new(upstream);
                clients.lock().await.insert(client, upstream.clone());
                // Answers from the container go back to this client until it goes quiet.
                let back = upstream.clone();
                let listener = socket.clone();
                let table = clients.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 65536];
                    while let Ok(Ok(length)) =
                        tokio::time::timeout(UDP_IDLE, back.recv(&mut buffer)).await
                    {
                        let _ = listener.send_to(&buffer[..length], client).await;
                    }
                    table.lock().await.remove(&client);
                });
                upstream
            }
        };
        let _ = upstream.send(&buffer[..length]).await;
    }
}
