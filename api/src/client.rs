use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::{
    ApiKey, ApiKeyRequest, ApiKeyUpdate, ErrorBody, KeyValuePair, KeyValuePairRequest, Token, User,
    UserRequest, UserUpdate, WhoAmI,
};

/// What can go wrong talking to st2kv, classified by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error: fix the request (4xx) or retry later (503).
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    /// No endpoint could be reached.
    #[error("no st2kv node reachable ({0})")]
    Unreachable(String),
    /// The request reached a node but no complete answer came back; a write may have applied.
    #[error("request failed after it was sent, outcome unknown: {0}")]
    Transport(String),
    /// The answer was not what the API promises.
    #[error("unexpected answer from server: {0}")]
    Decode(String),
    /// An endpoint could not be parsed as a URL.
    #[error("invalid endpoint URL {0:?}")]
    InvalidUrl(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// Turn what a user types into the API root StackStorm clients would use:
/// `http://h` → `http://h:9101/v1`, `h:9111` → `http://h:9111/v1`, `http://h:9101/api/v1` kept.
pub fn endpoint_url(raw: &str) -> Result<Url, ClientError> {
    let mut url = parse_url(raw)?;
    let path = url.path().trim_end_matches('/').to_string();
    // Like st2client: a bare base URL (`http://host`) means the API port; a URL with a path
    // (`https://host/api/v1`, behind a proxy) is taken as it is.
    if url.port().is_none() && path.is_empty() {
        url.set_port(Some(crate::DEFAULT_API_PORT)).map_err(|_| ClientError::InvalidUrl(raw.to_string()))?;
    }
    url.set_path(if path.is_empty() { "/v1/" } else { &path });
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

/// A URL as a user types it: `http://` added when there is no scheme; a host is required.
fn parse_url(raw: &str) -> Result<Url, ClientError> {
    let with_scheme = if raw.contains("://") { raw.to_string() } else { format!("http://{raw}") };
    let url = Url::parse(&with_scheme).map_err(|_| ClientError::InvalidUrl(raw.to_string()))?;
    if url.host_str().is_none() {
        return Err(ClientError::InvalidUrl(raw.to_string()));
    }
    Ok(url)
}

/// Where to log in for an API endpoint typed as for [`endpoint_url`], when no auth URL is given.
/// The answer is an auth root: a login POSTs to `<root>/tokens` ([`Client::login`]).
///
/// - `http://h` (no port, no path) → `http://h:9100`, st2client's `<base>:9100`: the auth
///   listener's default port.
/// - `http://h:40123` (an explicit API port) → `http://h:40123/auth/v1`: the auth port of such a
///   node is anybody's guess, but every st2kv API listener also serves `/auth/v1/tokens`.
///   (st2client would build the useless `http://h:40123:9100`.)
/// - `https://h/api/v1` (a path, as behind StackStorm's nginx) → `https://h/auth/v1`: a trailing
///   `/v1` and then `/api` are replaced by `/auth/v1`, so `http://h:9101/v1` → `http://h:9101/auth/v1`.
pub fn auth_url(raw_endpoint: &str) -> Result<Url, ClientError> {
    let raw = raw_endpoint.trim();
    let mut url = parse_url(raw)?;
    url.set_query(None);
    url.set_fragment(None);
    let path = url.path().trim_end_matches('/').to_string();
    if path.is_empty() && url.port().is_none() {
        url.set_port(Some(crate::DEFAULT_AUTH_PORT)).map_err(|_| ClientError::InvalidUrl(raw.to_string()))?;
        url.set_path("");
        return Ok(url);
    }
    let prefix = path.strip_suffix("/v1").unwrap_or(&path);
    let prefix = prefix.strip_suffix("/api").unwrap_or(prefix);
    url.set_path(&format!("{prefix}/auth/v1"));
    Ok(url)
}

/// `<auth root>/tokens` for an auth root as the user gives it (`--auth-url`, `$ST2_AUTH_URL`,
/// `[auth] url`): taken as it is, `http://` added when there is no scheme. Like st2client, no
/// port or `/v1` is added: `http://h:9100` logs in at `http://h:9100/tokens`.
pub fn tokens_url(auth_root: &str) -> Result<Url, ClientError> {
    let raw = auth_root.trim();
    let mut url = parse_url(raw)?;
    let path = format!("{}/tokens", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// The innermost cause of a reqwest error ("Connection refused"), which says more than its own
/// "error sending request for url (...)".
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    cause
}

/// How long [`Client::reencrypt`] waits for the cluster to re-encrypt every secret.
pub const REENCRYPT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The answer to `POST /v1/keyring/reencrypt` ([`Client::reencrypt`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReencryptReport {
    /// The id of the key every secret should now be under.
    pub active_key: String,
    /// How many secrets were under another key when the request started.
    #[serde(default)]
    pub total: u64,
    /// How many of them were rewritten under the active key.
    #[serde(default)]
    pub reencrypted: u64,
    /// How many were changed by someone else meanwhile (written under the then active key; a
    /// later pass of the same request picks up any that still need it).
    #[serde(default)]
    pub changed_concurrently: u64,
    /// Secrets that could not be decrypted, so were left as they are.
    #[serde(default)]
    pub failed: Vec<ReencryptFailure>,
}

/// One secret [`Client::reencrypt`] could not re-encrypt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReencryptFailure {
    /// The key's name (with its owner, for a user-scoped key, as the server spells it).
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub error: String,
}

/// A client for one st2kv cluster, given the API endpoints of some of its nodes.
pub struct Client {
    http: reqwest::Client,
    endpoints: Vec<Url>,
    current: AtomicUsize,
    token: Option<String>,
    api_key: Option<String>,
}

/// Options of `GET /v1/keys/{name}`.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    pub scope: Option<String>,
    pub user: Option<String>,
    pub decrypt: bool,
    /// Read this node's local state without a linearizable barrier.
    pub stale: bool,
}

/// Options of `GET /v1/keys`.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub prefix: Option<String>,
    pub scope: Option<String>,
    pub user: Option<String>,
    pub decrypt: bool,
    pub limit: Option<i64>,
    pub offset: Option<u64>,
    pub stale: bool,
}

/// Options of `DELETE /v1/keys/{name}`.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub scope: Option<String>,
    pub user: Option<String>,
}

impl Client {
    /// A client trying `endpoints` in order (see [`endpoint_url`] for what each may look like).
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Result<Client, ClientError> {
        let endpoints = endpoints.iter().map(|e| endpoint_url(e.as_ref())).collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(ClientError::InvalidUrl(String::new()));
        }
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Client { http, endpoints, current: AtomicUsize::new(0), token: None, api_key: None })
    }

    /// Authenticate every request with a token (`X-Auth-Token`).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Authenticate every request with an API key (`St2-Api-Key`).
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key;
        self
    }

    pub fn endpoints(&self) -> &[Url] {
        &self.endpoints
    }

    /// The key-value API, like st2client's `client.keys`.
    pub fn keys(&self) -> Keys<'_> {
        Keys { client: self }
    }

    /// The API-key API (`/v1/apikeys`), like st2client's `client.apikeys`.
    pub fn apikeys(&self) -> ApiKeys<'_> {
        ApiKeys { client: self }
    }

    /// User accounts (`/v1/users`), st2kv's own API.
    pub fn users(&self) -> Users<'_> {
        Users { client: self }
    }

    /// Log in: `POST <auth_root>/tokens` with HTTP Basic credentials and body `{}` or
    /// `{"ttl": N}` (see [`tokens_url`] for `auth_root`, [`auth_url`] to derive one). Needs no
    /// token or API key, and sends none. One URL, no failover: a caller with several candidate
    /// auth roots tries the next on [`ClientError::Unreachable`].
    pub async fn login(
        &self,
        auth_root: &str,
        user: &str,
        password: &str,
        ttl: Option<i64>,
    ) -> Result<Token, ClientError> {
        let url = tokens_url(auth_root)?;
        let body = match ttl {
            Some(t) => serde_json::json!({ "ttl": t }),
            None => serde_json::json!({}),
        };
        let sent = self.http.post(url.clone()).basic_auth(user, Some(password)).json(&body).send().await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return Err(ClientError::Unreachable(format!("{url}: {}", root_cause(&e))))
            }
            Err(e) => return Err(ClientError::Transport(format!("{url}: {e}"))),
        };
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Transport(e.to_string()))?;
        decode(status, &bytes)?.ok_or_else(|| ClientError::Decode("empty body".into()))
    }

    /// `GET /v1/user`: who the credentials belong to (`st2 whoami`).
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.call_one(Method::GET, "user", &[], NO_BODY).await
    }

    /// `DELETE /v1/tokens/{token}`: log out. The token's owner (for instance the token itself, as
    /// this client's credential) or an admin may revoke it.
    pub async fn revoke_token(&self, token: &str) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::DELETE, &segment_path("tokens/", token), &[], NO_BODY).await?;
        Ok(())
    }

    /// `POST /v1/keyring/reencrypt[?batch=N]` (admins only): have the cluster re-encrypt every
    /// stored secret that is not under the keyring's active key, `batch` writes at a time (the
    /// server's default is 100). Run it after a rotated keyring has been copied to every node, and
    /// before retiring the old key. Safe to repeat: secrets already under the active key are left
    /// alone. It may take a while on a large store, so this request may run for up to
    /// [`REENCRYPT_TIMEOUT`] rather than the usual 30 seconds.
    pub async fn reencrypt(&self, batch: Option<u32>) -> Result<ReencryptReport, ClientError> {
        let q: Vec<(&str, String)> = batch.map(|b| ("batch", b.to_string())).into_iter().collect();
        let (status, body) = self
            .send_with_timeout(Method::POST, "keyring/reencrypt", &q, NO_BODY, Some(REENCRYPT_TIMEOUT))
            .await?;
        decode(status, &body.0)?.ok_or_else(|| ClientError::Decode("empty body".into()))
    }

    /// `GET /v1/cluster/status` (admins): the answering node's view of the cluster.
    pub async fn cluster_status(&self) -> Result<serde_json::Value, ClientError> {
        self.call_one(Method::GET, "cluster/status", &[], NO_BODY).await
    }

    /// `POST /v1/cluster/members` (admins): add node `id` (learner first, voter once caught up).
    pub async fn add_member(&self, id: u64, peer_addr: &str, api_addr: &str) -> Result<(), ClientError> {
        let body = serde_json::json!({"id": id, "peer_addr": peer_addr, "api_addr": api_addr});
        let (status, b) = self
            .send_with_timeout(
                Method::POST,
                "cluster/members",
                &[],
                Some(&body),
                Some(Duration::from_secs(120)),
            )
            .await?;
        decode::<serde_json::Value>(status, &b.0)?;
        Ok(())
    }

    /// `DELETE /v1/cluster/members/{id}` (admins).
    pub async fn remove_member(&self, id: u64) -> Result<(), ClientError> {
        let (status, b) = self
            .send_with_timeout(
                Method::DELETE,
                &format!("cluster/members/{id}"),
                &[],
                NO_BODY,
                Some(Duration::from_secs(120)),
            )
            .await?;
        decode::<serde_json::Value>(status, &b.0)?;
        Ok(())
    }

    /// `GET /v1/cluster/snapshot` (admins): a backup file (header line + snapshot data).
    pub async fn snapshot(&self) -> Result<Vec<u8>, ClientError> {
        let (status, b) = self
            .send_with_timeout(Method::GET, "cluster/snapshot", &[], NO_BODY, Some(Duration::from_secs(600)))
            .await?;
        if !status.is_success() {
            decode::<serde_json::Value>(status, &b.0)?;
        }
        Ok(b.0)
    }

    /// `GET /v1/rules`.
    pub async fn list_rules(&self) -> Result<Vec<serde_json::Value>, ClientError> {
        self.call_one(Method::GET, "rules", &[], NO_BODY).await
    }

    /// `GET /v1/rules/{ref_or_id}`.
    pub async fn get_rule(&self, ref_or_id: &str) -> Result<serde_json::Value, ClientError> {
        self.call_one(Method::GET, &segment_path("rules/", ref_or_id), &[], NO_BODY).await
    }

    /// `POST /v1/rules` (admins).
    pub async fn create_rule(&self, rule: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        self.call_one(Method::POST, "rules", &[], Some(rule)).await
    }

    /// `PUT /v1/rules/{ref_or_id}` (admins).
    pub async fn update_rule(
        &self,
        ref_or_id: &str,
        rule: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.call_one(Method::PUT, &segment_path("rules/", ref_or_id), &[], Some(rule)).await
    }

    /// `POST /v1/rules/{ref_or_id}/enable|disable` (admins).
    pub async fn set_rule_enabled(
        &self,
        ref_or_id: &str,
        enabled: bool,
    ) -> Result<serde_json::Value, ClientError> {
        let verb = if enabled { "enable" } else { "disable" };
        self.call_one(Method::POST, &format!("{}/{verb}", segment_path("rules/", ref_or_id)), &[], NO_BODY)
            .await
    }

    /// `DELETE /v1/rules/{ref_or_id}` (admins).
    pub async fn delete_rule(&self, ref_or_id: &str) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::DELETE, &segment_path("rules/", ref_or_id), &[], NO_BODY)
            .await?;
        Ok(())
    }

    /// `POST /v1/templates/render`: `request` holds one of `template`, `object` or `rule`, and
    /// optionally `trigger` and `user`.
    pub async fn render(&self, request: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        self.call_one(Method::POST, "templates/render", &[], Some(request)).await
    }

    /// `GET /v1/executions` with filters (`rule`, `status`, `action`, `limit`).
    pub async fn list_executions(
        &self,
        query: &[(&str, String)],
    ) -> Result<Vec<serde_json::Value>, ClientError> {
        self.call_one(Method::GET, "executions", query, NO_BODY).await
    }

    /// `GET /v1/executions/{id}`.
    pub async fn get_execution(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.call_one(Method::GET, &segment_path("executions/", id), &[], NO_BODY).await
    }

    /// Send one request, moving to the next endpoint while nodes cannot be reached. Returns the
    /// status and body of the first node that answered.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
    ) -> Result<(StatusCode, bytes_body::Body), ClientError> {
        self.send_with_timeout(method, path, query, body, None).await
    }

    /// [`Client::send`], with a whole-request `timeout` other than the client's own.
    async fn send_with_timeout(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
        timeout: Option<Duration>,
    ) -> Result<(StatusCode, bytes_body::Body), ClientError> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let url =
                self.endpoints[idx].join(path).map_err(|_| ClientError::InvalidUrl(path.to_string()))?;
            let mut rb = self.http.request(method.clone(), url.clone()).query(query);
            if let Some(t) = &self.token {
                rb = rb.header("X-Auth-Token", t);
            }
            if let Some(k) = &self.api_key {
                rb = rb.header("St2-Api-Key", k);
            }
            if let Some(b) = body {
                rb = rb.json(b);
            }
            if let Some(t) = timeout {
                rb = rb.timeout(t);
            }
            match rb.send().await {
                Ok(resp) => {
                    self.current.store(idx, Ordering::Relaxed);
                    let status = resp.status();
                    let bytes = resp.bytes().await.map_err(|e| ClientError::Transport(e.to_string()))?;
                    return Ok((status, bytes_body::Body(bytes.to_vec())));
                }
                Err(e) if e.is_connect() => {
                    failures.push(format!("{}: {}", self.endpoints[idx], root_cause(&e)));
                    continue;
                }
                // A GET, or a PUT (a replace: sending it twice leaves the same state), that failed
                // mid-way (a node restarting under it) is tried on the next node. DELETE and POST
                // are not: their second attempt would not answer like the first.
                Err(e) if (method == Method::GET || method == Method::PUT) && i + 1 < n => {
                    failures.push(format!("{}: {}", self.endpoints[idx], root_cause(&e)));
                    continue;
                }
                Err(e) => return Err(ClientError::Transport(format!("{url}: {e}"))),
            }
        }
        Err(ClientError::Unreachable(failures.join("; ")))
    }

    /// [`Client::call`] for an answer that must have a body.
    async fn call_one<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        self.call(method, path, query, body).await?.ok_or_else(|| ClientError::Decode("empty body".into()))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
    ) -> Result<Option<T>, ClientError> {
        let (status, body) = self.send(method, path, query, body).await?;
        decode(status, &body.0)
    }
}

