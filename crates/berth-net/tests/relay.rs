//! Published-port relays, TCP and UDP, from the host's loopback into a network namespace
//! this test makes (root is needed, as for Berth itself). Servers listen on the
//! namespace's own loopback; nothing leaves the machine.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use berth_net::proxy::{publish, Protocol};
use berth_net::Namespace;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct TestNamespace(Namespace);

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = Namespace::delete(self.0.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_udp_relays_reach_into_the_namespace() {
    let namespace = TestNamespace(
        Namespace::ensure(&format!("berth-net-test-{}", std::process::id())).unwrap(),
    );
    let ns = &namespace.0;

    // TCP: a server inside answers "pong:" + what it got.
    let tcp = ns
        .run(|| {
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .unwrap();
    let tcp_target = tcp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            let mut buffer = [0u8; 64];
            let n = stream.read(&mut buffer).await.unwrap_or(0);
            let _ = stream.write_all(&[b"pong:", &buffer[..n]].concat()).await;
        }
    });
    // The same address from the host's namespace is not the server: only the relay is.
    assert!(tokio::net::TcpStream::connect(tcp_target).await.is_err());
    let relay = publish(
        ns,
        Protocol::Tcp,
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
        tcp_target,
    )
    .await
    .unwrap();
    let mut client = tokio::net::TcpStream::connect(relay.host).await.unwrap();
    client.write_all(b"ping").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, b"pong:ping");

    // UDP: an echo server inside, two clients with their own answers.
    let udp = ns
        .run(|| {
            let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .unwrap();
    let udp_target = udp.local_addr().unwrap();
    let udp = tokio::net::UdpSocket::from_std(udp).unwrap();
    tokio::spawn(async move {
        let mut buffer = [0u8; 64];
        while let Ok((n, from)) = udp.recv_from(&mut buffer).await {
            let _ = udp.send_to(&[b"echo:", &buffer[..n]].concat(), from).await;
        }
    });
    let relay_udp = publish(
        ns,
        Protocol::Udp,
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
        udp_target,
    )
    .await
    .unwrap();
    for word in [&b"one"[..], b"two"] {
        let client = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        client.send_to(word, relay_udp.host).await.unwrap();
        let mut buffer = [0u8; 64];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buffer[..n], [b"echo:", word].concat().as_slice());
    }

    // A dropped relay stops listening.
    let port = relay.host;
    drop(relay);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(port).await.is_err());
}
