use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{ErrorBody, KeyValuePair, KeyValuePairRequest};

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
    let with_scheme = if raw.contains("://") { raw.to_string() } else { format!("http://{raw}") };
    let mut url = Url::parse(&with_scheme).map_err(|_| ClientError::InvalidUrl(raw.to_string()))?;
    if url.host_str().is_none() {
        return Err(ClientError::InvalidUrl(raw.to_string()));
    }
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

    /// Send one request, moving to the next endpoint while nodes cannot be reached. Returns the
    /// status and body of the first node that answered.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
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
            match rb.send().await {
                Ok(resp) => {
                    self.current.store(idx, Ordering::Relaxed);
                    let status = resp.status();
                    let bytes = resp.bytes().await.map_err(|e| ClientError::Transport(e.to_string()))?;
                    return Ok((status, bytes_body::Body(bytes.to_vec())));
                }
                Err(e) if e.is_connect() => {
                    let mut cause = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        cause = s.to_string();
                        src = s.source();
                    }
                    failures.push(format!("{}: {cause}", self.endpoints[idx]));
                    continue;
                }
                Err(e) => return Err(ClientError::Transport(format!("{url}: {e}"))),
            }
        }
        Err(ClientError::Unreachable(failures.join("; ")))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
    ) -> Result<Option<T>, ClientError> {
        let (status, body) = self.send(method, path, query, body).await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&body.0)
                .map(|e| e.faultstring)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body.0).into_owned());
            return Err(ClientError::Api { status: status.as_u16(), message });
        }
        if body.0.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&body.0).map(Some).map_err(|e| ClientError::Decode(e.to_string()))
    }
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
    // Percent-encode everything but unreserved characters, so a name reaches the server intact.
    let mut out = String::from("keys/");
    for b in name.bytes() {
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
        self.client
            .call(Method::GET, &key_path(name), &q, NO_BODY)
            .await?
            .ok_or_else(|| ClientError::Decode("empty body".into()))
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
        self.client
            .call(Method::PUT, &key_path(&req.name), &[], Some(req))
            .await?
            .ok_or_else(|| ClientError::Decode("empty body".into()))
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
}
