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
