//! The virtio-net device: features and config space from its [`NetConfig`], and the rx and tx
//! paths between the queues and the TAP.
//!
//! Flow control, so that nothing spins and nothing piles up:
//! - rx holds at most one frame read from the TAP. With no guest buffer for it, the device
//!   stops listening on the TAP (the kernel queues what follows, and drops past the TAP's
//!   queue length) and asks the guest to notify the rx queue when it adds buffers.
//! - with VIRTIO_NET_F_MRG_RXBUF a frame spreads over as many rx chains as it needs (Linux
//!   posts page-sized buffers instead of 64 KiB ones per packet); the device holds the chains
//!   it took until they add up to the frame, returns only those the frame used, all in one
//!   used-index update, and drops a frame that not even a full ring of buffers could hold.
//! - tx writes each frame as the guest queued it; a TAP that refuses with EAGAIN leaves the
//!   chain in the queue and the device waits for the TAP to be writable.
//! - a rate limit that runs dry leaves the chain in the queue (or the frame held) and waits
//!   for its timer.

use ark_pod_spec::net::Mac;
use event_manager::EventSet;
use std::sync::atomic::{fence, Ordering};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::request::{self, Segment, MAX_BUFFER_LEN, VNET_HDR_LEN};
use super::tap::{Offloads, Tap};
use super::{Error, CONFIG_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::config::NetConfig;
use crate::rate_limiter::{RateLimit, RateLimiter};
use crate::virtio::{device_type, GuestMemory, VirtioState, WithVirtioState, VIRTIO_F_VERSION_1};

/// What the device did, for tests and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames from the TAP dropped: shorter than a header, or larger than the guest's buffer.
    pub rx_dropped: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames the TAP refused (other than EAGAIN), e.g. a header the host kernel rejects.
    pub tx_dropped: u64,
    /// Malformed chains (wrong direction, outside memory, bad length), returned unused.
    pub bad_chains: u64,
}

#[derive(Debug)]
pub(super) struct RxPath {
    /// The frame read from the TAP and not yet delivered (`pending` bytes of it).
    pub(super) frame: Vec<u8>,
    pub(super) pending: Option<usize>,
    /// The guest gave no buffer for `pending`: wait for its rx notification.
    pub(super) waiting_for_buffers: bool,
    pub(super) limiter: Option<RateLimiter>,
    /// Chains taken from the rx queue for `pending` and not yet used: with
    /// VIRTIO_NET_F_MRG_RXBUF as many as the frame needs, else one.
    pub(super) chains: Vec<RxChain>,
    /// The checked ranges of `chains`, in order.
    pub(super) segs: Vec<Segment>,
    /// The sum of `chains`' capacities.
    pub(super) capacity: u64,
    /// Used-ring entries of the frame being delivered (one index update for all of them).
    used: Vec<(u16, u32)>,
}

/// An rx chain held for a frame: its head and its ranges in [`RxPath::segs`].
#[derive(Debug, Clone, Copy)]
pub(super) struct RxChain {
    head: u16,
    segs: usize,
    capacity: u32,
}

/// Whether the chains held cover the pending frame.
enum Buffers {
    Enough,
    /// The guest has posted too few: wait for its notification.
    Missing,
    /// Not even a full ring of the guest's buffers could hold it.
    NeverEnough,
}

impl RxPath {
    /// Takes chains from the rx queue until those held can hold a `len`-byte frame. Malformed
    /// chains are returned to the guest at once (used length 0), held chains never are.
    fn take_buffers(
        &mut self,
        q: &mut Queue,
        mem: &GuestMemory,
        len: usize,
        mergeable: bool,
        stats: &mut NetStats,
    ) -> Buffers {
        loop {
            if self.capacity >= len as u64 {
                return Buffers::Enough;
            }
            // Without mergeable buffers a frame fits one chain; and no frame can span more
            // chains than the ring holds.
            let full = if mergeable {
                self.chains.len() >= usize::from(q.size())
            } else {
                !self.chains.is_empty()
            };
            if full {
                return Buffers::NeverEnough;
            }
            let Some(chain) = pop_or_arm(q, mem) else {
                return Buffers::Missing;
            };
            let head = chain.head_index();
            let before = self.segs.len();
            match request::rx_chain_segments(mem, chain, &mut self.segs) {
                // With mergeable buffers each must hold at least a header (virtio 1.2,
                // 5.1.6.3.1), so the first one always carries it.
                Ok(cap) if mergeable && cap < VNET_HDR_LEN as u64 => {
                    self.segs.truncate(before);
                    tracing::debug!("virtio-net: an rx buffer of {cap} bytes");
                    stats.bad_chains += 1;
                    return_now(q, mem, head);
                }
                Ok(cap) => {
                    // A chain's length is at most what a u32 descriptor table can address
                    // for a frame: capped at the frame limit, which is all it can be used for.
                    let capacity = u32::try_from(cap.min(MAX_BUFFER_LEN as u64)).expect("capped");
                    self.chains.push(RxChain {
                        head,
                        segs: self.segs.len() - before,
                        capacity,
                    });
                    self.capacity += u64::from(capacity);
                }
                Err(e) => {
                    // The chain is bad, not the frame: it waits for the next buffer.
                    tracing::debug!("virtio-net: unusable rx chain: {e}");
                    stats.bad_chains += 1;
                    return_now(q, mem, head);
                }
            }
        }
    }

