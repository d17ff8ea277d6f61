//! The date the device goes by: the server's, as learned at the last
//! exchange with it, not the phone's own clock.
//!
//! A phone's clock may be anything (set to 1970 after a flat battery, or
//! months ahead by hand). The server refuses a record dated past next month
//! by *its* clock, so the device bounds dates by the server's time: every
//! response from the server carries its time (HTTP `Date`, on the enroll
//! answer and on the sync WebSocket's upgrade), kept with the monotonic
//! instant it arrived, so a later change of the phone's clock does not
//! move it. Across restarts the offset from the phone's clock is kept in
//! the store and used until the next exchange. Never synced: the phone's
//! clock, as before.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use time::OffsetDateTime;

/// The phone's own clock. Tests inject one; apps keep the default.
#[derive(Clone)]
pub struct DeviceClock {
    now: Arc<dyn Fn() -> OffsetDateTime + Send + Sync>,
}

impl DeviceClock {
    /// The system clock.
    pub fn system() -> DeviceClock {
        DeviceClock::from_fn(OffsetDateTime::now_utc)
    }

    /// A clock that reads `now` (for tests: a phone set to any date).
    pub fn from_fn(now: impl Fn() -> OffsetDateTime + Send + Sync + 'static) -> DeviceClock {
        DeviceClock { now: Arc::new(now) }
    }

    pub fn now(&self) -> OffsetDateTime {
        (self.now)()
    }
}

impl Default for DeviceClock {
    fn default() -> Self {
        DeviceClock::system()
    }
}

impl std::fmt::Debug for DeviceClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceClock")
    }
}

/// The server's time as last heard, and the offset kept in the store.
#[derive(Debug, Default)]
pub(crate) struct ServerTime {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The last `Date` the server sent and when it arrived.
    heard: Option<Heard>,
    /// Whether `heard` is already in the store as an offset.
    heard_stored: bool,
    /// The server's time minus the phone's, in seconds, as stored.
    stored_offset: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
struct Heard {
    date: OffsetDateTime,
    /// When it arrived, by two clocks: the monotonic one stops while a
    /// phone sleeps (Android's and iOS's uptime clocks), the system one does
    /// not but can be set. Time since is the larger of the two, so a month
    /// asleep offline does not leave the server's date a month behind.
    at: Instant,
    at_system: SystemTime,
}

impl Heard {
    fn elapsed(&self) -> std::time::Duration {
        let system = SystemTime::now()
            .duration_since(self.at_system)
            .unwrap_or_default();
        self.at.elapsed().max(system)
    }
}

/// A `Date` outside these years is a broken server or a proxy's page, not
/// the time: it is ignored rather than let it refuse every edit.
const PLAUSIBLE_YEARS: std::ops::RangeInclusive<i32> = 2020..=2200;

/// A stored offset closer than this to a new one is not rewritten: the
/// `Date` header has one-second resolution and the request its latency.
const STORE_WHEN_MOVED_SECS: i64 = 60;

impl ServerTime {
    /// Takes the server's time from a successful response's `Date` header,
    /// if it has a plausible one. An error page (a proxy's 502, a captive
    /// portal) is not the server speaking.
    pub fn note(&self, status: reqwest::StatusCode, headers: &reqwest::header::HeaderMap) {
        if !(status.is_success() || status == reqwest::StatusCode::SWITCHING_PROTOCOLS) {
            return;
        }
        let Some(date) = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .map(OffsetDateTime::from)
            .filter(|date| PLAUSIBLE_YEARS.contains(&date.year()))
        else {
            return;
        };
        if let Ok(mut state) = self.state.lock() {
            state.heard = Some(Heard {
                date,
                at: Instant::now(),
                at_system: SystemTime::now(),
            });
            state.heard_stored = false;
        }
    }

    /// The offset found in the store at open.
    pub fn set_stored_offset(&self, offset: Option<i64>) {
        if let Ok(mut state) = self.state.lock() {
            state.stored_offset = offset;
        }
    }

    /// The server's time now, by the last `Date` heard (plus the time
    /// since) or else the phone's clock plus the stored offset; and the
    /// offset to store, when it moved.
    pub fn now(&self, device: &DeviceClock) -> (OffsetDateTime, Option<i64>) {
        let device_now = device.now();
        let Ok(mut state) = self.state.lock() else {
            return (device_now, None);
        };
        match state.heard {
            Some(heard) => {
                let now = heard.date + heard.elapsed();
                let offset = (now - device_now).whole_seconds();
                let moved = state
                    .stored_offset
                    .is_none_or(|stored| (stored - offset).abs() >= STORE_WHEN_MOVED_SECS);
                let store = (!state.heard_stored && moved).then_some(offset);
                state.heard_stored = true;
                if store.is_some() {
                    state.stored_offset = store;
                }
                (now, store)
            }
            None => {
                let offset = state.stored_offset.unwrap_or(0);
                let now = device_now
                    .checked_add(time::Duration::seconds(offset))
                    .unwrap_or(device_now);
                (now, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date_header(text: &str) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::DATE, text.parse().expect("a header value"));
        headers
    }

    #[test]
    fn the_server_date_wins_over_a_phone_clock_in_1970_and_is_stored_once() {
        let phone = DeviceClock::from_fn(|| OffsetDateTime::UNIX_EPOCH);
        let time = ServerTime::default();
        assert_eq!(time.now(&phone), (OffsetDateTime::UNIX_EPOCH, None));
        time.note(
            reqwest::StatusCode::OK,
            &date_header("Sun, 06 Dec 2026 21:00:00 GMT"),
        );
        let (now, store) = time.now(&phone);
        assert_eq!(now.year(), 2026);
        let offset = store.expect("a new offset to store");
        assert!(offset > 1_700_000_000);
        assert_eq!(time.now(&phone).1, None, "stored once");

        // After a restart: no date heard yet, the stored offset applies.
        let restarted = ServerTime::default();
        restarted.set_stored_offset(Some(offset));
        let (now, store) = restarted.now(&phone);
        assert_eq!((now.year(), now.month() as u8, now.day()), (2026, 12, 6));
        assert_eq!(store, None);
    }

    #[test]
    fn a_malformed_or_missing_date_changes_nothing() {
        let phone = DeviceClock::from_fn(|| OffsetDateTime::UNIX_EPOCH);
        let time = ServerTime::default();
        time.note(reqwest::StatusCode::OK, &date_header("yesterday"));
        time.note(reqwest::StatusCode::OK, &reqwest::header::HeaderMap::new());
        // A proxy's error page, and a date no server keeps.
        time.note(
            reqwest::StatusCode::BAD_GATEWAY,
            &date_header("Sun, 06 Dec 2026 21:00:00 GMT"),
        );
        time.note(
            reqwest::StatusCode::OK,
            &date_header("Fri, 01 Jan 2300 00:00:00 GMT"),
        );
        time.note(
            reqwest::StatusCode::OK,
            &date_header("Thu, 01 Jan 1981 00:00:00 GMT"),
        );
        assert_eq!(time.now(&phone), (OffsetDateTime::UNIX_EPOCH, None));
    }

    #[test]
    fn a_huge_stored_offset_does_not_overflow() {
        let phone = DeviceClock::from_fn(|| OffsetDateTime::UNIX_EPOCH);
        let time = ServerTime::default();
        time.set_stored_offset(Some(i64::MAX));
        assert_eq!(time.now(&phone).0, OffsetDateTime::UNIX_EPOCH);
    }
}