/// An answer as a result: `Api` with the faultstring for a non-2xx status, `None` for an empty
/// body, else the decoded JSON.
fn decode<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<Option<T>, ClientError> {
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(body)
            .map(|e| e.faultstring)
            .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
        return Err(ClientError::Api { status: status.as_u16(), message });
    }
    if body.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some).map_err(|e| ClientError::Decode(e.to_string()))
}

mod bytes_body {
    /// A response body, kept as bytes until we know whether it is an error.
    pub struct Body(pub Vec<u8>);
}

/// The keys API (`/v1/keys`).
pub struct Keys<'a> {
    client: &'a Client,
}

fn key_path(name: &str) -> String {
    segment_path("keys/", name)
}

/// `prefix` followed by `segment` as one path segment.
fn segment_path(prefix: &str, segment: &str) -> String {
    // Percent-encode everything but unreserved characters, so a name reaches the server intact.
    let mut out = String::from(prefix);
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const NO_BODY: Option<&()> = None;

impl Keys<'_> {
    /// `GET /v1/keys/{name}`.
    pub async fn get(&self, name: &str, opts: &GetOptions) -> Result<KeyValuePair, ClientError> {
        let mut q = vec![("decrypt", opts.decrypt.to_string())];
        if let Some(s) = &opts.scope {
            q.push(("scope", s.clone()));
        }
        if let Some(u) = &opts.user {
            q.push(("user", u.clone()));
        }
        if opts.stale {
            q.push(("consistency", "stale".into()));
        }
        self.client.call_one(Method::GET, &key_path(name), &q, NO_BODY).await
    }

    /// `GET /v1/keys`.
    pub async fn list(&self, opts: &ListOptions) -> Result<Vec<KeyValuePair>, ClientError> {
        let mut q = vec![("decrypt", opts.decrypt.to_string())];
        if let Some(s) = &opts.scope {
            q.push(("scope", s.clone()));
        }
        if let Some(u) = &opts.user {
            q.push(("user", u.clone()));
        }
        if let Some(l) = opts.limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(o) = opts.offset {
            q.push(("offset", o.to_string()));
        }
        if let Some(p) = &opts.prefix {
            q.push(("prefix", p.clone()));
        }
        if opts.stale {
            q.push(("consistency", "stale".into()));
        }
        Ok(self.client.call(Method::GET, "keys/", &q, NO_BODY).await?.unwrap_or_default())
    }

    /// `PUT /v1/keys/{name}`: create or replace; answers the key as stored.
    pub async fn set(&self, req: &KeyValuePairRequest) -> Result<KeyValuePair, ClientError> {
        self.client.call_one(Method::PUT, &key_path(&req.name), &[], Some(req)).await
    }

    /// `DELETE /v1/keys/{name}`.
    pub async fn delete(&self, name: &str, opts: &DeleteOptions) -> Result<(), ClientError> {
        let mut q = Vec::new();
        if let Some(s) = &opts.scope {
            q.push(("scope", s.clone()));
        }
        if let Some(u) = &opts.user {
            q.push(("user", u.clone()));
        }
        self.client.call::<serde_json::Value>(Method::DELETE, &key_path(name), &q, NO_BODY).await?;
        Ok(())
    }
}