    /// Writes the pending `len`-byte frame over the chains held, sets `num_buffers` to how
    /// many it used, and returns those to the guest at once; the rest stay held.
    fn deliver(&mut self, q: &mut Queue, mem: &GuestMemory, len: usize) -> Result<(), String> {
        // How many chains the frame needs, in order.
        let mut need = 0;
        let mut room = 0usize;
        while room < len {
            room += self.chains[need].capacity as usize;
            need += 1;
        }
        request::set_num_buffers(
            &mut self.frame[..len],
            u16::try_from(need).expect("at most the queue size"),
        );
        self.used.clear();
        let (mut off, mut seg) = (0usize, 0usize);
        for c in &self.chains[..need] {
            let end = len.min(off + c.capacity as usize);
            let n =
                request::write_segments(mem, &self.segs[seg..seg + c.segs], &self.frame[off..end])
                    .map_err(|e| e.to_string())?;
            self.used
                .push((c.head, u32::try_from(n).expect("at most MAX_BUFFER_LEN")));
            off += n;
            seg += c.segs;
        }
        publish_used(q, mem, &self.used).map_err(|e| format!("used ring: {e}"))?;
        self.chains.drain(..need);
        self.segs.drain(..seg);
        self.capacity = self.chains.iter().map(|c| u64::from(c.capacity)).sum();
        Ok(())
    }

    /// Gives the chains held back to the guest unused.
    fn return_unused(&mut self, q: &mut Queue, mem: &GuestMemory) {
        self.used.clear();
        self.used.extend(self.chains.iter().map(|c| (c.head, 0)));
        if let Err(e) = publish_used(q, mem, &self.used) {
            tracing::warn!("virtio-net: rx used ring: {e}");
        }
        self.forget_chains();
    }

    /// Drops the chains held (a reset took them back).
    pub(super) fn forget_chains(&mut self) {
        self.chains.clear();
        self.segs.clear();
        self.capacity = 0;
    }
}

#[derive(Debug)]
pub(super) struct TxPath {
    pub(super) buf: Vec<u8>,
    /// The TAP answered EAGAIN: wait for it to be writable.
    pub(super) waiting_for_tap: bool,
    pub(super) limiter: Option<RateLimiter>,
}

/// The virtio-net device.
#[derive(Debug)]
pub struct Net {
    pub(super) state: VirtioState,
    pub(super) tap: Tap,
    pub(super) rx: RxPath,
    pub(super) tx: TxPath,
    /// The TAP events the loop listens for now (registered with none while idle).
    pub(super) tap_interest: EventSet,
    /// The TAP reported an error or hang-up: out of the loop for good.
    pub(super) tap_failed: bool,
    /// A failed TAP is out of the loop.
    pub(super) tap_removed: bool,
    /// The live session's offloads are set on the TAP.
    pub(super) session_started: bool,
    pub(super) stats: NetStats,
}

impl Net {
    /// Opens the TAP `config` names and builds the device.
    pub fn from_config(config: &NetConfig) -> Result<Net, Error> {
        let tap = Tap::open(&config.tap)?;
        Net::new(
            tap,
            config.mac,
            config.mtu,
            config.rx_rate.as_ref(),
            config.tx_rate.as_ref(),
        )
    }

