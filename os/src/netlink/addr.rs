//! Addresses and routes.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, NetlinkError, Result};

/// A route to add to the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// The destination network (its host bits are the caller's business: the kernel refuses
    /// them); a zero prefix is the default route.
    pub dst: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    /// The outgoing interface; without it the kernel picks by the gateway.
    pub oif: Option<u32>,
}

fn family(a: IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn max_prefix(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

impl Netlink {
    /// Adds `addr/prefix` to link `index`. IPv6 addresses skip duplicate address detection:
    /// they come from the network's IPAM, and DAD would leave them unusable ("tentative") for
    /// the first second or two of the apps' lives.
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let op = format!("add address {addr}/{prefix} to interface index {index}");
        if prefix > max_prefix(addr) {
            return Err(NetlinkError::InvalidInput(format!("{op}: prefix too long")));
        }
        let mut msg = AddressMessage::default();
        msg.header.family = family(addr);
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        if addr.is_ipv6() {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            &op,
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Adds a unicast route to the main table: scope link for a route without a gateway
    /// (the destination is on the link), universe otherwise.
    pub fn add_route(&mut self, r: &RouteSpec) -> Result<()> {
        let op = format!(
            "add route {}/{}{}{}",
            r.dst,
            r.prefix,
            r.gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
            r.oif.map(|i| format!(" dev index {i}")).unwrap_or_default()
        );
        if r.prefix > max_prefix(r.dst) {
            return Err(NetlinkError::InvalidInput(format!("{op}: prefix too long")));
        }
        if r.gateway.is_some_and(|g| g.is_ipv4() != r.dst.is_ipv4()) {
            return Err(NetlinkError::InvalidInput(format!(
                "{op}: the gateway is not of the destination's family"
            )));
        }
        if r.gateway.is_none() && r.oif.is_none() {
            return Err(NetlinkError::InvalidInput(format!(
                "{op}: neither a gateway nor an interface"
            )));
        }
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(r.dst);
        msg.header.destination_prefix_length = r.prefix;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if r.gateway.is_none() && r.dst.is_ipv4() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        if r.prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(r.dst)));
        }
        if let Some(g) = r.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(g)));
        }
        if let Some(i) = r.oif {
            msg.attributes.push(RouteAttribute::Oif(i));
        }
        self.request(
            &op,
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }
}
