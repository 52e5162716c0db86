//! virtio-net's event-loop hook: queue notifications, the TAP, the rate limiters' timers.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::{Net, RX_QUEUE};
use crate::virtio::Event;

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        self.state.queue_events.init(ops);
        // Listened to only while the device can use it (see `update_tap_interest`).
        if let Err(e) = ops.add(Events::new(&self.tap, EventSet::empty())) {
            tracing::error!("virtio-net: registering the TAP: {e}");
            self.tap_failed = true;
        }
        for l in [&self.rx.limiter, &self.tx.limiter].into_iter().flatten() {
            if let Err(e) = ops.add(Events::new(l.timer(), EventSet::IN)) {
                tracing::error!("virtio-net: registering a rate limiter timer: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let turn = self.state.queue_events.process(&events, ops);
        if turn.reset {
            self.end_session();
        }
        let fd = events.fd();
        match turn.event {
            Event::Activate => self.start_session(),
            // New rx buffers: a held frame may go now.
            Event::Queue(RX_QUEUE) => self.rx.waiting_for_buffers = false,
            Event::Queue(_) | Event::Stale => {}
            Event::Other if fd == self.tap.as_raw_fd() => {
                let set = events.event_set();
                if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    tracing::error!("virtio-net: the TAP reported {set:?}; no more traffic");
                    self.tap_failed = true;
                }
                if set.contains(EventSet::OUT) {
                    self.tx.waiting_for_tap = false;
                }
            }
            Event::Other => {
                for l in [&mut self.rx.limiter, &mut self.tx.limiter]
                    .into_iter()
                    .flatten()
                {
                    if fd == l.timer_fd() {
                        l.on_timer();
                    }
                }
            }
        }
        let notify_tx = self.process_tx();
        let notify_rx = self.process_rx();
        self.update_tap_interest(ops);
        if notify_tx || notify_rx {
            if let Some(a) = self.state.active.as_ref() {
                a.signal_used("virtio-net");
            }
        }
    }
}

impl Net {
    /// Listens on the TAP for what the device can act on now, and never for what it cannot
    /// (a readable TAP with no guest buffer would wake a level-triggered loop forever).
    fn update_tap_interest(&mut self, ops: &mut EventOps) {
        if self.tap_failed {
            if !self.tap_interest.is_empty() || !self.tap_removed {
                let _ = ops.remove(Events::empty(&self.tap));
                self.tap_removed = true;
                self.tap_interest = EventSet::empty();
            }
            return;
        }
        let want = self.wanted_tap_events();
        if want != self.tap_interest {
            match ops.modify(Events::new(&self.tap, want)) {
                Ok(()) => self.tap_interest = want,
                Err(e) => tracing::error!("virtio-net: TAP interest {want:?}: {e}"),
            }
        }
    }
}
