//! Links: find by name, index or MAC; up/down, MTU, name, MAC.

use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use super::{Netlink, NetlinkError, Result};

/// A network interface as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The hardware address, when it is an Ethernet-sized one.
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// IFF_UP (administratively up).
    pub up: bool,
}

impl Link {
    fn from_message(op: &str, m: &LinkMessage) -> Result<Self> {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            up: m.header.flags.contains(LinkFlags::Up),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name.clone_from(n),
                LinkAttribute::Address(a) => link.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                _ => {}
            }
        }
        if link.index == 0 || link.name.is_empty() {
            return Err(NetlinkError::bad_reply(op, "a link without index or name"));
        }
        Ok(link)
    }
}

fn mac_string(mac: [u8; 6]) -> String {
    ark_pod_spec::net::Mac(mac).to_string()
}

impl Netlink {
    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let op = "list links";
        self.dump(op, RouteNetlinkMessage::GetLink(LinkMessage::default()))?
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(op, l)),
                _ => None,
            })
            .collect()
    }

    /// The link named `name`; [`NetlinkError::NotFound`] if there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Link> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(&format!("find interface {name:?}"), msg)
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Link> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(&format!("find interface index {index}"), msg)
    }

    /// The one link with hardware address `mac`; NotFound if none has it, an error if more
    /// than one has (which one to configure would be a guess).
    pub fn link_by_mac(&mut self, mac: [u8; 6]) -> Result<Link> {
        let mut found = self.links()?.into_iter().filter(|l| l.mac == Some(mac));
        let link = found.next().ok_or_else(|| {
            NetlinkError::NotFound(format!("no interface has MAC {}", mac_string(mac)))
        })?;
        if let Some(other) = found.next() {
            return Err(NetlinkError::InvalidInput(format!(
                "interfaces {} and {} both have MAC {}",
                link.name,
                other.name,
                mac_string(mac)
            )));
        }
        Ok(link)
    }

    fn get_link(&mut self, op: &str, msg: LinkMessage) -> Result<Link> {
        let replies = match self.request(op, RouteNetlinkMessage::GetLink(msg), 0) {
            Err(e) if e.errno() == Some(libc::ENODEV) => {
                return Err(NetlinkError::NotFound(format!("{op}: no such interface")))
            }
            r => r?,
        };
        match replies.as_slice() {
            [RouteNetlinkMessage::NewLink(l)] => Link::from_message(op, l),
            other => Err(NetlinkError::bad_reply(
                op,
                format!("{} messages, want one link", other.len()),
            )),
        }
    }

    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.set_flags(&format!("bring interface index {index} up"), index, true)
    }

    pub fn set_down(&mut self, index: u32) -> Result<()> {
        self.set_flags(&format!("bring interface index {index} down"), index, false)
    }

    fn set_flags(&mut self, op: &str, index: u32, up: bool) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up;
        if up {
            msg.header.flags = LinkFlags::Up;
        }
        self.set_link(op, msg)
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.set_attribute(
            &format!("set MTU {mtu} on interface index {index}"),
            index,
            LinkAttribute::Mtu(mtu),
        )
    }

    /// Renames a link (it must be down, as the kernel requires).
    pub fn rename(&mut self, index: u32, name: &str) -> Result<()> {
        if !ark_pod_spec::net::is_interface_name(name) {
            return Err(NetlinkError::InvalidInput(format!(
                "bad interface name {name:?}"
            )));
        }
        self.set_attribute(
            &format!("rename interface index {index} to {name}"),
            index,
            LinkAttribute::IfName(name.to_string()),
        )
    }

    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.set_attribute(
            &format!("set MAC {} on interface index {index}", mac_string(mac)),
            index,
            LinkAttribute::Address(mac.to_vec()),
        )
    }

    fn set_attribute(&mut self, op: &str, index: u32, attr: LinkAttribute) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(attr);
        self.set_link(op, msg)
    }

    fn set_link(&mut self, op: &str, msg: LinkMessage) -> Result<()> {
        self.request(op, RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
    }
}

// Creating links is for tests (veth pairs); the runtime only ever creates TAPs, with ioctls.
#[cfg(test)]
impl Netlink {
    pub(crate) fn add_veth(&mut self, name: &str, peer: &str) -> Result<()> {
        use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
        use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkInfo};
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            &format!("add veth {name}/{peer}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }
}
