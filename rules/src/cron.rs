//! `core.st2.CronTimer` schedules, with APScheduler's `CronTrigger` semantics (which StackStorm
//! uses): eight fields `year month day week day_of_week hour minute second`, each an expression
//! list such as `*`, `*/5`, `1-10/2`, `3,17`, `mon-fri`, `jan`, `last`, `2nd tue`, `last fri`.
//! `day_of_week` counts from Monday = 0. A field left out defaults to `*` when it is coarser than
//! the finest field given and to its minimum when finer (only `hour=3` given: every day at
//! 03:00:00). All times are UTC.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Timelike};

use crate::model::Map;

/// The CronTimer parameter names, coarsest first.
pub(crate) const FIELDS: [&str; 8] =
    ["year", "month", "day", "week", "day_of_week", "hour", "minute", "second"];
/// APScheduler's defaults for fields after the finest one given.
const DEFAULTS: [&str; 8] = ["*", "1", "1", "*", "*", "0", "0", "0"];
const MINS: [u32; 8] = [1970, 1, 1, 1, 0, 0, 0, 0];
const MAXS: [u32; 8] = [9999, 12, 31, 53, 6, 23, 59, 59];
const YEAR: usize = 0;
const MONTH: usize = 1;
const DAY: usize = 2;
const WEEK: usize = 3;
const DOW: usize = 4;
const HOUR: usize = 5;
const MINUTE: usize = 6;
const SECOND: usize = 7;

const MONTH_NAMES: [&str; 12] =
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// One comma-separated part of a field expression.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    /// `first-last/step` (`*` is the field's whole range, step 1).
    Range { first: u32, last: u32, step: u32 },
    /// `last` in the day field: the last day of the month.
    LastDayOfMonth,
    /// `1st mon` .. `5th mon`, `last mon` in the day field (`nth == 0` is `last`).
    WeekdayPosition { nth: u32, weekday: u32 },
}

impl Expr {
    fn matches(&self, value: u32, date: Option<NaiveDate>) -> bool {
        match *self {
            Expr::Range { first, last, step } => {
                value >= first && value <= last && (value - first) % step == 0
            }
            Expr::LastDayOfMonth => date.is_some_and(|d| d.day() == days_in_month(d)),
            Expr::WeekdayPosition { nth, weekday } => date.is_some_and(|d| {
                if d.weekday().num_days_from_monday() != weekday {
                    return false;
                }
                if nth == 0 {
                    d.day() + 7 > days_in_month(d)
                } else {
                    (d.day() - 1) / 7 + 1 == nth
                }
            }),
        }
    }
}

fn days_in_month(d: NaiveDate) -> u32 {
    let (y, m) = if d.month() == 12 { (d.year() + 1, 1) } else { (d.year(), d.month() + 1) };
    NaiveDate::from_ymd_opt(y, m, 1).and_then(|n| n.pred_opt()).map_or(31, |l| l.day())
}

/// A parsed `core.st2.CronTimer` schedule (UTC). Build it with [`Rule::trigger`](crate::Rule::trigger);
/// ask it for fire times with [`next_fire_ms`](crate::next_fire_ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSpec {
    fields: [Vec<Expr>; 8],
}

