//! Who is asking: users, tokens and API keys, and how a request proves its identity.
//!
//! Users (argon2 password hashes), token hashes and API-key hashes are replicated as opaque
//! auxiliary records of the Raft state machine (tables [`USERS`], [`TOKENS`], [`APIKEYS`]), so
//! every node authenticates every request the same way, and a revocation holds on every node
//! once committed. Tokens and keys themselves are never stored: a token is looked up by its
//! SHA-256, an API key by StackStorm's `sha512("saltnpepper" + key)` (so key hashes exported from
//! StackStorm keep working). Secrets are compared in constant time.
//!
//! Identity is taken from the first credential present, in StackStorm's order: header
//! `X-Auth-Token`, header `St2-Api-Key`, query `x-auth-token`, query `st2-api-key`, cookie
//! `auth-token`. An invalid credential is not skipped for the next one. Before checking it the
//! node runs a linearizable barrier, so a token issued or revoked through any node is honoured
//! or refused here as soon as that call has returned (stale reads skip the barrier and accept
//! credentials as of the node's applied state).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

use crate::cluster::now_ms;
use crate::error::ApiError;
use crate::App;

pub const USERS: &str = "users";
pub const TOKENS: &str = "tokens";
pub const APIKEYS: &str = "apikeys";

/// The system user every request acts as when authentication is disabled (StackStorm's).
pub const SYSTEM_USER: &str = "stanley";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, ApiError> {
        match s {
            "admin" => Ok(Role::Admin),
            "user" => Ok(Role::User),
            other => Err(ApiError::BadRequest(format!("Role \"{other}\" is not one of: admin, user."))),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

/// A user, as replicated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRec {
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub role: Role,
    pub enabled: bool,
    pub created_ms: i64,
}

/// An issued token, stored under the SHA-256 of the token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRec {
    pub id: String,
    pub user: String,
    pub expiry_ms: i64,
    pub created_ms: i64,
}

/// An API key, stored under its key hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyRec {
    pub id: String,
    pub user: String,
    pub key_hash: String,
    pub metadata: serde_json::Value,
    pub created_ms: i64,
    pub enabled: bool,
}

pub fn encode_rec<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("serializing an auth record")
}

pub fn decode_rec<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::Internal(format!("corrupt auth record: {e}")))
}

/// Hash a password with argon2id and a random salt (slow on purpose: run it off the runtime).
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
        let salt = SaltString::generate(&mut OsRng);
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::Internal(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

pub async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        PasswordHash::new(&hash)
            .map(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// StackStorm's API-key hash: `sha512("saltnpepper" + key)`, hex.
pub fn apikey_hash(key: &str) -> String {
    let mut h = Sha512::new();
    h.update(b"saltnpepper");
    h.update(key.as_bytes());
    hex::encode(h.finalize())
}

/// A fresh API key: 48 characters of URL-safe base64 over 36 random bytes.
pub fn new_api_key() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// A fresh token: 32 hex characters (128 random bits), the shape of StackStorm's uuid4 hex.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A fresh 24-hex-char id (StackStorm shows Mongo ObjectIds).
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 12]>())
}

/// Check a user name: what may stand before the `:` of a user-scope key reference.
pub fn check_user_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::BadRequest("User names must be 1 to 128 bytes long.".into()));
    }
    if name.chars().any(|c| c == ':' || c == '/' || c.is_control() || c.is_whitespace()) {
        return Err(ApiError::BadRequest(format!(
            "User name \"{name}\" must not contain ':', '/', whitespace or control characters."
        )));
    }
    Ok(())
}

/// How a request authenticated, for `GET /v1/user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    None,
    Token { expiry_ms: i64 },
    ApiKey,
}

/// The authenticated identity behind a request.
#[derive(Debug, Clone)]
pub struct Requester {
    pub user: String,
    pub admin: bool,
    /// Whether access rules apply (StackStorm with RBAC enabled): true whenever auth is on.
    pub rbac: bool,
    pub method: Method,
    /// `header`, `query` or `cookie`.
    pub location: &'static str,
    /// The records the credentials were checked against, at the revisions seen: a write carries
    /// them so it applies only if they are unchanged when it is ordered.
    pub guards: Vec<st2kv_raft::Guard>,
}

