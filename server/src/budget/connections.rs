//! Open TCP connections, per client address and for the process.
//!
//! Every accepted connection takes a [`ConnectionPermit`] before anything
//! is read from it, and keeps it for as long as its socket lives (a
//! WebSocket after the upgrade included): the permit travels inside the
//! stream. Past the bound of its address, or the process's, a connection
//! is closed at once. Without this, 1,100 idle connections from one client
//! held the server's file descriptors and locked everyone out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bounds of [`ConnectionBudget`].
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Open connections in all.
    pub total: usize,
    /// Open connections from one address (an IPv4 host, or an IPv6 /64):
    /// room for an office of phones behind one NAT, not for a flood.
    pub per_address: usize,
    /// A TLS handshake must finish within this long.
    pub handshake: Duration,
    /// A request's headers must arrive within this long of the connection
    /// being ready for them, an idle keep-alive connection included: a
    /// client that sends a header line every 20 s is closed like a silent one.
    pub header_read: Duration,
    /// A request's body must arrive within this long (a handler that has
    /// started is never cut: it may have committed).
    pub request_body: Duration,
    /// A write the client takes no byte of for this long closes the
    /// connection (a client that stopped reading its answers).
    pub write_stall: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            total: 4096,
            per_address: 256,
            // Generous for lossy 2G: a handshake may need a few retransmits.
            handshake: Duration::from_secs(30),
            header_read: Duration::from_secs(15),
            request_body: Duration::from_secs(30),
            write_stall: Duration::from_secs(60),
        }
    }
}

impl ConnectionLimits {
    /// These limits, lowered to fit `descriptors` file descriptors with
    /// room left for the database, logs and the blocking pool.
    pub fn fitted_to(self, descriptors: u64) -> Self {
        let room = usize::try_from(descriptors.saturating_sub(128)).unwrap_or(usize::MAX);
        let total = self.total.min(room.max(16));
        ConnectionLimits {
            total,
            per_address: self.per_address.min(total),
            ..self
        }
    }
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionRefusal {
    #[error("too many connections from this address")]
    Address,
    #[error("too many connections to this server")]
    Process,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<String, usize>,
}

#[derive(Debug)]
struct Inner {
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
    refused: AtomicUsize,
}

/// The process's open connections. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ConnectionBudget {
    inner: Arc<Inner>,
}

/// An admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionPermit {
    inner: Arc<Inner>,
    address: String,
    /// Whether it still counts in its address's share.
    at_address: std::sync::atomic::AtomicBool,
}

impl ConnectionPermit {
    /// Stops counting in the address's share (an authenticated device's
    /// socket); it still counts in the process's.
    pub fn leave_address(&self) {
        if self.at_address.swap(false, Ordering::SeqCst)
            && let Ok(mut counts) = self.inner.counts.lock()
        {
            counts.leave_address(&self.address);
        }
    }
}

impl Counts {
    fn leave_address(&mut self, address: &str) {
        if let Some(n) = self.per_address.get_mut(address) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(address);
            }
        }
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.inner.counts.lock() {
            counts.total -= 1;
            if *self.at_address.get_mut() {
                counts.leave_address(&self.address);
            }
        }
    }
}

impl ConnectionBudget {
    pub fn new(limits: ConnectionLimits) -> Self {
        ConnectionBudget {
            inner: Arc::new(Inner {
                limits,
                counts: Mutex::new(Counts::default()),
                refused: AtomicUsize::new(0),
            }),
        }
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.inner.limits
    }

    /// Admits a connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionPermit, ConnectionRefusal> {
        let address = crate::auth::address_key(Some(ip));
        let mut counts = self
            .inner
            .counts
            .lock()
            .map_err(|_| ConnectionRefusal::Process)?;
        let refusal = if counts.total >= self.inner.limits.total {
            Some(ConnectionRefusal::Process)
        } else if counts.per_address.get(&address).copied().unwrap_or(0)
            >= self.inner.limits.per_address
        {
            Some(ConnectionRefusal::Address)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            return Err(refusal);
        }
        counts.total += 1;
        *counts.per_address.entry(address.clone()).or_default() += 1;
        Ok(ConnectionPermit {
            inner: self.inner.clone(),
            address,
            at_address: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.counts.lock().map(|c| c.total).unwrap_or(0)
    }

    /// Connections refused so far.
    pub fn refused(&self) -> usize {
        self.inner.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn bounded_per_address_and_in_all_and_freed_on_drop() {
        let budget = ConnectionBudget::new(ConnectionLimits {
            total: 3,
            per_address: 2,
            ..ConnectionLimits::default()
        });
        let a1 = budget.admit(ip(1)).expect("first");
        let _a2 = budget.admit(ip(1)).expect("second");
        assert_eq!(budget.admit(ip(1)).err(), Some(ConnectionRefusal::Address));
        let _b1 = budget.admit(ip(2)).expect("another address");
        assert_eq!(budget.admit(ip(3)).err(), Some(ConnectionRefusal::Process));
        assert_eq!(budget.open(), 3);
        drop(a1);
        let _c = budget.admit(ip(3)).expect("a place was freed");
        assert_eq!(budget.refused(), 2);
    }

    #[test]
    fn an_authenticated_socket_leaves_its_address_share_not_the_total() {
        let budget = ConnectionBudget::new(ConnectionLimits {
            total: 3,
            per_address: 1,
            ..ConnectionLimits::default()
        });
        let device = budget.admit(ip(1)).expect("first");
        assert_eq!(budget.admit(ip(1)).err(), Some(ConnectionRefusal::Address));
        device.leave_address();
        device.leave_address();
        let other = budget
            .admit(ip(1))
            .expect("the device's socket left the share");
        let _third = budget.admit(ip(2)).expect("room in the total");
        assert_eq!(
            budget.admit(ip(3)).err(),
            Some(ConnectionRefusal::Process),
            "the device's socket still counts in the total"
        );
        drop(device);
        drop(other);
        assert_eq!(budget.open(), 1);
        let _again = budget.admit(ip(1)).expect("address 1 is free again");
    }

    #[test]
    fn limits_fit_the_file_descriptors() {
        let fitted = ConnectionLimits::default().fitted_to(1024);
        assert_eq!(fitted.total, 896);
        assert_eq!(fitted.per_address, 256);
        let tiny = ConnectionLimits::default().fitted_to(10);
        assert_eq!(tiny.total, 16);
        assert_eq!(tiny.per_address, 16);
    }
}