impl CronSpec {
    /// Parses the CronTimer parameters (`timezone` is checked by the caller). Errors are complete
    /// messages: `trigger.parameters.hour: ...`.
    pub(crate) fn from_params(params: &Map) -> Result<CronSpec, String> {
        let mut given: Vec<Option<String>> = Vec::with_capacity(8);
        for (i, name) in FIELDS.iter().enumerate() {
            let text = match params.get(*name) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.trim().to_ascii_lowercase()),
                Some(serde_json::Value::Number(n)) if n.is_u64() || n.is_i64() => Some(n.to_string()),
                Some(_) => {
                    return Err(format!(
                        "trigger.parameters.{name}: must be an integer or a cron expression string"
                    ))
                }
            };
            if text.as_deref() == Some("") {
                return Err(format!("trigger.parameters.{}: must not be empty", FIELDS[i]));
            }
            given.push(text);
        }
        let finest_given = given.iter().rposition(Option::is_some);
        let mut fields: [Vec<Expr>; 8] = Default::default();
        for i in 0..8 {
            let text = match (&given[i], finest_given) {
                (Some(t), _) => t.clone(),
                (None, Some(f)) if i < f => "*".to_string(),
                _ => DEFAULTS[i].to_string(),
            };
            fields[i] =
                parse_field(i, &text).map_err(|e| format!("trigger.parameters.{}: {e}", FIELDS[i]))?;
        }
        Ok(CronSpec { fields })
    }

    fn field_matches(&self, i: usize, value: u32, date: Option<NaiveDate>) -> bool {
        self.fields[i].iter().any(|e| e.matches(value, date))
    }

    fn table<const N: usize>(&self, i: usize) -> [bool; N] {
        let mut t = [false; N];
        for (v, slot) in t.iter_mut().enumerate() {
            *slot = self.field_matches(i, v as u32, None);
        }
        t
    }

    /// The first schedule instant strictly after `after_ms` (unix ms, UTC), or `None` when there is
    /// none before the year 9999 ends.
    pub(crate) fn next_after(&self, after_ms: i64) -> Option<i64> {
        let start_s = after_ms.div_euclid(1000).checked_add(1)?;
        let start = DateTime::from_timestamp(start_s, 0)?.naive_utc();
        let hours: [bool; 24] = self.table(HOUR);
        let minutes: [bool; 60] = self.table(MINUTE);
        let seconds: [bool; 60] = self.table(SECOND);
        let mut day = start.date();
        let mut floor = (start.hour(), start.minute(), start.second());
        loop {
            if day.year() > 9999 {
                return None;
            }
            if !self.field_matches(YEAR, day.year() as u32, None) {
                day = NaiveDate::from_ymd_opt(day.year() + 1, 1, 1)?;
                floor = (0, 0, 0);
                continue;
            }
            if !self.field_matches(MONTH, day.month(), None) {
                day = if day.month() == 12 {
                    NaiveDate::from_ymd_opt(day.year() + 1, 1, 1)?
                } else {
                    NaiveDate::from_ymd_opt(day.year(), day.month() + 1, 1)?
                };
                floor = (0, 0, 0);
                continue;
            }
            let day_ok = self.field_matches(DAY, day.day(), Some(day))
                && self.field_matches(WEEK, day.iso_week().week(), None)
                && self.field_matches(DOW, day.weekday().num_days_from_monday(), None);
            if day_ok {
                if let Some((h, m, s)) = first_time(&hours, &minutes, &seconds, floor) {
                    let at = day.and_hms_opt(h, m, s)?.and_utc();
                    return at.timestamp().checked_mul(1000);
                }
            }
            day = day.checked_add_signed(Duration::days(1))?;
            floor = (0, 0, 0);
        }
    }
}

/// The earliest allowed `(hour, minute, second)` at or after `floor`.
fn first_time(
    hours: &[bool; 24],
    minutes: &[bool; 60],
    seconds: &[bool; 60],
    floor: (u32, u32, u32),
) -> Option<(u32, u32, u32)> {
    for h in (floor.0..24).filter(|&h| hours[h as usize]) {
        let m0 = if h == floor.0 { floor.1 } else { 0 };
        for m in (m0..60).filter(|&m| minutes[m as usize]) {
            let s0 = if (h, m) == (floor.0, floor.1) { floor.2 } else { 0 };
            if let Some(s) = (s0..60).find(|&s| seconds[s as usize]) {
                return Some((h, m, s));
            }
        }
    }
    None
}

fn parse_field(i: usize, text: &str) -> Result<Vec<Expr>, String> {
    text.split(',').map(|part| parse_expr(i, part.trim())).collect()
}

fn parse_expr(i: usize, part: &str) -> Result<Expr, String> {
    let (min, max) = (MINS[i], MAXS[i]);
    let bad = || format!("invalid expression {part:?}");
    if part.is_empty() {
        return Err(bad());
    }
    if i == DAY {
        if part == "last" {
            return Ok(Expr::LastDayOfMonth);
        }
        if let Some((pos, wd)) = part.split_once(' ') {
            let nth = match pos.trim() {
                "1st" => 1,
                "2nd" => 2,
                "3rd" => 3,
                "4th" => 4,
                "5th" => 5,
                "last" => 0,
                _ => return Err(bad()),
            };
            let weekday = name_index(&WEEKDAY_NAMES, wd.trim()).ok_or_else(bad)?;
            return Ok(Expr::WeekdayPosition { nth, weekday });
        }
    }
    let (range, step) = match part.split_once('/') {
        Some((r, s)) => {
            let step: u32 = s.parse().map_err(|_| bad())?;
            if step == 0 {
                return Err(format!("invalid expression {part:?}: the step must be at least 1"));
            }
            (r, Some(step))
        }
        None => (part, None),
    };
    let value = |s: &str| -> Result<u32, String> {
        let v = match s.parse::<u32>() {
            Ok(v) => v,
            Err(_) => match i {
                MONTH => name_index(&MONTH_NAMES, s).map(|m| m + 1).ok_or_else(bad)?,
                DOW => name_index(&WEEKDAY_NAMES, s).ok_or_else(bad)?,
                _ => return Err(bad()),
            },
        };
        if v < min || v > max {
            return Err(format!("value {v} in {part:?} is out of range {min}-{max}"));
        }
        Ok(v)
    };
    let (first, last) = if range == "*" {
        (min, max)
    } else if let Some((a, b)) = range.split_once('-') {
        (value(a)?, value(b)?)
    } else {
        let v = value(range)?;
        (v, if step.is_some() { max } else { v })
    };
    if first > last {
        return Err(format!("invalid expression {part:?}: the range start is after its end"));
    }
    Ok(Expr::Range { first, last, step: step.unwrap_or(1) })
}

