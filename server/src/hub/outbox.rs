//! A connection's queue of messages to send, bounded in bytes.
//!
//! A count bound lets 4,096 whole-document messages pile up behind a slow
//! phone; a byte bound is what memory cares about. The bytes come from the
//! connection's [`OutboxShare`] of the process's budget, which also bounds
//! all of its device's sockets together and the whole process
//! ([`crate::budget::outboxes`]). A sync message that does not fit means
//! the connection is too far behind: the document drops that peer and the
//! connection closes, to resume from its sync state. An ephemeral message
//! that does not fit is dropped: ephemeral messages are lossy by contract.
//! Ephemeral payloads are shared, not copied, between the queues of the
//! peers they go to.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use doorstep_protocol::{DocumentId, PeerId};
use tokio::sync::Notify;

use crate::budget::OutboxShare;

/// Something the hub asks a connection to send.
#[derive(Debug)]
pub enum Outbound {
    Sync {
        document_id: DocumentId,
        data: Vec<u8>,
    },
    Ephemeral(Arc<Ephemeral>),
}

/// An ephemeral message as relayed to every other peer of a document.
#[derive(Debug)]
pub struct Ephemeral {
    pub sender_id: PeerId,
    pub document_id: DocumentId,
    pub count: u64,
    pub session_id: String,
    pub data: Vec<u8>,
}

impl Outbound {
    fn bytes(&self) -> usize {
        match self {
            Outbound::Sync { data, .. } => data.len(),
            Outbound::Ephemeral(e) => e.data.len() + e.session_id.len(),
        }
    }
}

/// Ephemeral messages may take this fraction (1/N) of the capacity.
const EPHEMERAL_SHARE: usize = 8;

/// The message did not fit.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

#[derive(Debug, Default)]
struct Queue {
    messages: VecDeque<Outbound>,
    bytes: usize,
    /// Of `bytes`, the ephemeral ones: they have a budget of their own, so
    /// a flood of them can never crowd out a sync message (which would
    /// drop an honest peer as "too far behind").
    ephemeral_bytes: usize,
}

/// A message taken off the queue and being sent. Its bytes stay taken from
/// the budget until this is dropped, after the socket took the frame (or
/// the connection ended): a socket that stops reading holds the message it
/// was being sent, and that must count, or every stalled socket of every
/// device holds one message more than the budget knows of.
#[derive(Debug)]
pub struct InFlight<'a> {
    outbox: &'a Outbox,
    counted: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.counted > 0 {
            self.outbox.share.give_back(self.counted);
        }
    }
}

/// A byte-bounded queue with one consumer (the connection's send loop).
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    ready: Notify,
    /// This connection's bound, for the ephemeral share.
    capacity: usize,
    share: OutboxShare,
}

impl Outbox {
    pub fn new(share: OutboxShare, capacity_bytes: usize) -> Self {
        Outbox {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            capacity: capacity_bytes,
            share,
        }
    }

