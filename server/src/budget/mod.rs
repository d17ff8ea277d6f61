//! Budgets: the one owner of every bound on what a principal or the whole
//! process may take.
//!
//! The rule: every expensive or durable action takes from a budget here
//! *before* it starts, keyed by the principal that asks (a device, a client
//! address, a source of refusals) and bounded for the process as well. A
//! per-socket or per-call bound is not a budget: a device opens many
//! sockets, an attacker uses many addresses. Round two of review found
//! each of these decided at one call site (argon2 for logins but not for
//! activations, outboxes per socket, rates reset by reconnecting); here
//! they are decided once, and every path goes through [`Budgets`].
//!
//! ```text
//! passwords    argon2: a few at once, round-robin by address, bounded waiting
//! claims       one use at a time of each one-time code
//! connections  TCP connections per address and in all; header and handshake deadlines
//! outboxes     bytes queued to send, per connection, per device and in all
//! rates        messages per second per device, across its connections
//! refusals     which refusals reach the audit log: once per kind and source
//! ```
//!
//! A device's live sync sockets are bounded by
//! [`BudgetLimits::sockets_per_device`]; the hub, where every socket is
//! registered, closes the oldest past it.

pub mod claims;
pub mod connections;
pub mod outboxes;
pub mod passwords;
pub mod rates;
pub mod refusals;

use std::sync::Arc;

pub use claims::{CodeClaim, CodeClaims};
pub use connections::{ConnectionBudget, ConnectionLimits, ConnectionPermit, ConnectionRefusal};
pub use outboxes::{OutboxBudget, OutboxLimits, OutboxShare};
pub use passwords::{Busy, PasswordLimits, PasswordPermit, PasswordWork};
pub use rates::MessageRates;
pub use refusals::{RefusalLimits, RefusalLog, Verdict};

/// Every bound, with defaults that run a district on one 2-core machine.
#[derive(Clone, Copy, Debug)]
pub struct BudgetLimits {
    pub passwords: PasswordLimits,
    pub connections: ConnectionLimits,
    pub outboxes: OutboxLimits,
    /// Live `/sync` sockets of one device; a phone needs one, two while it
    /// reconnects. Past it the oldest is closed (it is the one most likely
    /// dead behind a changed network).
    pub sockets_per_device: usize,
    /// Sustained sync messages per second per device; faster senders are
    /// slowed, not dropped.
    pub messages_per_second: u32,
    /// Messages a device may send in a burst before it is slowed.
    pub message_burst: u32,
    pub refusals: RefusalLimits,
}

impl Default for BudgetLimits {
    fn default() -> Self {
        BudgetLimits {
            passwords: PasswordLimits::default(),
            connections: ConnectionLimits::default(),
            outboxes: OutboxLimits::default(),
            sockets_per_device: 4,
            messages_per_second: 200,
            message_burst: 2000,
            refusals: RefusalLimits::default(),
        }
    }
}

/// The process's budgets. Cheap to clone; clones share every counter.
#[derive(Clone, Debug)]
pub struct Budgets {
    limits: BudgetLimits,
    pub passwords: PasswordWork,
    pub codes: CodeClaims,
    pub connections: ConnectionBudget,
    pub outboxes: Arc<OutboxBudget>,
    pub rates: Arc<MessageRates>,
    pub refusals: Arc<RefusalLog>,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets::new(BudgetLimits::default())
    }
}

impl Budgets {
    pub fn new(limits: BudgetLimits) -> Self {
        Budgets {
            limits,
            passwords: PasswordWork::new(limits.passwords),
            codes: CodeClaims::default(),
            connections: ConnectionBudget::new(limits.connections),
            outboxes: Arc::new(OutboxBudget::new(limits.outboxes)),
            rates: Arc::new(MessageRates::new(
                limits.messages_per_second,
                limits.message_burst,
            )),
            refusals: Arc::new(RefusalLog::new(limits.refusals)),
        }
    }

    pub fn limits(&self) -> &BudgetLimits {
        &self.limits
    }
}
