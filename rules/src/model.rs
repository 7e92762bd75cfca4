//! Rules as StackStorm writes them, their validation, and trigger schedules.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::criteria::{self, Op};
use crate::error::RuleError;
use crate::render;

pub use crate::cron::CronSpec;

/// A JSON object: trigger and action parameters, trigger payloads.
pub type Map = serde_json::Map<String, serde_json::Value>;

/// A rule: when `trigger` fires and every one of `criteria` holds for its payload, run `action`.
///
/// The serde shape is StackStorm's rule resource; fields StackStorm adds that st2kv has no use
/// for (`id`, `ref`, `uid`, `tags`, `context`, `type`, `metadata_file`, ...) are ignored when
/// reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub name: String,
    #[serde(default = "default_pack")]
    pub pack: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub trigger: TriggerSpec,
    /// Keyed by the payload path, `trigger.body.x`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub criteria: BTreeMap<String, Criterion>,
    pub action: ActionSpec,
}

fn default_pack() -> String {
    "default".to_string()
}

fn yes() -> bool {
    true
}

/// Reads `null` (YAML's `parameters:` with nothing after it) as the type's default.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The `trigger` of a rule as written: a type (`type`, or `name` as the seed rules spell it) and
/// its parameters. [`Rule::trigger`] turns it into a checked [`Trigger`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerSpec {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub parameters: Map,
}

/// The `action` of a rule: which action (`ref`, or `name`) and its parameters, whose string leaves
/// are templates rendered against the trigger payload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionSpec {
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub parameters: Map,
}

/// One criterion: an operator (`type`) and a pattern, which may itself be a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Criterion {
    #[serde(rename = "type")]
    pub op: String,
    #[serde(default)]
    pub pattern: serde_json::Value,
}

impl Rule {
    /// `pack.name`, StackStorm's rule reference.
    pub fn reference(&self) -> String {
        format!("{}.{}", self.pack, self.name)
    }

    /// `action.ref`, else `action.name`, else `""`.
    pub fn action_ref(&self) -> &str {
        non_empty(&self.action.reference).or_else(|| non_empty(&self.action.name)).unwrap_or("")
    }

    /// The trigger, classified and with its parameters checked (the trigger part of [`validate`]).
    pub fn trigger(&self) -> Result<Trigger, RuleError> {
        classify(&self.trigger).map_err(RuleError::Invalid)
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// What makes a rule fire.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// `core.st2.webhook`: a POST to `/v1/webhooks/<url>` (`url` without its leading `/`).
    Webhook { url: String },
    /// `core.st2.IntervalTimer`: every `period_ms`.
    Interval { period_ms: i64 },
    /// `core.st2.CronTimer`: on an APScheduler-style calendar schedule, in UTC.
    Cron(CronSpec),
    /// `st2.timer.daily`: once a day at 00:00 UTC.
    Daily,
    /// `core.st2.key_value_pair.*`: a change to a key.
    KeyValue(KvEvent),
}

/// The key-value triggers StackStorm emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvEvent {
    Create,
    Update,
    ValueChange,
    Delete,
}

impl KvEvent {
    /// All four, in the order above.
    pub const ALL: [KvEvent; 4] = [KvEvent::Create, KvEvent::Update, KvEvent::ValueChange, KvEvent::Delete];

    /// The trigger type name, `core.st2.key_value_pair.create` etc.
    pub fn as_str(self) -> &'static str {
        match self {
            KvEvent::Create => "core.st2.key_value_pair.create",
            KvEvent::Update => "core.st2.key_value_pair.update",
            KvEvent::ValueChange => "core.st2.key_value_pair.value_change",
            KvEvent::Delete => "core.st2.key_value_pair.delete",
        }
    }
}

const WEBHOOK: &str = "core.st2.webhook";
const INTERVAL: &str = "core.st2.IntervalTimer";
const CRON: &str = "core.st2.CronTimer";
const DAILY: &str = "st2.timer.daily";
const KNOWN_TYPES: [&str; 8] = [
    WEBHOOK,
    INTERVAL,
    CRON,
    DAILY,
    "core.st2.key_value_pair.create",
    "core.st2.key_value_pair.update",
    "core.st2.key_value_pair.value_change",
    "core.st2.key_value_pair.delete",
];
const UNITS: [(&str, i64); 5] = [
    ("weeks", 7 * 86_400_000),
    ("days", 86_400_000),
    ("hours", 3_600_000),
    ("minutes", 60_000),
    ("seconds", 1_000),
];

