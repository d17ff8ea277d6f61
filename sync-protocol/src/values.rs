//! Domain values: money in fen, calendar dates and months.
//!
//! Money is integer fen (1/100 yuan), never float; dates travel as ISO
//! `YYYY-MM-DD` strings inside documents and are parsed into these types.

use std::fmt;
use std::str::FromStr;

/// Errors from parsing a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("not a date in YYYY-MM-DD form: {0:?}")]
    Date(String),
    #[error("not a month in YYYY-MM form: {0:?}")]
    Month(String),
    #[error("not an amount of yuan with at most two decimals: {0:?}")]
    Money(String),
}

/// An amount of money in fen (1/100 yuan).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Fen(pub i64);

impl Fen {
    pub const ZERO: Fen = Fen(0);

    /// The largest amount one record may carry: 100,000,000 yuan. Rollups sum
    /// amounts in SQL over every record under a district, and SQLite refuses
    /// a sum past `i64::MAX` (the whole rollup fails); with this bound even
    /// 10^8 records, each with two such amounts, sum to under a quarter of it.
    pub const MAX_AMOUNT: Fen = Fen(10_000_000_000);

    pub const fn from_yuan(yuan: i64) -> Self {
        Fen(yuan * 100)
    }

    pub const fn as_i64(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Fen) -> Option<Fen> {
        self.0.checked_add(other.0).map(Fen)
    }

    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }
}

impl fmt::Display for Fen {
    /// Yuan with two decimals, e.g. `874000.00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

impl FromStr for Fen {
    type Err = ValueError;

    /// Parses yuan as typed by a person: `12`, `12.5`, `12.50`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ValueError::Money(s.chars().take(32).collect());
        let (neg, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty()
            || frac.len() > 2
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(err());
        }
        let whole: i64 = whole.parse().map_err(|_| err())?;
        let frac: i64 = match frac.len() {
            0 => 0,
            1 => frac.parse::<i64>().map_err(|_| err())? * 10,
            _ => frac.parse().map_err(|_| err())?,
        };
        let fen = whole
            .checked_mul(100)
            .and_then(|w| w.checked_add(frac))
            .ok_or_else(err)?;
        Ok(Fen(if neg { -fen } else { fen }))
    }
}

/// A calendar date, `YYYY-MM-DD` in documents and on the wire.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Date(time::Date);

const DATE_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

impl Date {
    pub fn from_ymd(year: i32, month: u8, day: u8) -> Option<Self> {
        let month = time::Month::try_from(month).ok()?;
        time::Date::from_calendar_date(year, month, day)
            .ok()
            .map(Date)
    }

    pub fn from_time(date: time::Date) -> Self {
        Date(date)
    }

    pub fn as_time(&self) -> time::Date {
        self.0
    }

    pub fn month(&self) -> Month {
        Month {
            year: self.0.year(),
            month: self.0.month() as u8,
        }
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}",
            self.0.year(),
            self.0.month() as u8,
            self.0.day()
        )
    }
}

impl FromStr for Date {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The strict length check keeps out `2026-1-5` and signed years.
        if s.len() != 10 {
            return Err(ValueError::Date(s.chars().take(32).collect()));
        }
        time::Date::parse(s, DATE_FORMAT)
            .map(Date)
            .map_err(|_| ValueError::Date(s.to_owned()))
    }
}

/// A calendar month, `YYYY-MM`: the period of one log document.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Month {
    year: i32,
    month: u8,
}

impl Month {
    pub fn new(year: i32, month: u8) -> Option<Self> {
        // 9998 at most, so that `next()` always has a first day.
        ((1..=12).contains(&month) && (1..=9998).contains(&year)).then_some(Month { year, month })
    }

    pub fn year(&self) -> i32 {
        self.year
    }

    pub fn month(&self) -> u8 {
        self.month
    }

    pub fn first_day(&self) -> Date {
        Date::from_ymd(self.year, self.month, 1).expect("a valid month has a first day")
    }

    pub fn next(&self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn previous(&self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Month {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ValueError::Month(s.chars().take(32).collect());
        let (y, m) = s.split_once('-').ok_or_else(err)?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let year = y.parse().map_err(|_| err())?;
        let month = m.parse().map_err(|_| err())?;
        Month::new(year, month).ok_or_else(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fen_parses_and_prints_yuan() {
        assert_eq!("874000".parse::<Fen>(), Ok(Fen(87_400_000)));
        assert_eq!("12.5".parse::<Fen>(), Ok(Fen(1250)));
        assert_eq!("0.07".parse::<Fen>(), Ok(Fen(7)));
        assert_eq!("-3.10".parse::<Fen>(), Ok(Fen(-310)));
        assert_eq!(Fen(87_400_000).to_string(), "874000.00");
        assert_eq!(Fen(-5).to_string(), "-0.05");
        for bad in ["", "1.234", "abc", "1e3", ".5", "99999999999999999999"] {
            assert!(bad.parse::<Fen>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn the_largest_amounts_of_many_records_still_sum_in_an_i64() {
        assert_eq!(Fen::MAX_AMOUNT.to_string(), "100000000.00");
        // 10^8 records with cash and goods both at the bound.
        let rows: i64 = 100_000_000;
        let sum = Fen::MAX_AMOUNT
            .as_i64()
            .checked_mul(2)
            .and_then(|per_row| per_row.checked_mul(rows));
        assert!(sum.is_some_and(|s| s < i64::MAX / 4), "{sum:?}");
    }

    #[test]
    fn dates_are_strict_iso() {
        let d: Date = "2026-02-28".parse().expect("date");
        assert_eq!(d.to_string(), "2026-02-28");
        assert_eq!(d.month().to_string(), "2026-02");
        for bad in ["2026-02-30", "2026-2-28", "28/02/2026", "", "+2026-02-28"] {
            assert!(bad.parse::<Date>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn months_parse_and_step() {
        let m: Month = "2026-12".parse().expect("month");
        assert_eq!(m.next().to_string(), "2027-01");
        assert_eq!(m.next().previous(), m);
        assert_eq!(m.first_day().to_string(), "2026-12-01");
        for bad in ["2026-13", "2026-00", "26-01", "2026-1"] {
            assert!(bad.parse::<Month>().is_err(), "{bad:?} should not parse");
        }
    }
}
