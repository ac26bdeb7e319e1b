//! Address arithmetic and the primitive choices of the allocator: subnets from a pool, VNIs,
//! host addresses in a subnet, dynamic published ports. Pure functions over what is taken.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use proto::spec::PortProtocol;

/// The first VNI handed out (swarmkit starts overlay VNIs at 4096 + 1).
pub const FIRST_VNI: u32 = 4097;
/// VXLAN's VNI is 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Swarm's dynamic range for published ports.
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
/// The smallest subnet (largest prefix) that leaves room for a gateway and a few endpoints.
pub const MAX_PREFIX: u8 = 29;

/// An IPv4 network: the address with host bits cleared, and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl Cidr {
    /// `addr/prefix`; host bits in `addr` are cleared.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Cidr> {
        (prefix <= 32).then(|| Cidr {
            base: u32::from(addr) & mask(prefix),
            prefix,
        })
    }
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }
    fn last(&self) -> u32 {
        self.base | !mask(self.prefix)
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.last())
    }
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & mask(self.prefix) == self.base
    }
    pub fn overlaps(&self, o: &Cidr) -> bool {
        self.base <= o.last() && o.base <= self.last()
    }
    /// Whether `o` lies wholly inside this network.
    pub fn covers(&self, o: &Cidr) -> bool {
        self.prefix <= o.prefix && self.contains(o.network())
    }
    /// The first host address (the conventional gateway).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base.wrapping_add(1))
    }
    /// Whether `a` is a usable host address: inside, and neither network nor broadcast.
    pub fn is_host(&self, a: Ipv4Addr) -> bool {
        let v = u32::from(a);
        self.contains(a) && v != self.base && v != self.last()
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = ();
    /// Strict: `a.b.c.d/n` with no host bits set (as Docker requires of `--subnet`).
    fn from_str(s: &str) -> Result<Cidr, ()> {
        let (a, p) = s.split_once('/').ok_or(())?;
        let addr: Ipv4Addr = a.parse().map_err(|_| ())?;
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(());
        }
        let prefix: u8 = p.parse().map_err(|_| ())?;
        let c = Cidr::new(addr, prefix).ok_or(())?;
        if c.network() != addr {
            return Err(());
        }
        Ok(c)
    }
}

/// The first `/mask_len` subnet of the pools, in order, that overlaps none of `used`.
pub fn next_subnet(pools: &[Cidr], mask_len: u8, used: &[Cidr]) -> Option<Cidr> {
    for pool in pools {
        if mask_len < pool.prefix || mask_len > 32 {
            continue;
        }
        let step: u64 = 1u64 << (32 - mask_len as u32);
        let mut at = pool.base as u64;
        while at + step - 1 <= pool.last() as u64 {
            let cand = Cidr {
                base: at as u32,
                prefix: mask_len,
            };
            match used
                .iter()
                .filter(|u| u.overlaps(&cand))
                .map(|u| u.last())
                .max()
            {
                None => return Some(cand),
                // Skip past the whole used range, staying aligned.
                Some(end) => {
                    let next = (end as u64 + 1).div_ceil(step) * step;
                    at = next.max(at + step);
                }
            }
        }
    }
    None
}

/// The lowest free VNI from [`FIRST_VNI`].
pub fn next_vni(used: &BTreeSet<u32>) -> Option<u32> {
    (FIRST_VNI..=MAX_VNI).find(|v| !used.contains(v))
}

/// A stable pseudo-random number from a string (FNV-1a), to spread allocations.
pub fn seed_of(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A free host address of `subnet` (never the gateway, the network or the broadcast
/// address), searched from an offset derived from `seed` so that an address just freed is
/// not handed out again at once.
pub fn pick_addr(
    subnet: &Cidr,
    gateway: Ipv4Addr,
    seed: u64,
    taken: impl Fn(Ipv4Addr) -> bool,
) -> Option<Ipv4Addr> {
    let hosts = (subnet.last() as u64).saturating_sub(subnet.base as u64 + 1);
    if hosts == 0 {
        return None;
    }
    let first = subnet.base as u64 + 1;
    let start = seed % hosts;
    (0..hosts)
        .map(|i| Ipv4Addr::from((first + (start + i) % hosts) as u32))
        .find(|a| *a != gateway && !taken(*a))
}

/// The lowest free port of the dynamic range for `protocol`.
pub fn pick_port(protocol: PortProtocol, taken: &BTreeSet<(u16, PortProtocol)>) -> Option<u16> {
    DYNAMIC_PORTS
        .into_iter()
        .find(|p| !taken.contains(&(*p, protocol)))
}
