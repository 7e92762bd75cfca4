//! The StackStorm keys API: `GET/PUT/DELETE /v1/keys[/{name}]`, shaped exactly as
//! `../shared/st2-contract.md` §1 describes, including its error messages.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use st2kv_api::KeyValuePair;
use st2kv_raft::{Command, KeyId, Outcome, Record, Scope};

use crate::auth::{authenticate, authenticate_write, Requester};
use crate::cluster::now_ms;
use crate::error::ApiError;
use crate::App;

const ALLOWED_SCOPES: &str = "['system', 'user', 'st2kv.system', 'st2kv.user']";
/// StackStorm's `api.max_page_size`: the largest `limit` a non-admin may ask for.
const MAX_PAGE_SIZE: i64 = 100;
const DEFAULT_LIMIT: i64 = 100;

/// Query parameters with StackStorm's typing rules.
pub struct Params(HashMap<String, String>);

impl Params {
    fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn bool(&self, name: &str) -> Result<bool, ApiError> {
        match self.str(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(false),
            Some("true" | "1" | "yes" | "y") => Ok(true),
            Some("false" | "0" | "no" | "n") => Ok(false),
            Some(_) => Err(ApiError::BadRequest(format!("Parameter \"{name}\" is not of type boolean"))),
        }
    }

    fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.str(name) {
            None => Ok(None),
            Some(v) => {
                let digits = v.strip_prefix('-').unwrap_or(v);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ApiError::BadRequest(format!("Parameter \"{name}\" is not of type integer")));
                }
                v.parse()
                    .map(Some)
                    .map_err(|_| ApiError::BadRequest(format!("Parameter \"{name}\" is out of range")))
            }
        }
    }

    /// `?consistency=stale` (or the `X-St2kv-Consistency` header) skips the read barrier.
    fn stale(&self, headers: &HeaderMap) -> Result<bool, ApiError> {
        let raw = self
            .str("consistency")
            .map(str::to_string)
            .or_else(|| headers.get("x-st2kv-consistency").and_then(|v| v.to_str().ok()).map(str::to_string));
        match raw.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("linearizable") | Some("strong") => Ok(false),
            Some("stale") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "Parameter \"consistency\" must be \"linearizable\" or \"stale\", not \"{other}\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScopeSel {
    System,
    User,
    All,
}

/// StackStorm's `get_datastore_full_scope`.
fn full_scope(s: &str) -> String {
    if s == "all" || s.contains("st2kv") {
        s.to_string()
    } else {
        format!("st2kv.{s}")
    }
}

/// Scope of a get/put/delete: empty is system; `all` is system except in a PUT body.
fn one_scope(raw: Option<&str>, all_allowed: bool) -> Result<Scope, ApiError> {
    let raw = raw.unwrap_or("").trim();
    if raw.is_empty() {
        return Ok(Scope::System);
    }
    match full_scope(raw).as_str() {
        "st2kv.system" => Ok(Scope::System),
        "st2kv.user" => Ok(Scope::User),
        "all" if all_allowed => Ok(Scope::System),
        other => Err(ApiError::BadRequest(format!(
            "Scope {other} is not in allowed scopes list: {ALLOWED_SCOPES}."
        ))),
    }
}

fn list_scope(raw: Option<&str>) -> Result<ScopeSel, ApiError> {
    let raw = raw.unwrap_or("").trim();
    if raw.is_empty() {
        return Ok(ScopeSel::System);
    }
    match full_scope(raw).as_str() {
        "st2kv.system" => Ok(ScopeSel::System),
        "st2kv.user" => Ok(ScopeSel::User),
        "all" => Ok(ScopeSel::All),
        other => Err(ApiError::BadRequest(format!("Invalid scope: {other}"))),
    }
}

/// The owner a request addresses: its own user unless an admin (with RBAC) names another.
fn owner(req: &Requester, asked: Option<&str>) -> Result<String, ApiError> {
    match asked.filter(|u| !u.is_empty()) {
        None => Ok(req.user.clone()),
        Some(u) if u == req.user => Ok(req.user.clone()),
        Some(u) => {
            if !req.rbac {
                Err(ApiError::Forbidden(
                    "\"user\" attribute can only be provided by admins when RBAC is enabled".into(),
                ))
            } else if !req.admin {
                Err(ApiError::Forbidden("\"user\" attribute can only be provided by admins".into()))
            } else {
                Ok(u.to_string())
            }
        }
    }
}

