//! The DNS server Berth runs for each container network.
//!
//! It listens on UDP port 53 of the network's gateway address inside Berth's namespace.
//! All servers share one [`Resolver`]: the names of containers on each network (name,
//! short id, aliases), and for each container address the networks whose names that
//! container may resolve (the user-defined networks it is on, as with Docker's embedded
//! DNS). A query is answered from the networks of the address it came from, with
//! Docker's TTL of 600 s; an `AAAA` or other query for a known name gets an empty answer
//! (containers have IPv4 addresses only). Every other query is forwarded, as the client
//! sent it, to the host's resolvers from the host's namespace, and the answer relayed
//! back. DNS over TCP is not served.
//!
//! Queries come from guests and are untrusted: a packet that does not parse is dropped,
//! and answers are only built from the table.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use simple_dns::rdata::{RData, A};
use simple_dns::{Packet, PacketFlag, ResourceRecord, CLASS, QTYPE, RCODE, TYPE};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::netns::Namespace;

/// Docker's TTL for container names.
const TTL: u32 = 600;
/// How long a forwarded query waits for an upstream answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest UDP DNS message handled.
const MAX_MESSAGE: usize = 4096;

/// Names to addresses per network, and which networks each client address sees; shared
/// between the engine (which updates it) and the servers.
#[derive(Debug, Default)]
pub struct Resolver {
    state: RwLock<ResolverState>,
}

#[derive(Debug, Default)]
struct ResolverState {
    /// Network -> name -> addresses.
    names: HashMap<String, HashMap<String, Vec<Ipv4Addr>>>,
    /// Client address -> the networks whose names it resolves.
    scopes: HashMap<Ipv4Addr, Vec<String>>,
    /// Client address -> names only that client resolves (its links' aliases).
    private: HashMap<Ipv4Addr, HashMap<String, Vec<Ipv4Addr>>>,
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Resolver {
    /// Replaces everything: `names` as (network, name, address), `scopes` as (client
    /// address, networks), `private` as (client address, name, address).
    pub fn replace(
        &self,
        names: impl IntoIterator<Item = (String, String, Ipv4Addr)>,
        scopes: impl IntoIterator<Item = (Ipv4Addr, Vec<String>)>,
        private: impl IntoIterator<Item = (Ipv4Addr, String, Ipv4Addr)>,
    ) {
        /// Adds `address` to `name`'s addresses in `table`, once.
        fn add<K: std::hash::Hash + Eq>(
            table: &mut HashMap<K, HashMap<String, Vec<Ipv4Addr>>>,
            key: K,
            name: &str,
            address: Ipv4Addr,
        ) {
            let list = table
                .entry(key)
                .or_default()
                .entry(normalise(name))
                .or_default();
            if !list.contains(&address) {
                list.push(address);
            }
        }
        let mut state = ResolverState::default();
        for (client, name, address) in private {
            add(&mut state.private, client, &name, address);
        }
        for (network, name, address) in names {
            add(&mut state.names, network, &name, address);
        }
        state.scopes = scopes.into_iter().collect();
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// The addresses of `name` as client `client` sees them.
    pub fn lookup(&self, client: Ipv4Addr, name: &str) -> Option<Vec<Ipv4Addr>> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let name = normalise(name);
        if let Some(addresses) = state.private.get(&client).and_then(|n| n.get(&name)) {
            return Some(addresses.clone());
        }
        let mut found: Vec<Ipv4Addr> = Vec::new();
        for network in state.scopes.get(&client)? {
            let addresses = state.names.get(network).and_then(|n| n.get(&name));
            for address in addresses.into_iter().flatten() {
                if !found.contains(address) {
                    found.push(*address);
                }
            }
        }
        (!found.is_empty()).then_some(found)
    }
}

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send this answer.
    Answer(Vec<u8>),
    /// Not ours: forward the query upstream.
    Forward,
    /// Not a query we can read: drop it.
    Drop,
}

/// Decides on one query packet from `client`.
pub fn answer(query: &[u8], client: Ipv4Addr, resolver: &Resolver) -> Verdict {
    let Ok(packet) = Packet::parse(query) else {
        return Verdict::Drop;
    };
    if packet.has_flags(PacketFlag::RESPONSE) || packet.questions.len() != 1 {
        return Verdict::Drop;
    }
    let question = &packet.questions[0];
    let name = question.qname.to_string();
    let Some(addresses) = resolver.lookup(client, &name) else {
        return Verdict::Forward;
    };
    let mut reply = Packet::new_reply(packet.id());
    reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER | PacketFlag::RECURSION_AVAILABLE);
    if packet.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    reply.questions.push(question.clone());
    if matches!(question.qtype, QTYPE::TYPE(TYPE::A) | QTYPE::ANY) {
        for address in addresses {
            reply.answers.push(ResourceRecord::new(
                question.qname.clone(),
                CLASS::IN,
                TTL,
                RData::A(A::from(address)),
            ));
        }
    }
    *reply.rcode_mut() = RCODE::NoError;
    match reply.build_bytes_vec() {
        Ok(bytes) => Verdict::Answer(bytes),
        Err(_) => Verdict::Drop,
    }
}

/// A SERVFAIL answer to `query` (when no upstream answered).
fn server_failure(query: &[u8]) -> Option<Vec<u8>> {
    let packet = Packet::parse(query).ok()?;
    let mut reply = Packet::new_reply(packet.id());
    reply.questions = packet.questions.clone();
    *reply.rcode_mut() = RCODE::ServerFailure;
    reply.build_bytes_vec().ok()
}

