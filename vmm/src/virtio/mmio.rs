//! virtio-mmio transport, version 2 (virtio spec 1.2, 4.2.2).
//!
//! Owns the register file and every rule the guest driver must follow; the device model only
//! sees validated values (see the contract in `virtio/mod.rs`). Anything the driver does out of
//! order or out of range is ignored with a debug log, never a panic: a buggy or hostile guest
//! can at worst stall its own device.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemory as _};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateContext, GuestMemory, Interrupt, InterruptKind, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::bus::BusDevice;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b52_4100; // "\0ARK"

pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const REG_SHM_SEL: u64 = 0x0ac;
pub const REG_SHM_LEN_LOW: u64 = 0x0b0;
pub const REG_SHM_LEN_HIGH: u64 = 0x0b4;
pub const REG_SHM_BASE_LOW: u64 = 0x0b8;
pub const REG_SHM_BASE_HIGH: u64 = 0x0bc;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG_SPACE: u64 = 0x100;
/// The size of one device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

const INT_VRING: u32 = 1;
const INT_CONFIG: u32 = 2;

/// VIRTIO_RING_F_EVENT_IDX: the transport turns it on in each queue when the driver accepts it.
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// The device's interrupt line: InterruptStatus bits plus an irqfd.
#[derive(Debug)]
pub struct MmioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    irq: EventFd,
}

impl MmioInterrupt {
    pub fn new(irq: EventFd) -> Self {
        MmioInterrupt {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            irq,
        }
    }
    pub fn irq(&self) -> &EventFd {
        &self.irq
    }
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }
}

impl Interrupt for MmioInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        let bit = match kind {
            InterruptKind::Queue => INT_VRING,
            InterruptKind::Config => {
                self.config_generation.fetch_add(1, Ordering::SeqCst);
                INT_CONFIG
            }
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.write(1)
    }
}

/// What the driver configured for one queue, applied to a `Queue` at activation.
#[derive(Debug, Clone, Copy, Default)]
struct QueueSetup {
    size: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(low);
}
fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(high) << 32);
}
/// The low and high halves of a 64-bit register pair.
fn lo_hi(v: u64) -> (u32, u32) {
    (
        u32::try_from(v & 0xffff_ffff).expect("masked to 32 bits"),
        u32::try_from(v >> 32).expect("shifted to 32 bits"),
    )
}

pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    interrupt: Arc<MmioInterrupt>,
    queue_events: Vec<EventFd>,
    queue_max: Vec<u16>,
    device_type: u32,
    avail_features: u64,
    queues: Vec<QueueSetup>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    driver_features_beyond_64: bool,
    queue_sel: u32,
    status: u32,
    activated: bool,
}

