//! Rules, replicated: `/v1/rules` create / list / get / update / delete / enable / disable.
//!
//! A rule is stored as an auxiliary record of table [`RULES`] under its ref (`pack.name`), with
//! compare-and-set on every change, so two admins updating the same rule at once cannot lose
//! one another's change silently (the loser gets 409). Parsing and validation are the rules
//! crate's: an invalid rule is refused at creation with a message that names the field.
//! Reading rules needs any valid credential; changing them needs an admin (rules run commands).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use st2kv_raft::{Command, Cond, Outcome};
use st2kv_rules::Rule;

use crate::auth::{authenticate, authenticate_write, decode_rec, encode_rec, new_id, Requester};
use crate::cluster::now_ms;
use crate::error::ApiError;
use crate::keys::format_timestamp;
use crate::App;

pub const RULES: &str = "rules";

/// A rule as replicated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleRec {
    pub id: String,
    pub rule: Rule,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub created_by: String,
}

/// A stored rule with the revision it was read at.
pub struct StoredRule {
    pub rec: RuleRec,
    pub revision: u64,
}

/// StackStorm's rule resource.
pub fn to_json(s: &StoredRule) -> Value {
    let r = &s.rec.rule;
    let mut v = serde_json::to_value(r).expect("a rule is JSON");
    let obj = v.as_object_mut().expect("a rule is an object");
    obj.insert("id".into(), json!(s.rec.id));
    obj.insert("ref".into(), json!(r.reference()));
    obj.insert("uid".into(), json!(format!("rule:{}:{}", r.pack, r.name)));
    obj.insert("context".into(), json!({"user": s.rec.created_by}));
    obj.insert("created_at".into(), json!(format_timestamp(s.rec.created_ms)));
    obj.insert("updated_at".into(), json!(format_timestamp(s.rec.updated_ms)));
    v
}

/// Every stored rule, in ref order.
pub fn all(app: &App) -> Result<Vec<StoredRule>, ApiError> {
    let mut out = Vec::new();
    for (_, r) in app.cluster.view.aux_list(RULES, "", now_ms())? {
        out.push(StoredRule { rec: decode_rec(&r.value)?, revision: r.revision });
    }
    Ok(out)
}

/// A rule by ref or by id.
pub fn find(app: &App, ref_or_id: &str) -> Result<StoredRule, ApiError> {
    if let Some(r) = app.cluster.view.aux_get(RULES, ref_or_id, now_ms())? {
        return Ok(StoredRule { rec: decode_rec(&r.value)?, revision: r.revision });
    }
    all(app)?
        .into_iter()
        .find(|s| s.rec.id == ref_or_id)
        .ok_or_else(|| ApiError::NotFound(format!("Rule with ref or id \"{ref_or_id}\" is not found.")))
}

/// Parse and validate a rule from a request body (JSON or YAML).
fn parse_body(body: &[u8]) -> Result<Rule, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("Failed to parse request body: not UTF-8".into()))?;
    let rule = st2kv_rules::parse_rule(text).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    st2kv_rules::validate(&rule).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(rule)
}

/// The action parameters a dry-run renders for `rule`: a stored rule's ref, or a rule given
/// inline (object or JSON/YAML text), validated first.
pub fn action_parameters_of(app: &App, rule: Value) -> Result<Value, ApiError> {
    let rule = match rule {
        Value::String(s) if !s.trim_start().starts_with('{') && !s.contains('\n') => find(app, &s)?.rec.rule,
        Value::String(s) => parse_body(s.as_bytes())?,
        other => parse_body(other.to_string().as_bytes())?,
    };
    Ok(Value::Object(rule.action.parameters))
}

fn check_write(req: &Requester) -> Result<(), ApiError> {
    req.require_admin("create or change rules (rules run actions)")
}

