//! virtio-vsock's event-loop hook: queue notifications, host sockets, the deadline timer.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::{Vsock, TX_QUEUE};
use crate::virtio::Event;

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        self.state.queue_events.init(ops);
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            tracing::error!("vsock: registering timerfd: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let turn = self.state.queue_events.process(&events, ops);
        if turn.reset {
            // Every host stream of the old session goes, before any of its events is handled.
            self.muxer.teardown(ops);
        }
        let fd = events.fd();
        let mut notify = false;
        match turn.event {
            Event::Activate => {
                if self.state.active.is_some() {
                    self.muxer.register_listener(ops);
                }
                // The driver may have queued packets before its eventfds were registered.
                notify |= self.process_tx();
            }
            Event::Queue(TX_QUEUE) => notify |= self.process_tx(),
            // RX: new buffers, served below. EVENT: the device never posts events (there is no
            // migration), so its buffers just stay with us.
            Event::Queue(_) | Event::Stale => {}
            Event::Other if fd == self.timer.as_raw_fd() => {
                let _ = self.timer.wait();
                self.muxer.on_timer(ops);
            }
            Event::Other if fd == self.muxer.listener_fd() => self.muxer.accept(ops),
            Event::Other => self.muxer.on_host_event(fd, events.event_set(), ops),
        }
        notify |= self.process_rx();
        self.muxer.sync(ops);
        self.update_timer();
        if notify {
            if let Some(a) = self.state.active.as_ref() {
                a.signal_used("vsock");
            }
        }
    }
}
