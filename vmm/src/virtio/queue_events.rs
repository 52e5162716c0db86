//! The eventfd bookkeeping every device shares: getting a session's queue eventfds into the
//! event loop after `activate`, and out of it again after `reset`.
//!
//! `activate` and `reset` run on a vCPU thread without the loop's `EventOps`, so they only
//! hand eventfds over and write the activate eventfd; the loop does the (de)registration on its
//! next turn. One behaviour for every device: a reset session's queue eventfds leave the loop
//! on the very next turn. Until then they stay open (an fd closed while still registered can
//! neither be removed nor read, and the transport's other dups keep it signalling, so a
//! level-triggered loop would spin on it), and they are never matched as the live session's:
//! a live queue event must carry its queue index as epoll data *and* the live fd number.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ActivateError;

/// What one loop event meant, once [`QueueEvents::process`] did the bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The activate eventfd: the live session's queue eventfds (if any) are registered now. The
    /// driver may have queued buffers before they were, so serve the queues.
    Activate,
    /// Queue `index` of the live session was notified; its eventfd is already read.
    Queue(usize),
    /// A queue eventfd of a dead session, taken out of the loop this turn: nothing to serve.
    Stale,
    /// Not one of ours: a backend fd of the device.
    Other,
}

/// The outcome of one loop turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// A session ended since the last turn (its queue eventfds are out of the loop now); a
    /// device drops any other per-session fds it registered.
    pub reset: bool,
    pub event: Event,
}

/// Owns the activate eventfd and the queue eventfds of the live and of reset sessions.
#[derive(Debug)]
pub struct QueueEvents {
    /// Names the device in logs and errors.
    device: &'static str,
    activate_evt: EventFd,
    /// The live session's queue eventfds, in queue-index order.
    live: Vec<EventFd>,
    /// Whether the loop registered `live` (never set while it is empty); reset drops
    /// unregistered eventfds at once.
    registered: bool,
    /// Registered eventfds of ended sessions, open until the loop removes them.
    stale: Vec<EventFd>,
    /// A session ended and the loop has not seen it yet.
    reset_pending: bool,
}

impl QueueEvents {
    pub fn new(device: &'static str) -> std::io::Result<QueueEvents> {
        Ok(QueueEvents {
            device,
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            live: Vec::new(),
            registered: false,
            stale: Vec::new(),
            reset_pending: false,
        })
    }