fn classify(spec: &TriggerSpec) -> Result<Trigger, String> {
    let kind = non_empty(&spec.kind).or_else(|| non_empty(&spec.name)).ok_or("trigger.type: required")?;
    let params = &spec.parameters;
    let allow = |allowed: &[&str]| -> Result<(), String> {
        match params.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) if allowed.is_empty() => {
                Err(format!("trigger.parameters.{k}: {kind} takes no parameters"))
            }
            Some(k) => Err(format!(
                "trigger.parameters.{k}: unknown parameter of {kind}; expected one of {}",
                allowed.join(", ")
            )),
        }
    };
    let utc_only = || -> Result<(), String> {
        match params.get("timezone") {
            None | Some(serde_json::Value::Null) => Ok(()),
            Some(serde_json::Value::String(tz)) if is_utc(tz) => Ok(()),
            Some(_) => Err("trigger.parameters.timezone: only UTC is supported".to_string()),
        }
    };
    match kind {
        WEBHOOK => {
            allow(&["url"])?;
            match params.get("url") {
                None | Some(serde_json::Value::Null) => Err("trigger.parameters.url: required".to_string()),
                Some(serde_json::Value::String(url)) => {
                    let url = url.trim_start_matches('/');
                    if url.is_empty() {
                        Err("trigger.parameters.url: required".to_string())
                    } else {
                        Ok(Trigger::Webhook { url: url.to_string() })
                    }
                }
                Some(_) => Err("trigger.parameters.url: must be a string".to_string()),
            }
        }
        INTERVAL => {
            allow(&["unit", "delta"])?;
            let unit_ms = match params.get("unit") {
                None | Some(serde_json::Value::Null) => {
                    return Err("trigger.parameters.unit: required".into())
                }
                Some(v) => v.as_str().and_then(|u| UNITS.iter().find(|(n, _)| *n == u)).map(|(_, ms)| *ms),
            }
            .ok_or_else(|| {
                let names: Vec<&str> = UNITS.iter().map(|(n, _)| *n).collect();
                format!("trigger.parameters.unit: must be one of {}", names.join(", "))
            })?;
            let period_ms = params
                .get("delta")
                .and_then(serde_json::Value::as_i64)
                .filter(|d| *d > 0)
                .and_then(|d| d.checked_mul(unit_ms))
                .ok_or("trigger.parameters.delta: must be a positive integer")?;
            Ok(Trigger::Interval { period_ms })
        }
        CRON => {
            let mut allowed = crate::cron::FIELDS.to_vec();
            allowed.push("timezone");
            allow(&allowed)?;
            utc_only()?;
            Ok(Trigger::Cron(CronSpec::from_params(params)?))
        }
        DAILY => {
            allow(&["timezone"])?;
            utc_only()?;
            Ok(Trigger::Daily)
        }
        other => match KvEvent::ALL.iter().find(|e| e.as_str() == other) {
            Some(event) => {
                allow(&[])?;
                Ok(Trigger::KeyValue(*event))
            }
            None => Err(format!(
                "trigger.type: unknown trigger type \"{other}\"; known types: {}",
                KNOWN_TYPES.join(", ")
            )),
        },
    }
}

fn is_utc(tz: &str) -> bool {
    ["utc", "etc/utc", "z"].contains(&tz.trim().to_ascii_lowercase().as_str())
}

/// Reads a rule from JSON or YAML. Text starting with `{` is read as JSON (for its clearer error
/// messages; YAML if that fails), anything else as YAML (which also reads JSON). Does not
/// [`validate`]: an `Ok` rule may still be invalid.
pub fn parse_rule(text: &str) -> Result<Rule, RuleError> {
    if text.trim_start().starts_with('{') {
        // A YAML flow mapping (`{name: r, ...}`) also starts with '{': fall back to YAML, but
        // report JSON's error, which is the likelier intent.
        serde_json::from_str(text).or_else(|e| {
            serde_yaml::from_str(text).map_err(|_| RuleError::Invalid(format!("invalid rule JSON: {e}")))
        })
    } else {
        serde_yaml::from_str(text).map_err(|e| RuleError::Invalid(format!("invalid rule YAML: {e}")))
    }
}

