//! Tokens (`/tokens`), whoami (`/v1/user`), API keys (`/v1/apikeys`) and users (`/v1/users`), as
//! StackStorm shapes them (`../shared/st2-contract.md` §3), plus user management, which
//! StackStorm leaves to an external htpasswd file.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use st2kv_raft::{Command, Cond, Outcome};

use crate::auth::*;
use crate::cluster::now_ms;
use crate::error::ApiError;
use crate::keys::format_timestamp;
use crate::App;

fn parse_body(bytes: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::BadRequest(format!("{other} is not of type 'object'"))),
        Err(e) => Err(ApiError::BadRequest(format!("Failed to parse request body: {e}"))),
    }
}

fn body_str(m: &serde_json::Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::BadRequest(format!("{other} is not of type 'string'"))),
    }
}

fn body_bool(m: &serde_json::Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::BadRequest(format!("{other} is not of type 'boolean'"))),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`, as StackStorm shows `token_expire`.
fn seconds_timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

async fn propose_aux(app: &App, cmd: Command) -> Result<Outcome, ApiError> {
    app.cluster.propose(cmd).await
}

fn user_rec(app: &App, name: &str) -> Result<Option<(UserRec, u64)>, ApiError> {
    match app.cluster.view.aux_get(USERS, name, now_ms())? {
        Some(r) => Ok(Some((decode_rec(&r.value)?, r.revision))),
        None => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// How long an expired token's record is kept before the TTL sweeper purges it.
const EXPIRED_TOKEN_GRACE_MS: i64 = 3_600_000;

fn invalid_credentials() -> ApiError {
    ApiError::Unauthorized("Invalid or missing credentials".into())
}

/// `POST /tokens` (auth listener) and `POST /auth/v1/tokens` (API listener): HTTP Basic login.
pub async fn create_token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !app.auth.enabled {
        return Err(ApiError::BadRequest(
            "Authentication is disabled on this cluster (--insecure-no-auth); no token is needed.".into(),
        ));
    }
    let Some((user, password)) = basic_credentials(&headers) else { return Err(invalid_credentials()) };
    app.auth.limiter.check(&user)?;
    let doc = parse_body(&body)?;
    let ttl = match doc.get("ttl") {
        None | Some(Value::Null) => app.auth.token_ttl_s,
        Some(Value::Number(n)) if n.is_i64() => n.as_i64().unwrap_or(0),
        Some(other) => return Err(ApiError::BadRequest(format!("{other} is not of type 'integer'"))),
    };
    if ttl < 1 {
        return Err(ApiError::BadRequest(format!("{ttl} is less than the minimum of 1")));
    }
    if ttl > app.auth.token_max_ttl_s {
        return Err(ApiError::BadRequest(format!(
            "TTL specified {ttl} is greater than max allowed {}.",
            app.auth.token_max_ttl_s
        )));
    }
    // Read the user as of now, cluster-wide: a password changed on another node counts here.
    app.cluster.linearize().await?;
    let rec = user_rec(&app, &user)?;
    let ok = match &rec {
        Some((u, _)) if u.enabled => verify_password(password, u.password_hash.clone()).await,
        _ => {
            // Spend the same effort on unknown users, so timing does not reveal who exists.
            let _ = verify_password(password, app.auth.dummy_hash.clone()).await;
            false
        }
    };
    if !ok {
        app.auth.limiter.failed(&user);
        app.cluster.metrics.login_failures.inc();
        tracing::warn!(user = %user, "failed login");
        return Err(invalid_credentials());
    }
    app.auth.limiter.succeeded(&user);
    let token = new_token();
    let now = now_ms();
    let expiry_ms = now + ttl * 1000;
    let rec = TokenRec { id: new_id(), user: user.clone(), expiry_ms, created_ms: now };
    let cmd = Command::PutAux {
        table: TOKENS.into(),
        key: token_hash(&token),
        value: encode_rec(&rec),
        // Kept an hour past expiry, so its use is refused as "expired" rather than "unknown".
        expire_at_ms: Some(expiry_ms + EXPIRED_TOKEN_GRACE_MS),
        cond: Cond::Absent,
    };
    match propose_aux(&app, cmd).await? {
        Outcome::AuxPut { .. } => {}
        other => return Err(ApiError::Internal(format!("token creation answered {other:?}"))),
    }
    let body = json!({
        "id": rec.id, "user": user, "token": token, "expiry": format_timestamp(expiry_ms),
        "metadata": {}, "service": false,
    });
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("http://{}/v1", app.api_advertise)) {
        resp.headers_mut().insert("x-api-url", v);
    }
    Ok(resp)
}

/// `DELETE /v1/tokens/{token}`: log out. The token's owner or an admin may revoke it.
pub async fn revoke_token(
    State(app): State<Arc<App>>,
    Path(token): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = authenticate(&app, &headers, &q, true).await?;
    let hash = token_hash(&token);
    let Some(rec) = app.cluster.view.aux_get(TOKENS, &hash, i64::MIN)? else {
        return Err(ApiError::NotFound("Token not found.".into()));
    };
    let tok: TokenRec = decode_rec(&rec.value)?;
    if tok.user != req.user && !req.admin {
        return Err(ApiError::NotFound("Token not found.".into()));
    }
    let cmd = Command::DeleteAux { table: TOKENS.into(), key: hash, cond: Cond::Always };
    match propose_aux(&app, cmd).await? {
        Outcome::AuxDeleted => Ok(StatusCode::NO_CONTENT.into_response()),
        Outcome::NotFound => Err(ApiError::NotFound("Token not found.".into())),
        other => Err(ApiError::Internal(format!("token revocation answered {other:?}"))),
    }
}

/// `GET /v1/user`: who am I (StackStorm's whoami JSON).
pub async fn whoami(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let req = authenticate(&app, &headers, &q, true).await?;
    let mut authn = json!({
        "method": match req.method { Method::ApiKey => "API key", _ => "authentication token" },
        "location": req.location,
    });
    if let Method::Token { expiry_ms } = req.method {
        authn["token_expire"] = json!(seconds_timestamp(expiry_ms));
    }
    Ok(Json(json!({
        "username": req.user,
        "authentication": authn,
        "rbac": {"enabled": req.rbac, "roles": if req.admin { vec!["admin"] } else { vec![] }, "is_admin": req.admin},
    })))
}

// ---------------------------------------------------------------------------------------------
// API keys

const MASK: &str = "********";

/// `?show_secrets=` with StackStorm's boolean spellings.
fn show_secrets(q: &HashMap<String, String>) -> bool {
    q.get("show_secrets")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "y"))
}

fn render_key(k: &ApiKeyRec, show: bool) -> Value {
    let hash = if show { k.key_hash.clone() } else { MASK.to_string() };
    json!({
        "id": k.id, "uid": if show { format!("api_key:{}", k.key_hash) } else { MASK.to_string() },
        "user": k.user, "key_hash": hash, "metadata": k.metadata,
        "created_at": format_timestamp(k.created_ms), "enabled": k.enabled,
    })
}

/// Every API key the requester may see (all for admins, their own otherwise).
fn visible_keys(app: &App, req: &Requester) -> Result<Vec<(ApiKeyRec, u64)>, ApiError> {
    let mut out = Vec::new();
    for (_, r) in app.cluster.view.aux_list(APIKEYS, "", now_ms())? {
        let k: ApiKeyRec = decode_rec(&r.value)?;
        if req.admin || k.user == req.user {
            out.push((k, r.revision));
        }
    }
    out.sort_by_key(|(k, _)| k.created_ms);
    Ok(out)
}

/// Find a key by id or by the key itself, among those the requester may see.
fn find_key(app: &App, req: &Requester, id_or_key: &str) -> Result<Option<(ApiKeyRec, u64)>, ApiError> {
    if let Some(r) = app.cluster.view.aux_get(APIKEYS, &apikey_hash(id_or_key), now_ms())? {
        let k: ApiKeyRec = decode_rec(&r.value)?;
        if req.admin || k.user == req.user {
            return Ok(Some((k, r.revision)));
        }
    }
    Ok(visible_keys(app, req)?.into_iter().find(|(k, _)| k.id == id_or_key))
}

pub async fn list_apikeys(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = authenticate(&app, &headers, &q, true).await?;
    let show = req.admin
        && q.get("show_secrets")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    let keys = visible_keys(&app, &req)?;
    let total = keys.len();
    let offset: usize = q.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = q
        .get("limit")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|l| *l > 0)
        .map(|l| l as usize)
        .unwrap_or(usize::MAX);
    let page: Vec<Value> = keys.iter().skip(offset).take(limit).map(|(k, _)| render_key(k, show)).collect();
    let mut resp = Json(page).into_response();
    resp.headers_mut().insert("x-total-count", HeaderValue::from(total));
    if limit != usize::MAX {
        resp.headers_mut().insert("x-limit", HeaderValue::from(limit));
    }
    Ok(resp)
}

pub async fn get_apikey(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let req = authenticate(&app, &headers, &q, true).await?;
    let show = req.admin && show_secrets(&q);
    match find_key(&app, &req, &id)? {
        Some((k, _)) => Ok(Json(render_key(&k, show))),
        None => Err(ApiError::NotFound(format!("ApiKey matching {id} for reference and id not found."))),
    }
}

pub async fn create_apikey(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = authenticate(&app, &headers, &q, true).await?;
    let doc = parse_body(&body)?;
    let user = body_str(&doc, "user")?.filter(|u| !u.is_empty()).unwrap_or_else(|| req.user.clone());
    if user != req.user && !req.admin {
        // StackStorm issue #6380: never let a body `user` create keys for someone else.
        return Err(ApiError::Forbidden("Only administrators may create API keys for other users.".into()));
    }
    if user_rec(&app, &user)?.is_none() {
        return Err(ApiError::BadRequest(format!("User \"{user}\" does not exist.")));
    }
    let metadata = match doc.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(m)) => Value::Object(m.clone()),
        Some(other) => return Err(ApiError::BadRequest(format!("{other} is not of type 'object'"))),
    };
    let enabled = body_bool(&doc, "enabled")?.unwrap_or(true);
    let (key, key_hash) = match body_str(&doc, "key_hash")? {
        // A migrated key: its hash comes from a StackStorm export; the key itself stays unknown.
        Some(h) => {
            req.require_admin("load API keys by hash")?;
            if h.len() != 128 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ApiError::BadRequest("key_hash must be 128 hex characters (sha512).".into()));
            }
            (None, h.to_ascii_lowercase())
        }
        None => {
            let k = new_api_key();
            let h = apikey_hash(&k);
            (Some(k), h)
        }
    };
    let rec =
        ApiKeyRec { id: new_id(), user, key_hash: key_hash.clone(), metadata, created_ms: now_ms(), enabled };
    let cmd = Command::PutAux {
        table: APIKEYS.into(),
        key: key_hash,
        value: encode_rec(&rec),
        expire_at_ms: None,
        cond: Cond::Absent,
    };
    match propose_aux(&app, cmd).await? {
        Outcome::AuxPut { .. } => {}
        Outcome::CondFailed { .. } => {
            return Err(ApiError::Conflict("An API key with this key_hash already exists.".into()))
        }
        other => return Err(ApiError::Internal(format!("API key creation answered {other:?}"))),
    }
    let mut body = render_key(&rec, true);
    body["key"] = json!(key);
    body.as_object_mut().map(|m| m.remove("key_hash"));
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn update_apikey(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req = authenticate(&app, &headers, &q, true).await?;
    let doc = parse_body(&body)?;
    let Some((mut k, rev)) = find_key(&app, &req, &id)? else {
        return Err(ApiError::NotFound(format!("ApiKey with key or id={id} not found.")));
    };
    if let Some(h) = body_str(&doc, "key_hash")? {
        if h != MASK && h != k.key_hash {
            return Err(ApiError::BadRequest("Update of key_hash is not allowed.".into()));
        }
    }
    if let Some(e) = body_bool(&doc, "enabled")? {
        k.enabled = e;
    }
    if let Some(Value::Object(m)) = doc.get("metadata") {
        k.metadata = Value::Object(m.clone());
    }
    let cmd = Command::PutAux {
        table: APIKEYS.into(),
        key: k.key_hash.clone(),
        value: encode_rec(&k),
        expire_at_ms: None,
        cond: Cond::Revision(rev),
    };
    match propose_aux(&app, cmd).await? {
        Outcome::AuxPut { .. } => Ok(Json(render_key(&k, false))),
        Outcome::CondFailed { .. } => {
            Err(ApiError::Conflict("The API key changed concurrently; retry.".into()))
        }
        other => Err(ApiError::Internal(format!("API key update answered {other:?}"))),
    }
}

pub async fn delete_apikey(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = authenticate(&app, &headers, &q, true).await?;
    let Some((k, _)) = find_key(&app, &req, &id)? else {
        return Err(ApiError::NotFound(format!("ApiKey with key or id={id} not found.")));
    };
    let cmd = Command::DeleteAux { table: APIKEYS.into(), key: k.key_hash, cond: Cond::Always };
    match propose_aux(&app, cmd).await? {
        Outcome::AuxDeleted | Outcome::NotFound => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(ApiError::Internal(format!("API key deletion answered {other:?}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Users

fn render_user(u: &UserRec) -> Value {
    json!({"name": u.name, "role": u.role.as_str(), "enabled": u.enabled, "created_at": format_timestamp(u.created_ms)})
}

fn check_password(p: &str) -> Result<(), ApiError> {
    if p.chars().count() < 8 {
        return Err(ApiError::BadRequest("Passwords must be at least 8 characters long.".into()));
    }
    Ok(())
}

pub async fn list_users(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let req = authenticate(&app, &headers, &q, true).await?;
    req.require_admin("list users")?;
    let mut out = Vec::new();
    for (_, r) in app.cluster.view.aux_list(USERS, "", now_ms())? {
        out.push(render_user(&decode_rec(&r.value)?));
    }
    Ok(Json(Value::Array(out)))
}

pub async fn get_user(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let req = authenticate(&app, &headers, &q, true).await?;
    if name != req.user {
        req.require_admin("read other users")?;
    }
    match user_rec(&app, &name)? {
        Some((u, _)) => Ok(Json(render_user(&u))),
        None => Err(ApiError::NotFound(format!("User \"{name}\" does not exist."))),
    }
}

pub async fn create_user(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = authenticate(&app, &headers, &q, true).await?;
    req.require_admin("create users")?;
    let doc = parse_body(&body)?;
    let name = body_str(&doc, "name")?
        .ok_or_else(|| ApiError::BadRequest("'name' is a required property".into()))?;
    let password = body_str(&doc, "password")?
        .ok_or_else(|| ApiError::BadRequest("'password' is a required property".into()))?;
    let role = Role::parse(&body_str(&doc, "role")?.unwrap_or_else(|| "user".into()))?;
    check_user_name(&name)?;
    check_password(&password)?;
    let u = UserRec {
        name: name.clone(),
        password_hash: hash_password(password).await?,
        role,
        enabled: body_bool(&doc, "enabled")?.unwrap_or(true),
        created_ms: now_ms(),
    };
    let cmd = Command::PutAux {
        table: USERS.into(),
        key: name.clone(),
        value: encode_rec(&u),
        expire_at_ms: None,
        cond: Cond::Absent,
    };
    match propose_aux(&app, cmd).await? {
        Outcome::AuxPut { .. } => Ok((StatusCode::CREATED, Json(render_user(&u))).into_response()),
        Outcome::CondFailed { .. } => Err(ApiError::Conflict(format!("User \"{name}\" already exists."))),
        other => Err(ApiError::Internal(format!("user creation answered {other:?}"))),
    }
}

/// `PUT /v1/users/{name}`: admins change anything; users change their own password only.
pub async fn update_user(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req = authenticate(&app, &headers, &q, true).await?;
    let doc = parse_body(&body)?;
    let password = body_str(&doc, "password")?;
    let role = body_str(&doc, "role")?.map(|r| Role::parse(&r)).transpose()?;
    let enabled = body_bool(&doc, "enabled")?;
    if name != req.user || role.is_some() || enabled.is_some() {
        req.require_admin("change other users, roles or enabled flags")?;
    }
    let Some((mut u, rev)) = user_rec(&app, &name)? else {
        return Err(ApiError::NotFound(format!("User \"{name}\" does not exist.")));
    };
    if let Some(p) = password {
        check_password(&p)?;
        u.password_hash = hash_password(p).await?;
    }
    if let Some(r) = role {
        u.role = r;
    }
    if let Some(e) = enabled {
        u.enabled = e;
    }
    let cmd = Command::PutAux {
        table: USERS.into(),
        key: name,
        value: encode_rec(&u),
        expire_at_ms: None,
        cond: Cond::Revision(rev),
    };
    match propose_aux(&app, cmd).await? {
        Outcome::AuxPut { .. } => Ok(Json(render_user(&u))),
        Outcome::CondFailed { .. } => Err(ApiError::Conflict("The user changed concurrently; retry.".into())),
        other => Err(ApiError::Internal(format!("user update answered {other:?}"))),
    }
}

pub async fn delete_user(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = authenticate(&app, &headers, &q, true).await?;
    req.require_admin("delete users")?;
    if name == req.user {
        return Err(ApiError::BadRequest("You cannot delete the user you are authenticated as.".into()));
    }
    let cmd = Command::DeleteAux { table: USERS.into(), key: name.clone(), cond: Cond::Always };
    match propose_aux(&app, cmd).await? {
        Outcome::AuxDeleted => Ok(StatusCode::NO_CONTENT.into_response()),
        Outcome::NotFound => Err(ApiError::NotFound(format!("User \"{name}\" does not exist."))),
        other => Err(ApiError::Internal(format!("user deletion answered {other:?}"))),
    }
}

/// Create the bootstrap admin if no user of that name exists (idempotent; any node may try).
pub async fn ensure_admin(app: &App, name: &str, password: &str) -> Result<(), ApiError> {
    let u = UserRec {
        name: name.to_string(),
        password_hash: hash_password(password.to_string()).await?,
        role: Role::Admin,
        enabled: true,
        created_ms: now_ms(),
    };
    let cmd = Command::PutAux {
        table: USERS.into(),
        key: name.to_string(),
        value: encode_rec(&u),
        expire_at_ms: None,
        cond: Cond::Absent,
    };
    match app.cluster.propose(cmd).await? {
        Outcome::AuxPut { .. } => {
            tracing::info!(user = name, "bootstrap admin created");
            Ok(())
        }
        Outcome::CondFailed { .. } => Ok(()),
        other => Err(ApiError::Internal(format!("admin bootstrap answered {other:?}"))),
    }
}
