//! Which repeated events are written to the audit log.
//!
//! A refusal that anyone can provoke (a spent enrollment code presented
//! again, a wrong activation code, a failed login), or an event a device
//! repeats by reconnecting (opening its roster), is recorded once per
//! kind and source within an interval, and the process records at most
//! `per_minute` of them in all; what is not recorded is counted, and the
//! next recorded row says how many were left out. An append-only log that
//! anonymous requests can grow is a disk-filling attack otherwise.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The bounds of [`RefusalLog`].
#[derive(Clone, Copy, Debug)]
pub struct RefusalLimits {
    /// One row per kind and source within this long.
    pub interval: Duration,
    /// Rows per minute in all.
    pub per_minute: u32,
}

impl Default for RefusalLimits {
    fn default() -> Self {
        RefusalLimits {
            interval: Duration::from_secs(600),
            per_minute: 120,
        }
    }
}

/// Whether to write a refusal, and how many like it were left out since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Record { left_out: u64 },
    Skip,
}

impl Verdict {
    /// The audit detail to write for a refusal, with how many were left
    /// out since the last recorded one; `None` when it is not written.
    pub fn detail(self, detail: impl Into<String>) -> Option<String> {
        match self {
            Verdict::Skip => None,
            Verdict::Record { left_out: 0 } => Some(detail.into()),
            Verdict::Record { left_out } => Some(format!(
                "{}; {left_out} similar refusals since the last recorded one were not recorded",
                detail.into()
            )),
        }
    }
}

/// What a kind of event has used of its minute.
#[derive(Debug, Default)]
struct Minute {
    minute: i64,
    recorded: u32,
    left_out: u64,
}

#[derive(Debug, Default)]
struct State {
    last: HashMap<(String, String), i64>,
    /// Per kind: a flood of one kind (anonymous wrong usernames) must not
    /// use up the rows of another (guesses at a real account).
    minutes: HashMap<String, Minute>,
}

/// The process's record of recorded refusals.
#[derive(Debug)]
pub struct RefusalLog {
    limits: RefusalLimits,
    state: Mutex<State>,
}

impl RefusalLog {
    pub fn new(limits: RefusalLimits) -> Self {
        RefusalLog {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether an event of `kind` from `source` at `now_ms` is written:
    /// once per kind and source within the interval, and at most
    /// `per_minute` of the kind. For events anyone can provoke anonymously.
    pub fn verdict(&self, kind: &str, source: &str, now_ms: i64) -> Verdict {
        self.judge(kind, source, now_ms, true)
    }

    /// Like [`RefusalLog::verdict`] without the per-minute cap, for events
    /// about a known account or device: each source is bounded by its own
    /// interval, and a flood of anonymous events can never crowd them out.
    pub fn verdict_for_known(&self, kind: &str, source: &str, now_ms: i64) -> Verdict {
        self.judge(kind, source, now_ms, false)
    }

    fn judge(&self, kind: &str, source: &str, now_ms: i64, capped: bool) -> Verdict {
        let Ok(mut state) = self.state.lock() else {
            return Verdict::Skip;
        };
        let interval = i64::try_from(self.limits.interval.as_millis()).unwrap_or(i64::MAX);
        if state.last.len() > 100_000 {
            state
                .last
                .retain(|_, at| now_ms.saturating_sub(*at) < interval);
        }
        let minute = now_ms.div_euclid(60_000);
        let key = (kind.to_owned(), source.to_owned());
        let repeated = state
            .last
            .get(&key)
            .is_some_and(|at| now_ms.saturating_sub(*at) < interval);
        let of_kind = state.minutes.entry(kind.to_owned()).or_default();
        if of_kind.minute != minute {
            of_kind.minute = minute;
            of_kind.recorded = 0;
        }
        if repeated || (capped && of_kind.recorded >= self.limits.per_minute) {
            of_kind.left_out += 1;
            return Verdict::Skip;
        }
        of_kind.recorded += 1;
        let left_out = std::mem::take(&mut of_kind.left_out);
        state.last.insert(key, now_ms);
        Verdict::Record { left_out }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_kind_and_source_within_the_interval() {
        let log = RefusalLog::new(RefusalLimits {
            interval: Duration::from_secs(60),
            per_minute: 100,
        });
        assert_eq!(
            log.verdict("enroll", "code-a", 0),
            Verdict::Record { left_out: 0 }
        );
        assert_eq!(log.verdict("enroll", "code-a", 1_000), Verdict::Skip);
        assert_eq!(log.verdict("enroll", "code-a", 2_000), Verdict::Skip);
        assert_eq!(
            log.verdict("enroll", "code-b", 3_000),
            Verdict::Record { left_out: 2 }
        );
        assert_eq!(
            log.verdict("login", "code-a", 3_000),
            Verdict::Record { left_out: 0 }
        );
        assert_eq!(
            log.verdict("enroll", "code-a", 61_000),
            Verdict::Record { left_out: 0 }
        );
    }

    #[test]
    fn at_most_per_minute_rows_of_a_kind_and_known_sources_are_never_crowded_out() {
        let log = RefusalLog::new(RefusalLimits {
            interval: Duration::from_secs(600),
            per_minute: 3,
        });
        let recorded = (0..1000)
            .filter(|i| {
                matches!(
                    log.verdict("login", &format!("10.0.{i}"), 5_000),
                    Verdict::Record { .. }
                )
            })
            .count();
        assert_eq!(recorded, 3);
        // Another kind has its own minute.
        assert_eq!(
            log.verdict("user.activate", "code", 5_000),
            Verdict::Record { left_out: 0 }
        );
        // An event about a known account is recorded whatever the flood.
        assert_eq!(
            log.verdict_for_known("login", "admin|10.1.1.1", 5_000),
            Verdict::Record { left_out: 997 }
        );
        assert_eq!(
            log.verdict_for_known("login", "admin|10.1.1.1", 6_000),
            Verdict::Skip
        );
        assert_eq!(
            log.verdict("login", "10.9.9.9", 65_000),
            Verdict::Record { left_out: 1 }
        );
    }
}
