use serde::{Deserialize, Serialize};

/// A key as StackStorm returns it (`KeyValuePairAPI.from_model`). Absent optional fields are
/// omitted from the JSON, as StackStorm omits `None`s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValuePair {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, present only for keys with a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The body of `PUT /v1/keys/{name}` (StackStorm's `KeyValuePairRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValuePairRequest {
    pub name: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    /// Seconds until expiry; absent or 0 means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl KeyValuePairRequest {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        KeyValuePairRequest { name: name.into(), value: value.into(), ..Default::default() }
    }
}

/// StackStorm's error envelope: every non-2xx answer carries one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub faultstring: String,
}

/// The answer to `POST /auth/v1/tokens` (StackStorm's `TokenAPI`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The secret to send as `X-Auth-Token`.
    pub token: String,
    pub user: String,
    /// When the token stops working, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    pub expiry: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub service: bool,
}

/// The answer to `GET /v1/user` (`st2 whoami`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub username: String,
    pub authentication: Authentication,
    pub rbac: Rbac,
}

/// How the request behind a [`WhoAmI`] authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authentication {
    /// `authentication token` or `API key`.
    pub method: String,
    /// `header`, `query` or `cookie`.
    pub location: String,
    /// `YYYY-MM-DDTHH:MM:SSZ`; only for token authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expire: Option<String>,
}

/// What access rules apply to the requester of a [`WhoAmI`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rbac {
    pub enabled: bool,
    #[serde(default)]
    pub roles: Vec<String>,
    pub is_admin: bool,
}

fn yes() -> bool {
    true
}

/// An API key as `/v1/apikeys` shows it (StackStorm's `ApiKeyAPI`). `key` is the plaintext key,
/// present only in the answer to its creation; `key_hash` and `uid` are `********` unless an admin
/// asked to see secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// The body of `POST /v1/apikeys`; every field is optional (the user defaults to the requester).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// A key's sha512 hash from a StackStorm export (admins only); the server then makes no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// The body of `PUT /v1/apikeys/{id}`: only the fields given change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A user account as `/v1/users` shows it (st2kv's own API: StackStorm keeps users in an
/// htpasswd file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// `admin` or `user`.
    pub role: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// The body of `POST /v1/users` (admins only). The role defaults to `user` on the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRequest {
    pub name: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// The body of `PUT /v1/users/{name}`: only the fields given change. Users may change their own
/// password; everything else needs an admin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}
