//! Criteria: does a trigger payload satisfy a rule? Operators follow StackStorm's
//! `st2common/operators.py`.

use regex::{Regex, RegexBuilder};
use serde_json::Value as Json;

use crate::error::RuleError;
use crate::model::Rule;
use crate::render::{self, Renderer};

/// The operator names a criterion may use, in the order error messages list them.
pub(crate) const OPERATORS: [&str; 17] = [
    "equals",
    "nequals",
    "iequals",
    "contains",
    "ncontains",
    "icontains",
    "incontains",
    "regex",
    "iregex",
    "startswith",
    "istartswith",
    "endswith",
    "iendswith",
    "lessthan",
    "greaterthan",
    "exists",
    "nexists",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Equals,
    NEquals,
    IEquals,
    Contains,
    NContains,
    IContains,
    INContains,
    Regex,
    IRegex,
    StartsWith,
    IStartsWith,
    EndsWith,
    IEndsWith,
    LessThan,
    GreaterThan,
    Exists,
    NExists,
}

impl Op {
    pub(crate) fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "equals" => Op::Equals,
            "nequals" => Op::NEquals,
            "iequals" => Op::IEquals,
            "contains" => Op::Contains,
            "ncontains" => Op::NContains,
            "icontains" => Op::IContains,
            "incontains" => Op::INContains,
            "regex" => Op::Regex,
            "iregex" => Op::IRegex,
            "startswith" => Op::StartsWith,
            "istartswith" => Op::IStartsWith,
            "endswith" => Op::EndsWith,
            "iendswith" => Op::IEndsWith,
            "lessthan" => Op::LessThan,
            "greaterthan" => Op::GreaterThan,
            "exists" => Op::Exists,
            "nexists" => Op::NExists,
            _ => return None,
        })
    }

    pub(crate) fn is_regex(self) -> bool {
        matches!(self, Op::Regex | Op::IRegex)
    }
}

pub(crate) fn compile_regex(pattern: &str, op: Op) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).case_insensitive(op == Op::IRegex).build()
}

