//! Schedules (`schedules = [...]` in a component's spec): when ticks are due. A schedule
//! is a cron expression in a time zone, or an interval counted from the Unix epoch, so
//! that every host computes the same ticks; `triggers/schedule.rs` fires them.

use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::{
    SpecError, SubscriptionSpec, default_ack_wait_ms, default_backoff_ms, default_max_deliver,
};
use crate::spec::subject::CONTROL_PREFIX;

/// One schedule of a component: a tick is delivered to its `wasmcloud:messaging`
/// handler as a durable message on `_WEFT.schedule.COMPONENT.NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Names the schedule among the component's (a-z, 0-9, `-`, `_`).
    pub name: String,
    /// A cron expression: five fields (`minute hour day-of-month month day-of-week`, as
    /// in crontab(5); day of week 0-7 or `sun`-`sat`, 0 and 7 both Sunday), six or seven
    /// (a seconds field first, an optional year last), or `@hourly`, `@daily`,
    /// `@weekly`, `@monthly`, `@yearly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Or an interval: `30s`, `5m`, `1h`, `1d` (at least a second). Ticks fall on whole
    /// multiples of it since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// The IANA time zone a cron expression is read in (`Europe/Paris`); default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// When a host starts the schedule and ticks were missed since the last one fired
    /// (no host ran it), fire the latest missed tick once. Default true.
    #[serde(default = "yes")]
    pub catch_up: bool,
    /// Deliveries of one tick before it becomes a dead letter.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// Waits before a failed tick is delivered again, in milliseconds, by attempt.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: Vec<u64>,
    /// How long a tick's delivery may go unsettled (its host stopped) before it is
    /// delivered again, in milliseconds.
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
}

fn yes() -> bool {
    true
}

impl ScheduleSpec {
    /// A schedule `name` firing `every` (`"30s"`), every other key at its default.
    pub fn every(name: &str, every: &str) -> ScheduleSpec {
        ScheduleSpec {
            name: name.into(),
            cron: None,
            every: Some(every.into()),
            time_zone: None,
            catch_up: true,
            max_deliver: default_max_deliver(),
            backoff_ms: default_backoff_ms(),
            ack_wait_ms: default_ack_wait_ms(),
        }
    }

    /// `NAME every 30s` or `NAME cron EXPRESSION [TIME ZONE]`, for listings.
    pub fn describe(&self) -> String {
        match (&self.every, &self.cron) {
            (Some(every), _) => format!("{} every {every}", self.name),
            (None, Some(cron)) => {
                let zone = self.time_zone.as_deref().unwrap_or("UTC");
                format!("{} cron {cron} {zone}", self.name)
            }
            (None, None) => self.name.clone(),
        }
    }

    /// The subject its ticks are delivered on: reserved, so no guest can publish a tick
    /// and no other component can subscribe to one.
    pub fn subject(&self, component: &str) -> String {
        format!("{CONTROL_PREFIX}schedule.{component}.{}", self.name)
    }

    /// The durable subscription its ticks are delivered through, one at a time.
    pub fn subscription(&self, component: &str) -> SubscriptionSpec {
        SubscriptionSpec {
            durable: true,
            max_in_flight: 1,
            max_deliver: self.max_deliver,
            backoff_ms: self.backoff_ms.clone(),
            ack_wait_ms: self.ack_wait_ms,
            dead_letter: Some(format!("dead.{component}.schedule.{}", self.name)),
            ..SubscriptionSpec::to(&self.subject(component))
        }
    }

    /// When its ticks are due; an error names what is wrong with it.
    pub fn timing(&self) -> Result<Timing, String> {
        match (&self.cron, &self.every) {
            (Some(_), Some(_)) | (None, None) => {
                Err("give either `cron` or `every`, not both or neither".into())
            }
            (None, Some(_)) if self.time_zone.is_some() => Err(
                "`time_zone` applies to `cron` schedules only; `every` counts from the Unix epoch"
                    .into(),
            ),
            (None, Some(every)) => {
                let interval = parse_interval(every)?;
                Ok(Timing::Every(interval))
            }
            (Some(cron), None) => {
                let zone = match &self.time_zone {
                    Some(name) => TimeZone::get(name).map_err(|e| {
                        format!("`{name}` is not a known IANA time zone (like `Europe/Paris`): {e}")
                    })?,
                    None => TimeZone::UTC,
                };
                let expression = standard_cron(cron)?;
                let cron = jiff_cron::Schedule::from_str(&expression)
                    .map_err(|e| format!("`{cron}` is not a valid cron expression: {e}"))?;
                Ok(Timing::Cron(Box::new(cron), zone))
            }
        }
    }
}

