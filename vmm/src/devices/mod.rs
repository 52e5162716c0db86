//! Device models. Each virtio device is a folder (Firecracker's shape): `device.rs` holds a
//! [`crate::virtio::VirtioState`] and implements [`crate::virtio::WithVirtioState`] (which
//! gives the transport its `VirtioDevice`), `request.rs` (or `packet.rs` for vsock) parses and
//! serves what the guest put in a chain, and `event_handler.rs` is its
//! `event_manager::MutEventSubscriber`, served by the event loop behind a virtio-mmio transport.
//! [`legacy`] holds COM1 and the i8042.

pub mod block;
pub mod console;
pub mod fs;
pub mod legacy;
pub mod net;
pub mod rng;
pub mod vsock;