/// System keys are readable by everyone but changed by admins only; a user-scope key has already
/// been confined to its owner (or an admin naming the owner) by [`owner`].
fn may_change(req: &Requester, key: &KeyId, verb: &str) -> Result<(), ApiError> {
    if key.scope == Scope::System && req.rbac && !req.admin {
        return Err(ApiError::Forbidden(format!(
            "User \"{}\" doesn't have required permission \"key_value_pair_{verb}\" on resource \"key_value_pair:st2kv.system:{}\"",
            req.user, key.name
        )));
    }
    Ok(())
}

/// Only an admin, or the owner of a user-scope key, may read a secret in plaintext.
fn may_decrypt(req: &Requester, key: &KeyId) -> Result<(), ApiError> {
    if req.admin || (key.scope == Scope::User && key.user == req.user) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("Decrypt option requires administrator access".into()))
    }
}

/// The value to show for `r`: its plaintext when decryption was asked for (and is allowed).
fn reveal(
    app: &App,
    req: &Requester,
    key: &KeyId,
    r: &Record,
    decrypt: bool,
) -> Result<Option<String>, ApiError> {
    if !(decrypt && r.secret) {
        return Ok(None);
    }
    may_decrypt(req, key)?;
    let plain = app.secrets.decrypt(key, &r.value)?;
    tracing::info!(target: "audit", user = %req.user, key = %key.key_ref(), scope = key.scope.as_str(), "secret decrypted");
    Ok(Some(plain))
}

/// The credentials a write was checked with were revoked or changed before it was ordered.
fn credentials_changed() -> ApiError {
    ApiError::Unauthorized("Unauthorized".into())
}

fn not_found(key: &KeyId) -> ApiError {
    ApiError::NotFound(format!("The key \"{}\" does not exist in the StackStorm datastore.", key.key_ref()))
}

