//! The period a rollup covers: a year, a quarter, a month or a date range.

use doorstep_protocol::{Date, Month};
use serde::{Deserialize, Serialize};

/// Query parameters naming a period; exactly one form must be given.
#[derive(Debug, Default, Deserialize)]
pub struct PeriodQuery {
    pub year: Option<String>,
    /// `2026-Q4`
    pub quarter: Option<String>,
    /// `2026-11`
    pub month: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// Inclusive dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Period {
    #[serde(serialize_with = "crate::store::serialize_display")]
    pub from: Date,
    #[serde(serialize_with = "crate::store::serialize_display")]
    pub to: Date,
}

fn last_day(month: Month) -> Date {
    let next = month.next().first_day().as_time();
    Date::from_time(next.previous_day().unwrap_or(next))
}

impl Period {
    pub fn year(year: i32) -> Option<Period> {
        Some(Period {
            from: Date::from_ymd(year, 1, 1)?,
            to: Date::from_ymd(year, 12, 31)?,
        })
    }

    pub fn month(month: Month) -> Period {
        Period {
            from: month.first_day(),
            to: last_day(month),
        }
    }

    /// The months the period touches, oldest first.
    pub fn months(&self) -> Vec<Month> {
        let mut months = vec![self.from.month()];
        while let Some(last) = months.last().copied() {
            if last >= self.to.month() {
                break;
            }
            months.push(last.next());
        }
        months
    }
}

/// The organisation's clock: China's, UTC+8 all year (no daylight saving).
/// Volunteers date their records by it.
pub const ORGANISATION_UTC_OFFSET_HOURS: i64 = 8;

/// The organisation's date at `now_ms` (milliseconds since the epoch).
pub fn organisation_today(now_ms: i64) -> Date {
    let local = now_ms.div_euclid(1000) + ORGANISATION_UTC_OFFSET_HOURS * 3600;
    let at = time::OffsetDateTime::from_unix_timestamp(local)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    Date::from_time(at.date())
}

/// The years a period may name (the error messages below spell them out). Four digits are required as well: `26`
/// is a typo for 2026, not the year 26, and a range from the year 1 would
/// walk twenty thousand empty months.
pub const YEARS: std::ops::RangeInclusive<i32> = 1900..=2100;

/// Why a query does not name a period; answered as a `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error(
        "give one period: year=YYYY, quarter=YYYY-Qn, month=YYYY-MM, or from=YYYY-MM-DD&to=YYYY-MM-DD"
    )]
    NotOne,
    #[error("year must be four digits from 1900 to 2100, as in year=2026; got {0:?}")]
    Year(String),
    #[error(
        "quarter must be YYYY-Qn with n from 1 to 4 and the year from 1900 to 2100, as in quarter=2026-Q4; got {0:?}"
    )]
    Quarter(String),
    #[error(
        "month must be YYYY-MM with the month from 01 to 12 and the year from 1900 to 2100, as in month=2026-11; got {0:?}"
    )]
    Month(String),
    #[error(
        "{field} must be a date YYYY-MM-DD with the year from 1900 to 2100, as in {field}=2026-11-20; got {value:?}"
    )]
    Date { field: &'static str, value: String },
    #[error("a date range needs both from and to")]
    HalfRange,
    #[error("the range ends before it starts")]
    Backwards,
}

/// A four-digit year within [`YEARS`]: no sign, no padding tricks.
fn year(text: &str) -> Option<i32> {
    if text.len() != 4 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|y| YEARS.contains(y))
}

/// Shows at most 32 characters of what was sent, so a huge parameter does
/// not come back whole in the error.
fn shown(text: &str) -> String {
    text.chars().take(32).collect()
}

impl TryFrom<&PeriodQuery> for Period {
    type Error = PeriodError;