impl Requester {
    /// StackStorm with auth disabled: every request is the admin `stanley`, without RBAC.
    pub fn system() -> Self {
        Requester {
            user: SYSTEM_USER.into(),
            admin: true,
            rbac: false,
            method: Method::None,
            location: "header",
            guards: Vec::new(),
        }
    }

    /// 403 unless the requester is an admin.
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("Administrator access required to {what}.")))
        }
    }
}

fn unauthorized(msg: &str) -> ApiError {
    ApiError::Unauthorized(if msg.is_empty() {
        "Unauthorized".into()
    } else {
        format!("Unauthorized - {msg}")
    })
}

enum Credential {
    Token(String),
    ApiKey(String),
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all("cookie").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(
        |kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        },
    )
}

fn credential(headers: &HeaderMap, query: &HashMap<String, String>) -> Option<(Credential, &'static str)> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(t) = header("x-auth-token") {
        return Some((Credential::Token(t), "header"));
    }
    if let Some(k) = header("st2-api-key") {
        return Some((Credential::ApiKey(k), "header"));
    }
    if let Some(t) = query.get("x-auth-token") {
        return Some((Credential::Token(t.clone()), "query"));
    }
    if let Some(k) = query.get("st2-api-key") {
        return Some((Credential::ApiKey(k.clone()), "query"));
    }
    cookie(headers, "auth-token").map(|t| (Credential::Token(t), "cookie"))
}

/// Establish who is asking. `fresh`: run a linearizable barrier first, so credentials issued or
/// revoked anywhere before this call are honoured here (skip only for stale reads).
pub async fn authenticate(
    app: &App,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    fresh: bool,
) -> Result<Requester, ApiError> {
    let result = authenticate_inner(app, headers, query, fresh).await;
    if matches!(result, Err(ApiError::Unauthorized(_))) {
        app.cluster.metrics.auth_failures.inc();
    }
    result
}

async fn authenticate_inner(
    app: &App,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    fresh: bool,
) -> Result<Requester, ApiError> {
    if !app.auth.enabled {
        if fresh {
            app.cluster.linearize().await?;
        }
        return Ok(Requester::system());
    }
    let Some((cred, location)) = credential(headers, query) else {
        return Err(unauthorized("One of Token or API key required."));
    };
    if fresh {
        app.cluster.linearize().await?;
    }
    let view = &app.cluster.view;
    let now = now_ms();
    let guard =
        |table: &str, key: String, revision: u64| st2kv_raft::Guard { table: table.into(), key, revision };
    let mut guards = Vec::with_capacity(2);
    let (user, method) = match cred {
        Credential::Token(t) => {
            let hash = token_hash(&t);
            let Some(rec) = view.aux_get(TOKENS, &hash, i64::MIN)? else {
                return Err(unauthorized(""));
            };
            let tok: TokenRec = decode_rec(&rec.value)?;
            if tok.expiry_ms <= now {
                return Err(unauthorized("Token has expired."));
            }
            guards.push(guard(TOKENS, hash, rec.revision));
            (tok.user, Method::Token { expiry_ms: tok.expiry_ms })
        }
        Credential::ApiKey(k) => {
            let hash = apikey_hash(&k);
            let Some(rec) = view.aux_get(APIKEYS, &hash, now)? else {
                return Err(unauthorized(&format!("ApiKey with key_hash={hash} not found.")));
            };
            let key: ApiKeyRec = decode_rec(&rec.value)?;
            if !key.enabled {
                return Err(unauthorized("API key is disabled."));
            }
            guards.push(guard(APIKEYS, hash, rec.revision));
            (key.user, Method::ApiKey)
        }
    };
    // A deleted or disabled user's credentials stop working at once.
    let Some(urec) = view.aux_get(USERS, &user, now)? else { return Err(unauthorized("")) };
    let u: UserRec = decode_rec(&urec.value)?;
    if !u.enabled {
        return Err(unauthorized(&format!("User \"{user}\" is disabled.")));
    }
    guards.push(guard(USERS, user.clone(), urec.revision));
    Ok(Requester { user, admin: u.role == Role::Admin, rbac: true, method, location, guards })
}