/// Render a stored record as StackStorm's resource JSON; `plaintext` is a decrypted secret.
pub fn render(key: &KeyId, r: &Record, plaintext: Option<String>) -> KeyValuePair {
    let encrypted = r.secret && plaintext.is_none();
    KeyValuePair {
        id: Some(r.id.clone()),
        uid: Some(format!("key_value_pair:{}:{}", key.scope.as_str(), key.key_ref())),
        name: key.name.clone(),
        value: plaintext.unwrap_or_else(|| r.value.clone()),
        secret: r.secret,
        encrypted,
        scope: Some(key.scope.as_str().to_string()),
        user: (key.scope == Scope::User).then(|| key.user.clone()),
        expire_timestamp: r.expire_at_ms.map(format_timestamp),
        description: r.description.clone(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, as StackStorm's `isotime.format(..., offset=False)`.
pub fn format_timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn check_name(app: &App, name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::BadRequest("Key name must not be empty.".into()));
    }
    if name.contains('/') {
        return Err(ApiError::BadRequest(format!("Key name \"{name}\" must not contain \"/\".")));
    }
    if name.chars().any(|c| c == '\0') {
        return Err(ApiError::BadRequest("Key name must not contain NUL characters.".into()));
    }
    if name.len() > app.limits.max_name_bytes {
        return Err(ApiError::TooLarge(format!(
            "Key name is {} bytes long, over this cluster's limit of {} bytes.",
            name.len(),
            app.limits.max_name_bytes
        )));
    }
    Ok(())
}

fn with_applied_header(app: &App, mut resp: Response) -> Response {
    if let Ok(Some(applied)) = app.cluster.view.applied() {
        if let Ok(v) = HeaderValue::from_str(&applied.index.to_string()) {
            resp.headers_mut().insert("x-st2kv-applied-index", v);
        }
    }
    resp
}

/// `GET /v1/keys`.
pub async fn list(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = Params(q);
    let req = authenticate(&app, &headers, &p.0, !p.stale(&headers)?).await?;
    let mut scope = list_scope(p.str("scope"))?;
    let decrypt = p.bool("decrypt")?;
    let limit = p.int("limit")?.unwrap_or(DEFAULT_LIMIT);
    let offset = p.int("offset")?.unwrap_or(0);
    if p.str("user").is_some() {
        scope = ScopeSel::User;
    }
    if decrypt && scope != ScopeSel::User && !req.admin {
        return Err(ApiError::Forbidden("Decrypt option requires administrator access".into()));
    }
    let user = owner(&req, p.str("user"))?;
    let limit =
        match limit {
            -1 if req.admin => None,
            -1 => return Err(ApiError::Forbidden(
                "Administrator access required to be able to specify limit=-1 and retrieve all the records"
                    .into(),
            )),
            l if l == 0 || l < -1 => {
                return Err(ApiError::BadRequest(format!(
                    "Limit, \"{l}\" specified, must be a positive number or -1 for full result set."
                )))
            }
            l if l > MAX_PAGE_SIZE && !req.admin => {
                return Err(ApiError::Forbidden(format!(
                    "Limit \"{l}\" specified, maximum value is \"{MAX_PAGE_SIZE}\""
                )))
            }
            l => Some(l as usize),
        };
    if !(0..(1i64 << 31)).contains(&offset) {
        return Err(ApiError::BadRequest(format!(
            "Offset \"{offset}\" specified, must be a non-negative number smaller than 2147483648."
        )));
    }
    let prefix = p.str("prefix").unwrap_or("");
    let now = now_ms();
    let view = &app.cluster.view;
    let mut items = Vec::new();
    let mut scan = |scope: Scope, user: &str| -> Result<(), ApiError> {
        let found = match p.str("name") {
            Some(name) => {
                let key = KeyId { scope, user: user.to_string(), name: name.to_string() };
                view.get(&key, now)?.map(|r| vec![(key, r)]).unwrap_or_default()
            }
            None => view.list(scope, user, prefix, offset as usize, limit, now)?,
        };
        for (k, r) in &found {
            items.push(render(k, r, reveal(&app, &req, k, r, decrypt)?));
        }
        Ok(())
    };
    if matches!(scope, ScopeSel::System | ScopeSel::All) {
        scan(Scope::System, "")?;
    }
    if matches!(scope, ScopeSel::User | ScopeSel::All) {
        scan(Scope::User, &user)?;
    }
    Ok(with_applied_header(&app, Json(items).into_response()))
}

/// `GET /v1/keys/{name}`.
pub async fn get(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = Params(q);
    let req = authenticate(&app, &headers, &p.0, !p.stale(&headers)?).await?;
    let mut scope = one_scope(p.str("scope"), true)?;
    let decrypt = p.bool("decrypt")?;
    if p.str("user").is_some() {
        scope = Scope::User;
    }
    let user = owner(&req, p.str("user"))?;
    let key = KeyId { scope, user: if scope == Scope::User { user } else { String::new() }, name };
    match app.cluster.view.get(&key, now_ms())? {
        Some(r) => {
            let plain = reveal(&app, &req, &key, &r, decrypt)?;
            Ok(with_applied_header(&app, Json(render(&key, &r, plain)).into_response()))
        }
        None => Err(not_found(&key)),
    }
}

/// `PUT /v1/keys` with no name.
pub async fn put_without_name() -> ApiError {
    ApiError::BadRequest("Key name must not be empty.".into())
}

/// Python's repr of a JSON value, as jsonschema messages print it.
fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => format!("'{s}'"),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => format!("[{}]", items.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter().map(|(k, v)| format!("'{k}': {}", py_repr(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn field_str(
    obj: &serde_json::Map<String, Value>,
    name: &str,
    required: bool,
) -> Result<Option<String>, ApiError> {
    match obj.get(name) {
        None if required => Err(ApiError::BadRequest(format!("'{name}' is a required property"))),
        None => Ok(None),
        Some(Value::Null) if !required => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::BadRequest(format!("{} is not of type 'string'", py_repr(other)))),
    }
}

fn field_bool(obj: &serde_json::Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::BadRequest(format!("{} is not of type 'boolean'", py_repr(other)))),
    }
}

/// `PUT /v1/keys/{name}`: create or replace.
pub async fn put(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req = authenticate_write(&app, &headers, &q).await?;
    // The body limit leaves room for JSON escaping of a maximal value; the value itself is
    // checked against the configured limit below, with a clearer message.
    let limit = app.limits.max_value_bytes.saturating_mul(6).saturating_add(64 * 1024);
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::TooLarge(format!(
            "Request body is larger than this cluster accepts (values up to {} bytes).",
            app.limits.max_value_bytes
        ))
    })?;
    let doc: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("Failed to parse request body: {e}")))?
    };
    let Value::Object(obj) = &doc else {
        return Err(ApiError::BadRequest(format!("{} is not of type 'object'", py_repr(&doc))));
    };
    field_str(obj, "name", true)?;
    let value = field_str(obj, "value", true)?.unwrap_or_default();
    let scope = one_scope(field_str(obj, "scope", false)?.as_deref(), false)?;
    let asked_user = field_str(obj, "user", false)?;
    let secret = field_bool(obj, "secret")?;
    let encrypted = field_bool(obj, "encrypted")?;
    let description = field_str(obj, "description", false)?;
    let ttl = match obj.get("ttl") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) if n.is_i64() => n.as_i64().unwrap_or(0),
        Some(other) => {
            return Err(ApiError::BadRequest(format!("{} is not of type 'integer'", py_repr(other))))
        }
    };
    if ttl < 0 {
        return Err(ApiError::BadRequest(format!(
            "TTL must be a positive number of seconds (or 0 for no expiry), not {ttl}."
        )));
    }
    check_name(&app, &name)?;
    if value.len() > app.limits.max_value_bytes {
        return Err(ApiError::TooLarge(format!(
            "Value for key \"{name}\" is {} bytes long, over this cluster's limit of {} bytes.",
            value.len(),
            app.limits.max_value_bytes
        )));
    }
    let user = owner(&req, asked_user.as_deref())?;
    let key = KeyId { scope, user: if scope == Scope::User { user } else { String::new() }, name };
    may_change(&req, &key, "set")?;
    // Secrets are encrypted here, before anything is proposed: only ciphertext is replicated.
    let (value, secret) = if encrypted {
        if req.rbac && !req.admin {
            return Err(ApiError::Forbidden("Pre-encrypted option requires administrator access".into()));
        }
        (verify_pre_encrypted(&app, &key, value)?, true)
    } else if secret {
        let ring = app.secrets.require(&key.name)?;
        (ring.encrypt(&value, &crate::secrets::key_aad(&key)), true)
    } else {
        (value, false)
    };
    let now = now_ms();
    let expire_at_ms = (ttl > 0).then(|| now.saturating_add(ttl.saturating_mul(1000)));
    let cmd = Command::Put {
        key: key.clone(),
        value,
        secret,
        description,
        expire_at_ms,
        now_ms: now,
        new_id: hex::encode(rand::random::<[u8; 12]>()),
        cond: st2kv_raft::Cond::Always,
    };
    match app.cluster.propose_guarded(cmd, req.guards.clone()).await? {
        Outcome::Put { record, .. } => Ok(Json(render(&key, &record, None)).into_response()),
        Outcome::GuardFailed => Err(credentials_changed()),
        other => Err(ApiError::Internal(format!("put answered {other:?}"))),
    }
}