/// Checks everything about a rule that can be checked without a trigger payload or the key space:
/// names, the trigger type and its parameters, criteria keys, operators and patterns, the action
/// reference, and the template syntax of every action parameter and criteria pattern. The first
/// failure is returned as [`RuleError::Invalid`], its message starting with the field at fault.
pub fn validate(rule: &Rule) -> Result<(), RuleError> {
    validate_inner(rule).map_err(RuleError::Invalid)
}

fn validate_inner(rule: &Rule) -> Result<(), String> {
    check_name("name", &rule.name)?;
    check_name("pack", &rule.pack)?;
    classify(&rule.trigger)?;
    let env = render::environment();
    for (key, criterion) in &rule.criteria {
        if !key.starts_with("trigger.") {
            return Err(format!("criteria.\"{key}\": criteria keys must start with \"trigger.\""));
        }
        let Some(op) = Op::parse(&criterion.op) else {
            return Err(format!(
                "criteria.\"{key}\".type: unknown operator \"{}\"; use one of: {}",
                criterion.op,
                criteria::OPERATORS.join(", ")
            ));
        };
        if let serde_json::Value::String(pattern) = &criterion.pattern {
            if render::is_template(pattern) {
                if let Err(e) = env.template_from_str(pattern) {
                    return Err(format!(
                        "criteria.\"{key}\".pattern: template syntax error: {}",
                        render::describe(&e)
                    ));
                }
            } else if op.is_regex() {
                if let Err(e) = criteria::compile_regex(pattern, op) {
                    return Err(format!("criteria.\"{key}\".pattern: invalid regex: {e}"));
                }
            }
        } else if op.is_regex() {
            return Err(format!("criteria.\"{key}\".pattern: must be a string"));
        }
    }
    if rule.action_ref().is_empty() {
        return Err("action.ref: required".to_string());
    }
    let mut failure = None;
    for (key, value) in &rule.action.parameters {
        render::walk_strings(value, &format!("action.parameters.{key}"), &mut |path, s| {
            if failure.is_none() && render::is_template(s) {
                if let Err(e) = env.template_from_str(s) {
                    failure = Some(format!("{path}: template syntax error: {}", render::describe(&e)));
                }
            }
        });
    }
    failure.map_or(Ok(()), Err)
}

fn check_name(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field}: required"));
    }
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(format!("{field}: \"{value}\" may only contain letters, digits, \"_\", \"-\" and \".\""));
    }
    Ok(())
}

