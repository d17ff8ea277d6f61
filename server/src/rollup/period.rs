//! The period a rollup covers: a year, a quarter, a month, a holiday
//! campaign or a date range; and the periods an office compares it with.

use doorstep_protocol::{Date, Month};
use serde::{Deserialize, Serialize};

use super::calendar::Holiday;

/// Query parameters naming a period; exactly one form must be given.
#[derive(Debug, Default, Deserialize)]
pub struct PeriodQuery {
    pub year: Option<String>,
    /// `2026-Q4`
    pub quarter: Option<String>,
    /// `2026-11`
    pub month: Option<String>,
    /// `2027-spring-festival`: the weeks before a holiday (see [`Holiday`]).
    pub campaign: Option<String>,
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

/// A period as an office names it. It knows its neighbours: the period
/// before it and the same period a year earlier, which the dashboard shows
/// beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedPeriod {
    Year(i32),
    Quarter(i32, u8),
    Month(Month),
    Campaign(Holiday, i32),
    Range(Period),
}

/// A period to compare with: its dates, and the query that asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeriodRef {
    pub query: String,
    #[serde(flatten)]
    pub period: Period,
}

/// `date` moved by whole years, 29 February becoming the 28th.
fn years_earlier(date: Date, years: i32) -> Option<Date> {
    let d = date.as_time();
    let year = d.year() - years;
    Date::from_ymd(year, d.month() as u8, d.day())
        .or_else(|| Date::from_ymd(year, d.month() as u8, d.day() - 1))
}

impl NamedPeriod {
    /// The dates, or `None` for a campaign the lunar tables do not reach.
    pub fn period(&self) -> Option<Period> {
        match *self {
            NamedPeriod::Year(y) => Period::year(y),
            NamedPeriod::Quarter(y, n) => {
                let first = Month::new(y, (n - 1) * 3 + 1)?;
                Some(Period {
                    from: first.first_day(),
                    to: last_day(first.next().next()),
                })
            }
            NamedPeriod::Month(m) => Some(Period::month(m)),
            NamedPeriod::Campaign(holiday, y) => holiday.campaign(y),
            NamedPeriod::Range(period) => Some(period),
        }
    }

    /// The dates of a period parsed from a query: every form has them once
    /// parsed (a campaign's year was checked against the lunar tables).
    pub fn dates(&self) -> Result<Period, PeriodError> {
        self.period()
            .ok_or_else(|| PeriodError::Campaign(self.query()))
    }

    /// The query string that names this period, as the API takes it.
    pub fn query(&self) -> String {
        match self {
            NamedPeriod::Year(y) => format!("year={y}"),
            NamedPeriod::Quarter(y, n) => format!("quarter={y}-Q{n}"),
            NamedPeriod::Month(m) => format!("month={m}"),
            NamedPeriod::Campaign(h, y) => format!("campaign={y}-{}", h.slug()),
            NamedPeriod::Range(p) => format!("from={}&to={}", p.from, p.to),
        }
    }

    /// The period just before: the previous year, quarter or month; for a
    /// campaign or a range, as many days just before it (the ordinary weeks
    /// a campaign stands out from).
    pub fn previous(&self) -> Option<NamedPeriod> {
        let named = match *self {
            NamedPeriod::Year(y) => NamedPeriod::Year(y - 1),
            NamedPeriod::Quarter(y, 1) => NamedPeriod::Quarter(y - 1, 4),
            NamedPeriod::Quarter(y, n) => NamedPeriod::Quarter(y, n - 1),
            NamedPeriod::Month(m) => NamedPeriod::Month(m.previous()),
            NamedPeriod::Campaign(..) | NamedPeriod::Range(_) => {
                let period = self.period()?;
                let (from, to) = (period.from.as_time(), period.to.as_time());
                let days = (to - from).whole_days() + 1;
                NamedPeriod::Range(Period {
                    from: Date::from_time(from.checked_sub(time::Duration::days(days))?),
                    to: Date::from_time(from.previous_day()?),
                })
            }
        };
        named.within_years()
    }

    /// The same period a year earlier: last year's campaign for a campaign
    /// (on last year's lunar date), the same dates for a range.
    pub fn year_earlier(&self) -> Option<NamedPeriod> {
        let named = match *self {
            NamedPeriod::Year(y) => NamedPeriod::Year(y - 1),
            NamedPeriod::Quarter(y, n) => NamedPeriod::Quarter(y - 1, n),
            NamedPeriod::Month(m) => NamedPeriod::Month(Month::new(m.year() - 1, m.month())?),
            NamedPeriod::Campaign(h, y) => NamedPeriod::Campaign(h, y - 1),
            NamedPeriod::Range(p) => NamedPeriod::Range(Period {
                from: years_earlier(p.from, 1)?,
                to: years_earlier(p.to, 1)?,
            }),
        };
        named.within_years()
    }

    /// Itself, if its dates exist and lie within [`YEARS`].
    fn within_years(self) -> Option<NamedPeriod> {
        let period = self.period()?;
        (YEARS.contains(&period.from.month().year()) && YEARS.contains(&period.to.month().year()))
            .then_some(self)
    }

    /// A reference to this period, for a comparison.
    pub fn reference(&self) -> Option<PeriodRef> {
        Some(PeriodRef {
            query: self.query(),
            period: self.period()?,
        })
    }
}

/// Why a query does not name a period; answered as a `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error(
        "give one period: year=YYYY, quarter=YYYY-Qn, month=YYYY-MM, campaign=YYYY-HOLIDAY, or from=YYYY-MM-DD&to=YYYY-MM-DD"
    )]
    NotOne,
    #[error(
        "campaign must be YYYY-HOLIDAY with HOLIDAY one of spring-festival, july-first, mid-autumn, national-day and the year from 1901 to 2100, as in campaign=2027-spring-festival; got {0:?}"
    )]
    Campaign(String),
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
        NamedPeriod::try_from(q)?.dates()
    }
}