/// A pre-encrypted value (what `key list -j` prints for a secret) is stored as-is only if it
/// decrypts under this cluster's keyring for this very key; a StackStorm ciphertext that the
/// configured legacy key verifies is re-encrypted under our keyring.
fn verify_pre_encrypted(app: &App, key: &KeyId, value: String) -> Result<String, ApiError> {
    let ring = app.secrets.require(&key.name)?;
    let aad = crate::secrets::key_aad(key);
    if ring.decrypt(&value, &aad).is_ok() {
        return Ok(value);
    }
    if let Some(legacy) = &app.secrets.legacy {
        if let Ok(plain) = legacy.decrypt(&value) {
            return Ok(ring.encrypt(&plain, &aad));
        }
    }
    Err(ApiError::BadRequest(format!(
        "Failed to verify the integrity of the provided value for key \"{}\". Ensure that the value is encrypted with the correct key and not corrupted.",
        key.name
    )))
}

/// `DELETE /v1/keys/{name}`.
pub async fn delete(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = authenticate_write(&app, &headers, &q).await?;
    let p = Params(q);
    let scope = one_scope(p.str("scope"), true)?;
    let user = owner(&req, p.str("user"))?;
    let key = KeyId { scope, user: if scope == Scope::User { user } else { String::new() }, name };
    may_change(&req, &key, "delete")?;
    match app
        .cluster
        .propose_guarded(Command::Delete { key: key.clone(), now_ms: now_ms() }, req.guards.clone())
        .await?
    {
        Outcome::Deleted { .. } => Ok(StatusCode::NO_CONTENT.into_response()),
        Outcome::GuardFailed => Err(credentials_changed()),
        Outcome::NotFound => Err(not_found(&key)),
        other => Err(ApiError::Internal(format!("delete answered {other:?}"))),
    }
}