/// Options of `GET /v1/apikeys`.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyListOptions {
    /// Only this user's keys. Sent as `?user=` (as st2client does) and also applied here, since
    /// the server shows admins every key whatever the query says.
    pub user: Option<String>,
    /// Show `key_hash` and `uid` unmasked (admins only; others get them masked anyway).
    pub show_secrets: bool,
    pub limit: Option<i64>,
    pub offset: Option<u64>,
}

/// The API-key API (`/v1/apikeys`). An `id` may also be the key itself.
pub struct ApiKeys<'a> {
    client: &'a Client,
}

impl ApiKeys<'_> {
    /// `GET /v1/apikeys`: the keys the requester may see (all for admins, else their own).
    pub async fn list(&self, opts: &ApiKeyListOptions) -> Result<Vec<ApiKey>, ClientError> {
        let mut q = Vec::new();
        if opts.show_secrets {
            q.push(("show_secrets", "true".to_string()));
        }
        if let Some(u) = &opts.user {
            q.push(("user", u.clone()));
        }
        if let Some(l) = opts.limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(o) = opts.offset {
            q.push(("offset", o.to_string()));
        }
        let keys: Vec<ApiKey> =
            self.client.call(Method::GET, "apikeys/", &q, NO_BODY).await?.unwrap_or_default();
        Ok(match &opts.user {
            Some(u) => keys.into_iter().filter(|k| &k.user == u).collect(),
            None => keys,
        })
    }

    /// `GET /v1/apikeys/{id}`.
    pub async fn get(&self, id: &str, show_secrets: bool) -> Result<ApiKey, ClientError> {
        let q = if show_secrets { vec![("show_secrets", "true".to_string())] } else { Vec::new() };
        self.client.call_one(Method::GET, &segment_path("apikeys/", id), &q, NO_BODY).await
    }

    /// `POST /v1/apikeys`: answers the new key, its plaintext `key` shown this once.
    pub async fn create(&self, req: &ApiKeyRequest) -> Result<ApiKey, ClientError> {
        self.client.call_one(Method::POST, "apikeys/", &[], Some(req)).await
    }

    /// `PUT /v1/apikeys/{id}`: change `enabled` and/or `metadata`.
    pub async fn update(&self, id: &str, update: &ApiKeyUpdate) -> Result<ApiKey, ClientError> {
        self.client.call_one(Method::PUT, &segment_path("apikeys/", id), &[], Some(update)).await
    }

    /// `PUT /v1/apikeys/{id}` with `{"enabled": enabled}`.
    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<ApiKey, ClientError> {
        self.update(id, &ApiKeyUpdate { enabled: Some(enabled), ..Default::default() }).await
    }

    /// `DELETE /v1/apikeys/{id}`.
    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        self.client
            .call::<serde_json::Value>(Method::DELETE, &segment_path("apikeys/", id), &[], NO_BODY)
            .await?;
        Ok(())
    }
}

