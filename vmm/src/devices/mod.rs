//! virtio device models. Each is a plain struct implementing `crate::virtio::VirtioDevice` and
//! `event_manager::MutEventSubscriber`, served by the event loop behind a virtio-mmio transport.

pub mod block;
pub mod console;
pub mod fs;
pub mod legacy;
pub mod rng;
pub mod vsock;
