//! A kvm pod's NICs on the host side: for each network the CNI set-up attached to the pod's
//! network namespace, a TAP device in that namespace joined to the CNI interface (a veth, a
//! macvlan...) the way Kata's "tcfilter" model does it: an ingress qdisc on both, and a
//! match-all u32 filter on each whose mirred action redirects every frame received to the
//! other's egress. The guest NIC (virtio-net on the TAP) then takes over the CNI interface's
//! MAC, addresses, routes and MTU, so every CNI plugin's ARP, neighbour, NAT and port-forward
//! state stays right without knowing a VM is behind it.
//!
//! Teardown: nothing beyond dropping [`KvmNetwork`]. The TAPs are not persistent, so each goes
//! with its last descriptor (the VMM's), and with it its qdisc and filter; the filter left on
//! the CNI interface then redirects to a missing device (the kernel drops those frames) until
//! CNI DEL removes the interface with the namespace.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use ark_os::netlink::{Netlink, NetlinkError};
use ark_pod_spec::net::{GuestNetwork, Interface, Mac, PodNetworkState, Route};

/// One NIC for the VMM: the TAP's descriptor (close-on-exec, non-blocking, IFF_VNET_HDR) and
/// what the guest's virtio-net device must present.
#[derive(Debug)]
pub struct TapNic {
    pub tap: OwnedFd,
    /// The TAP's name in the pod's namespace (for messages; the VMM needs only the fd).
    pub tap_name: String,
    /// The CNI interface's MAC: the guest NIC's.
    pub mac: Mac,
    /// The CNI interface's MTU: the TAP's and the guest NIC's.
    pub mtu: u32,
}

/// What [`attach`] made: the NICs for the VMM, in attachment order, and what guest-init must
/// configure (`Stage2Config.network`).
#[derive(Debug)]
pub struct KvmNetwork {
    pub nics: Vec<TapNic>,
    pub guest: GuestNetwork,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network namespace {0}: {1}")]
    Netns(PathBuf, #[source] std::io::Error),
    #[error("network {network:?}: {source}")]
    Netlink {
        network: String,
        #[source]
        source: NetlinkError,
    },
    #[error("network {network:?}: TAP {tap}: {source}")]
    Tap {
        network: String,
        tap: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network {network:?}: {reason}")]
    Invalid { network: String, reason: String },
    #[error("network set-up thread panicked")]
    Thread,
}

/// The TAP of the `i`th attachment. A name no CNI plugin gives (they use the CNI_IFNAME,
/// `eth0`...), checked free before use all the same.
pub fn tap_name(i: usize) -> String {
    format!("tap{i}_ark")
}

/// Wires a TAP to each of `state`'s attachments inside the network namespace `netns` (the
/// bind-mounted nsfs file, `PodLayout::netns()`), from a thread that joins the namespace and
/// ends with the work: the process itself never leaves its own namespace.
pub fn attach(netns: &Path, state: &PodNetworkState) -> Result<KvmNetwork, NetError> {
    let ns = File::open(netns).map_err(|e| NetError::Netns(netns.to_path_buf(), e))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Netns(netns.to_path_buf(), e.into()))?;
            wire(state)
        })
        .join()
        .unwrap_or(Err(NetError::Thread))
    })
}

/// In the pod's namespace: one TAP per attachment, the redirects, the guest's view.
fn wire(state: &PodNetworkState) -> Result<KvmNetwork, NetError> {
    let mut nl = Netlink::open().map_err(|source| NetError::Netlink {
        network: String::new(),
        source,
    })?;
    let mut net = KvmNetwork {
        nics: Vec::new(),
        guest: GuestNetwork::default(),
    };
    for (i, a) in state.attachments.iter().enumerate() {
        let (nic, iface) = wire_one(&mut nl, i, &a.network, &a.interface)?;
        if net.guest.interfaces.iter().any(|g| g.name == iface.name) {
            return Err(NetError::Invalid {
                network: a.network.clone(),
                reason: format!("interface {} is attached twice", iface.name),
            });
        }
        // A route without a device belongs to its attachment's interface.
        net.guest.routes.extend(a.routes.iter().map(|r| Route {
            dev: Some(r.dev.clone().unwrap_or_else(|| iface.name.clone())),
            ..r.clone()
        }));
        net.nics.push(nic);
        net.guest.interfaces.push(iface);
    }
    Ok(net)
}

fn wire_one(
    nl: &mut Netlink,
    i: usize,
    network: &str,
    iface: &Interface,
) -> Result<(TapNic, Interface), NetError> {
    let nlerr = |source| NetError::Netlink {
        network: network.to_string(),
        source,
    };
    let invalid = |reason: String| NetError::Invalid {
        network: network.to_string(),
        reason,
    };
    let cni = nl.link_by_name(&iface.name).map_err(nlerr)?;
    let mac = cni.mac.map(Mac).ok_or_else(|| {
        invalid(format!(
            "interface {} has no Ethernet address to give the guest",
            iface.name
        ))
    })?;
    let mtu = cni.mtu.unwrap_or(1500);

    let name = tap_name(i);
    match nl.link_by_name(&name) {
        Err(NetlinkError::NotFound(_)) => {}
        Ok(_) => return Err(invalid(format!("{name} already exists"))),
        Err(e) => return Err(nlerr(e)),
    }
    let tap = ark_os::tap::open_tap(&name, true).map_err(|source| NetError::Tap {
        network: network.to_string(),
        tap: name.clone(),
        source,
    })?;
    let tap_link = nl.link_by_name(&name).map_err(nlerr)?;
    nl.set_mtu(tap_link.index, mtu).map_err(nlerr)?;
    nl.set_up(tap_link.index).map_err(nlerr)?;
    nl.set_up(cni.index).map_err(nlerr)?;
    // Guest -> network first, so nothing the guest sends once the other way works is lost.
    for (from, to) in [(tap_link.index, cni.index), (cni.index, tap_link.index)] {
        nl.add_ingress_qdisc(from).map_err(nlerr)?;
        nl.add_redirect_filter(from, to).map_err(nlerr)?;
    }
    let guest = Interface {
        name: iface.name.clone(),
        mac,
        mtu: Some(mtu),
        addresses: iface.addresses.clone(),
    };
    Ok((
        TapNic {
            tap,
            tap_name: name,
            mac,
            mtu,
        },
        guest,
    ))
}

#[cfg(test)]
mod tests;
