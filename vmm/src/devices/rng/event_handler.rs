//! virtio-rng's event-loop hook.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::Rng;
use crate::virtio::Event;

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        self.state.queue_events.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.state.queue_events.process(&events, ops).event {
            // On activation too: the driver may have queued requests before we were listening.
            Event::Activate | Event::Queue(_) => {
                self.process_queue();
            }
            Event::Stale | Event::Other => {}
        }
    }
}