/// Authenticate a key write without a read barrier: the credentials are checked against this
/// node's state, and the write carries [`Requester::guards`], so it applies only if they are
/// still as seen when it is ordered (a revocation ordered first makes it fail). Credentials this
/// node does not know yet (issued elsewhere a moment ago) get a barrier and a second look.
pub async fn authenticate_write(
    app: &App,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Requester, ApiError> {
    if !app.auth.enabled {
        return Ok(Requester::system());
    }
    match authenticate_inner(app, headers, query, false).await {
        Err(ApiError::Unauthorized(_)) => authenticate(app, headers, query, true).await,
        other => other,
    }
}

/// Node-local brake on password guessing: after `burst` failed logins for one user within
/// `window`, that user's logins answer 429 until the window has passed. Other users are not
/// affected. Per node, so a guesser spreading over N nodes gets N bursts.
pub struct LoginLimiter {
    burst: usize,
    window: Duration,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    pub fn new(burst: usize, window: Duration) -> Self {
        LoginLimiter { burst: burst.max(1), window, failures: Mutex::new(HashMap::new()) }
    }

    /// `Err(429)` while `user` is locked out.
    pub fn check(&self, user: &str) -> Result<(), ApiError> {
        let mut f = self.failures.lock().expect("limiter lock");
        let now = Instant::now();
        let Some(times) = f.get_mut(user) else { return Ok(()) };
        times.retain(|t| now.duration_since(*t) < self.window);
        if times.len() >= self.burst {
            let wait = self.window.saturating_sub(now.duration_since(times[0])).as_secs().max(1);
            return Err(ApiError::TooManyRequests(format!(
                "Too many failed login attempts for user \"{user}\"; try again in {wait} seconds."
            )));
        }
        Ok(())
    }

    pub fn failed(&self, user: &str) {
        let mut f = self.failures.lock().expect("limiter lock");
        if f.len() > 100_000 {
            // Bound memory under a flood of made-up user names.
            f.clear();
        }
        f.entry(user.to_string()).or_default().push(Instant::now());
    }

    pub fn succeeded(&self, user: &str) {
        self.failures.lock().expect("limiter lock").remove(user);
    }
}

/// Auth settings of a node.
pub struct AuthConfig {
    pub enabled: bool,
    pub token_ttl_s: i64,
    pub token_max_ttl_s: i64,
    pub limiter: LoginLimiter,
    /// A hash of a random password, verified against when the user is unknown, so a failed
    /// login costs the same whether or not the user exists.
    pub dummy_hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_in_stackstorms_order() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=b; auth-token=fromcookie".parse().unwrap());
        let mut q = HashMap::new();
        q.insert("st2-api-key".to_string(), "fromquery".to_string());
        assert!(matches!(credential(&h, &q), Some((Credential::ApiKey(k), "query")) if k == "fromquery"));
        q.clear();
        assert!(matches!(credential(&h, &q), Some((Credential::Token(t), "cookie")) if t == "fromcookie"));
        h.insert("st2-api-key", "hk".parse().unwrap());
        h.insert("x-auth-token", "ht".parse().unwrap());
        assert!(matches!(credential(&h, &q), Some((Credential::Token(t), "header")) if t == "ht"));
    }

    #[test]
    fn api_key_hash_matches_stackstorm() {
        // sha512("saltnpepper" + "abc"), as StackStorm's st2common.util.hash computes it.
        let mut h = Sha512::new();
        h.update(b"saltnpepperabc");
        assert_eq!(apikey_hash("abc"), hex::encode(h.finalize()));
        assert_eq!(apikey_hash("abc").len(), 128);
    }

    #[test]
    fn user_names_that_would_break_key_references_are_refused() {
        assert!(check_user_name("alice").is_ok());
        for bad in ["", "a:b", "a/b", "a b", "a\0b"] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_limiter_slows_one_user_without_blocking_another() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(l.check("alice").is_ok());
            l.failed("alice");
        }
        assert!(matches!(l.check("alice"), Err(ApiError::TooManyRequests(_))));
        assert!(l.check("bob").is_ok());
        l.succeeded("alice");
        assert!(l.check("alice").is_ok());
    }

    #[tokio::test]
    async fn passwords_verify_only_against_their_own_hash() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), h.clone()).await);
        assert!(!verify_password("wrong".into(), h).await);
        assert!(!verify_password("x".into(), "not a hash".into()).await);
    }
}