fn name_index(names: &[&str], s: &str) -> Option<u32> {
    names.iter().position(|n| *n == s).map(|p| p as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> Result<CronSpec, String> {
        CronSpec::from_params(v.as_object().unwrap())
    }

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn next(v: serde_json::Value, after: &str) -> String {
        let at = spec(v).unwrap().next_after(ms(after)).unwrap();
        DateTime::from_timestamp_millis(at).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    #[test]
    fn finer_fields_default_to_minimum_and_coarser_to_any() {
        // Only hour given: every day at 03:00:00.
        assert_eq!(next(json!({"hour": 3}), "2024-05-01T02:59:59Z"), "2024-05-01T03:00:00Z");
        assert_eq!(next(json!({"hour": 3}), "2024-05-01T03:00:00Z"), "2024-05-02T03:00:00Z");
        // minute given: every hour at :30:00.
        assert_eq!(next(json!({"minute": "30"}), "2024-05-01T10:30:00.500Z"), "2024-05-01T11:30:00Z");
        // second only: every minute.
        assert_eq!(next(json!({"second": "*/15"}), "2024-05-01T10:00:14Z"), "2024-05-01T10:00:15Z");
        // Nothing given: APScheduler's all-defaults, 1 January 00:00:00.
        assert_eq!(next(json!({}), "2024-05-01T00:00:00Z"), "2025-01-01T00:00:00Z");
    }

    #[test]
    fn day_of_week_counts_from_monday() {
        // 2024-05-01 is a Wednesday; day_of_week 0 is Monday 2024-05-06.
        assert_eq!(
            next(json!({"day_of_week": 0, "hour": 9}), "2024-05-01T00:00:00Z"),
            "2024-05-06T09:00:00Z"
        );
        assert_eq!(next(json!({"day_of_week": "sat-sun"}), "2024-05-01T00:00:00Z"), "2024-05-04T00:00:00Z");
        assert_eq!(
            next(json!({"day_of_week": "mon-fri", "hour": 18}), "2024-05-03T18:00:00Z"),
            "2024-05-06T18:00:00Z"
        );
    }

    #[test]
    fn months_days_and_positions() {
        assert_eq!(next(json!({"month": "feb", "day": 29}), "2024-03-01T00:00:00Z"), "2028-02-29T00:00:00Z");
        assert_eq!(next(json!({"day": "last"}), "2024-02-10T00:00:00Z"), "2024-02-29T00:00:00Z");
        assert_eq!(next(json!({"day": "2nd tue"}), "2024-05-01T00:00:00Z"), "2024-05-14T00:00:00Z");
        assert_eq!(next(json!({"day": "last fri"}), "2024-05-01T00:00:00Z"), "2024-05-31T00:00:00Z");
        assert_eq!(
            next(json!({"week": 1, "day_of_week": 0}), "2024-05-01T00:00:00Z"),
            "2024-12-30T00:00:00Z"
        );
        assert_eq!(next(json!({"year": 2030}), "2024-05-01T00:00:00Z"), "2030-01-01T00:00:00Z");
        assert_eq!(
            next(json!({"hour": "1-5/2", "minute": "0,45"}), "2024-05-01T03:00:00Z"),
            "2024-05-01T03:45:00Z"
        );
        assert_eq!(spec(json!({"year": 2020})).unwrap().next_after(ms("2024-01-01T00:00:00Z")), None);
        assert_eq!(spec(json!({"month": 2, "day": 31})).unwrap().next_after(0), None);
    }

    #[test]
    fn bad_expressions_name_the_field() {
        assert_eq!(
            spec(json!({"hour": 24})).unwrap_err(),
            "trigger.parameters.hour: value 24 in \"24\" is out of range 0-23"
        );
        assert_eq!(
            spec(json!({"minute": "x"})).unwrap_err(),
            "trigger.parameters.minute: invalid expression \"x\""
        );
        assert!(spec(json!({"second": "*/0"})).unwrap_err().starts_with("trigger.parameters.second: "));
        assert!(spec(json!({"day": "5-1"})).unwrap_err().contains("range start is after its end"));
        assert!(spec(json!({"day_of_week": 1.5}))
            .unwrap_err()
            .starts_with("trigger.parameters.day_of_week: "));
    }
}
