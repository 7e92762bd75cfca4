//! Templates against the live store: the node's side of `st2kv-rules` rendering, and the
//! dry-run endpoint `POST /v1/templates/render`.
//!
//! [`StoreLookup`] answers `st2kv.system.x` / `st2kv.user.x` from this node's state machine (the
//! caller runs a read barrier first) and decides who may decrypt: an admin, or the owner of a
//! user-scope key. Everything else about templates (syntax, lazy dotted lookups, `decrypt_kv`,
//! masking) is the rules crate's.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use st2kv_raft::KeyId;
use st2kv_rules::{Lookup, LookupError, RenderOptions, Renderer, Scope, Stored};

use crate::auth::{authenticate, Requester};
use crate::cluster::now_ms;
use crate::error::ApiError;
use crate::App;

/// Reads keys for one render, with one requester's rights.
pub struct StoreLookup {
    pub app: Arc<App>,
    /// Whose `st2kv.user` keys these are (None: no user scope, as for rules).
    pub user: Option<String>,
    /// May decrypt system secrets (and anyone's user secrets).
    pub admin: bool,
    /// For the audit log: who asked.
    pub on_behalf_of: String,
}

impl StoreLookup {
    fn key(&self, scope: Scope, name: &str) -> Result<KeyId, LookupError> {
        match scope {
            Scope::System => Ok(KeyId::system(name)),
            Scope::User => match &self.user {
                Some(u) => Ok(KeyId::user(u.clone(), name)),
                None => Err(LookupError::Failed(
                    "st2kv.user is not available to rules: automations only see system-scope keys".into(),
                )),
            },
        }
    }
}

impl Lookup for StoreLookup {
    fn get(&self, scope: Scope, name: &str) -> Result<Option<Stored>, LookupError> {
        let key = self.key(scope, name)?;
        let rec =
            self.app.cluster.view.get(&key, now_ms()).map_err(|e| LookupError::Failed(e.to_string()))?;
        Ok(rec.map(|r| Stored { value: r.value, secret: r.secret }))
    }

    fn decrypt(&self, key: Option<(Scope, &str)>, value: &str) -> Result<String, LookupError> {
        let Some((scope, name)) = key else {
            return Err(LookupError::Failed(
                "decrypt_kv can only decrypt values read from the datastore (st2kv.system.NAME | decrypt_kv): \
                 st2kv ciphertext is bound to its key"
                    .into(),
            ));
        };
        let key = self.key(scope, name)?;
        let owner = key.scope == st2kv_raft::Scope::User && Some(&key.user) == self.user.as_ref();
        if !(self.admin || owner) {
            return Err(LookupError::Denied(format!(
                "User \"{}\" may not decrypt \"{}\": decryption requires administrator access",
                self.on_behalf_of,
                match scope {
                    Scope::System => format!("st2kv.system.{name}"),
                    Scope::User => format!("st2kv.user.{name}"),
                }
            )));
        }
        let plain = self.app.secrets.decrypt(&key, value).map_err(|e| LookupError::Failed(e.to_string()))?;
        tracing::info!(target: "audit", user = %self.on_behalf_of, key = %key.key_ref(), scope = key.scope.as_str(), "secret decrypted by a template");
        Ok(plain)
    }
}

/// The renderer rules are evaluated with: system keys only, admin rights (only admins create
/// rules), failing on the first problem.
pub fn rule_renderer(app: &Arc<App>) -> Renderer {
    let lookup =
        StoreLookup { app: app.clone(), user: None, admin: true, on_behalf_of: "rules-engine".into() };
    Renderer::new(Arc::new(lookup), RenderOptions { user_scope: false, collect: false })
}

/// The renderer for a manual run or a dry-run: `user`'s keys in `st2kv.user`, failing on the
/// first problem.
pub fn user_renderer(app: &Arc<App>, user: &str, admin: bool) -> Renderer {
    let lookup =
        StoreLookup { app: app.clone(), user: Some(user.to_string()), admin, on_behalf_of: user.to_string() };
    Renderer::new(Arc::new(lookup), RenderOptions { user_scope: true, collect: false })
}

/// What the dry-run endpoint accepts: exactly one of `template`, `object` or `rule`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RenderRequest {
    template: Option<String>,
    object: Option<Value>,
    /// A rule (object, JSON or YAML text) or the ref of a stored rule: its action parameters
    /// are rendered as the rules engine would (system scope only).
    rule: Option<Value>,
    /// The trigger payload to render against (`{{ trigger.body.x }}`); `{}` by default.
    #[serde(default)]
    trigger: Value,
    /// Render as this user (admins only; others may name only themselves).
    user: Option<String>,
}

/// `POST /v1/templates/render`: render against the live cluster and report every missing key,
/// every key the caller may not decrypt and every error, instead of failing on the first.
pub async fn render(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req = authenticate(&app, &headers, &q, true).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("Failed to parse request body: not UTF-8".into()))?;
    let doc: RenderRequest = serde_yaml::from_str(text)
        .map_err(|e| ApiError::BadRequest(format!("Failed to parse request body: {e}")))?;
    let (as_user, admin) = render_identity(&app, &req, doc.user.as_deref())?;
    let given = [doc.template.is_some(), doc.object.is_some(), doc.rule.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ApiError::BadRequest("Give exactly one of \"template\", \"object\" or \"rule\".".into()));
    }
    let trigger = if doc.trigger.is_null() { json!({}) } else { doc.trigger };
    let context = json!({ "trigger": trigger });
    let (input, user_scope) = match (doc.template, doc.object, doc.rule) {
        (Some(t), _, _) => (Value::String(t), true),
        (_, Some(o), _) => (o, true),
        (_, _, Some(rule)) => (crate::rules::action_parameters_of(&app, rule)?, false),
        _ => unreachable!("exactly one was checked above"),
    };
    let lookup = StoreLookup {
        app: app.clone(),
        user: user_scope.then(|| as_user.clone()),
        admin,
        on_behalf_of: req.user.clone(),
    };
    let renderer = Renderer::new(Arc::new(lookup), RenderOptions { user_scope, collect: true });
    let rendered = renderer.render(&input, &context).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Json(json!({
        "result": rendered.value,
        "user": as_user,
        "missing": rendered.report.missing,
        "denied": rendered.report.denied,
        "errors": rendered.report.errors,
    })))
}

/// Who a dry-run renders as: the caller, or (for an admin) the user it names, with that user's
/// rights, so an admin can preview exactly what `alice` would get.
fn render_identity(app: &App, req: &Requester, user: Option<&str>) -> Result<(String, bool), ApiError> {
    match user {
        None => Ok((req.user.clone(), req.admin)),
        Some(u) if u == req.user => Ok((req.user.clone(), req.admin)),
        Some(_) if !req.admin => Err(ApiError::Forbidden(
            "Administrator access required to render templates as another user.".into(),
        )),
        Some("") => Err(ApiError::BadRequest("\"user\" must not be empty.".into())),
        Some(u) => match app.cluster.view.aux_get(crate::auth::USERS, u, now_ms())? {
            Some(rec) => {
                let rec: crate::auth::UserRec = crate::auth::decode_rec(&rec.value)?;
                Ok((u.to_string(), rec.role == crate::auth::Role::Admin))
            }
            None if !app.auth.enabled => Ok((u.to_string(), false)),
            None => Err(ApiError::NotFound(format!("User \"{u}\" does not exist."))),
        },
    }
}