/// Does the trigger payload satisfy every criterion? Patterns that are strings are rendered first
/// (templated patterns, context = {"trigger": payload} plus st2kv) with `renderer`.
///
/// A key `trigger.body.x.y` names `payload["body"]["x"]["y"]` (numeric segments index arrays).
/// An absent path, or a JSON `null`, is a missing value: `exists` is false, `nexists` true, and
/// every other positive operator false (so its `n…` negation is true). Criteria are checked in key
/// order and the first that fails ends the check. Errors: an unknown operator or bad key
/// ([`RuleError::Invalid`], as [`validate`](crate::validate) words it), a failed pattern render
/// ([`RuleError::Render`]), a rendered regex that does not compile ([`RuleError::Invalid`]).
pub fn matches(rule: &Rule, payload: &Json, renderer: &Renderer) -> Result<bool, RuleError> {
    let context = serde_json::json!({ "trigger": payload });
    for (key, criterion) in &rule.criteria {
        let Some(path) = key.strip_prefix("trigger.") else {
            return Err(RuleError::Invalid(format!(
                "criteria.\"{key}\": criteria keys must start with \"trigger.\""
            )));
        };
        let Some(op) = Op::parse(&criterion.op) else {
            return Err(RuleError::Invalid(format!(
                "criteria.\"{key}\".type: unknown operator \"{}\"; use one of: {}",
                criterion.op,
                OPERATORS.join(", ")
            )));
        };
        let pattern = match &criterion.pattern {
            Json::String(p) if render::is_template(p) => Json::String(
                renderer
                    .render_str(p, &context)
                    .map_err(|e| RuleError::Render(format!("criteria.\"{key}\".pattern: {e}")))?,
            ),
            other => other.clone(),
        };
        let value = lookup(payload, path).filter(|v| !v.is_null());
        if !check(op, value, &pattern).map_err(|e| match e {
            RuleError::Invalid(m) => RuleError::Invalid(format!("criteria.\"{key}\".pattern: {m}")),
            other => other,
        })? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The value at a dotted path (after `trigger.`) of the payload.
fn lookup<'a>(payload: &'a Json, path: &str) -> Option<&'a Json> {
    if path.is_empty() {
        return Some(payload);
    }
    path.split('.').try_fold(payload, |cur, seg| match cur {
        Json::Object(map) => map.get(seg),
        Json::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn check(op: Op, value: Option<&Json>, pattern: &Json) -> Result<bool, RuleError> {
    let Some(value) = value else {
        return Ok(matches!(op, Op::NEquals | Op::NContains | Op::INContains | Op::NExists));
    };
    Ok(match op {
        Op::Equals => equals(value, pattern),
        Op::NEquals => !equals(value, pattern),
        Op::IEquals => iequals(value, pattern),
        Op::Contains => contains(value, pattern, false),
        Op::NContains => !contains(value, pattern, false),
        Op::IContains => contains(value, pattern, true),
        Op::INContains => !contains(value, pattern, true),
        Op::Regex | Op::IRegex => {
            let (Some(text), Some(pat)) = (text(value), text(pattern)) else { return Ok(false) };
            compile_regex(&pat, op)
                .map_err(|e| RuleError::Invalid(format!("invalid regex: {e}")))?
                .is_match(&text)
        }
        Op::StartsWith => text_pair(value, pattern, false).is_some_and(|(v, p)| v.starts_with(&p)),
        Op::IStartsWith => text_pair(value, pattern, true).is_some_and(|(v, p)| v.starts_with(&p)),
        Op::EndsWith => text_pair(value, pattern, false).is_some_and(|(v, p)| v.ends_with(&p)),
        Op::IEndsWith => text_pair(value, pattern, true).is_some_and(|(v, p)| v.ends_with(&p)),
        Op::LessThan => number(value).zip(number(pattern)).is_some_and(|(v, p)| v < p),
        Op::GreaterThan => number(value).zip(number(pattern)).is_some_and(|(v, p)| v > p),
        Op::Exists => true,
        Op::NExists => false,
    })
}

/// The text form of a scalar: strings as they are, numbers and booleans as JSON writes them.
fn text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn text_pair(value: &Json, pattern: &Json, fold: bool) -> Option<(String, String)> {
    let (v, p) = (text(value)?, text(pattern)?);
    Some(if fold { (v.to_lowercase(), p.to_lowercase()) } else { (v, p) })
}

fn number(v: &Json) -> Option<f64> {
    match v {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// `value == pattern`: numbers numerically, strings as strings, a string against a number or
/// boolean by text form (or numerically when the string is a number), anything else structurally.
fn equals(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        // Templates render booleans as Python does ("True"), hence the case-insensitive match.
        (Json::String(s), Json::Bool(b)) | (Json::Bool(b), Json::String(s)) => {
            s.trim().eq_ignore_ascii_case(&b.to_string())
        }
        (Json::String(s), Json::Number(n)) | (Json::Number(n), Json::String(s)) => {
            *s == n.to_string() || number(&Json::String(s.clone())).is_some_and(|f| n.as_f64() == Some(f))
        }
        _ => a == b,
    }
}

fn iequals(a: &Json, b: &Json) -> bool {
    match (text(a), text(b)) {
        (Some(x), Some(y)) => x.to_lowercase() == y.to_lowercase(),
        _ => equals(a, b),
    }
}

/// Substring for strings, membership for arrays, key for objects.
fn contains(value: &Json, pattern: &Json, fold: bool) -> bool {
    match value {
        Json::String(_) => text_pair(value, pattern, fold).is_some_and(|(v, p)| v.contains(&p)),
        Json::Array(items) => {
            items.iter().any(|x| if fold { iequals(x, pattern) } else { equals(x, pattern) })
        }
        Json::Object(map) => match text(pattern) {
            Some(p) if fold => map.keys().any(|k| k.to_lowercase() == p.to_lowercase()),
            Some(p) => map.contains_key(&p),
            None => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Scope;
    use crate::testutil::{renderer, FakeLookup};
    use serde_json::json;

    fn payload() -> Json {
        json!({"body": {
            "name": "Web-Server-01",
            "count": 7,
            "ratio": "2.5",
            "tags": ["prod", "EU"],
            "meta": {"Owner": "ops"},
            "flag": true,
            "nothing": null,
            "hosts": [{"ip": "10.0.0.1"}]
        }})
    }

    /// Evaluates one criterion against [`payload`].
    fn eval(key: &str, op: &str, pattern: Json) -> Result<bool, RuleError> {
        let rule: Rule = serde_json::from_value(json!({
            "name": "r", "trigger": {"type": "core.st2.webhook"}, "action": {"ref": "a"},
            "criteria": {key: {"type": op, "pattern": pattern}}
        }))
        .unwrap();
        let (r, _) = renderer(FakeLookup::default().with(Scope::System, "limit", "5"), false, false);
        matches(&rule, &payload(), &r)
    }

    fn yes(key: &str, op: &str, pattern: Json) -> bool {
        eval(key, op, pattern).unwrap()
    }

    #[test]
    fn equals_family() {
        assert!(yes("trigger.body.name", "equals", json!("Web-Server-01")));
        assert!(!yes("trigger.body.name", "equals", json!("web-server-01")));
        assert!(yes("trigger.body.count", "equals", json!(7)));
        assert!(yes("trigger.body.count", "equals", json!(7.0)));
        assert!(yes("trigger.body.count", "equals", json!("7")));
        assert!(!yes("trigger.body.count", "equals", json!("8")));
        assert!(yes("trigger.body.flag", "equals", json!(true)));
        assert!(yes("trigger.body.flag", "equals", json!("True")));
        assert!(yes("trigger.body.tags", "equals", json!(["prod", "EU"])));
        assert!(yes("trigger.body.name", "nequals", json!("other")));
        assert!(!yes("trigger.body.name", "nequals", json!("Web-Server-01")));
        assert!(yes("trigger.body.name", "iequals", json!("web-server-01")));
        assert!(!yes("trigger.body.name", "iequals", json!("web-server-02")));
    }

    #[test]
    fn contains_family() {
        assert!(yes("trigger.body.name", "contains", json!("Server")));
        assert!(!yes("trigger.body.name", "contains", json!("server")));
        assert!(yes("trigger.body.tags", "contains", json!("prod")));
        assert!(!yes("trigger.body.tags", "contains", json!("dev")));
        assert!(yes("trigger.body.meta", "contains", json!("Owner")));
        assert!(!yes("trigger.body.meta", "contains", json!("ops")));
        assert!(yes("trigger.body.name", "ncontains", json!("db")));
        assert!(!yes("trigger.body.name", "ncontains", json!("Web")));
        assert!(yes("trigger.body.name", "icontains", json!("SERVER")));
        assert!(yes("trigger.body.tags", "icontains", json!("eu")));
        assert!(yes("trigger.body.meta", "icontains", json!("owner")));
        assert!(!yes("trigger.body.name", "icontains", json!("db")));
        assert!(yes("trigger.body.name", "incontains", json!("DB")));
        assert!(!yes("trigger.body.name", "incontains", json!("web")));
    }

    #[test]
    fn regex_family_uses_search_semantics() {
        assert!(yes("trigger.body.name", "regex", json!("Server-\\d+")));
        assert!(yes("trigger.body.name", "regex", json!("^Web")));
        assert!(!yes("trigger.body.name", "regex", json!("^Server")));
        assert!(yes("trigger.body.name", "iregex", json!("^web-server")));
        assert!(!yes("trigger.body.name", "iregex", json!("^db")));
        assert!(yes("trigger.body.count", "regex", json!("^7$")));
    }

    #[test]
    fn starts_and_ends_with() {
        assert!(yes("trigger.body.name", "startswith", json!("Web")));
        assert!(!yes("trigger.body.name", "startswith", json!("web")));
        assert!(yes("trigger.body.name", "istartswith", json!("web")));
        assert!(!yes("trigger.body.name", "istartswith", json!("server")));
        assert!(yes("trigger.body.name", "endswith", json!("-01")));
        assert!(!yes("trigger.body.name", "endswith", json!("-02")));
        assert!(yes("trigger.body.name", "iendswith", json!("SERVER-01")));
        assert!(!yes("trigger.body.name", "iendswith", json!("web")));
    }

    #[test]
    fn numeric_comparisons() {
        assert!(yes("trigger.body.count", "lessthan", json!(10)));
        assert!(!yes("trigger.body.count", "lessthan", json!(7)));
        assert!(yes("trigger.body.count", "greaterthan", json!("6.5")));
        assert!(!yes("trigger.body.count", "greaterthan", json!(7)));
        assert!(yes("trigger.body.ratio", "greaterthan", json!(2)));
        // Not a number: false either way.
        assert!(!yes("trigger.body.name", "lessthan", json!(10)));
        assert!(!yes("trigger.body.name", "greaterthan", json!(10)));
    }

    #[test]
    fn exists_and_missing_values() {
        assert!(yes("trigger.body.name", "exists", json!(null)));
        assert!(!yes("trigger.body.absent", "exists", json!(null)));
        assert!(!yes("trigger.body.nothing", "exists", json!(null)));
        assert!(yes("trigger.body.absent", "nexists", json!(null)));
        assert!(!yes("trigger.body.name", "nexists", json!(null)));
        assert!(!yes("trigger.body.absent", "equals", json!("x")));
        assert!(yes("trigger.body.absent", "nequals", json!("x")));
        assert!(!yes("trigger.body.absent", "contains", json!("x")));
        assert!(yes("trigger.body.absent", "ncontains", json!("x")));
        assert!(!yes("trigger.body.absent", "lessthan", json!(1)));
    }

    #[test]
    fn paths_walk_objects_and_arrays() {
        assert!(yes("trigger.body.hosts.0.ip", "equals", json!("10.0.0.1")));
        assert!(yes("trigger.body.tags.1", "equals", json!("EU")));
        assert!(!yes("trigger.body.tags.5", "exists", json!(null)));
        assert!(!yes("trigger.body.name.x", "exists", json!(null)));
    }

    #[test]
    fn templated_patterns_are_rendered_first() {
        assert!(yes("trigger.body.count", "greaterthan", json!("{{ st2kv.system.limit }}")));
        assert!(!yes("trigger.body.count", "lessthan", json!("{{ st2kv.system.limit }}")));
        assert!(yes("trigger.body.name", "equals", json!("{{ trigger.body.name }}")));
        assert!(!yes("trigger.body.name", "equals", json!("{{ trigger.body.tags[0] }}")));
        assert!(yes("trigger.body.count", "equals", json!("{{ 3 + 4 }}")));
        let err = eval("trigger.body.name", "regex", json!("{{ '(' }}")).unwrap_err();
        assert!(
            matches!(&err, RuleError::Invalid(m) if m.starts_with("criteria.\"trigger.body.name\".pattern: invalid regex: ")),
            "{err}"
        );
        let err = eval("trigger.body.name", "equals", json!("{{ st2kv.user.x }}")).unwrap_err();
        assert!(
            matches!(&err, RuleError::Render(m) if m.starts_with("criteria.\"trigger.body.name\".pattern: st2kv.user is not available")),
            "{err}"
        );
    }

    #[test]
    fn all_criteria_must_hold_and_bad_operators_are_errors() {
        let rule: Rule = serde_json::from_value(json!({
            "name": "r", "trigger": {"type": "core.st2.webhook"}, "action": {"ref": "a"},
            "criteria": {
                "trigger.body.name": {"type": "startswith", "pattern": "Web"},
                "trigger.body.count": {"type": "lessthan", "pattern": 3}
            }
        }))
        .unwrap();
        let (r, _) = renderer(FakeLookup::default(), false, false);
        assert!(!matches(&rule, &payload(), &r).unwrap());
        let mut relaxed = rule.clone();
        relaxed.criteria.get_mut("trigger.body.count").unwrap().pattern = json!(30);
        assert!(matches(&relaxed, &payload(), &r).unwrap());
        let mut empty = rule.clone();
        empty.criteria.clear();
        assert!(matches(&empty, &payload(), &r).unwrap());
        assert!(
            matches!(eval("trigger.body.name", "eq", json!("x")), Err(RuleError::Invalid(m)) if m.contains("unknown operator \"eq\""))
        );
        assert!(matches!(eval("body.name", "equals", json!("x")), Err(RuleError::Invalid(_))));
    }
}
