//! IPv4 address management: subnets, gateways and free addresses.
//!
//! Pure logic. Which addresses are in use is not stored here: the engine derives it from
//! the containers it knows (their endpoints), so that what is allocated can never
//! disagree with what is recorded, across crashes and restarts.

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::NetError;

/// An IPv4 subnet in CIDR form. The address is normalised to the network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    pub fn new(address: Ipv4Addr, prefix: u8) -> Result<Self, NetError> {
        if !(8..=30).contains(&prefix) {
            return Err(NetError::Invalid(format!(
                "subnet prefix /{prefix} is not between /8 and /30"
            )));
        }
        let mask = Self::mask_bits(prefix);
        Ok(Self {
            network: Ipv4Addr::from(u32::from(address) & mask),
            prefix,
        })
    }

    fn mask_bits(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    pub fn network(self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(self) -> u8 {
        self.prefix
    }

    pub fn netmask(self) -> Ipv4Addr {
        Ipv4Addr::from(Self::mask_bits(self.prefix))
    }

    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !Self::mask_bits(self.prefix))
    }

    pub fn contains(self, address: Ipv4Addr) -> bool {
        u32::from(address) & Self::mask_bits(self.prefix) == u32::from(self.network)
    }

    /// True if the two subnets share any address.
    pub fn overlaps(self, other: Subnet) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// A host address usable in this subnet (not the network or broadcast address).
    pub fn is_host(self, address: Ipv4Addr) -> bool {
        self.contains(address) && address != self.network && address != self.broadcast()
    }

    /// The first host address, Docker's default gateway.
    pub fn first_host(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The lowest host address of this subnet inside `range` (`--ip-range`) not in
    /// `used`. As dockerd does, the range's own first address is used when it is a host
    /// address of the subnet.
    pub fn allocate_in(self, range: Subnet, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        (u32::from(range.network)..=u32::from(range.broadcast()))
            .map(Ipv4Addr::from)
            .find(|address| self.is_host(*address) && !used.contains(address))
    }

    /// The lowest host address not in `used`.
    pub fn allocate(self, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let first = u32::from(self.network) + 1;
        let last = u32::from(self.broadcast()) - 1;
        (first..=last)
            .map(Ipv4Addr::from)
            .find(|address| !used.contains(address))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = NetError;
    fn from_str(text: &str) -> Result<Self, NetError> {
        let invalid = || {
            NetError::Invalid(format!(
                "invalid subnet {text:?}: expected an IPv4 CIDR such as 172.20.0.0/16"
            ))
        };
        let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        Self::new(address, prefix)
    }
}

impl TryFrom<String> for Subnet {
    type Error = NetError;
    fn try_from(text: String) -> Result<Self, NetError> {
        text.parse()
    }
}

impl From<Subnet> for String {
    fn from(subnet: Subnet) -> String {
        subnet.to_string()
    }
}

/// The subnet of Docker's default `bridge` network.
pub fn default_bridge_subnet() -> Subnet {
    Subnet::new(Ipv4Addr::new(172, 17, 0, 0), 16).expect("a valid constant subnet")
}

/// Docker's default address pools for new networks, in the order Docker uses them:
/// 172.17.0.0/16 to 172.31.0.0/16, then 192.168.0.0/16 in /20 pieces.
pub fn default_pools() -> impl Iterator<Item = Subnet> {
    let large = (17..=31).map(|b| Subnet::new(Ipv4Addr::new(172, b, 0, 0), 16));
    let small = (0..16).map(|i| Subnet::new(Ipv4Addr::new(192, 168, i * 16, 0), 20));
    large
        .chain(small)
        .map(|s| s.expect("valid constant subnets"))
}

/// The first default pool that overlaps none of `taken`.
pub fn next_free_pool(taken: &[Subnet]) -> Option<Subnet> {
    default_pools().find(|pool| !taken.iter().any(|t| t.overlaps(*pool)))
}

/// An IPv6 subnet (`fd00:1::/64`), for networks with `--ipv6`.
pub type Subnet6 = ipnet::Ipv6Net;

/// Parses an IPv6 subnet as clients write it, normalised to its network address.
pub fn parse_subnet6(text: &str) -> Result<Subnet6, NetError> {
    let subnet: Subnet6 = text.parse().map_err(|_| {
        NetError::Invalid(format!(
            "invalid subnet {text:?}: expected an IPv6 CIDR such as fd00:1::/64"
        ))
    })?;
    if !(48..=120).contains(&subnet.prefix_len()) {
        return Err(NetError::Invalid(format!(
            "IPv6 subnet prefix /{} is not between /48 and /120",
            subnet.prefix_len()
        )));
    }
    Ok(subnet.trunc())
}

/// The lowest address of `subnet` after its network address that is not in `used`
/// (Docker hands out `::1` to the gateway, then `::2`, ...).
pub fn allocate6(
    subnet: Subnet6,
    used: &HashSet<std::net::Ipv6Addr>,
) -> Option<std::net::Ipv6Addr> {
    let first = u128::from(subnet.network()) + 1;
    let last = u128::from(subnet.broadcast());
    (first..=last)
        .take(1 << 16)
        .map(std::net::Ipv6Addr::from)
        .find(|address| !used.contains(address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_normalise() {
        let subnet: Subnet = "10.1.2.3/24".parse().unwrap();
        assert_eq!(subnet.to_string(), "10.1.2.0/24");
        assert_eq!(subnet.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(subnet.broadcast(), Ipv4Addr::new(10, 1, 2, 255));
        assert_eq!(subnet.first_host(), Ipv4Addr::new(10, 1, 2, 1));
        for bad in [
            "10.1.2.3",
            "10.1.2.3/33",
            "10.1.2.3/31",
            "fe80::/64",
            "x/8",
            "",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad} parsed");
        }
        let json = serde_json_like(subnet);
        assert_eq!(json, "10.1.2.0/24");
    }

    fn serde_json_like(subnet: Subnet) -> String {
        String::from(subnet)
    }

    #[test]
    fn allocation_skips_used_and_never_hands_out_network_or_broadcast() {
        let subnet: Subnet = "192.168.5.0/30".parse().unwrap();
        let mut used = HashSet::new();
        let first = subnet.allocate(&used).unwrap();
        assert_eq!(first, Ipv4Addr::new(192, 168, 5, 1));
        used.insert(first);
        let second = subnet.allocate(&used).unwrap();
        assert_eq!(second, Ipv4Addr::new(192, 168, 5, 2));
        used.insert(second);
        assert_eq!(subnet.allocate(&used), None);
        assert!(!subnet.is_host(Ipv4Addr::new(192, 168, 5, 3)));
        assert!(!subnet.is_host(Ipv4Addr::new(192, 168, 5, 0)));
        assert!(subnet.is_host(Ipv4Addr::new(192, 168, 5, 2)));
    }

    #[test]
    fn pools_avoid_taken_subnets() {
        let taken = [default_bridge_subnet(), "172.18.5.0/24".parse().unwrap()];
        assert_eq!(next_free_pool(&taken).unwrap().to_string(), "172.19.0.0/16");
        let all: Vec<Subnet> = default_pools().collect();
        assert_eq!(next_free_pool(&all), None);
        assert!("10.0.0.0/8"
            .parse::<Subnet>()
            .unwrap()
            .overlaps("10.9.0.0/16".parse().unwrap()));
        assert!(!"10.0.0.0/16"
            .parse::<Subnet>()
            .unwrap()
            .overlaps("10.1.0.0/16".parse().unwrap()));
    }
}
