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

impl TryFrom<&PeriodQuery> for Period {
    type Error = String;

    fn try_from(q: &PeriodQuery) -> Result<Self, Self::Error> {
        let given = [
            q.year.is_some(),
            q.quarter.is_some(),
            q.month.is_some(),
            q.from.is_some() || q.to.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err("give one period: year=YYYY, quarter=YYYY-Qn, month=YYYY-MM, or from=YYYY-MM-DD&to=YYYY-MM-DD".into());
        }
        if let Some(year) = &q.year {
            let number: i32 = year.parse().map_err(|_| format!("not a year: {year:?}"))?;
            return Period::year(number).ok_or_else(|| format!("no year {year}"));
        }
        if let Some(quarter) = &q.quarter {
            let bad = || format!("not a quarter (YYYY-Qn): {quarter:?}");
            let (year, n) = quarter.split_once("-Q").ok_or_else(bad)?;
            let year: i32 = year.parse().map_err(|_| bad())?;
            let n: u8 = n.parse().map_err(|_| bad())?;
            if !(1..=4).contains(&n) {
                return Err(bad());
            }
            let first = Month::new(year, (n - 1) * 3 + 1).ok_or_else(bad)?;
            return Ok(Period {
                from: first.first_day(),
                to: last_day(first.next().next()),
            });
        }
        if let Some(month) = &q.month {
            return Ok(Period::month(month.parse().map_err(
                |e: doorstep_protocol::values::ValueError| e.to_string(),
            )?));
        }
        let (Some(from), Some(to)) = (&q.from, &q.to) else {
            return Err("a date range needs both from and to".into());
        };
        let period = Period {
            from: from
                .parse()
                .map_err(|e: doorstep_protocol::values::ValueError| e.to_string())?,
            to: to
                .parse()
                .map_err(|e: doorstep_protocol::values::ValueError| e.to_string())?,
        };
        if period.to < period.from {
            return Err("the range ends before it starts".into());
        }
        Ok(period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(f: impl FnOnce(&mut PeriodQuery)) -> Result<Period, String> {
        let mut query = PeriodQuery::default();
        f(&mut query);
        Period::try_from(&query)
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
        assert!(
            q(|q| {
                q.from = Some("2026-02-01".into());
                q.to = Some("2026-01-01".into());
            })
            .is_err()
        );
    }
}