impl TryFrom<&PeriodQuery> for NamedPeriod {
    type Error = PeriodError;

    fn try_from(q: &PeriodQuery) -> Result<Self, Self::Error> {
        let given = [
            q.year.is_some(),
            q.quarter.is_some(),
            q.month.is_some(),
            q.campaign.is_some(),
            q.from.is_some() || q.to.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(PeriodError::NotOne);
        }
        if let Some(text) = &q.year {
            return year(text)
                .map(NamedPeriod::Year)
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
            return Ok(NamedPeriod::Quarter(y, n));
        }
        if let Some(text) = &q.month {
            let month: Month = text.parse().map_err(|_| PeriodError::Month(shown(text)))?;
            if !YEARS.contains(&month.year()) {
                return Err(PeriodError::Month(shown(text)));
            }
            return Ok(NamedPeriod::Month(month));
        }
        if let Some(text) = &q.campaign {
            let bad = || PeriodError::Campaign(shown(text));
            let (y, slug) = text.split_once('-').ok_or_else(bad)?;
            let named = NamedPeriod::Campaign(
                Holiday::from_slug(slug).ok_or_else(bad)?,
                year(y).ok_or_else(bad)?,
            );
            // 1900's lunar dates are outside the tables.
            return named.period().map(|_| named).ok_or_else(bad);
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
        Ok(NamedPeriod::Range(period))
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

    fn named(f: impl FnOnce(&mut PeriodQuery)) -> NamedPeriod {
        let mut query = PeriodQuery::default();
        f(&mut query);
        NamedPeriod::try_from(&query).expect("a period")
    }

    fn dates(named: Option<NamedPeriod>) -> Option<(String, String)> {
        let p = named?.period()?;
        Some((p.from.to_string(), p.to.to_string()))
    }

    fn pair(from: &str, to: &str) -> Option<(String, String)> {
        Some((from.into(), to.into()))
    }

    #[test]
    fn every_period_knows_the_one_before_and_the_one_a_year_earlier() {
        let q1 = named(|q| q.quarter = Some("2026-Q1".into()));
        assert_eq!(dates(q1.previous()), pair("2025-10-01", "2025-12-31"));
        assert_eq!(dates(q1.year_earlier()), pair("2025-01-01", "2025-03-31"));
        let january = named(|q| q.month = Some("2026-01".into()));
        assert_eq!(
            q1.previous().map(|p| p.query()),
            Some("quarter=2025-Q4".into())
        );
        assert_eq!(
            january.previous().map(|p| p.query()),
            Some("month=2025-12".into())
        );
        assert_eq!(
            january.year_earlier().map(|p| p.query()),
            Some("month=2025-01".into())
        );
        // A campaign: the same number of days just before it, and last
        // year's campaign on last year's lunar date.
        let spring = named(|q| q.campaign = Some("2026-spring-festival".into()));
        assert_eq!(dates(Some(spring)), pair("2026-01-20", "2026-02-16"));
        assert_eq!(dates(spring.previous()), pair("2025-12-23", "2026-01-19"));
        assert_eq!(
            dates(spring.year_earlier()),
            pair("2025-01-01", "2025-01-28")
        );
        assert_eq!(
            spring.year_earlier().map(|p| p.query()),
            Some("campaign=2025-spring-festival".into())
        );
        // A range from 29 February: a year earlier starts on the 28th.
        let range = named(|q| {
            q.from = Some("2028-02-29".into());
            q.to = Some("2028-03-02".into());
        });
        assert_eq!(dates(range.previous()), pair("2028-02-26", "2028-02-28"));
        assert_eq!(
            dates(range.year_earlier()),
            pair("2027-02-28", "2027-03-02")
        );
        assert_eq!(range.query(), "from=2028-02-29&to=2028-03-02");
        // Nothing before the first year the API takes.
        assert_eq!(named(|q| q.year = Some("1900".into())).previous(), None);
        assert_eq!(
            named(|q| q.campaign = Some("1901-spring-festival".into())).year_earlier(),
            None
        );
        // Every reference asks, by its query, for the period it names.
        for p in [q1, january, spring, range] {
            for neighbour in [p.previous(), p.year_earlier()].into_iter().flatten() {
                let reference = neighbour.reference().expect("dates");
                let query: PeriodQuery = serde_urlencoded_like(&reference.query);
                assert_eq!(Period::try_from(&query), Ok(reference.period));
            }
        }
    }

    /// `a=b&c=d` into a query, as axum would read it.
    fn serde_urlencoded_like(text: &str) -> PeriodQuery {
        let mut query = PeriodQuery::default();
        for part in text.split('&') {
            let (key, value) = part.split_once('=').expect("key=value");
            let value = Some(value.to_owned());
            match key {
                "year" => query.year = value,
                "quarter" => query.quarter = value,
                "month" => query.month = value,
                "campaign" => query.campaign = value,
                "from" => query.from = value,
                "to" => query.to = value,
                other => panic!("unknown key {other}"),
            }
        }
        query
    }

    #[test]
    fn campaigns_parse() {
        for bad in [
            "2026",
            "2026-christmas",
            "26-spring-festival",
            "1900-spring-festival",
            "2101-national-day",
            "spring-festival-2026",
        ] {
            assert!(
                matches!(
                    q(|q| q.campaign = Some(bad.into())),
                    Err(PeriodError::Campaign(_))
                ),
                "{bad}"
            );
        }
        assert!(q(|q| q.campaign = Some("1900-national-day".into())).is_ok());
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