/// When a schedule's ticks are due.
#[derive(Debug, Clone)]
pub enum Timing {
    /// At whole multiples of this since the Unix epoch.
    Every(Duration),
    /// As the expression says, read in the time zone.
    Cron(Box<jiff_cron::Schedule>, TimeZone),
}

impl Timing {
    /// The first tick after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Timing::Every(every) => {
                let every = every.as_millis() as i64;
                let ms = t.as_millisecond();
                Timestamp::from_millisecond((ms.div_euclid(every) + 1) * every).ok()
            }
            Timing::Cron(cron, zone) => cron
                .after(t.to_zoned(zone.clone()))
                .next()
                .map(|z| z.timestamp()),
        }
    }

    /// The last tick at or before `t`.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Timing::Every(every) => {
                let every = every.as_millis() as i64;
                let ms = t.as_millisecond();
                Timestamp::from_millisecond(ms.div_euclid(every) * every).ok()
            }
            Timing::Cron(cron, zone) => {
                // `after` and back: the latest tick before the first one after `t`.
                let just_after = t.checked_add(jiff::SignedDuration::from_nanos(1)).ok()?;
                cron.after(just_after.to_zoned(zone.clone()))
                    .next_back()
                    .map(|z| z.timestamp())
            }
        }
    }
}

/// `30s`, `5m`, `1h`, `2d`, `1500ms`: at least a second, at most a year.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("`every = \"{text}\"`: write a number and a unit, like `30s`, `5m`, `1h` or `1d`")
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
    if !(1_000..=365 * 86_400_000).contains(&ms) {
        return Err(format!(
            "`every = \"{text}\"`: an interval is at least a second and at most a year"
        ));
    }
    Ok(Duration::from_millis(ms))
}

const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A crontab(5) expression as the parser reads it: five fields get a seconds field of
/// `0`, and their day-of-week numbers (0-7 from Sunday; the parser counts 1-7) become
/// names. Six and seven fields and `@` shorthands pass unchanged.
fn standard_cron(expression: &str) -> Result<String, String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    match fields.len() {
        1 if expression.trim_start().starts_with('@') => Ok(expression.trim().to_string()),
        5 => {
            let weekdays = weekday_names(fields[4]).ok_or_else(|| {
                format!(
                    "`{expression}`: day of week `{}` must use 0-7 or sun-sat",
                    fields[4]
                )
            })?;
            Ok(format!(
                "0 {} {} {} {} {weekdays}",
                fields[0], fields[1], fields[2], fields[3]
            ))
        }
        6 | 7 => Ok(fields.join(" ")),
        n => Err(format!(
            "`{expression}` has {n} fields: write five (`minute hour day month weekday`), six or seven (seconds first, year last)"
        )),
    }
}

/// Day-of-week numbers as names, except a step's count (`*/2`).
fn weekday_names(field: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = field;
    let mut after_slash = false;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_digit() {
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let (number, tail) = rest.split_at(end);
            if after_slash {
                out.push_str(number);
            } else {
                let day: usize = number.parse().ok().filter(|d| *d <= 7)?;
                out.push_str(WEEKDAYS[day % 7]);
            }
            rest = tail;
            after_slash = false;
        } else {
            out.push(c);
            after_slash = c == '/';
            rest = &rest[c.len_utf8()..];
        }
    }
    Some(out)
}

