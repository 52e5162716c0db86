//! The virtio-vsock device: its queues, the timer for connection deadlines, and the muxer.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use virtio_queue::DescriptorChain;
use vmm_sys_util::timerfd::TimerFd;

use super::muxer::Muxer;
use super::packet::{self, RxBuffer};
use super::{Error, QUEUE_SIZES, RX_QUEUE, TIMER_PERIOD, TX_QUEUE};
use crate::virtio::{
    device_type, GuestMemory, RxSource, VirtioState, WithVirtioState, VIRTIO_F_VERSION_1,
};

/// The virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    pub(super) guest_cid: u64,
    pub(super) uds_path: PathBuf,
    pub(super) state: VirtioState,
    pub(super) timer: TimerFd,
    pub(super) timer_armed: bool,
    pub(super) muxer: Muxer,
    pub(super) tx_payload: Vec<u8>,
}

impl Vsock {
    /// Creates the device for a guest with `guest_cid`, listening for host clients on
    /// `uds_path` (which must not exist yet; it is removed again when the device is dropped).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, Error> {
        if !(3..=u64::from(u32::MAX - 1)).contains(&guest_cid) {
            return Err(Error::InvalidCid(guest_cid));
        }
        let listener = UnixListener::bind(uds_path).map_err(|source| Error::Bind {
            path: uds_path.to_path_buf(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Listener {
                path: uds_path.to_path_buf(),
                source,
            })?;
        let timer = TimerFd::new().map_err(|e| Error::TimerFd(e.into()))?;
        // Read only after epoll reported it, but re-arming can zero its count in between, so
        // it must never block.
        nix::fcntl::fcntl(
            timer.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| Error::TimerFd(e.into()))?;
        // No VIRTIO_VSOCK_F_SEQPACKET: stream sockets only. Config space: guest_cid (le64).
        let state = VirtioState::new(
            "vsock",
            device_type::VSOCK,
            VIRTIO_F_VERSION_1,
            QUEUE_SIZES.to_vec(),
            guest_cid.to_le_bytes().to_vec(),
        )
        .map_err(Error::EventFd)?;
        Ok(Vsock {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            state,
            timer,
            timer_armed: false,
            muxer: Muxer::new(guest_cid, uds_path, listener),
            tx_payload: Vec::new(),
        })
    }

    /// Bounds live connections plus host clients still handshaking (default
    /// [`super::muxer::DEFAULT_MAX_CONNECTIONS`]); beyond it guest connects get a RST and host clients
    /// are closed.
    pub fn with_max_connections(mut self, max: usize) -> Vsock {
        self.muxer.set_max_connections(max);
        self
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Live connections (for tests and metrics).
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Serves the tx queue: every chain is parsed, validated and handed to the muxer, then
    /// returned (tx buffers are read-only to the device, so the used length is 0).
    pub(super) fn process_tx(&mut self) -> bool {
        let Some(a) = self.state.active.as_mut() else {
            return false;
        };
        let (muxer, payload, guest_cid) = (&mut self.muxer, &mut self.tx_payload, self.guest_cid);
        a.drain(self.state.name, TX_QUEUE, |mem, chain| {
            match packet::parse_tx(mem, chain, guest_cid, payload) {
                Ok(hdr) => muxer.on_guest_packet(&hdr, payload),
                Err(e) => {
                    tracing::debug!("vsock: dropping guest packet: {e}");
                    muxer.on_invalid_packet(&e);
                }
            }
            0
        })
    }

    /// Fills guest rx buffers with whatever the muxer owes the guest.
    pub(super) fn process_rx(&mut self) -> bool {
        let Some(a) = self.state.active.as_mut() else {
            return false;
        };
        a.fill_rx(self.state.name, RX_QUEUE, &mut self.muxer)
    }

    pub(super) fn update_timer(&mut self) {
        let needed = self.muxer.has_deadlines();
        if needed && !self.timer_armed {
            match self.timer.reset(TIMER_PERIOD, Some(TIMER_PERIOD)) {
                Ok(()) => self.timer_armed = true,
                Err(e) => tracing::error!("vsock: arming timer: {e}"),
            }
        } else if !needed && self.timer_armed {
            let _ = self.timer.clear();
            self.timer_armed = false;
        }
    }
}

/// What the muxer owes the guest, one packet a buffer.
impl RxSource for Muxer {
    fn has_pending(&self) -> bool {
        self.has_pending_rx()
    }

    fn fill(&mut self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> Option<u32> {
        match RxBuffer::new(mem, chain) {
            Ok(mut buf) => self.fill_rx(&mut buf).map(|written| {
                written.unwrap_or_else(|e| {
                    tracing::warn!("vsock: writing rx packet: {e}");
                    0
                })
            }),
            Err(e) => {
                tracing::debug!("vsock: unusable rx buffer: {e}");
                Some(0)
            }
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// Reset: host connections go on the loop's next turn (see `process`).
impl WithVirtioState for Vsock {
    crate::virtio_state_accessors!();

    /// Only whole reads inside the 8-byte config (guest_cid) return data; the rest is zero.
    fn read_device_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = start
            .checked_add(data.len())
            .and_then(|end| self.state.config_space.get(start..end))
        {
            data.copy_from_slice(src);
        }
    }
}