/// `POST /v1/keyring/reencrypt` (admin): re-encrypt every secret not under the active key, in
/// batches through Raft. Each write is conditional on the revision that was read, so a
/// concurrent change is never overwritten (it was written under the then active key anyway).
pub async fn reencrypt(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req = authenticate(&app, &headers, &q, true).await?;
    req.require_admin("re-encrypt secrets")?;
    app.secrets.reload_now();
    let ring = app.secrets.require("(all secrets)")?;
    let batch = Params(q).int("batch")?.unwrap_or(100).clamp(1, 10_000) as usize;
    let (mut total, mut done, mut concurrent, mut failed) = (0usize, 0usize, 0usize, Vec::new());
    // A few passes: a secret rewritten concurrently by a node that had not reloaded the keyring
    // yet is picked up by the next pass.
    for pass in 0..5 {
        let stale: Vec<(KeyId, Record)> = app
            .cluster
            .view
            .secrets()?
            .into_iter()
            .filter(|(_, r)| {
                st2kv_api::keyring::Keyring::key_id_of(&r.value).as_deref() != Some(ring.active.as_str())
            })
            .collect();
        if pass == 0 {
            total = stale.len();
        }
        if stale.is_empty() {
            break;
        }
        for chunk in stale.chunks(batch) {
            let mut pending = Vec::new();
            for (key, r) in chunk {
                let aad = crate::secrets::key_aad(key);
                let plain = match ring.decrypt(&r.value, &aad) {
                    Ok(p) => p,
                    Err(e) => {
                        failed.push(json!({"key": key.key_ref(), "scope": key.scope.as_str(), "error": e.to_string()}));
                        continue;
                    }
                };
                let cmd = Command::Put {
                    key: key.clone(),
                    value: ring.encrypt(&plain, &aad),
                    secret: true,
                    description: r.description.clone(),
                    expire_at_ms: r.expire_at_ms,
                    now_ms: now_ms(),
                    new_id: r.id.clone(),
                    cond: st2kv_raft::Cond::Revision(r.revision),
                };
                pending.push(app.cluster.propose(cmd));
            }
            for outcome in futures::future::join_all(pending).await {
                match outcome? {
                    Outcome::Put { .. } => done += 1,
                    Outcome::CondFailed { .. } => concurrent += 1,
                    other => return Err(ApiError::Internal(format!("re-encryption answered {other:?}"))),
                }
            }
            tracing::info!(done, total, "re-encryption progress");
        }
        if !failed.is_empty() {
            break;
        }
    }
    Ok(Json(json!({
        "active_key": ring.active,
        "total": total,
        "reencrypted": done,
        "changed_concurrently": concurrent,
        "failed": failed,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_normalize_like_stackstorm() {
        assert_eq!(one_scope(None, true).unwrap(), Scope::System);
        assert_eq!(one_scope(Some("user"), true).unwrap(), Scope::User);
        assert_eq!(one_scope(Some("st2kv.user"), true).unwrap(), Scope::User);
        assert_eq!(one_scope(Some("all"), true).unwrap(), Scope::System);
        assert_eq!(
            one_scope(Some("foo"), true).unwrap_err().to_string(),
            "Scope st2kv.foo is not in allowed scopes list: ['system', 'user', 'st2kv.system', 'st2kv.user']."
        );
        assert!(one_scope(Some("all"), false).is_err());
        assert_eq!(list_scope(Some("all")).unwrap(), ScopeSel::All);
        assert_eq!(list_scope(Some("bad")).unwrap_err().to_string(), "Invalid scope: st2kv.bad");
    }

    #[test]
    fn timestamps_have_microseconds_and_z() {
        assert_eq!(format_timestamp(1_780_000_000_123), "2026-05-28T20:26:40.123000Z");
    }

    #[test]
    fn query_types_are_checked() {
        let p = Params(HashMap::from([("decrypt".into(), "maybe".into()), ("limit".into(), "1x".into())]));
        assert_eq!(
            p.bool("decrypt").unwrap_err().to_string(),
            "Parameter \"decrypt\" is not of type boolean"
        );
        assert_eq!(p.int("limit").unwrap_err().to_string(), "Parameter \"limit\" is not of type integer");
        let p = Params(HashMap::from([("decrypt".into(), "Y".into()), ("limit".into(), "-1".into())]));
        assert!(p.bool("decrypt").unwrap());
        assert_eq!(p.int("limit").unwrap(), Some(-1));
    }
}