    pub fn new(
        tap: Tap,
        mac: Mac,
        mtu: Option<u16>,
        rx_rate: Option<&RateLimit>,
        tx_rate: Option<&RateLimit>,
    ) -> Result<Net, Error> {
        let mut avail_features = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_HOST_TSO4
            | 1 << VIRTIO_NET_F_HOST_TSO6
            | 1 << VIRTIO_NET_F_HOST_ECN
            | 1 << VIRTIO_NET_F_GUEST_CSUM
            | 1 << VIRTIO_NET_F_GUEST_TSO4
            | 1 << VIRTIO_NET_F_GUEST_TSO6
            | 1 << VIRTIO_NET_F_GUEST_ECN;
        // VIRTIO_NET_F_MRG_RXBUF is implemented (the rx path below, its unit tests) but not
        // offered yet: with it a kvm pod on a CNI network did not start its app within 10
        // minutes on a loaded kvm_pvm host, while the same pod without it did in 3 (the
        // ark-vmm-on-a-TAP test passed with it). Offer it once that is understood.
        if mtu.is_some() {
            avail_features |= 1 << VIRTIO_NET_F_MTU;
        }
        let state = VirtioState::new(
            "virtio-net",
            device_type::NET,
            avail_features,
            vec![QUEUE_SIZE; 2],
            build_config(mac, mtu).to_vec(),
        )
        .map_err(Error::EventFd)?;
        let limiter =
            |r: Option<&RateLimit>| r.map(RateLimiter::new).transpose().map_err(Error::TimerFd);
        Ok(Net {
            state,
            tap,
            rx: RxPath {
                frame: vec![0; MAX_BUFFER_LEN],
                pending: None,
                waiting_for_buffers: false,
                limiter: limiter(rx_rate)?,
                chains: Vec::new(),
                segs: Vec::new(),
                capacity: 0,
                used: Vec::new(),
            },
            tx: TxPath {
                buf: Vec::with_capacity(MAX_BUFFER_LEN),
                waiting_for_tap: false,
                limiter: limiter(tx_rate)?,
            },
            tap_interest: EventSet::empty(),
            tap_failed: false,
            tap_removed: false,
            session_started: false,
            stats: NetStats::default(),
        })
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The TAP offloads the accepted features allow: partial checksums only if the guest takes
    /// them (VIRTIO_NET_F_GUEST_CSUM), GSO only on top of that, as the spec's feature
    /// dependencies and TUNSETOFFLOAD both require.
    pub fn offloads(&self) -> Offloads {
        let has = |bit| self.state.has_feature(bit);
        if !has(VIRTIO_NET_F_GUEST_CSUM) {
            return 0;
        }
        let mut f = libc::TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            f |= libc::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            f |= libc::TUN_F_TSO6;
        }
        if f & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 && has(VIRTIO_NET_F_GUEST_ECN) {
            f |= libc::TUN_F_TSO_ECN;
        }
        f
    }

    /// Loop side, once a session is active: the TAP gets the session's offloads. (Not in
    /// `activate`, which runs on a vCPU thread whose seccomp filter allows only KVM ioctls.)
    pub(super) fn start_session(&mut self) {
        if self.session_started || self.state.active.is_none() {
            return;
        }
        self.session_started = true;
        let offloads = self.offloads();
        let res = self
            .tap
            .set_vnet_hdr_len()
            .and_then(|()| self.tap.set_offloads(offloads));
        if let Err(e) = res {
            // Without offloads the TAP hands over only whole, checksummed frames, which every
            // guest takes.
            tracing::warn!("virtio-net: {e}; continuing without offloads");
            let _ = self.tap.set_offloads(0);
        }
    }

    /// Loop side, after a reset: the old session's frame and waits go.
    pub(super) fn end_session(&mut self) {
        self.rx.pending = None;
        self.rx.waiting_for_buffers = false;
        self.rx.forget_chains();
        self.tx.waiting_for_tap = false;
        self.session_started = false;
        let _ = self.tap.set_offloads(0);
    }

    /// The TAP events the device can act on now.
    pub(super) fn wanted_tap_events(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.tap_failed || self.state.active.is_none() {
            return set;
        }
        let rx_limited = self
            .rx
            .limiter
            .as_ref()
            .is_some_and(RateLimiter::is_blocked);
        if !self.rx.waiting_for_buffers && !rx_limited {
            set |= EventSet::IN;
        }
        if self.tx.waiting_for_tap {
            set |= EventSet::OUT;
        }
        set
    }

