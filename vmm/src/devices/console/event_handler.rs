//! virtio-console's event-loop hook: queue notifications and host input readiness.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::{Console, TX_QUEUE};
use crate::virtio::Event;

impl MutEventSubscriber for Console {
    fn init(&mut self, ops: &mut EventOps) {
        self.state.queue_events.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut notify = false;
        match self.state.queue_events.process(&events, ops).event {
            // On activation too: the driver may have queued output before we were listening.
            Event::Activate | Event::Queue(TX_QUEUE) => notify |= self.process_tx(),
            // RX: new buffers, served below.
            Event::Queue(_) | Event::Stale => {}
            Event::Other => {
                if self
                    .input
                    .as_ref()
                    .is_some_and(|i| i.as_raw_fd() == events.fd())
                {
                    self.input_ready = true;
                }
            }
        }
        let input = self.process_rx();
        notify |= input.notify;
        if input.eof {
            // A level-triggered fd at EOF would wake us forever: stop watching it.
            self.drop_input(ops);
        }
        self.sync_input(ops);
        if notify {
            if let Some(a) = self.state.active.as_ref() {
                a.signal_used("virtio-console");
            }
        }
    }
}