/// The host's resolvers, from `/etc/resolv.conf`.
pub fn host_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|address| address.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// A running server; stops when dropped.
pub struct DnsServer {
    task: JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    /// Listens on `address:53` inside `namespace` and serves `table`.
    pub fn start(
        namespace: &Namespace,
        address: Ipv4Addr,
        resolver: Arc<Resolver>,
        upstreams: Vec<SocketAddr>,
    ) -> io::Result<Self> {
        let socket = namespace.run(move || {
            let socket = std::net::UdpSocket::bind((address, 53))?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })?;
        let socket = Arc::new(UdpSocket::from_std(socket)?);
        let task = tokio::spawn(serve(socket, resolver, Arc::new(upstreams)));
        Ok(Self { task })
    }
}

async fn serve(socket: Arc<UdpSocket>, resolver: Arc<Resolver>, upstreams: Arc<Vec<SocketAddr>>) {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let (length, client) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) => {
                tracing::debug!(%error, "dns receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let query = buffer[..length].to_vec();
        let std::net::IpAddr::V4(source) = client.ip() else {
            continue;
        };
        match answer(&query, source, &resolver) {
            Verdict::Answer(reply) => {
                let _ = socket.send_to(&reply, client).await;
            }
            Verdict::Drop => {}
            Verdict::Forward => {
                let socket = socket.clone();
                let upstreams = upstreams.clone();
                tokio::spawn(async move {
                    let reply = match forward(&query, &upstreams).await {
                        Some(reply) => Some(reply),
                        None => server_failure(&query),
                    };
                    if let Some(reply) = reply {
                        let _ = socket.send_to(&reply, client).await;
                    }
                });
            }
        }
    }
}

/// Sends `query` to each upstream in turn from the host's namespace; the first answer wins.
async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let bind: SocketAddr = if upstream.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(socket) = UdpSocket::bind(bind).await else {
            continue;
        };
        if socket.send_to(query, upstream).await.is_err() {
            continue;
        }
        let mut buffer = vec![0u8; MAX_MESSAGE];
        if let Ok(Ok((length, from))) =
            tokio::time::timeout(FORWARD_TIMEOUT, socket.recv_from(&mut buffer)).await
        {
            if from == *upstream && length >= 2 && buffer[..2] == query[..2] {
                buffer.truncate(length);
                return Some(buffer);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::{Name, Question};

    fn query(name: &str, qtype: TYPE) -> Vec<u8> {
        let mut packet = Packet::new_query(0x4242);
        packet.set_flags(PacketFlag::RECURSION_DESIRED);
        packet.questions.push(Question::new(
            Name::new_unchecked(name),
            qtype.into(),
            CLASS::IN.into(),
            false,
        ));
        packet.build_bytes_vec().unwrap()
    }

    const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 9);

    fn resolver() -> Resolver {
        let resolver = Resolver::default();
        let web = Ipv4Addr::new(172, 18, 0, 2);
        resolver.replace(
            [
                ("n1".to_owned(), "web".to_owned(), web),
                ("n1".to_owned(), "Alias".to_owned(), web),
                (
                    "n2".to_owned(),
                    "db".to_owned(),
                    Ipv4Addr::new(172, 19, 0, 2),
                ),
            ],
            [(CLIENT, vec!["n1".to_owned()])],
            [(CLIENT, "linked".to_owned(), web)],
        );
        resolver
    }

    #[test]
    fn names_are_scoped_to_the_clients_networks() {
        let resolver = resolver();
        assert!(resolver.lookup(CLIENT, "web").is_some());
        assert_eq!(
            resolver.lookup(CLIENT, "linked"),
            Some(vec![Ipv4Addr::new(172, 18, 0, 2)])
        );
        assert!(
            resolver
                .lookup(Ipv4Addr::new(172, 18, 0, 3), "linked")
                .is_none(),
            "a link's alias is its linker's alone"
        );
        assert!(
            resolver.lookup(CLIENT, "db").is_none(),
            "db is on another network"
        );
        assert!(resolver
            .lookup(Ipv4Addr::new(172, 19, 0, 3), "web")
            .is_none());
        assert_eq!(
            answer(&query("db", TYPE::A), CLIENT, &resolver),
            Verdict::Forward
        );
    }

    #[test]
    fn known_names_are_answered_case_insensitively() {
        let resolver = resolver();
        let Verdict::Answer(bytes) = answer(&query("WEB.", TYPE::A), CLIENT, &resolver) else {
            panic!("no answer");
        };
        let reply = Packet::parse(&bytes).unwrap();
        assert_eq!(reply.id(), 0x4242);
        assert!(reply.has_flags(PacketFlag::RESPONSE));
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(
            reply.answers[0].rdata,
            RData::A(A::from(Ipv4Addr::new(172, 18, 0, 2)))
        );
        // AAAA for a known name: an empty, successful answer.
        let Verdict::Answer(bytes) = answer(&query("alias", TYPE::AAAA), CLIENT, &resolver) else {
            panic!("no answer");
        };
        let reply = Packet::parse(&bytes).unwrap();
        assert!(reply.answers.is_empty());
        assert_eq!(reply.rcode(), RCODE::NoError);
    }

    #[test]
    fn unknown_names_are_forwarded_and_garbage_dropped() {
        let resolver = Resolver::default();
        let verdict = answer(&query("example.org", TYPE::A), CLIENT, &resolver);
        assert_eq!(verdict, Verdict::Forward);
        assert_eq!(answer(b"\x00\x01garbage", CLIENT, &resolver), Verdict::Drop);
        assert_eq!(answer(&[], CLIENT, &resolver), Verdict::Drop);
        let failure = server_failure(&query("example.org", TYPE::A)).unwrap();
        assert_eq!(
            Packet::parse(&failure).unwrap().rcode(),
            RCODE::ServerFailure
        );
    }
}
