//! Places devices on the machine (Firecracker's `device_manager`): the legacy PC devices on the
//! port I/O bus ([`legacy`]), virtio devices behind virtio-mmio transports with their MMIO
//! windows, irqfds, ioeventfds and `virtio_mmio.device=` command line entries ([`mmio`]), and
//! every device's event-loop subscription.

mod legacy;
mod mmio;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::VmFd;
use linux_loader::cmdline::Cmdline;

use crate::bus::Bus;
use crate::config::{SerialConfig, VmConfig};
use crate::devices;
use crate::stdin::{self, StdinTarget};
use crate::virtio::GuestMemory;
use crate::Error;

/// What the event loop serves.
pub(crate) type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The buses, the event loop's subscribers and the command line as devices are added.
pub(crate) struct DeviceManager {
    pub pio: Bus,
    pub mmio: Bus,
    pub events: EventManager<Subscriber>,
    pub cmdline: Cmdline,
    /// virtio-mmio slots used so far (each slot is one window and one irq).
    virtio_count: usize,
}

impl DeviceManager {
    pub fn new(cmdline: Cmdline) -> Result<DeviceManager, Error> {
        Ok(DeviceManager {
            pio: Bus::default(),
            mmio: Bus::default(),
            events: EventManager::<Subscriber>::new().map_err(Error::EventLoop)?,
            cmdline,
            virtio_count: 0,
        })
    }

    pub fn add_subscriber(&mut self, s: Subscriber) {
        self.events.add_subscriber(s);
    }

    /// The virtio devices `config` asks for, in a fixed order (block, fs, net, vsock, console, rng),
    /// which fixes their MMIO slots and irqs.
    pub fn attach_virtio_devices(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemory,
        config: &VmConfig,
        stdin: StdinTarget,
    ) -> Result<(), Error> {
        for blk in &config.blk {
            let dev = devices::block::Block::new(&blk.path, blk.read_only).map_err(|source| {
                Error::Block {
                    path: blk.path.clone(),
                    source,
                }
            })?;
            self.attach_virtio(vm, mem, dev)?;
        }
        for fs in &config.fs {
            let cache = if fs.shared {
                devices::fs::CacheMode::Shared
            } else {
                devices::fs::CacheMode::Exclusive
            };
            let dev = devices::fs::Fs::with_cache(&fs.tag, &fs.dir, fs.read_only, cache).map_err(
                |source| Error::Fs {
                    tag: fs.tag.clone(),
                    source,
                },
            )?;
            self.attach_virtio(vm, mem, dev)?;
        }
        for (index, net) in config.nets.iter().enumerate() {
            let dev = devices::net::Net::from_config(net)
                .map_err(|source| Error::Net { index, source })?;
            self.attach_virtio(vm, mem, dev)?;
        }
        if let Some(v) = &config.vsock {
            let dev = devices::vsock::Vsock::new(v.guest_cid, &v.uds_path)?;
            self.attach_virtio(vm, mem, dev)?;
        }
        if let Some(out) = &config.console {
            let input = match stdin {
                StdinTarget::Console => Some(stdin::duplicate()?),
                StdinTarget::Serial | StdinTarget::None => None,
            };
            let output =
                output(out).map_err(|(path, source)| Error::ConsoleOutput { path, source })?;
            let dev = devices::console::Console::new(output, input)?;
            self.attach_virtio(vm, mem, dev)?;
        }
        if config.rng {
            let dev = devices::rng::Rng::new()?;
            self.attach_virtio(vm, mem, dev)?;
        }
        Ok(())
    }
}

/// Where serial or console output goes; a file that cannot be opened comes back with its path.
fn output(cfg: &SerialConfig) -> Result<Box<dyn Write + Send>, (PathBuf, io::Error)> {
    Ok(match cfg {
        SerialConfig::Stdout => Box::new(io::stdout()),
        SerialConfig::Stderr => Box::new(io::stderr()),
        SerialConfig::None => Box::new(io::sink()),
        SerialConfig::File(p) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| (p.clone(), e))?,
        ),
    })
}
