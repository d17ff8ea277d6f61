//! Per-device message rate: a token bucket that slows a fast sender down
//! instead of dropping what it sent (nothing a device sends is lost; a
//! flooding device just waits).
//!
//! The bucket belongs to the device, not to a connection, and outlives its
//! connections: reconnecting does not refill it (it did, so a flooding
//! device reset its rate by reconnecting).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use doorstep_protocol::DeviceId;

/// Buckets idle this long are full again anyway, and are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Every device's bucket.
#[derive(Debug)]
pub struct MessageRates {
    per_second: u32,
    burst: u32,
    buckets: Mutex<HashMap<DeviceId, TokenBucket>>,
}

impl MessageRates {
    pub fn new(per_second: u32, burst: u32) -> Self {
        MessageRates {
            per_second,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one message of `device` at `now`; returns how long it must wait
    /// before the message is handled.
    pub fn take(&self, device: DeviceId, now: Instant) -> Duration {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Duration::ZERO;
        };
        if buckets.len() >= 1024 && !buckets.contains_key(&device) {
            buckets.retain(|_, b| {
                b.updated
                    .is_some_and(|u| now.saturating_duration_since(u) < FORGET_AFTER)
            });
        }
        buckets
            .entry(device)
            .or_insert_with(|| TokenBucket::new(self.per_second, self.burst))
            .take(now)
    }
}

/// Allows `burst` messages at once and `per_second` sustained.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    updated: Option<Instant>,
}

impl TokenBucket {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            per_second: f64::from(per_second.max(1)),
            burst,
            tokens: burst,
            updated: None,
        }
    }

    /// Takes one token; returns how long to wait before the message may be
    /// handled (zero when a token was there).
    pub fn take(&mut self, now: Instant) -> Duration {
        if let Some(updated) = self.updated {
            let elapsed = now.saturating_duration_since(updated).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        }
        self.updated = Some(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_keeps_its_bucket_across_connections() {
        let rates = MessageRates::new(10, 2);
        let device = DeviceId::new_v7();
        let now = Instant::now();
        assert_eq!(rates.take(device, now), Duration::ZERO);
        assert_eq!(rates.take(device, now), Duration::ZERO);
        // Whatever connection the next message comes on, the bucket is empty.
        assert!(rates.take(device, now) > Duration::ZERO);
        assert_eq!(rates.take(DeviceId::new_v7(), now), Duration::ZERO);
    }

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 3);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Duration::ZERO);
        }
        let wait = bucket.take(start);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // After a second the bucket has refilled up to the burst, no further.
        let later = start + Duration::from_secs(1);
        for _ in 0..3 {
            assert_eq!(bucket.take(later), Duration::ZERO);
        }
        assert!(bucket.take(later) > Duration::ZERO);
    }
}