/// The first time `trigger` fires strictly after `after_ms` (unix ms, UTC):
/// - [`Trigger::Interval`]: `after_ms + period` (pass the last fire time);
/// - [`Trigger::Daily`]: the next multiple of `daily_period_ms` (86 400 000 in production, shorter
///   in tests) after `after_ms`;
/// - [`Trigger::Cron`]: the next schedule instant;
/// - webhooks and key-value triggers are not timed: `None`. So is a schedule with no instant left
///   (before the year 9999 ends) or a non-positive `daily_period_ms`.
pub fn next_fire_ms(trigger: &Trigger, after_ms: i64, daily_period_ms: i64) -> Option<i64> {
    match trigger {
        Trigger::Interval { period_ms } => after_ms.checked_add(*period_ms),
        Trigger::Daily if daily_period_ms > 0 => {
            after_ms.div_euclid(daily_period_ms).checked_add(1)?.checked_mul(daily_period_ms)
        }
        Trigger::Cron(spec) => spec.next_after(after_ms),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SEED_JSON: &str = r#"{"name": "daily_clean_up_rule", "trigger": {"name": "st2.timer.daily"}, "enabled": true,
   "action": {"name": "daily_clean_up_action",
              "parameters": {"os_keystone_endpoint": "{{st2kv.system.os_keystone_endpoint}}"}}}"#;

    const SEED_YAML: &str = r#"
name: daily_clean_up_rule
trigger:
  name: st2.timer.daily
enabled: true
action:
  name: daily_clean_up_action
  parameters:
    os_keystone_endpoint: "{{st2kv.system.os_keystone_endpoint}}"
"#;

    fn rule(v: serde_json::Value) -> Rule {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> serde_json::Value {
        json!({"name": "r1", "trigger": {"type": "core.st2.webhook", "parameters": {"url": "hook"}},
               "action": {"ref": "core.local", "parameters": {"cmd": "echo {{ trigger.body.x }}"}}})
    }

    fn invalid(v: serde_json::Value) -> String {
        match validate(&rule(v)) {
            Err(RuleError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn with(mut v: serde_json::Value, pointer: &str, value: serde_json::Value) -> serde_json::Value {
        *v.pointer_mut(pointer).unwrap() = value;
        v
    }

    #[test]
    fn seed_rule_parses_from_json_and_yaml() {
        let from_json = parse_rule(SEED_JSON).unwrap();
        let from_yaml = parse_rule(SEED_YAML).unwrap();
        assert_eq!(from_json, from_yaml);
        assert_eq!(from_json.name, "daily_clean_up_rule");
        assert_eq!(from_json.pack, "default");
        assert_eq!(from_json.reference(), "default.daily_clean_up_rule");
        assert!(from_json.enabled);
        assert_eq!(from_json.action_ref(), "daily_clean_up_action");
        assert_eq!(
            from_json.action.parameters["os_keystone_endpoint"],
            json!("{{st2kv.system.os_keystone_endpoint}}")
        );
        assert_eq!(from_json.trigger().unwrap(), Trigger::Daily);
        validate(&from_json).unwrap();
    }

    #[test]
    fn stackstorm_fields_are_ignored_and_defaults_apply() {
        let r = parse_rule(
            "id: 5f0\nref: p.r\nuid: rule:p:r\ntags: []\ntype: {ref: standard}\nmetadata_file: rules/r.yaml\n\
             context: {user: st2admin}\nname: r\npack: p\ntrigger:\n  type: core.st2.key_value_pair.update\n  \
             parameters:\ncriteria:\naction:\n  ref: core.noop\n",
        )
        .unwrap();
        assert_eq!(r.reference(), "p.r");
        assert!(r.enabled);
        assert!(r.criteria.is_empty() && r.trigger.parameters.is_empty());
        assert_eq!(r.trigger().unwrap(), Trigger::KeyValue(KvEvent::Update));
        assert_eq!(r.action_ref(), "core.noop");
        let off = parse_rule(r#"{"name":"r","enabled":false,"trigger":{"type":"x"},"action":{}}"#).unwrap();
        assert!(!off.enabled);
        assert_eq!(off.action_ref(), "");
    }

    #[test]
    fn parse_errors_are_invalid() {
        let err = parse_rule(r#"{"name": "r", "trigger": {}}"#).unwrap_err();
        assert!(
            matches!(&err, RuleError::Invalid(m) if m.starts_with("invalid rule JSON: ") && m.contains("action"))
        );
        let flow = parse_rule("{name: r, trigger: {type: st2.timer.daily}, action: {ref: a}}").unwrap();
        assert_eq!(flow.reference(), "default.r");
        let err = parse_rule("name: [unclosed").unwrap_err();
        assert!(err.to_string().starts_with("invalid rule YAML: "), "{err}");
    }

    #[test]
    fn serialization_round_trips() {
        let r = rule(base());
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("\"name\":null"), "{text}");
        assert_eq!(parse_rule(&text).unwrap(), r);
    }

    #[test]
    fn triggers_are_classified() {
        let t = |trigger: serde_json::Value| rule(with(base(), "/trigger", trigger)).trigger();
        assert_eq!(
            t(json!({"type": "core.st2.webhook", "parameters": {"url": "/sample"}})).unwrap(),
            Trigger::Webhook { url: "sample".into() }
        );
        assert_eq!(
            t(json!({"type": "core.st2.IntervalTimer", "parameters": {"unit": "minutes", "delta": 5}}))
                .unwrap(),
            Trigger::Interval { period_ms: 300_000 }
        );
        assert_eq!(
            t(json!({"type": "core.st2.IntervalTimer", "parameters": {"unit": "weeks", "delta": 2}}))
                .unwrap(),
            Trigger::Interval { period_ms: 14 * 86_400_000 }
        );
        assert!(matches!(
            t(json!({"type": "core.st2.CronTimer", "parameters": {"timezone": "UTC", "hour": 1}})).unwrap(),
            Trigger::Cron(_)
        ));
        assert_eq!(t(json!({"type": "st2.timer.daily"})).unwrap(), Trigger::Daily);
        // `type` wins over `name` when both are there.
        assert_eq!(t(json!({"type": "st2.timer.daily", "name": "whatever"})).unwrap(), Trigger::Daily);
        for event in KvEvent::ALL {
            assert_eq!(t(json!({"type": event.as_str()})).unwrap(), Trigger::KeyValue(event));
        }
        assert_eq!(KvEvent::ValueChange.as_str(), "core.st2.key_value_pair.value_change");
    }

    #[test]
    fn validation_messages_point_at_the_field() {
        validate(&rule(base())).unwrap();
        assert_eq!(invalid(with(base(), "/name", json!(""))), "name: required");
        assert_eq!(
            invalid(with(base(), "/name", json!("bad name"))),
            "name: \"bad name\" may only contain letters, digits, \"_\", \"-\" and \".\""
        );
        let mut v = base();
        v["pack"] = json!("my/pack");
        assert!(invalid(v).starts_with("pack: \"my/pack\" may only contain"));
        assert_eq!(invalid(with(base(), "/trigger", json!({}))), "trigger.type: required");
        assert_eq!(
            invalid(with(base(), "/trigger", json!({"type": "x"}))),
            "trigger.type: unknown trigger type \"x\"; known types: core.st2.webhook, core.st2.IntervalTimer, \
             core.st2.CronTimer, st2.timer.daily, core.st2.key_value_pair.create, core.st2.key_value_pair.update, \
             core.st2.key_value_pair.value_change, core.st2.key_value_pair.delete"
        );
        assert_eq!(
            invalid(with(base(), "/trigger/parameters", json!({}))),
            "trigger.parameters.url: required"
        );
        assert_eq!(
            invalid(with(base(), "/trigger/parameters/url", json!("/"))),
            "trigger.parameters.url: required"
        );
        let interval = |p: serde_json::Value| {
            invalid(with(base(), "/trigger", json!({"type": "core.st2.IntervalTimer", "parameters": p})))
        };
        assert_eq!(
            interval(json!({"unit": "fortnights", "delta": 1})),
            "trigger.parameters.unit: must be one of weeks, days, hours, minutes, seconds"
        );
        assert_eq!(interval(json!({"delta": 1})), "trigger.parameters.unit: required");
        for delta in [json!(0), json!(-3), json!("5"), json!(1.5), json!(null)] {
            assert_eq!(
                interval(json!({"unit": "seconds", "delta": delta})),
                "trigger.parameters.delta: must be a positive integer"
            );
        }
        assert!(interval(json!({"unit": "seconds", "delta": 1, "every": 2}))
            .starts_with("trigger.parameters.every: unknown parameter of core.st2.IntervalTimer"));
        let cron = |p: serde_json::Value| {
            invalid(with(base(), "/trigger", json!({"type": "core.st2.CronTimer", "parameters": p})))
        };
        assert_eq!(
            cron(json!({"hour": "25"})),
            "trigger.parameters.hour: value 25 in \"25\" is out of range 0-23"
        );
        assert_eq!(
            cron(json!({"timezone": "Europe/Paris", "hour": 1})),
            "trigger.parameters.timezone: only UTC is supported"
        );
        assert!(cron(json!({"hours": 1})).starts_with("trigger.parameters.hours: unknown parameter"));
        assert_eq!(
            invalid(with(
                base(),
                "/trigger",
                json!({"type": "core.st2.key_value_pair.create", "parameters": {"key": "a"}})
            )),
            "trigger.parameters.key: core.st2.key_value_pair.create takes no parameters"
        );
    }

    #[test]
    fn criteria_and_action_validation() {
        let crit = |key: &str, c: serde_json::Value| {
            let mut v = base();
            v["criteria"] = json!({ key: c });
            v
        };
        validate(&rule(crit("trigger.body.x", json!({"type": "regex", "pattern": "^a+$"})))).unwrap();
        validate(&rule(crit("trigger.body.x", json!({"type": "exists"})))).unwrap();
        validate(&rule(crit("trigger.body.x", json!({"type": "iendswith", "pattern": "z"})))).unwrap();
        assert_eq!(
            invalid(crit("trigger.body.x", json!({"type": "eq", "pattern": 1}))),
            "criteria.\"trigger.body.x\".type: unknown operator \"eq\"; use one of: equals, nequals, iequals, \
             contains, ncontains, icontains, incontains, regex, iregex, startswith, istartswith, endswith, \
             iendswith, lessthan, greaterthan, exists, nexists"
        );
        assert_eq!(
            invalid(crit("body.x", json!({"type": "equals", "pattern": 1}))),
            "criteria.\"body.x\": criteria keys must start with \"trigger.\""
        );
        let bad_regex = invalid(crit("trigger.body.x", json!({"type": "regex", "pattern": "(unclosed"})));
        assert!(bad_regex.starts_with("criteria.\"trigger.body.x\".pattern: invalid regex: "), "{bad_regex}");
        // A templated regex is only checked once rendered.
        validate(&rule(crit("trigger.body.x", json!({"type": "regex", "pattern": "{{ trigger.body.re }}"}))))
            .unwrap();
        let bad_template = invalid(crit("trigger.body.x", json!({"type": "equals", "pattern": "{{ oops"})));
        assert!(
            bad_template.starts_with("criteria.\"trigger.body.x\".pattern: template syntax error: "),
            "{bad_template}"
        );
        assert_eq!(invalid(with(base(), "/action", json!({"parameters": {}}))), "action.ref: required");
        assert_eq!(invalid(with(base(), "/action/ref", json!(""))), "action.ref: required");
        let bad_param = invalid(with(base(), "/action/parameters", json!({"os_keystone_endpoint": "{{ x"})));
        assert!(
            bad_param.starts_with("action.parameters.os_keystone_endpoint: template syntax error: "),
            "{bad_param}"
        );
        let nested =
            invalid(with(base(), "/action/parameters", json!({"list": [{"x": "ok"}, {"x": "{% if %}"}]})));
        assert!(nested.starts_with("action.parameters.list[1].x: template syntax error: "), "{nested}");
    }

    #[test]
    fn next_fire_times() {
        let interval = Trigger::Interval { period_ms: 5_000 };
        assert_eq!(next_fire_ms(&interval, 1_000, 86_400_000), Some(6_000));
        assert_eq!(next_fire_ms(&Trigger::Daily, 0, 86_400_000), Some(86_400_000));
        assert_eq!(next_fire_ms(&Trigger::Daily, 86_399_999, 86_400_000), Some(86_400_000));
        assert_eq!(next_fire_ms(&Trigger::Daily, 86_400_000, 86_400_000), Some(172_800_000));
        assert_eq!(next_fire_ms(&Trigger::Daily, 2_500, 1_000), Some(3_000));
        assert_eq!(next_fire_ms(&Trigger::Daily, 2_500, 0), None);
        let cron = rule(with(
            base(),
            "/trigger",
            json!({"type": "core.st2.CronTimer", "parameters": {"minute": "*/10"}}),
        ))
        .trigger()
        .unwrap();
        // 2024-01-01T00:00:00Z = 1704067200; minute */10 fires at :00, :10, ... with second 0.
        let midnight = 1_704_067_200_000;
        assert_eq!(next_fire_ms(&cron, midnight - 1, 86_400_000), Some(midnight));
        assert_eq!(next_fire_ms(&cron, midnight, 86_400_000), Some(midnight + 600_000));
        assert_eq!(next_fire_ms(&cron, midnight + 599_999, 86_400_000), Some(midnight + 600_000));
        let hook = Trigger::Webhook { url: "x".into() };
        assert_eq!(next_fire_ms(&hook, 0, 86_400_000), None);
        assert_eq!(next_fire_ms(&Trigger::KeyValue(KvEvent::Delete), 0, 86_400_000), None);
    }
}
