//! The holidays before which branches visit members in hardship ("每年春节或
//! 其他重大节日纪念日前夕"), and the campaign period before each.
//!
//! Spring Festival and Mid-Autumn fall on lunar dates, a different solar
//! date every year: they are computed with `chinese-lunisolar-calendar`
//! (its tables run from 1901 to 2100) rather than kept in a list of ours
//! that would run out.

use chinese_lunisolar_calendar::LunisolarDate;
use doorstep_protocol::Date;

use super::Period;

/// How long a holiday campaign runs: the four weeks up to the eve.
pub const CAMPAIGN_DAYS: i64 = 28;

/// A holiday whose eve the organisation marks with visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holiday {
    /// 春节: the first day of the first lunar month.
    SpringFestival,
    /// 七一: the Party's founding anniversary, 1 July.
    PartyFounding,
    /// 中秋: the fifteenth day of the eighth lunar month.
    MidAutumn,
    /// 国庆: National Day, 1 October.
    NationalDay,
}

impl Holiday {
    pub const ALL: [Holiday; 4] = [
        Holiday::SpringFestival,
        Holiday::PartyFounding,
        Holiday::MidAutumn,
        Holiday::NationalDay,
    ];

    /// The name in a query: `campaign=2027-spring-festival`.
    pub fn slug(self) -> &'static str {
        match self {
            Holiday::SpringFestival => "spring-festival",
            Holiday::PartyFounding => "july-first",
            Holiday::MidAutumn => "mid-autumn",
            Holiday::NationalDay => "national-day",
        }
    }

    pub fn from_slug(slug: &str) -> Option<Holiday> {
        Holiday::ALL.into_iter().find(|h| h.slug() == slug)
    }

    /// The holiday's solar date in `year`, or `None` outside the lunar
    /// tables (before 1901 or after 2100).
    pub fn day(self, year: i32) -> Option<Date> {
        let lunar = |month: u8, day: u8| {
            let year = u16::try_from(year).ok()?;
            let solar = LunisolarDate::from_ymd(year, month, false, day)
                .ok()?
                .to_solar_date();
            Date::from_ymd(
                i32::from(solar.to_solar_year().to_u16()),
                u8::try_from(solar.to_solar_month().to_u32()).ok()?,
                u8::try_from(solar.to_solar_day().to_u32()).ok()?,
            )
        };
        match self {
            Holiday::SpringFestival => lunar(1, 1),
            Holiday::MidAutumn => lunar(8, 15),
            Holiday::PartyFounding => Date::from_ymd(year, 7, 1),
            Holiday::NationalDay => Date::from_ymd(year, 10, 1),
        }
    }

    /// The campaign before the holiday in `year`: the [`CAMPAIGN_DAYS`]
    /// days up to and including its eve.
    pub fn campaign(self, year: i32) -> Option<Period> {
        let day = self.day(year)?.as_time();
        Some(Period {
            from: Date::from_time(day.checked_sub(time::Duration::days(CAMPAIGN_DAYS))?),
            to: Date::from_time(day.previous_day()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spring_festival_and_mid_autumn_move_with_the_moon() {
        // Published dates of the lunar new year and the Mid-Autumn Festival.
        for (year, spring, autumn) in [
            (2024, "2024-02-10", "2024-09-17"),
            (2025, "2025-01-29", "2025-10-06"),
            (2026, "2026-02-17", "2026-09-25"),
            (2027, "2027-02-06", "2027-09-15"),
        ] {
            let day = |h: Holiday| h.day(year).map(|d| d.to_string());
            assert_eq!(day(Holiday::SpringFestival).as_deref(), Some(spring));
            assert_eq!(day(Holiday::MidAutumn).as_deref(), Some(autumn));
        }
        assert_eq!(
            Holiday::PartyFounding.day(2026).map(|d| d.to_string()),
            Some("2026-07-01".into())
        );
    }

    #[test]
    fn a_campaign_is_the_four_weeks_up_to_the_eve() {
        let campaign = Holiday::SpringFestival.campaign(2026).expect("2026");
        assert_eq!(campaign.from.to_string(), "2026-01-20");
        assert_eq!(campaign.to.to_string(), "2026-02-16");
        let national = Holiday::NationalDay.campaign(2026).expect("2026");
        assert_eq!(
            (national.from.to_string(), national.to.to_string()),
            ("2026-09-03".into(), "2026-09-30".into())
        );
    }

    #[test]
    fn years_outside_the_lunar_tables_have_no_lunar_holiday() {
        assert_eq!(Holiday::SpringFestival.day(1900), None);
        assert_eq!(Holiday::MidAutumn.day(2101), None);
        assert!(Holiday::SpringFestival.day(2100).is_some());
        assert!(Holiday::NationalDay.day(1900).is_some());
        for h in Holiday::ALL {
            assert_eq!(Holiday::from_slug(h.slug()), Some(h));
        }
        assert_eq!(Holiday::from_slug("christmas"), None);
    }
}
