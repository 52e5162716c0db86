//! virtio devices behind virtio-mmio transports: slot `i` is the 4 KiB window at
//! `VIRTIO_MMIO_START + i * VIRTIO_MMIO_SIZE` on irq `DEVICE_IRQS[i]`.

use std::sync::{Arc, Mutex};

use event_manager::{MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::DeviceManager;
use crate::arch::{self, layout};
use crate::virtio::mmio::{MmioInterrupt, MmioTransport, MMIO_WINDOW, REG_QUEUE_NOTIFY};
use crate::virtio::{GuestMemory, VirtioDevice};
use crate::Error;

impl DeviceManager {
    /// Puts `dev` behind a virtio-mmio transport in the next free slot: ioeventfds, irqfd, bus
    /// window, event loop, and a `virtio_mmio.device=` command line entry.
    pub fn attach_virtio<D>(&mut self, vm: &VmFd, mem: &GuestMemory, dev: D) -> Result<(), Error>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let idx = self.virtio_count;
        let irq = *arch::DEVICE_IRQS
            .get(idx)
            .ok_or(Error::TooManyDevices(arch::DEVICE_IRQS.len()))?;
        let base = layout::VIRTIO_MMIO_START + idx as u64 * layout::VIRTIO_MMIO_SIZE;
        let queues = dev.queue_max_sizes().len();
        let dev = Arc::new(Mutex::new(dev));
        let mut queue_events = Vec::with_capacity(queues);
        for q in 0..queues {
            let evt = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
            vm.register_ioevent(
                &evt,
                &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
                u32::try_from(q).expect("a device has a few queues"),
            )
            .map_err(|e| Error::Kvm("KVM_IOEVENTFD", e))?;
            queue_events.push(evt);
        }
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
        vm.register_irqfd(&irq_evt, irq)
            .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
        let transport = MmioTransport::new(
            dev.clone(),
            mem.clone(),
            Arc::new(MmioInterrupt::new(irq_evt)),
            queue_events,
        );
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), base, MMIO_WINDOW)?;
        self.events.add_subscriber(dev);
        self.cmdline
            .add_virtio_mmio_device(MMIO_WINDOW, GuestAddress(base), irq, None)?;
        self.virtio_count += 1;
        Ok(())
    }
}