/// The transport's registers, without the device (a trait object behind a lock).
impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("interrupt", &self.interrupt)
            .field("queue_events", &self.queue_events)
            .field("queues", &self.queues)
            .field("driver_features", &self.driver_features)
            .field("queue_sel", &self.queue_sel)
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// `queue_events` must hold one eventfd per queue of the device (registered by the caller
    /// as KVM ioeventfds on `REG_QUEUE_NOTIFY` with the queue index as datamatch).
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemory,
        interrupt: Arc<MmioInterrupt>,
        queue_events: Vec<EventFd>,
    ) -> Self {
        let (queue_max, device_type, avail_features) = {
            let d = device.lock().expect("device lock");
            (
                d.queue_max_sizes().to_vec(),
                d.device_type(),
                d.avail_features(),
            )
        };
        assert_eq!(
            queue_max.len(),
            queue_events.len(),
            "one notify eventfd per queue"
        );
        MmioTransport {
            device,
            mem,
            interrupt,
            queues: vec![QueueSetup::default(); queue_max.len()],
            queue_events,
            queue_max,
            device_type,
            avail_features,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_beyond_64: false,
            queue_sel: 0,
            status: 0,
            activated: false,
        }
    }

    pub fn status(&self) -> u32 {
        self.status
    }
    pub fn activated(&self) -> bool {
        self.activated
    }
    pub fn queue_count(&self) -> usize {
        self.queue_max.len()
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK, on a queue not yet
    /// ready (we do not offer VIRTIO_F_RING_RESET).
    fn selected_queue_mut(&mut self) -> Option<&mut QueueSetup> {
        let configurable = self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED)
            == STATUS_FEATURES_OK;
        if !configurable {
            tracing::debug!(
                "virtio-mmio: queue write in status {:#x} ignored",
                self.status
            );
            return None;
        }
        match self.queues.get_mut(self.queue_sel as usize) {
            Some(q) if !q.ready => Some(q),
            Some(_) => {
                tracing::debug!("virtio-mmio: write to a ready queue ignored");
                None
            }
            None => {
                tracing::debug!("virtio-mmio: queue {} does not exist", self.queue_sel);
                None
            }
        }
    }

    /// Why the selected queue cannot be made ready, if it cannot.
    fn check_queue(&self, index: usize) -> Result<(), String> {
        let q = &self.queues[index];
        let max = u32::from(self.queue_max[index]);
        if q.size == 0 || q.size > max || !q.size.is_power_of_two() {
            return Err(format!("size {} (max {max}, power of 2)", q.size));
        }
        let n = u64::from(q.size);
        // (name, address, length, alignment) per virtio 1.2, 2.7 (split virtqueues).
        let areas = [
            ("descriptor table", q.desc, 16 * n, 16),
            ("driver area", q.driver, 6 + 2 * n, 2),
            ("device area", q.device, 6 + 8 * n, 4),
        ];
        for (name, addr, len, align) in areas {
            if addr & (align - 1) != 0 {
                return Err(format!("{name} at {addr:#x} not {align}-byte aligned"));
            }
            let inside = GuestAddress(addr).checked_add(len).is_some()
                && usize::try_from(len).is_ok_and(|l| self.mem.check_range(GuestAddress(addr), l));
            if !inside {
                return Err(format!("{name} {addr:#x}+{len:#x} outside guest memory"));
            }
        }
        Ok(())
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let cur = self.status;
        if value & !cur == STATUS_FAILED && value & cur == cur {
            self.status |= STATUS_FAILED;
            return;
        }
        if cur & (STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET) != 0 {
            tracing::debug!("virtio-mmio: status {value:#x} after failure ignored (reset first)");
            return;
        }
        let next = match cur {
            0 => STATUS_ACKNOWLEDGE,
            x if x == STATUS_ACKNOWLEDGE => STATUS_DRIVER,
            x if x == STATUS_ACKNOWLEDGE | STATUS_DRIVER => STATUS_FEATURES_OK,
            x if x == STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK => STATUS_DRIVER_OK,
            _ => 0,
        };
        if next == 0 || value != cur | next {
            tracing::debug!("virtio-mmio: status {cur:#x} -> {value:#x} is not a valid step");
            return;
        }
        match next {
            STATUS_FEATURES_OK => {
                let unknown = self.driver_features & !self.avail_features;
                if unknown != 0 || self.driver_features_beyond_64 {
                    tracing::warn!(
                        "virtio-mmio: driver accepted features not offered: {unknown:#x}"
                    );
                    return; // FEATURES_OK stays clear: the driver sees the refusal
                }
                if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                    tracing::warn!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1");
                    return;
                }
                self.device
                    .lock()
                    .expect("device lock")
                    .set_acked_features(self.driver_features);
                self.status = value;
            }
            STATUS_DRIVER_OK => {
                self.status = value;
                if let Err(e) = self.activate() {
                    tracing::warn!(
                        "virtio-mmio: device type {} not activated: {e}",
                        self.device_type
                    );
                    self.status |= STATUS_DEVICE_NEEDS_RESET;
                    let _ = self.interrupt.trigger(InterruptKind::Config);
                }
            }
            _ => self.status = value,
        }
    }

    fn activate(&mut self) -> Result<(), String> {
        if let Some(i) = self.queues.iter().position(|q| !q.ready) {
            return Err(format!("queue {i} not ready"));
        }
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (setup, max) in self.queues.iter().zip(&self.queue_max) {
            let mut q = Queue::new(*max).map_err(|e| format!("queue: {e:?}"))?;
            let size = u16::try_from(setup.size)
                .map_err(|_| format!("queue size {} over {max}", setup.size))?;
            q.set_size(size);
            let (lo, hi) = lo_hi(setup.desc);
            q.set_desc_table_address(Some(lo), Some(hi));
            let (lo, hi) = lo_hi(setup.driver);
            q.set_avail_ring_address(Some(lo), Some(hi));
            let (lo, hi) = lo_hi(setup.device);
            q.set_used_ring_address(Some(lo), Some(hi));
            q.set_event_idx(event_idx);
            q.set_ready(true);
            if !q.is_valid(&self.mem) {
                return Err("queue rejected by virtio-queue".into());
            }
            queues.push(q);
        }
        let queue_events = self
            .queue_events
            .iter()
            .map(|e| e.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("eventfd: {e}"))?;
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_events,
            interrupt: self.interrupt.clone(),
        };
        self.device
            .lock()
            .expect("device lock")
            .activate(ctx)
            .map_err(|e| e.to_string())?;
        self.activated = true;
        Ok(())
    }

    fn reset(&mut self) {
        if self.activated && !self.device.lock().expect("device lock").reset() {
            tracing::warn!("virtio-mmio: device type {} cannot reset", self.device_type);
            self.status |= STATUS_DEVICE_NEEDS_RESET;
            return;
        }
        self.activated = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_beyond_64 = false;
        self.queue_sel = 0;
        self.queues
            .iter_mut()
            .for_each(|q| *q = QueueSetup::default());
        self.interrupt.status.store(0, Ordering::SeqCst);
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => lo_hi(self.avail_features).0,
                1 => lo_hi(self.avail_features).1,
                _ => 0,
            },
            // 0 = "this queue does not exist".
            REG_QUEUE_NUM_MAX => self
                .queue_max
                .get(self.queue_sel as usize)
                .map_or(0, |m| u32::from(*m)),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            // No shared memory regions: length all-ones means "absent" (4.2.2).
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.interrupt.config_generation.load(Ordering::SeqCst),
            _ => {
                tracing::debug!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status != STATUS_ACKNOWLEDGE | STATUS_DRIVER {
                    tracing::debug!("virtio-mmio: features write in status {:#x}", self.status);
                    return;
                }
                match self.driver_features_sel {
                    0 => set_low(&mut self.driver_features, v),
                    1 => set_high(&mut self.driver_features, v),
                    // Bits past 63 are never offered, so accepting any is an error.
                    _ if v != 0 => self.driver_features_beyond_64 = true,
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue_mut() {
                    q.size = v;
                }
            }
            REG_QUEUE_READY => {
                if v == 0 {
                    return; // un-readying needs VIRTIO_F_RING_RESET, which we do not offer
                }
                let index = self.queue_sel as usize;
                if self.selected_queue_mut().is_none() {
                    return;
                }
                match self.check_queue(index) {
                    Ok(()) => self.queues[index].ready = true,
                    Err(e) => tracing::warn!("virtio-mmio: queue {index} refused: {e}"),
                }
            }
            REG_QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd; this is the fallback.
                if self.activated {
                    if let Some(e) = self.queue_events.get(v as usize) {
                        let _ = e.write(1);
                    }
                }
            }
            REG_INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            REG_STATUS => self.write_status(v),
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.selected_queue_mut() {
                    match offset {
                        REG_QUEUE_DESC_LOW => set_low(&mut q.desc, v),
                        REG_QUEUE_DESC_HIGH => set_high(&mut q.desc, v),
                        REG_QUEUE_DRIVER_LOW => set_low(&mut q.driver, v),
                        REG_QUEUE_DRIVER_HIGH => set_high(&mut q.driver, v),
                        REG_QUEUE_DEVICE_LOW => set_low(&mut q.device, v),
                        _ => set_high(&mut q.device, v),
                    }
                }
            }
            REG_SHM_SEL => {}
            _ => tracing::debug!("virtio-mmio: write of read-only or unknown register {offset:#x}"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_SPACE {
            if matches!(data.len(), 1 | 2 | 4 | 8) && offset < MMIO_WINDOW {
                self.device
                    .lock()
                    .expect("device lock")
                    .read_config(offset - CONFIG_SPACE, data);
            }
            return;
        }
        // Registers are 32 bits wide and must be accessed as such (4.2.2.2).
        if data.len() != 4 || offset & 3 != 0 {
            tracing::debug!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            if matches!(data.len(), 1 | 2 | 4 | 8) && offset < MMIO_WINDOW {
                self.device
                    .lock()
                    .expect("device lock")
                    .write_config(offset - CONFIG_SPACE, data);
            }
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            tracing::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        }
        let v = u32::from_le_bytes(data.try_into().expect("4 bytes"));
        self.write_reg(offset, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{ActivateError, InterruptKind};

    type Mem = GuestMemory;

    #[derive(Default)]
    struct Fake {
        acked: u64,
        activations: usize,
        activated_queues: Vec<(u16, u64, u64, u64)>,
        interrupt: Option<Arc<dyn Interrupt>>,
        resets: usize,
        refuse_reset: bool,
        config: [u8; 8],
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            crate::virtio::device_type::RNG
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn set_acked_features(&mut self, features: u64) {
            self.acked = features;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let Ok(o) = usize::try_from(offset) else {
                return;
            };
            if o + data.len() <= self.config.len() {
                data.copy_from_slice(&self.config[o..o + data.len()]);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let Ok(o) = usize::try_from(offset) else {
                return;
            };
            if o + data.len() <= self.config.len() {
                self.config[o..o + data.len()].copy_from_slice(data);
            }
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            if ctx.queues.len() != 2 || ctx.queue_events.len() != 2 {
                return Err(ActivateError::QueueCount {
                    expected: 2,
                    actual: ctx.queues.len(),
                });
            }
            self.activations += 1;
            self.activated_queues = ctx
                .queues
                .iter()
                .map(|q| (q.size(), q.desc_table(), q.avail_ring(), q.used_ring()))
                .collect();
            self.interrupt = Some(ctx.interrupt);
            Ok(())
        }
        fn reset(&mut self) -> bool {
            self.resets += 1;
            !self.refuse_reset
        }
    }

    struct T {
        t: MmioTransport,
        dev: Arc<Mutex<Fake>>,
        notify: Vec<EventFd>,
    }

    const MEM_SIZE: usize = 0x10_0000;

    fn setup() -> T {
        let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let dev = Arc::new(Mutex::new(Fake::default()));
        let notify: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK_).unwrap())
            .collect();
        let clones = notify.iter().map(|e| e.try_clone().unwrap()).collect();
        let irq = EventFd::new(EFD_NONBLOCK_).unwrap();
        let t = MmioTransport::new(dev.clone(), mem, Arc::new(MmioInterrupt::new(irq)), clones);
        T { t, dev, notify }
    }
    const EFD_NONBLOCK_: i32 = vmm_sys_util::eventfd::EFD_NONBLOCK;

    impl T {
        fn r(&mut self, off: u64) -> u32 {
            let mut b = [0u8; 4];
            self.t.read(off, &mut b);
            u32::from_le_bytes(b)
        }
        fn w(&mut self, off: u64, v: u32) {
            self.t.write(off, &v.to_le_bytes());
        }
        fn negotiate(&mut self) {
            self.w(REG_STATUS, STATUS_ACKNOWLEDGE);
            self.w(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
            self.w(REG_DRIVER_FEATURES_SEL, 1);
            self.w(REG_DRIVER_FEATURES, 1); // VERSION_1
            self.w(
                REG_STATUS,
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
            );
            assert_eq!(self.r(REG_STATUS), 0xb);
        }
        fn setup_queue(&mut self, q: u32, size: u32, base: u64) {
            self.w(REG_QUEUE_SEL, q);
            self.w(REG_QUEUE_NUM, size);
            self.w(REG_QUEUE_DESC_LOW, lo_hi(base).0);
            self.w(REG_QUEUE_DESC_HIGH, lo_hi(base).1);
            self.w(REG_QUEUE_DRIVER_LOW, lo_hi(base.wrapping_add(0x1000)).0);
            self.w(REG_QUEUE_DRIVER_HIGH, 0);
            self.w(REG_QUEUE_DEVICE_LOW, lo_hi(base.wrapping_add(0x2000)).0);
            self.w(REG_QUEUE_DEVICE_HIGH, 0);
            self.w(REG_QUEUE_READY, 1);
        }
        fn driver_ok(&mut self) {
            self.w(REG_STATUS, 0xb | STATUS_DRIVER_OK);
        }
    }

    #[test]
    fn identity_registers() {
        let mut t = setup();
        assert_eq!(t.r(REG_MAGIC), MAGIC_VALUE);
        assert_eq!(t.r(REG_VERSION), 2);
        assert_eq!(t.r(REG_DEVICE_ID), crate::virtio::device_type::RNG);
        assert_eq!(t.r(REG_VENDOR_ID), VENDOR_ID);
        assert_eq!(t.r(REG_DEVICE_FEATURES), 1);
        t.w(REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(t.r(REG_DEVICE_FEATURES), 1); // bit 32
        t.w(REG_DEVICE_FEATURES_SEL, 7);
        assert_eq!(t.r(REG_DEVICE_FEATURES), 0);
        t.w(REG_QUEUE_SEL, 1);
        assert_eq!(t.r(REG_QUEUE_NUM_MAX), 8);
        t.w(REG_QUEUE_SEL, 2);
        assert_eq!(t.r(REG_QUEUE_NUM_MAX), 0, "a missing queue reads max 0");
        assert_eq!(t.r(REG_SHM_LEN_LOW), u32::MAX, "no shared memory regions");
        // Write-only registers read as 0.
        assert_eq!(t.r(REG_QUEUE_NOTIFY), 0);
    }

    #[test]
    fn bad_offsets_and_widths_are_ignored() {
        let mut t = setup();
        for (off, len) in [
            (REG_MAGIC, 1),
            (REG_MAGIC, 2),
            (REG_MAGIC, 8),
            (REG_MAGIC + 1, 4),
            (REG_VERSION + 2, 4),
        ] {
            let mut b = vec![0xaau8; len];
            t.t.read(off, &mut b);
            assert!(b.iter().all(|x| *x == 0), "{len}-byte read at {off:#x}");
        }
        // A 1-byte status write and a misaligned one do nothing.
        t.t.write(REG_STATUS, &[1]);
        t.t.write(REG_STATUS + 1, &[1, 0, 0, 0]);
        assert_eq!(t.r(REG_STATUS), 0);
        // Unknown and read-only registers.
        t.w(0x0c0, 1);
        t.w(REG_MAGIC, 0);
        assert_eq!(t.r(REG_MAGIC), MAGIC_VALUE);
        assert_eq!(t.r(0x0c0), 0);
        // Config space: any of 1/2/4/8 bytes reaches the device; 3 bytes or past the window do not.
        t.t.write(CONFIG_SPACE + 2, &[7, 8]);
        let mut b = [0u8; 2];
        t.t.read(CONFIG_SPACE + 2, &mut b);
        assert_eq!(b, [7, 8]);
        t.t.write(CONFIG_SPACE, &[1, 2, 3]);
        assert_eq!(t.dev.lock().unwrap().config[0], 0);
        t.t.write(MMIO_WINDOW, &[1]);
        let mut b = [0xffu8; 4];
        t.t.read(CONFIG_SPACE + 6, &mut b); // straddles the end of the device config
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn status_machine_rejects_skips_and_clears() {
        let mut t = setup();
        t.w(REG_STATUS, STATUS_DRIVER); // DRIVER before ACKNOWLEDGE
        assert_eq!(t.r(REG_STATUS), 0);
        t.w(REG_STATUS, STATUS_ACKNOWLEDGE);
        t.w(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_FEATURES_OK); // skips DRIVER
        assert_eq!(t.r(REG_STATUS), 1);
        t.w(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        t.w(REG_STATUS, STATUS_DRIVER); // clearing a bit without reset
        assert_eq!(t.r(REG_STATUS), 3);
        t.w(REG_STATUS, 0xb | STATUS_DRIVER_OK); // DRIVER_OK before FEATURES_OK
        assert_eq!(t.r(REG_STATUS), 3);
        t.w(REG_STATUS, 3 | STATUS_FAILED);
        assert_eq!(t.r(REG_STATUS), 3 | STATUS_FAILED);
        t.w(REG_STATUS, 3 | STATUS_FAILED | STATUS_FEATURES_OK); // nothing after FAILED
        assert_eq!(t.r(REG_STATUS), 3 | STATUS_FAILED);
        t.w(REG_STATUS, 0);
        assert_eq!(t.r(REG_STATUS), 0);
    }

    #[test]
    fn features_must_be_offered_and_written_in_time() {
        let mut t = setup();
        // Before DRIVER: ignored.
        t.w(REG_DRIVER_FEATURES_SEL, 1);
        t.w(REG_DRIVER_FEATURES, 1);
        t.w(REG_STATUS, 1);
        t.w(REG_STATUS, 3);
        t.w(REG_STATUS, 0xb);
        assert_eq!(
            t.r(REG_STATUS),
            3,
            "VERSION_1 was written too early, so it is missing"
        );
        // Not offered: bit 1.
        t.w(REG_DRIVER_FEATURES_SEL, 1);
        t.w(REG_DRIVER_FEATURES, 1);
        t.w(REG_DRIVER_FEATURES_SEL, 0);
        t.w(REG_DRIVER_FEATURES, 0b11);
        t.w(REG_STATUS, 0xb);
        assert_eq!(t.r(REG_STATUS), 3);
        // Past bit 63.
        t.w(REG_DRIVER_FEATURES, 0b01);
        t.w(REG_DRIVER_FEATURES_SEL, 2);
        t.w(REG_DRIVER_FEATURES, 1);
        t.w(REG_STATUS, 0xb);
        assert_eq!(t.r(REG_STATUS), 3);
        t.w(REG_STATUS, 0);
        t.negotiate();
        assert_eq!(t.dev.lock().unwrap().acked, VIRTIO_F_VERSION_1);
        // After FEATURES_OK the features are frozen.
        t.w(REG_DRIVER_FEATURES_SEL, 0);
        t.w(REG_DRIVER_FEATURES, 1);
        t.setup_queue(0, 16, 0x10000);
        t.setup_queue(1, 8, 0x20000);
        t.driver_ok();
        assert_eq!(t.dev.lock().unwrap().acked, VIRTIO_F_VERSION_1);
    }

    #[test]
    fn queue_config_is_validated() {
        let mut t = setup();
        // Before FEATURES_OK queue writes are ignored.
        t.w(REG_STATUS, 1);
        t.w(REG_STATUS, 3);
        t.w(REG_QUEUE_NUM, 16);
        t.w(REG_QUEUE_READY, 1);
        assert_eq!(t.r(REG_QUEUE_READY), 0);
        t.w(REG_STATUS, 0);
        t.negotiate();
        let ready = |t: &mut T, q| {
            t.w(REG_QUEUE_SEL, q);
            t.r(REG_QUEUE_READY)
        };
        // Not a power of two, zero, above max, too big for u16.
        for size in [0, 3, 32, 0x10000 + 16] {
            t.setup_queue(0, size, 0x10000);
            assert_eq!(ready(&mut t, 0), 0, "size {size}");
        }
        // Misaligned descriptor table / used ring.
        t.setup_queue(0, 16, 0x10008);
        assert_eq!(ready(&mut t, 0), 0);
        t.w(REG_QUEUE_SEL, 0);
        t.w(REG_QUEUE_DESC_LOW, 0x10000);
        t.w(REG_QUEUE_DEVICE_LOW, 0x12002);
        t.w(REG_QUEUE_READY, 1);
        assert_eq!(ready(&mut t, 0), 0);
        // Outside guest memory, straddling its end, and wrapping around 2^64.
        for base in [
            MEM_SIZE as u64,
            MEM_SIZE as u64 - 0x2000,
            1 << 40,
            u64::MAX - 0xfff,
        ] {
            t.setup_queue(0, 16, base);
            assert_eq!(ready(&mut t, 0), 0, "base {base:#x}");
        }
        // A queue that does not exist.
        t.setup_queue(5, 16, 0x10000);
        assert_eq!(t.r(REG_QUEUE_READY), 0);
        // Valid.
        t.setup_queue(0, 16, 0x10000);
        assert_eq!(ready(&mut t, 0), 1);
        // A ready queue cannot be changed.
        t.w(REG_QUEUE_SEL, 0);
        t.w(REG_QUEUE_NUM, 4);
        t.w(REG_QUEUE_DESC_LOW, 0x40000);
        // DRIVER_OK with queue 1 not ready: activation refused, DEVICE_NEEDS_RESET.
        t.driver_ok();
        assert_eq!(t.dev.lock().unwrap().activations, 0);
        assert_ne!(t.r(REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_ne!(t.r(REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
        // Reset and do it right.
        t.w(REG_STATUS, 0);
        assert_eq!(ready(&mut t, 0), 0, "reset clears queues");
        t.negotiate();
        t.setup_queue(0, 16, 0x10000);
        t.setup_queue(1, 8, 0x20000);
        t.driver_ok();
        assert!(t.t.activated());
        let d = t.dev.lock().unwrap();
        assert_eq!(d.activations, 1);
        assert_eq!(d.activated_queues[0], (16, 0x10000, 0x11000, 0x12000));
        assert_eq!(d.activated_queues[1], (8, 0x20000, 0x21000, 0x22000));
    }

    #[test]
    fn after_activation_queues_are_frozen_and_notify_and_interrupts_work() {
        let mut t = setup();
        t.negotiate();
        t.setup_queue(0, 16, 0x10000);
        t.setup_queue(1, 8, 0x20000);
        t.driver_ok();
        t.w(REG_QUEUE_SEL, 0);
        t.w(REG_QUEUE_NUM, 2);
        assert_eq!(t.t.queues[0].size, 16);
        // Notify fallback path (no ioeventfd in unit tests): bad index ignored.
        t.w(REG_QUEUE_NOTIFY, 1);
        t.w(REG_QUEUE_NOTIFY, 9);
        assert_eq!(t.notify[1].read().unwrap(), 1);
        assert!(t.notify[0].read().is_err());
        // Device interrupt: status bit set until acknowledged.
        let irq = t.dev.lock().unwrap().interrupt.clone().unwrap();
        irq.trigger(InterruptKind::Queue).unwrap();
        assert_eq!(t.r(REG_INTERRUPT_STATUS), INT_VRING);
        let gen = t.r(REG_CONFIG_GENERATION);
        irq.trigger(InterruptKind::Config).unwrap();
        assert_eq!(t.r(REG_CONFIG_GENERATION), gen + 1);
        t.w(REG_INTERRUPT_ACK, INT_VRING);
        assert_eq!(t.r(REG_INTERRUPT_STATUS), INT_CONFIG);
        // Writing DRIVER_OK again does not activate twice.
        t.driver_ok();
        assert_eq!(t.dev.lock().unwrap().activations, 1);
        // Reset reaches the device; a device that cannot reset needs a reset.
        t.w(REG_STATUS, 0);
        assert_eq!(t.dev.lock().unwrap().resets, 1);
        assert_eq!(t.r(REG_STATUS), 0);
        assert_eq!(t.r(REG_INTERRUPT_STATUS), 0);
        t.negotiate();
        t.setup_queue(0, 16, 0x10000);
        t.setup_queue(1, 8, 0x20000);
        t.driver_ok();
        t.dev.lock().unwrap().refuse_reset = true;
        t.w(REG_STATUS, 0);
        assert_ne!(t.r(REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
    }
}