/// User accounts (`/v1/users`): admins manage them; users may read themselves and change their
/// own password.
pub struct Users<'a> {
    client: &'a Client,
}

impl Users<'_> {
    /// `GET /v1/users` (admins only).
    pub async fn list(&self) -> Result<Vec<User>, ClientError> {
        Ok(self.client.call(Method::GET, "users/", &[], NO_BODY).await?.unwrap_or_default())
    }

    /// `GET /v1/users/{name}`.
    pub async fn get(&self, name: &str) -> Result<User, ClientError> {
        self.client.call_one(Method::GET, &segment_path("users/", name), &[], NO_BODY).await
    }

    /// `POST /v1/users` (admins only).
    pub async fn create(&self, req: &UserRequest) -> Result<User, ClientError> {
        self.client.call_one(Method::POST, "users/", &[], Some(req)).await
    }

    /// `PUT /v1/users/{name}`.
    pub async fn update(&self, name: &str, update: &UserUpdate) -> Result<User, ClientError> {
        self.client.call_one(Method::PUT, &segment_path("users/", name), &[], Some(update)).await
    }

    /// `DELETE /v1/users/{name}` (admins only, never oneself).
    pub async fn delete(&self, name: &str) -> Result<(), ClientError> {
        self.client
            .call::<serde_json::Value>(Method::DELETE, &segment_path("users/", name), &[], NO_BODY)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_completed_like_st2client_does() {
        assert_eq!(endpoint_url("http://127.0.0.2").unwrap().as_str(), "http://127.0.0.2:9101/v1/");
        assert_eq!(endpoint_url("127.0.0.1:9111").unwrap().as_str(), "http://127.0.0.1:9111/v1/");
        assert_eq!(endpoint_url("http://h:9101/api/v1/").unwrap().as_str(), "http://h:9101/api/v1/");
        assert_eq!(endpoint_url("https://h/api/v1").unwrap().as_str(), "https://h/api/v1/");
        assert!(endpoint_url("http://").is_err());
    }

    #[test]
    fn key_names_are_percent_encoded() {
        assert_eq!(key_path("a b/c"), "keys/a%20b%2Fc");
        assert_eq!(key_path("pack.x:y"), "keys/pack.x:y");
    }

    #[test]
    fn auth_roots_are_derived_from_api_endpoints() {
        let a = |e: &str| auth_url(e).unwrap().to_string();
        // st2client's `<base>:9100` for a bare base URL.
        assert_eq!(a("http://127.0.0.2"), "http://127.0.0.2:9100/");
        assert_eq!(a("127.0.0.2/"), "http://127.0.0.2:9100/");
        assert_eq!(a("https://st2.example"), "https://st2.example:9100/");
        // An explicit API port: the API listener's own /auth/v1.
        assert_eq!(a("127.0.0.1:40123"), "http://127.0.0.1:40123/auth/v1");
        // Behind a proxy, or with the API's /v1 spelled out.
        assert_eq!(a("https://h/api/v1"), "https://h/auth/v1");
        assert_eq!(a("https://h/api/v1/"), "https://h/auth/v1");
        assert_eq!(a("https://h/st2/api"), "https://h/st2/auth/v1");
        assert_eq!(a("http://h:9101/v1"), "http://h:9101/auth/v1");
        assert!(auth_url("http://").is_err());
    }

    #[test]
    fn tokens_are_posted_under_the_auth_root_as_given() {
        let t = |r: &str| tokens_url(r).unwrap().to_string();
        assert_eq!(t("http://h:9100"), "http://h:9100/tokens");
        assert_eq!(t("h:9100/"), "http://h:9100/tokens");
        assert_eq!(t("https://h/auth/v1"), "https://h/auth/v1/tokens");
        assert_eq!(t(auth_url("http://h").unwrap().as_str()), "http://h:9100/tokens");
        assert!(tokens_url("http://").is_err());
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(segment_path("apikeys/", "a+b/c=="), "apikeys/a%2Bb%2Fc%3D%3D");
        assert_eq!(segment_path("users/", "alice"), "users/alice");
    }

    /// A one-request HTTP server on loopback: answers `status` with `body`, and hands back the
    /// request it got (head and body) as text.
    async fn serve_once(
        status: &'static str,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = sock.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len || n == 0 {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf).to_string()
        });
        (format!("http://{addr}"), task)
    }

    const TOKEN_JSON: &str = r#"{"id":"5f","user":"st2admin","token":"0123456789abcdef0123456789abcdef","expiry":"2026-12-04T15:28:25.697414Z","metadata":{},"service":false}"#;

    #[tokio::test]
    async fn login_posts_basic_credentials_and_the_ttl() {
        let (root, req) = serve_once("201 Created", TOKEN_JSON).await;
        let client = Client::new(&["http://127.0.0.1:1"]).unwrap().with_token(Some("ignored".into()));
        let tok = client.login(&root, "st2admin", "pa:ss", Some(60)).await.unwrap();
        assert_eq!((tok.user.as_str(), tok.token.len()), ("st2admin", 32));
        assert_eq!(tok.expiry, "2026-12-04T15:28:25.697414Z");
        let req = req.await.unwrap();
        assert!(req.starts_with("POST /tokens HTTP/1.1\r\n"), "{req}");
        // base64("st2admin:pa:ss"): only the first colon separates user from password.
        assert!(req.contains("authorization: Basic c3QyYWRtaW46cGE6c3M="), "{req}");
        assert!(!req.to_ascii_lowercase().contains("x-auth-token"), "{req}");
        assert!(req.ends_with(r#"{"ttl":60}"#), "{req}");

        let (root, req) = serve_once("201 Created", TOKEN_JSON).await;
        client.login(&format!("{root}/auth/v1/"), "u", "p", None).await.unwrap();
        let req = req.await.unwrap();
        assert!(req.starts_with("POST /auth/v1/tokens HTTP/1.1\r\n") && req.ends_with("{}"), "{req}");
    }

    #[tokio::test]
    async fn login_failures_keep_the_status_and_faultstring() {
        let (root, _req) =
            serve_once("401 Unauthorized", r#"{"faultstring":"Invalid or missing credentials"}"#).await;
        let client = Client::new(&["http://127.0.0.1:1"]).unwrap();
        let err = client.login(&root, "u", "bad", None).await.unwrap_err();
        assert_eq!(err.status(), Some(401));
        assert_eq!(err.to_string(), "401: Invalid or missing credentials");
        let err = client.login("http://127.0.0.1:1", "u", "p", None).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Unreachable(m) if m.starts_with("http://127.0.0.1:1/tokens: ")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn apikeys_are_enabled_with_a_partial_put() {
        let (root, req) = serve_once(
            "200 OK",
            r#"{"id":"k1","uid":"********","user":"bob","key_hash":"********","metadata":{"a":1},"created_at":"2026-01-01T00:00:00.000000Z","enabled":false}"#,
        )
        .await;
        let client = Client::new(&[root]).unwrap().with_token(Some("tok".into()));
        let k = client.apikeys().set_enabled("k1", false).await.unwrap();
        assert!(!k.enabled && k.key.is_none() && k.metadata["a"] == 1);
        let req = req.await.unwrap();
        assert!(req.starts_with("PUT /v1/apikeys/k1 HTTP/1.1\r\n"), "{req}");
        assert!(req.to_ascii_lowercase().contains("x-auth-token: tok"), "{req}");
        assert!(req.ends_with(r#"{"enabled":false}"#), "{req}");
    }

    #[tokio::test]
    async fn apikey_lists_are_filtered_by_user_here_too() {
        let (root, req) = serve_once(
            "200 OK",
            r#"[{"id":"1","user":"alice","metadata":{},"enabled":true},{"id":"2","user":"bob","enabled":true}]"#,
        )
        .await;
        let client = Client::new(&[root]).unwrap();
        let opts = ApiKeyListOptions { user: Some("bob".into()), show_secrets: true, ..Default::default() };
        let keys = client.apikeys().list(&opts).await.unwrap();
        assert_eq!(keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["2"]);
        let req = req.await.unwrap();
        assert!(req.starts_with("GET /v1/apikeys/?show_secrets=true&user=bob HTTP/1.1"), "{req}");
    }

    #[tokio::test]
    async fn users_are_created_with_name_password_and_role() {
        let (root, req) = serve_once(
            "201 Created",
            r#"{"name":"bob","role":"user","enabled":true,"created_at":"2026-01-01T00:00:00.000000Z"}"#,
        )
        .await;
        let client = Client::new(&[root]).unwrap().with_api_key(Some("K".into()));
        let u = client
            .users()
            .create(&UserRequest {
                name: "bob".into(),
                password: "pw-12345678".into(),
                role: Some("user".into()),
                enabled: None,
            })
            .await
            .unwrap();
        assert_eq!((u.name.as_str(), u.role.as_str(), u.enabled), ("bob", "user", true));
        let req = req.await.unwrap();
        assert!(req.starts_with("POST /v1/users/ HTTP/1.1\r\n"), "{req}");
        assert!(req.to_ascii_lowercase().contains("st2-api-key: k"), "{req}");
        assert!(req.ends_with(r#"{"name":"bob","password":"pw-12345678","role":"user"}"#), "{req}");
    }

    #[tokio::test]
    async fn tokens_are_revoked_by_path_and_whoami_decodes() {
        let (root, req) = serve_once("204 No Content", "").await;
        let client = Client::new(&[root]).unwrap().with_token(Some("abc".into()));
        client.revoke_token("abc").await.unwrap();
        assert!(req.await.unwrap().starts_with("DELETE /v1/tokens/abc HTTP/1.1\r\n"));

        let (root, _req) = serve_once(
            "200 OK",
            r#"{"username":"st2admin","authentication":{"method":"authentication token","location":"header","token_expire":"2026-12-04T15:28:25Z"},"rbac":{"enabled":true,"roles":["admin"],"is_admin":true}}"#,
        )
        .await;
        let me = Client::new(&[root]).unwrap().whoami().await.unwrap();
        assert_eq!(me.username, "st2admin");
        assert_eq!(me.authentication.token_expire.as_deref(), Some("2026-12-04T15:28:25Z"));
        assert!(me.rbac.is_admin);
    }

    #[tokio::test]
    async fn reencrypt_posts_the_batch_and_decodes_the_report() {
        let (root, req) = serve_once(
            "200 OK",
            r#"{"active_key":"1a2b3c4d","total":3,"reencrypted":1,"changed_concurrently":1,"failed":[{"key":"alice:tok","scope":"st2kv.user","error":"the value failed its integrity check"}]}"#,
        )
        .await;
        let client = Client::new(&[root]).unwrap().with_token(Some("adm".into()));
        let r = client.reencrypt(Some(25)).await.unwrap();
        assert_eq!(
            r,
            ReencryptReport {
                active_key: "1a2b3c4d".into(),
                total: 3,
                reencrypted: 1,
                changed_concurrently: 1,
                failed: vec![ReencryptFailure {
                    key: "alice:tok".into(),
                    scope: "st2kv.user".into(),
                    error: "the value failed its integrity check".into(),
                }],
            }
        );
        let req = req.await.unwrap();
        assert!(req.starts_with("POST /v1/keyring/reencrypt?batch=25 HTTP/1.1\r\n"), "{req}");
        assert!(req.to_ascii_lowercase().contains("x-auth-token: adm"), "{req}");

        // Without a batch there is no query; refusals keep the server's status and message.
        let (root, req) =
            serve_once("403 Forbidden", r#"{"faultstring":"only admins may re-encrypt secrets"}"#).await;
        let err = Client::new(&[root]).unwrap().reencrypt(None).await.unwrap_err();
        assert_eq!(err.to_string(), "403: only admins may re-encrypt secrets");
        assert!(req.await.unwrap().starts_with("POST /v1/keyring/reencrypt HTTP/1.1\r\n"));
    }
}