    /// Moves frames from the TAP into guest rx buffers until the TAP is empty, the guest has
    /// no buffer, or the rate limit runs dry. Returns whether the guest wants an interrupt.
    pub(super) fn process_rx(&mut self) -> bool {
        let mergeable = self.state.has_feature(VIRTIO_NET_F_MRG_RXBUF);
        let Some(a) = self.state.active.as_mut() else {
            return false;
        };
        let (mem, q) = (&a.mem, &mut a.queues[RX_QUEUE]);
        if self
            .rx
            .limiter
            .as_ref()
            .is_some_and(RateLimiter::is_blocked)
        {
            return false;
        }
        self.rx.waiting_for_buffers = false;
        if let Err(e) = q.disable_notification(mem) {
            tracing::warn!("virtio-net: rx queue unusable: {e}");
            return false;
        }
        let used_before = q.next_used();
        loop {
            let len = match self.rx.pending {
                Some(n) => n,
                None => match self.tap.read_frame(&mut self.rx.frame) {
                    Ok(n) if n < VNET_HDR_LEN => {
                        self.stats.rx_dropped += 1;
                        continue;
                    }
                    Ok(n) => {
                        self.rx.pending = Some(n);
                        n
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::error!("virtio-net: reading the TAP: {e}; no more rx");
                        self.tap_failed = true;
                        break;
                    }
                },
            };
            match self
                .rx
                .take_buffers(q, mem, len, mergeable, &mut self.stats)
            {
                Buffers::Enough => {}
                Buffers::Missing => {
                    self.rx.waiting_for_buffers = true;
                    break;
                }
                Buffers::NeverEnough => {
                    // More than every buffer the guest can post: this frame can never fit. The
                    // buffers stay for the next one.
                    tracing::debug!("virtio-net: dropping a {len}-byte rx frame: no room");
                    self.rx.pending = None;
                    self.stats.rx_dropped += 1;
                    if !mergeable {
                        self.rx.return_unused(q, mem);
                    }
                    continue;
                }
            }
            if let Some(l) = &mut self.rx.limiter {
                if !l.consume(len as u64) {
                    break;
                }
            }
            match self.rx.deliver(q, mem, len) {
                Ok(()) => {
                    self.rx.pending = None;
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += (len - VNET_HDR_LEN) as u64;
                }
                Err(e) => {
                    tracing::warn!("virtio-net: rx: {e}");
                    break;
                }
            }
        }
        rx_needs_interrupt(q, mem, used_before)
    }

    /// Writes every queued tx frame to the TAP, until the queue is empty, the TAP is full or
    /// the rate limit runs dry. Returns whether the guest wants an interrupt.
    pub(super) fn process_tx(&mut self) -> bool {
        let Some(a) = self.state.active.as_mut() else {
            return false;
        };
        let (mem, q) = (&a.mem, &mut a.queues[TX_QUEUE]);
        let limited = self
            .tx
            .limiter
            .as_ref()
            .is_some_and(RateLimiter::is_blocked);
        if self.tx.waiting_for_tap || limited || self.tap_failed {
            return false;
        }
        if let Err(e) = q.disable_notification(mem) {
            tracing::warn!("virtio-net: tx queue unusable: {e}");
            return false;
        }
        let mut used = false;
        while let Some(chain) = pop_or_arm(q, mem) {
            let head = chain.head_index();
            match request::read_tx_frame(mem, chain, &mut self.tx.buf) {
                Err(e) => {
                    tracing::debug!("virtio-net: dropping a tx chain: {e}");
                    self.stats.bad_chains += 1;
                }
                Ok(len) => {
                    if let Some(l) = &mut self.tx.limiter {
                        if !l.consume(len as u64) {
                            unpop(q);
                            break;
                        }
                    }
                    match self.tap.write_frame(&self.tx.buf[..len]) {
                        Ok(_) => {
                            self.stats.tx_frames += 1;
                            self.stats.tx_bytes += (len - VNET_HDR_LEN) as u64;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            unpop(q);
                            self.tx.waiting_for_tap = true;
                            break;
                        }
                        Err(e) => {
                            tracing::debug!("virtio-net: the TAP refused a frame: {e}");
                            self.stats.tx_dropped += 1;
                        }
                    }
                }
            }
            if let Err(e) = q.add_used(mem, head, 0) {
                tracing::warn!("virtio-net: tx add_used: {e}");
                break;
            }
            used = true;
        }
        used && q.needs_notification(mem).unwrap_or(true)
    }
}