    /// Loop side, from `MutEventSubscriber::init`: listens for activations and resets.
    pub fn init(&self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!("{}: registering the activate eventfd: {e}", self.device);
        }
    }

    /// vCPU side: `queue_events` (in queue-index order) become the live session, registered on
    /// the loop's next turn. A session still live is ended first, as by [`Self::reset`].
    pub fn activate(&mut self, queue_events: Vec<EventFd>) -> Result<(), ActivateError> {
        if !self.live.is_empty() {
            self.end_session();
        }
        self.live = queue_events;
        self.kick()
    }

    /// vCPU side: ends the live session; the loop deregisters its eventfds on its next turn.
    pub fn reset(&mut self) {
        self.end_session();
        // Fails only with the counter full, that is readable: the loop's turn comes anyway.
        let _ = self.kick();
    }

    /// Loop side, first thing in `MutEventSubscriber::process`.
    pub fn process(&mut self, events: &Events, ops: &mut EventOps) -> Turn {
        let fd = events.fd();
        let reset = std::mem::take(&mut self.reset_pending);
        let mut was_stale = false;
        for evt in self.stale.drain(..) {
            was_stale |= evt.as_raw_fd() == fd;
            // Also drops its events still queued in this batch.
            if let Err(e) = ops.remove(Events::empty(&evt)) {
                tracing::debug!("{}: removing a reset queue eventfd: {e}", self.device);
            }
        }
        let event = if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            self.register(ops);
            Event::Activate
        } else if was_stale {
            Event::Stale
        } else if let Some(index) = self.live_index(events) {
            let _ = self.live[index].read();
            Event::Queue(index)
        } else {
            Event::Other
        };
        Turn { reset, event }
    }

    fn live_index(&self, events: &Events) -> Option<usize> {
        if !self.registered {
            return None;
        }
        let index = events.data() as usize;
        let evt = self.live.get(index)?;
        (evt.as_raw_fd() == events.fd()).then_some(index)
    }

    fn register(&mut self, ops: &mut EventOps) {
        // A turn after a reset has nothing to register (and must not mark the next session).
        if self.registered || self.live.is_empty() {
            return;
        }
        for (index, evt) in self.live.iter().enumerate() {
            let index = u32::try_from(index).expect("virtio-mmio caps queue counts far below u32");
            if let Err(e) = ops.add(Events::with_data(evt, index, EventSet::IN)) {
                tracing::error!("{}: registering queue {index}'s eventfd: {e}", self.device);
            }
        }
        // Even after a partial failure: reset then removes whichever did register.
        self.registered = true;
    }

    fn end_session(&mut self) {
        let live = std::mem::take(&mut self.live);
        if std::mem::take(&mut self.registered) {
            self.stale.extend(live);
        }
        self.reset_pending = true;
    }

    fn kick(&self) -> Result<(), ActivateError> {
        self.activate_evt
            .write(1)
            .map_err(|source| ActivateError::Kick {
                device: self.device,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberId, SubscriberOps};

    use super::*;

    /// A device that only records what the helper made of each event.
    struct Recorder {
        queues: QueueEvents,
        turns: Vec<Turn>,
    }

    impl MutEventSubscriber for Recorder {
        fn init(&mut self, ops: &mut EventOps) {
            self.queues.init(ops);
        }
        fn process(&mut self, events: Events, ops: &mut EventOps) {
            let turn = self.queues.process(&events, ops);
            self.turns.push(turn);
        }
    }

    struct Loop {
        mgr: EventManager<Arc<Mutex<Recorder>>>,
        dev: Arc<Mutex<Recorder>>,
        id: SubscriberId,
        /// What the transport keeps: the eventfds the guest's notifies signal.
        kicks: Vec<EventFd>,
    }

    impl Loop {
        fn new(queues: usize) -> Loop {
            let dev = Arc::new(Mutex::new(Recorder {
                queues: QueueEvents::new("test").unwrap(),
                turns: Vec::new(),
            }));
            let mut mgr = EventManager::<Arc<Mutex<Recorder>>>::new().unwrap();
            let id = mgr.add_subscriber(dev.clone());
            let kicks = (0..queues)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect();
            Loop {
                mgr,
                dev,
                id,
                kicks,
            }
        }

        /// Activates with fresh dups of the transport's eventfds, as the transport does.
        fn activate(&self) {
            let dups = self.kicks.iter().map(|k| k.try_clone().unwrap()).collect();
            self.dev.lock().unwrap().queues.activate(dups).unwrap();
        }

        /// Activates and lets the loop register the session.
        fn start(&mut self) {
            self.activate();
            assert_eq!(self.run(), [ACTIVATED]);
        }

        fn reset(&self) {
            self.dev.lock().unwrap().queues.reset();
        }

        /// Runs until idle; returns the turns seen.
        fn run(&mut self) -> Vec<Turn> {
            while self.mgr.run_with_timeout(20).unwrap() > 0 {}
            std::mem::take(&mut self.dev.lock().unwrap().turns)
        }

        /// Whether the loop has nothing to report.
        fn idle(&mut self) -> bool {
            self.mgr.run_with_timeout(20).unwrap() == 0
        }

        /// Notifies queue `index` and returns the turns that produced.
        fn notify(&mut self, index: usize) -> Vec<Turn> {
            self.kicks[index].write(1).unwrap();
            self.run()
        }
    }

    /// The activation turn, and the one that follows a reset.
    const ACTIVATED: Turn = Turn {
        reset: false,
        event: Event::Activate,
    };
    const RESET: Turn = Turn {
        reset: true,
        event: Event::Activate,
    };

    fn queue(index: usize) -> Turn {
        Turn {
            reset: false,
            event: Event::Queue(index),
        }
    }

    #[test]
    fn activate_registers_the_queue_eventfds() {
        let mut l = Loop::new(3);
        l.start();
        for index in [2, 0, 1] {
            assert_eq!(l.notify(index), [queue(index)]);
        }
        // Each was read by the helper: a level-triggered loop is idle again.
        assert!(l.idle());
    }

    #[test]
    fn reset_deregisters_on_the_next_turn() {
        let mut l = Loop::new(2);
        l.start();
        l.reset();
        assert_eq!(l.dev.lock().unwrap().queues.stale.len(), 2);
        assert_eq!(l.run(), [RESET]);
        assert!(l.dev.lock().unwrap().queues.stale.is_empty());
        // The transport's eventfds still signal, but nothing of the old session is polled.
        l.kicks.iter().for_each(|k| k.write(1).unwrap());
        assert!(l.idle());
    }

    #[test]
    fn a_notified_dead_session_is_neither_served_nor_left_polled() {
        let mut l = Loop::new(1);
        l.start();
        // Notified, then reset before the loop ran: that event is in the same batch as the
        // reset's, in either order.
        l.kicks[0].write(1).unwrap();
        l.reset();
        let turns = l.run();
        assert!(turns.iter().all(|t| !matches!(t.event, Event::Queue(_))));
        assert!(turns[0].reset);
        // Still signalled and never read: registered, it would wake the loop forever.
        assert!(l.idle());
    }

    #[test]
    fn reactivation_after_reset_serves_only_the_new_session() {
        let mut l = Loop::new(2);
        l.start();
        for _ in 0..2 {
            // One notify, one event: the old session's dups of the same eventfds are gone.
            assert_eq!(l.notify(1), [queue(1)]);
            l.reset();
            assert_eq!(l.run(), [RESET]);
            l.start();
        }
        // Reset and re-activation within one vCPU exit: the loop swaps them in one turn.
        l.reset();
        l.activate();
        assert_eq!((l.run(), l.notify(0)), (vec![RESET], vec![queue(0)]));
    }

    #[test]
    fn reset_before_the_loop_ran() {
        let mut l = Loop::new(2);
        l.activate();
        l.reset();
        {
            // Never registered: dropped at once, nothing left for the loop to remove.
            let dev = l.dev.lock().unwrap();
            assert!(dev.queues.live.is_empty() && dev.queues.stale.is_empty());
        }
        assert_eq!(l.run(), [RESET]);
        assert!(l.notify(0).is_empty());
        // Unread, it would (rightly) show up as soon as the next session registers.
        l.kicks[0].read().unwrap();
        l.start();
        assert_eq!(l.notify(0), [queue(0)]);
    }

    #[test]
    fn foreign_fds_are_left_to_the_device() {
        let mut l = Loop::new(1);
        l.start();
        let backend = EventFd::new(EFD_NONBLOCK).unwrap();
        l.mgr
            .event_ops(l.id)
            .unwrap()
            .add(Events::new(&backend, EventSet::IN))
            .unwrap();
        backend.write(1).unwrap();
        assert_eq!(
            l.mgr.run_with_timeout(20).unwrap(),
            1,
            "backend event delivered"
        );
        assert_eq!(
            l.dev.lock().unwrap().turns,
            [Turn {
                reset: false,
                event: Event::Other
            }]
        );
    }
}