    /// Queues a message if the budget has room for it. One message larger
    /// than the connection's bound still goes through an empty queue, or a
    /// large document could never be sent. An ephemeral payload is shared
    /// between the queues it goes to, so it counts only in this
    /// connection's ephemeral share, not again in its device's and the
    /// process's for every peer.
    pub fn push(&self, message: Outbound) -> Result<(), Full> {
        let size = message.bytes();
        let ephemeral = matches!(message, Outbound::Ephemeral(_));
        {
            let mut queue = self.queue.lock().map_err(|_| Full)?;
            if ephemeral {
                if queue.ephemeral_bytes.saturating_add(size) > self.capacity / EPHEMERAL_SHARE {
                    return Err(Full);
                }
            } else if !self.share.take(size, queue.bytes == queue.ephemeral_bytes) {
                return Err(Full);
            }
            queue.bytes += size;
            if ephemeral {
                queue.ephemeral_bytes += size;
            }
            queue.messages.push_back(message);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The next message, waiting for one if the queue is empty, with the
    /// guard that keeps its bytes in the budget until the socket took it.
    pub async fn pop(&self) -> (Outbound, InFlight<'_>) {
        loop {
            if let Some(popped) = self.try_pop() {
                return popped;
            }
            self.ready.notified().await;
        }
    }

    fn try_pop(&self) -> Option<(Outbound, InFlight<'_>)> {
        let mut queue = self.queue.lock().ok()?;
        let message = queue.messages.pop_front()?;
        queue.bytes -= message.bytes();
        let counted = if matches!(message, Outbound::Ephemeral(_)) {
            queue.ephemeral_bytes -= message.bytes();
            0
        } else {
            message.bytes()
        };
        Some((
            message,
            InFlight {
                outbox: self,
                counted,
            },
        ))
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().map(|q| q.bytes).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{OutboxBudget, OutboxLimits};
    use doorstep_protocol::DeviceId;

    /// An outbox bounded at `capacity` bytes, alone in a large budget.
    fn outbox(capacity: usize) -> Outbox {
        let budget = OutboxBudget::new(OutboxLimits {
            per_connection: capacity,
            per_device: usize::MAX / 4,
            total: usize::MAX / 4,
        });
        Outbox::new(budget.share(DeviceId::new_v7()), capacity)
    }

    fn sync(len: usize) -> Outbound {
        Outbound::Sync {
            document_id: DocumentId::from_bytes([1; 16]),
            data: vec![0; len],
        }
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_first_in_first_out() {
        let outbox = outbox(100);
        outbox.push(sync(60)).expect("fits");
        outbox.push(sync(40)).expect("fits exactly");
        assert_eq!(outbox.push(sync(1)), Err(Full));
        assert_eq!(outbox.queued_bytes(), 100);
        let (sending, in_flight) = outbox.pop().await;
        match sending {
            Outbound::Sync { data, .. } => assert_eq!(data.len(), 60),
            other => panic!("unexpected {other:?}"),
        }
        // Until the socket has taken it, the message being sent counts.
        assert_eq!(outbox.push(sync(50)), Err(Full));
        drop(in_flight);
        outbox.push(sync(50)).expect("room again");
        assert_eq!(outbox.queued_bytes(), 90);
    }

    #[tokio::test]
    async fn ephemeral_floods_never_crowd_out_sync_messages() {
        let outbox = outbox(800);
        let ephemeral = |len| {
            Outbound::Ephemeral(Arc::new(Ephemeral {
                sender_id: PeerId::new("p").expect("peer"),
                document_id: DocumentId::from_bytes([1; 16]),
                count: 1,
                session_id: String::new(),
                data: vec![0; len],
            }))
        };
        outbox.push(ephemeral(100)).expect("within its share");
        assert_eq!(outbox.push(ephemeral(1)), Err(Full), "its share is 1/8");
        outbox.push(sync(700)).expect("sync has the whole capacity");
    }

    #[tokio::test]
    async fn a_shared_ephemeral_payload_is_not_counted_again_for_every_peer() {
        let budget = OutboxBudget::new(OutboxLimits {
            per_connection: 8000,
            per_device: 8000,
            total: 1000,
        });
        let payload = Arc::new(Ephemeral {
            sender_id: PeerId::new("p").expect("peer"),
            document_id: DocumentId::from_bytes([1; 16]),
            count: 1,
            session_id: String::new(),
            data: vec![0; 900],
        });
        let peers: Vec<Outbox> = (0..100)
            .map(|_| Outbox::new(budget.share(DeviceId::new_v7()), 8000))
            .collect();
        for peer in &peers {
            peer.push(Outbound::Ephemeral(payload.clone()))
                .expect("within the peer's ephemeral share");
        }
        assert_eq!(budget.queued(), 0, "the process total holds no copies");
        peers[0].push(sync(500)).expect("sync messages still fit");
    }

    #[tokio::test]
    async fn one_oversized_message_passes_an_empty_queue_only() {
        let outbox = outbox(10);
        outbox.push(sync(1000)).expect("empty queue takes it");
        assert_eq!(outbox.push(sync(1)), Err(Full));
        // While that one is being written, the queue is empty again: the
        // next large message goes too (a slow phone taking a big document
        // is not dropped by the next edit), and nothing after it.
        let in_flight = outbox.pop().await;
        outbox.push(sync(1000)).expect("the queue is empty");
        assert_eq!(outbox.push(sync(1)), Err(Full));
        drop(in_flight);
        drop(outbox.pop().await);
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn pop_waits_for_a_push() {
        let outbox = Arc::new(outbox(10));
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.pop().await.0 }
        });
        tokio::task::yield_now().await;
        outbox.push(sync(3)).expect("fits");
        let got = waiter.await.expect("joined");
        assert!(matches!(got, Outbound::Sync { data, .. } if data.len() == 3));
    }
}