/// Checks `schedules` of a component (the key of each error is `schedules[i].KEY`).
pub fn validate(schedules: &[ScheduleSpec]) -> Result<(), SpecError> {
    for (i, s) in schedules.iter().enumerate() {
        let key = |k: &str| format!("schedules[{i}].{k}");
        let valid_name = !s.name.is_empty()
            && s.name.len() <= 64
            && s.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid_name {
            return Err(SpecError::new(
                key("name"),
                format!(
                    "schedule name `{}` must use only a-z, 0-9, `-` and `_` (64 characters at most)",
                    s.name
                ),
            ));
        }
        if schedules[..i].iter().any(|o| o.name == s.name) {
            return Err(SpecError::new(
                key("name"),
                format!("two schedules are named `{}`", s.name),
            ));
        }
        let what = if s.cron.is_some() { "cron" } else { "every" };
        s.timing()
            .map_err(|e| SpecError::new(key(what), format!("schedule `{}`: {e}", s.name)))?;
        super::check_retries(s.max_deliver, s.ack_wait_ms, &s.backoff_ms, key)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(expression: &str, zone: Option<&str>) -> Timing {
        ScheduleSpec {
            cron: Some(expression.into()),
            every: None,
            time_zone: zone.map(str::to_string),
            ..ScheduleSpec::every("t", "1s")
        }
        .timing()
        .unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn five_field_cron_reads_as_crontab_in_its_time_zone() {
        // 09:30 on weekdays (1-5 is Monday to Friday, as in crontab) in Paris (UTC+1 in winter).
        let t = cron("30 9 * * 1-5", Some("Europe/Paris"));
        // Saturday 2026-12-05 -> Monday 2026-12-07 08:30 UTC.
        assert_eq!(
            t.next_after(at("2026-12-05T12:00:00Z")),
            Some(at("2026-12-07T08:30:00Z"))
        );
        assert_eq!(
            t.latest_at_or_before(at("2026-12-05T12:00:00Z")),
            Some(at("2026-12-04T08:30:00Z"))
        );
        assert_eq!(
            t.latest_at_or_before(at("2026-12-07T08:30:00Z")),
            Some(at("2026-12-07T08:30:00Z"))
        );
        // 0 and 7 are both Sunday; a step's count stays a count.
        let sunday = cron("0 0 * * 7", None);
        assert_eq!(
            sunday.next_after(at("2026-12-02T00:00:00Z")),
            Some(at("2026-12-06T00:00:00Z"))
        );
        assert_eq!(
            cron("0 0 * * 0", None).next_after(at("2026-12-02T00:00:00Z")),
            Some(at("2026-12-06T00:00:00Z"))
        );
        let every_other = cron("0 0 * * */2", None); // Sun, Tue, Thu, Sat
        assert_eq!(
            every_other.next_after(at("2026-12-02T00:00:00Z")),
            Some(at("2026-12-03T00:00:00Z"))
        );
        // Six fields: seconds first.
        assert_eq!(
            cron("*/10 * * * * *", None).next_after(at("2026-12-02T00:00:01Z")),
            Some(at("2026-12-02T00:00:10Z"))
        );
        assert_eq!(
            cron("@daily", None).next_after(at("2026-12-02T10:00:00Z")),
            Some(at("2026-12-03T00:00:00Z"))
        );
    }

    #[test]
    fn daylight_saving_changes_shift_missing_times_and_fire_repeated_ones_once() {
        // 2023-03-12 02:30 does not exist in Chicago (02:00 -> 03:00): it fires at 03:30 CDT.
        let t = cron("30 2 * * *", Some("America/Chicago"));
        assert_eq!(
            t.next_after(at("2023-03-11T12:00:00Z")),
            Some(at("2023-03-12T08:30:00Z"))
        );
        // 2022-11-06 01:30 happens twice (CDT, then CST): it fires once, at the second.
        let t = cron("30 1 * * *", Some("America/Chicago"));
        let first = t.next_after(at("2022-11-06T00:00:00Z")).unwrap();
        assert_eq!(first, at("2022-11-06T07:30:00Z"));
        assert_eq!(t.next_after(first), Some(at("2022-11-07T07:30:00Z")));
    }

    #[test]
    fn intervals_count_from_the_epoch() {
        let t = ScheduleSpec::every("t", "2s").timing().unwrap();
        assert_eq!(
            t.next_after(at("2026-12-02T00:00:01.5Z")),
            Some(at("2026-12-02T00:00:02Z"))
        );
        assert_eq!(
            t.next_after(at("2026-12-02T00:00:02Z")),
            Some(at("2026-12-02T00:00:04Z"))
        );
        assert_eq!(
            t.latest_at_or_before(at("2026-12-02T00:00:03.9Z")),
            Some(at("2026-12-02T00:00:02Z"))
        );
    }

    #[test]
    fn bad_schedules_say_what_to_write() {
        let error = |s: ScheduleSpec| validate(&[s]).unwrap_err().to_string();
        assert!(error(ScheduleSpec::every("t", "10")).contains("like `30s`"));
        assert!(error(ScheduleSpec::every("t", "500ms")).contains("at least a second"));
        let both = ScheduleSpec {
            cron: Some("* * * * *".into()),
            ..ScheduleSpec::every("t", "1m")
        };
        assert!(error(both).contains("either `cron` or `every`"));
        let zone = ScheduleSpec {
            cron: Some("0 3 * * *".into()),
            every: None,
            time_zone: Some("Mars/Olympus".into()),
            ..ScheduleSpec::every("t", "1m")
        };
        assert!(error(zone).contains("not a known IANA time zone"));
        let fields = ScheduleSpec {
            cron: Some("0 3 * *".into()),
            every: None,
            ..ScheduleSpec::every("t", "1m")
        };
        assert!(error(fields).contains("has 4 fields"));
        let weekday = ScheduleSpec {
            cron: Some("0 3 * * 9".into()),
            every: None,
            ..ScheduleSpec::every("t", "1m")
        };
        assert!(error(weekday).contains("0-7 or sun-sat"));
        assert!(error(ScheduleSpec::every("Bad Name", "1m")).contains("schedule name"));
        let twice = validate(&[
            ScheduleSpec::every("t", "1m"),
            ScheduleSpec::every("t", "2m"),
        ]);
        assert!(twice.unwrap_err().to_string().contains("two schedules"));
    }
}