    fn try_from(q: &PeriodQuery) -> Result<Self, Self::Error> {
        let given = [
            q.year.is_some(),
            q.quarter.is_some(),
            q.month.is_some(),
            q.from.is_some() || q.to.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(PeriodError::NotOne);
        }
        if let Some(text) = &q.year {
            return year(text)
                .and_then(Period::year)
                .ok_or_else(|| PeriodError::Year(shown(text)));
        }
        if let Some(quarter) = &q.quarter {
            let bad = || PeriodError::Quarter(shown(quarter));
            let (y, n) = quarter.split_once("-Q").ok_or_else(bad)?;
            let y = year(y).ok_or_else(bad)?;
            let n: u8 = match n {
                "1" | "2" | "3" | "4" => n.parse().map_err(|_| bad())?,
                _ => return Err(bad()),
            };
            let first = Month::new(y, (n - 1) * 3 + 1).ok_or_else(bad)?;
            return Ok(Period {
                from: first.first_day(),
                to: last_day(first.next().next()),
            });
        }
        if let Some(text) = &q.month {
            let month: Month = text.parse().map_err(|_| PeriodError::Month(shown(text)))?;
            if !YEARS.contains(&month.year()) {
                return Err(PeriodError::Month(shown(text)));
            }
            return Ok(Period::month(month));
        }
        let (Some(from), Some(to)) = (&q.from, &q.to) else {
            return Err(PeriodError::HalfRange);
        };
        let date = |field: &'static str, text: &str| {
            text.parse::<Date>()
                .ok()
                .filter(|d| YEARS.contains(&d.month().year()))
                .ok_or_else(|| PeriodError::Date {
                    field,
                    value: shown(text),
                })
        };
        let period = Period {
            from: date("from", from)?,
            to: date("to", to)?,
        };
        if period.to < period.from {
            return Err(PeriodError::Backwards);
        }
        Ok(period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(f: impl FnOnce(&mut PeriodQuery)) -> Result<Period, PeriodError> {
        let mut query = PeriodQuery::default();
        f(&mut query);
        Period::try_from(&query)
    }

    #[test]
    fn the_organisations_day_turns_at_midnight_in_china() {
        // 2026-12-06 15:59:59 UTC is 23:59:59 in Beijing; a second later
        // it is the 7th there, and still the 6th in UTC.
        let before = 1_796_572_799_000;
        assert_eq!(organisation_today(before).to_string(), "2026-12-06");
        assert_eq!(organisation_today(before + 1000).to_string(), "2026-12-07");
    }

    #[test]
    fn periods_parse() {
        let quarter = q(|q| q.quarter = Some("2026-Q4".into())).expect("quarter");
        assert_eq!(
            (quarter.from.to_string(), quarter.to.to_string()),
            ("2026-10-01".into(), "2026-12-31".into())
        );
        let feb = q(|q| q.month = Some("2028-02".into())).expect("month");
        assert_eq!(feb.to.to_string(), "2028-02-29");
        assert_eq!(
            q(|q| q.year = Some("2026".into()))
                .expect("year")
                .months()
                .len(),
            12
        );
        assert!(q(|_| {}).is_err());
        assert!(
            q(|q| {
                q.year = Some("2026".into());
                q.month = Some("2026-01".into());
            })
            .is_err()
        );
        assert!(q(|q| q.quarter = Some("2026-Q5".into())).is_err());
        // Years are four digits within YEARS, in every form.
        for bad in [
            "26",
            "+2026",
            "0026",
            "20266",
            "1899",
            "2101",
            " 2026",
            "２０２６",
        ] {
            assert!(
                matches!(q(|q| q.year = Some(bad.into())), Err(PeriodError::Year(_))),
                "{bad}"
            );
        }
        for bad in ["26-Q1", "+026-Q1", "2026-Q0", "2026-Q+1", "2026-Q01"] {
            assert!(
                matches!(
                    q(|q| q.quarter = Some(bad.into())),
                    Err(PeriodError::Quarter(_))
                ),
                "{bad}"
            );
        }
        for bad in [
            "26-11", "2026-13", "2026-00", "2026-1", "0026-11", "2999-01",
        ] {
            assert!(
                matches!(
                    q(|q| q.month = Some(bad.into())),
                    Err(PeriodError::Month(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            q(|q| {
                q.from = Some("0001-01-01".into());
                q.to = Some("2026-01-01".into());
            }),
            Err(PeriodError::Date { field: "from", .. })
        ));
        assert!(q(|q| q.year = Some("1900".into())).is_ok());
        assert!(q(|q| q.year = Some("2100".into())).is_ok());
        assert!(
            q(|q| {
                q.from = Some("2026-02-01".into());
                q.to = Some("2026-01-01".into());
            })
            .is_err()
        );
    }
}
