//! Bytes queued to send, per connection, per device and for the process.
//!
//! Each connection's outbox ([`crate::hub::Outbox`]) takes its bytes from
//! an [`OutboxShare`]: its own bound, its device's (all of that device's
//! sockets together) and the process's. One device's hundred sockets that
//! stop reading could otherwise each queue a copy of every change (3 x 4 MB
//! notes took the server from 50 MB to 2.2 GB).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use doorstep_protocol::DeviceId;

/// The bounds of [`OutboxBudget`], in bytes.
#[derive(Clone, Copy, Debug)]
pub struct OutboxLimits {
    pub per_connection: usize,
    pub per_device: usize,
    pub total: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            per_connection: 64 * 1024 * 1024,
            per_device: 96 * 1024 * 1024,
            total: 512 * 1024 * 1024,
        }
    }
}

/// A counter of queued bytes against a bound.
#[derive(Debug)]
struct Pool {
    used: AtomicUsize,
    limit: usize,
}

impl Pool {
    fn new(limit: usize) -> Self {
        Pool {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Takes `bytes` if they fit (or `always`), atomically.
    fn take(&self, bytes: usize, always: bool) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.saturating_add(bytes);
                (always || after <= self.limit).then_some(after)
            })
            .is_ok()
    }

    /// Takes `bytes` if they fit under `ceiling` (not the pool's limit).
    fn take_within(&self, bytes: usize, ceiling: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.saturating_add(bytes);
                (after <= ceiling).then_some(after)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// The process's queued bytes and each device's.
#[derive(Debug)]
pub struct OutboxBudget {
    limits: OutboxLimits,
    total: Arc<Pool>,
    devices: Mutex<HashMap<DeviceId, Weak<Pool>>>,
}

impl OutboxBudget {
    pub fn new(limits: OutboxLimits) -> Self {
        OutboxBudget {
            limits,
            total: Arc::new(Pool::new(limits.total)),
            devices: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    /// The share a new connection of `device` queues against.
    pub fn share(&self, device: DeviceId) -> OutboxShare {
        let of_device = match self.devices.lock() {
            Ok(mut devices) => {
                let live = devices.get(&device).and_then(Weak::upgrade);
                match live {
                    Some(pool) => pool,
                    None => {
                        devices.retain(|_, pool| pool.strong_count() > 0);
                        let pool = Arc::new(Pool::new(self.limits.per_device));
                        devices.insert(device, Arc::downgrade(&pool));
                        pool
                    }
                }
            }
            // A poisoned map still bounds this connection by its own pool.
            Err(_) => Arc::new(Pool::new(self.limits.per_device)),
        };
        OutboxShare {
            connection: Pool::new(self.limits.per_connection),
            device: of_device,
            total: self.total.clone(),
        }
    }

    /// Bytes queued in the whole process now.
    pub fn queued(&self) -> usize {
        self.total.used()
    }
}

/// One connection's place in the budget. Bytes it holds when dropped are
/// given back.
#[derive(Debug)]
pub struct OutboxShare {
    connection: Pool,
    device: Arc<Pool>,
    total: Arc<Pool>,
}

impl OutboxShare {
    /// Takes `bytes` from the connection's, the device's and the process's
    /// bounds, or from none. A connection with nothing queued (`empty`: a
    /// message still being written does not count, or a slow phone taking
    /// a large document would be dropped by the next edit) may exceed its
    /// own and its device's bound by one message (a document larger than
    /// the bound must still be sendable), and the process's up to twice
    /// it: an honest change fanned out to many slow peers is queued rather
    /// than dropping each of them, while the hard ceiling holds.
    pub fn take(&self, bytes: usize, empty: bool) -> bool {
        let fits_total = if empty {
            self.total
                .take_within(bytes, self.total.limit.saturating_mul(2))
        } else {
            self.total.take(bytes, false)
        };
        if !fits_total {
            return false;
        }
        if !self.device.take(bytes, empty) {
            self.total.give_back(bytes);
            return false;
        }
        if !self.connection.take(bytes, empty) {
            self.device.give_back(bytes);
            self.total.give_back(bytes);
            return false;
        }
        true
    }

    pub fn give_back(&self, bytes: usize) {
        self.connection.give_back(bytes);
        self.device.give_back(bytes);
        self.total.give_back(bytes);
    }

    /// Bytes this connection has queued.
    pub fn queued(&self) -> usize {
        self.connection.used()
    }
}

impl Drop for OutboxShare {
    fn drop(&mut self) {
        let left = self.connection.used();
        self.device.give_back(left);
        self.total.give_back(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(per_connection: usize, per_device: usize, total: usize) -> OutboxBudget {
        OutboxBudget::new(OutboxLimits {
            per_connection,
            per_device,
            total,
        })
    }

    #[test]
    fn a_devices_sockets_share_one_bound() {
        let budget = budget(100, 150, 1000);
        let device = DeviceId::new_v7();
        let a = budget.share(device);
        let b = budget.share(device);
        assert!(a.take(100, true));
        assert!(b.take(50, true));
        assert!(!b.take(1, false), "the device's 150 are used");
        let other = budget.share(DeviceId::new_v7());
        assert!(other.take(100, true), "another device has its own");
        a.give_back(100);
        assert!(b.take(50, false));
        assert_eq!(budget.queued(), 200);
    }

    #[test]
    fn an_empty_queue_takes_one_large_message_up_to_twice_the_process_bound() {
        let budget = budget(10, 10, 100);
        let device = DeviceId::new_v7();
        let a = budget.share(device);
        assert!(a.take(60, true), "empty: one oversized message goes");
        assert!(!a.take(1, false), "not empty any more");
        let b = budget.share(device);
        assert!(
            b.take(90, true),
            "empty: past the process bound, within twice it"
        );
        let c = budget.share(DeviceId::new_v7());
        assert!(!c.take(51, true), "never past twice the process bound");
        assert!(c.take(50, true));
        drop(a);
        assert_eq!(budget.queued(), 140, "a dropped share gives its bytes back");
    }
}