async fn write(app: &App, req: &Requester, r#ref: &str, rec: &RuleRec, cond: Cond) -> Result<u64, ApiError> {
    let cmd = Command::PutAux {
        table: RULES.into(),
        key: r#ref.to_string(),
        value: encode_rec(rec),
        expire_at_ms: None,
        cond,
    };
    match app.cluster.propose_guarded(cmd, req.guards.clone()).await? {
        Outcome::AuxPut { revision, .. } => Ok(revision),
        Outcome::CondFailed { current: Some(_) } if cond == Cond::Absent => {
            Err(ApiError::Conflict(format!("Rule \"{}\" already exists.", r#ref)))
        }
        Outcome::CondFailed { .. } => Err(ApiError::Conflict(format!(
            "Rule \"{}\" was changed or deleted by someone else meanwhile; read it and retry.",
            r#ref
        ))),
        Outcome::GuardFailed => Err(ApiError::Unauthorized("Unauthorized".into())),
        other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `GET /v1/rules[?pack=P&enabled=true|false&trigger=TYPE&action=REF]`.
pub async fn list(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Vec<Value>>, ApiError> {
    authenticate(&app, &headers, &q, true).await?;
    let enabled = match q.get("enabled").map(String::as_str) {
        None => None,
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(_) => return Err(ApiError::BadRequest("Parameter \"enabled\" is not of type boolean".into())),
    };
    let rules = all(&app)?
        .into_iter()
        .filter(|s| q.get("pack").is_none_or(|p| &s.rec.rule.pack == p))
        .filter(|s| enabled.is_none_or(|e| s.rec.rule.enabled == e))
        .filter(|s| q.get("action").is_none_or(|a| s.rec.rule.action_ref() == a))
        .filter(|s| {
            q.get("trigger").is_none_or(|t| {
                s.rec.rule.trigger.kind.as_deref().or(s.rec.rule.trigger.name.as_deref()) == Some(t.as_str())
            })
        })
        .map(|s| to_json(&s))
        .collect();
    Ok(Json(rules))
}

/// `GET /v1/rules/{ref_or_id}`.
pub async fn get(
    State(app): State<Arc<App>>,
    Path(ref_or_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, &q, true).await?;
    Ok(Json(to_json(&find(&app, &ref_or_id)?)))
}

/// `POST /v1/rules` (admin): JSON or YAML body; 201 with the stored rule.
pub async fn create(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = authenticate_write(&app, &headers, &q).await?;
    check_write(&req)?;
    let rule = parse_body(&body)?;
    let now = now_ms();
    let rec = RuleRec { id: new_id(), rule, created_ms: now, updated_ms: now, created_by: req.user.clone() };
    let r#ref = rec.rule.reference();
    let revision = write(&app, &req, &r#ref, &rec, Cond::Absent).await?;
    tracing::info!(target: "audit", user = %req.user, rule = %r#ref, "rule created");
    Ok((StatusCode::CREATED, Json(to_json(&StoredRule { rec, revision }))))
}

/// `PUT /v1/rules/{ref_or_id}` (admin): replace the rule; its ref may not change.
pub async fn update(
    State(app): State<Arc<App>>,
    Path(ref_or_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req = authenticate_write(&app, &headers, &q).await?;
    check_write(&req)?;
    app.cluster.linearize().await?;
    let rule = parse_body(&body)?;
    let current = find(&app, &ref_or_id)?;
    let r#ref = current.rec.rule.reference();
    if rule.reference() != r#ref {
        return Err(ApiError::BadRequest(format!(
            "name: a rule's pack and name cannot change (\"{}\" → \"{}\"); create a new rule instead.",
            r#ref,
            rule.reference()
        )));
    }
    let rec = RuleRec { rule, updated_ms: now_ms(), ..current.rec };
    let revision = write(&app, &req, &r#ref, &rec, Cond::Revision(current.revision)).await?;
    tracing::info!(target: "audit", user = %req.user, rule = %r#ref, "rule updated");
    Ok(Json(to_json(&StoredRule { rec, revision })))
}

/// `POST /v1/rules/{ref_or_id}/enable` and `/disable` (admin).
pub async fn enable(
    State(app): State<Arc<App>>,
    Path((ref_or_id, verb)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let enabled = match verb.as_str() {
        "enable" => true,
        "disable" => false,
        _ => return Err(ApiError::NotFound("The resource could not be found.".into())),
    };
    let req = authenticate_write(&app, &headers, &q).await?;
    check_write(&req)?;
    app.cluster.linearize().await?;
    let current = find(&app, &ref_or_id)?;
    let r#ref = current.rec.rule.reference();
    let mut rec = current.rec;
    rec.rule.enabled = enabled;
    rec.updated_ms = now_ms();
    let revision = write(&app, &req, &r#ref, &rec, Cond::Revision(current.revision)).await?;
    tracing::info!(target: "audit", user = %req.user, rule = %r#ref, enabled, "rule {verb}d");
    Ok(Json(to_json(&StoredRule { rec, revision })))
}

/// `DELETE /v1/rules/{ref_or_id}` (admin): 204.
pub async fn delete(
    State(app): State<Arc<App>>,
    Path(ref_or_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let req = authenticate_write(&app, &headers, &q).await?;
    check_write(&req)?;
    app.cluster.linearize().await?;
    let current = find(&app, &ref_or_id)?;
    let r#ref = current.rec.rule.reference();
    let cmds = vec![
        (
            Command::DeleteAux {
                table: RULES.into(),
                key: r#ref.clone(),
                cond: Cond::Revision(current.revision),
            },
            req.guards.clone(),
        ),
        (
            Command::DeleteAux {
                table: crate::engine::TIMERS.into(),
                key: r#ref.clone(),
                cond: Cond::Always,
            },
            Vec::new(),
        ),
    ];
    match app.cluster.propose_all(cmds).await?.first() {
        Some(Outcome::AuxDeleted) => {
            tracing::info!(target: "audit", user = %req.user, rule = %r#ref, "rule deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Some(Outcome::GuardFailed) => Err(ApiError::Unauthorized("Unauthorized".into())),
        _ => Err(ApiError::Conflict(format!(
            "Rule \"{}\" was changed or deleted by someone else meanwhile; read it and retry.",
            r#ref
        ))),
    }
}
