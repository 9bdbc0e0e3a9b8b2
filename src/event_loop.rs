//! The VM's one event loop: epoll over device eventfds, the TAP fds and
//! stdin, on a thread of its own, until the VM's exit signal fires.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

/// Anything the loop serves.
pub(crate) type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Ends the loop when the VM's exit eventfd fires.
struct ExitWatcher {
    evt: EventFd,
    done: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("event loop cannot watch the exit eventfd: {e:?}");
            self.done.store(true, Ordering::SeqCst);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.evt.as_raw_fd() {
            self.done.store(true, Ordering::SeqCst);
        }
    }
}

/// Errors starting the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// epoll or eventfd setup failed.
    #[error("event loop setup failed: {0:?}")]
    Setup(event_manager::Error),
    /// Duplicating the exit eventfd failed.
    #[error("event loop setup failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A loop ready to run on its own thread.
pub(crate) struct EventLoop {
    manager: EventManager<Subscriber>,
    done: Arc<AtomicBool>,
}

impl EventLoop {
    /// A loop that ends once `exit_evt` (the VM's exit eventfd) is readable.
    pub(crate) fn new(exit_evt: &EventFd, subscribers: Vec<Subscriber>) -> Result<Self, EventLoopError> {
        let mut manager = EventManager::<Subscriber>::new().map_err(EventLoopError::Setup)?;
        let done = Arc::new(AtomicBool::new(false));
        let watcher = ExitWatcher { evt: exit_evt.try_clone()?, done: done.clone() };
        manager.add_subscriber(Arc::new(Mutex::new(watcher)));
        for s in subscribers {
            manager.add_subscriber(s);
        }
        Ok(EventLoop { manager, done })
    }

    /// Serves events until the exit eventfd fires.
    pub(crate) fn run(mut self) {
        while !self.done.load(Ordering::SeqCst) {
            if let Err(e) = self.manager.run_with_timeout(-1) {
                log::error!("event loop failed: {e:?}");
                break;
            }
        }
    }
}
