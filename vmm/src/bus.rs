//! Address-range dispatch for port I/O and MMIO exits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the device's range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
#[error("bus range {start:#x}+{len:#x} overlaps another device")]
pub struct OverlapError {
    pub start: u64,
    pub len: u64,
}

type Entry = (u64, Arc<Mutex<dyn BusDevice>>);

/// Non-overlapping ranges → devices. Immutable once the vCPUs run (shared through an `Arc`).
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

/// The ranges only: the devices are trait objects behind locks.
impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.devices
                    .iter()
                    .map(|(start, (len, _))| format!("{start:#x}+{len:#x}")),
            )
            .finish()
    }
}

impl Bus {
    pub fn insert(
        &mut self,
        dev: Arc<Mutex<dyn BusDevice>>,
        start: u64,
        len: u64,
    ) -> Result<(), OverlapError> {
        let end = start.checked_add(len).ok_or(OverlapError { start, len })?;
        if len == 0
            || self.lookup(start).is_some()
            || self.devices.range(start..end).next().is_some()
        {
            return Err(OverlapError { start, len });
        }
        self.devices.insert(start, (len, dev));
        Ok(())
    }

    fn lookup(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (start, (len, dev)) = self.devices.range(..=addr).next_back()?;
        (addr - start < *len).then_some((addr - start, dev))
    }

    /// Returns false when no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.lookup(addr) {
            Some((off, dev)) => {
                dev.lock().expect("bus device lock").read(off, data);
                true
            }
            None => false,
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.lookup(addr) {
            Some((off, dev)) => {
                dev.lock().expect("bus device lock").write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, u8)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset.to_le_bytes()[0]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let mut bus = Bus::default();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert!(bus.insert(dev.clone(), 0x3f0, 9).is_err());
        assert!(bus.insert(dev.clone(), 0x3ff, 1).is_err());
        assert!(bus.insert(dev.clone(), 0x3f8, 0).is_err());
        assert!(bus.insert(dev.clone(), u64::MAX, 2).is_err());
        bus.insert(dev.clone(), 0x400, 1).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 2);
        assert!(!bus.read(0x3f7, &mut b));
        assert!(!bus.read(0x401, &mut b));
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(dev.lock().unwrap().0, vec![(7, 9)]);
    }
}