/// The next chain; when there is none, asks the driver to notify when it adds one and looks
/// once more (it may have added one before it saw the request).
fn pop_or_arm<'m>(q: &mut Queue, mem: &'m GuestMemory) -> Option<DescriptorChain<&'m GuestMemory>> {
    if let Some(chain) = q.pop_descriptor_chain(mem) {
        return Some(chain);
    }
    match q.enable_notification(mem) {
        Ok(true) => q.pop_descriptor_chain(mem),
        Ok(false) => None,
        Err(e) => {
            tracing::warn!("virtio-net: queue unusable: {e}");
            None
        }
    }
}

/// Returns a chain the device will not use (malformed) to the guest, with used length 0.
fn return_now(q: &mut Queue, mem: &GuestMemory, head: u16) {
    if let Err(e) = publish_used(q, mem, &[(head, 0)]) {
        tracing::warn!("virtio-net: rx used ring: {e}");
    }
}

/// Adds `elems` to the used ring with one index update, so the driver never sees part of a
/// frame's buffers (Linux drops such a frame: "rx error: N buffers out of M missing").
/// `Queue::add_used` publishes each entry as it goes; the rx queue uses only this, and
/// [`rx_needs_interrupt`] instead of `needs_notification`, which counts `add_used` calls.
fn publish_used(
    q: &mut Queue,
    mem: &GuestMemory,
    elems: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    let size = q.size();
    let next = q.next_used();
    for (i, &(head, len)) in elems.iter().enumerate() {
        if head >= size {
            return Err(virtio_queue::Error::InvalidDescriptorIndex);
        }
        let slot = next.wrapping_add(u16::try_from(i).expect("at most the queue size")) % size;
        let addr = GuestAddress(q.used_ring())
            .checked_add(4 + u64::from(slot) * 8)
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        // struct virtq_used_elem: le32 id, le32 len.
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, addr)
            .map_err(virtio_queue::Error::GuestMemory)?;
    }
    let idx = next.wrapping_add(u16::try_from(elems.len()).expect("at most the queue size"));
    let idx_addr = GuestAddress(q.used_ring())
        .checked_add(2)
        .ok_or(virtio_queue::Error::AddressOverflow)?;
    // Release: the entries are visible before the index that publishes them.
    mem.store(idx.to_le(), idx_addr, Ordering::Release)
        .map_err(virtio_queue::Error::GuestMemory)?;
    q.set_next_used(idx);
    Ok(())
}

/// Whether the rx entries used since `used_before` call for an interrupt: any, or with
/// VIRTIO_RING_F_EVENT_IDX, those past the driver's `used_event` (virtio 1.2, 2.7.10).
fn rx_needs_interrupt(q: &Queue, mem: &GuestMemory, used_before: u16) -> bool {
    let now = q.next_used();
    if now == used_before {
        return false;
    }
    if !q.event_idx_enabled() {
        return true;
    }
    // The used index is written before used_event is read.
    fence(Ordering::SeqCst);
    let addr = GuestAddress(q.avail_ring()).checked_add(4 + 2 * u64::from(q.size()));
    let Some(used_event) = addr.and_then(|a| mem.load::<u16>(a, Ordering::Relaxed).ok()) else {
        return true;
    };
    let used_event = u16::from_le(used_event);
    now.wrapping_sub(used_event).wrapping_sub(1) < now.wrapping_sub(used_before)
}

/// Puts the chain just popped back: it is served when the device can move it.
fn unpop(q: &mut Queue) {
    q.set_next_avail(q.next_avail().wrapping_sub(1));
}

fn build_config(mac: Mac, mtu: Option<u16>) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    c[..6].copy_from_slice(&mac.0);
    let link_up = u16::try_from(VIRTIO_NET_S_LINK_UP).expect("1");
    c[6..8].copy_from_slice(&link_up.to_le_bytes());
    // max_virtqueue_pairs: meaningful only with VIRTIO_NET_F_MQ, which is not offered.
    c[8..10].copy_from_slice(&1u16.to_le_bytes());
    c[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
    c
}

// Config space is read-only: with VIRTIO_F_VERSION_1 the driver may not write the MAC.
impl WithVirtioState for Net {
    crate::virtio_state_accessors!();
}
