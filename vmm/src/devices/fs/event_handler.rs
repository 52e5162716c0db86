//! virtio-fs's event-loop hook.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::{Fs, NUM_QUEUES};
use crate::virtio::Event;

impl MutEventSubscriber for Fs {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.state.queue_events.process(&events, ops).event {
            // The driver may have queued requests before we were listening.
            Event::Activate => (0..NUM_QUEUES).for_each(|index| self.process_queue(index)),
            Event::Queue(index) => self.process_queue(index),
            Event::Stale | Event::Other => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.state.queue_events.init(ops);
    }
}
