//! # st2kv-api: the public wire types and the Rust client
//!
//! The JSON shapes here are StackStorm's (`../shared/st2-contract.md` §1): a [`KeyValuePair`]
//! resource, the [`KeyValuePairRequest`] body of a PUT, and the `{"faultstring": ...}` error
//! body ([`ErrorBody`]). Any StackStorm client that speaks them works with st2kv, and so does
//! [`Client`], our own, which mirrors st2client's `client.keys`:
//!
//! ```no_run
//! # async fn demo() -> Result<(), st2kv_api::ClientError> {
//! let client = st2kv_api::Client::new(&["http://127.0.0.1", "http://127.0.0.2"])?;
//! client.keys().set(&st2kv_api::KeyValuePairRequest::new("greeting", "hello")).await?;
//! let kv = client.keys().get("greeting", &Default::default()).await?;
//! assert_eq!(kv.value, "hello");
//! # Ok(()) }
//! ```
//!
//! A client is given one or more node endpoints; a request that cannot reach a node (connection
//! refused, or no answer before it was sent) moves on to the next, so any live node serves it. A
//! GET or PUT whose connection breaks mid-way (a node restarting) is also tried on the next node:
//! a PUT replaces the whole key, so a second delivery leaves the same state.
//!
//! Besides keys, it speaks the account API of `../shared/st2-contract.md` §3:
//! [`Client::login`] (`POST <auth>/tokens` with HTTP Basic credentials, answering a [`Token`];
//! [`auth_url`] derives an auth root from an API endpoint), [`Client::whoami`],
//! [`Client::revoke_token`], [`Client::apikeys`] (`/v1/apikeys`: [`ApiKey`], [`ApiKeyRequest`],
//! [`ApiKeyUpdate`]) and [`Client::users`] (`/v1/users`, st2kv's own: [`User`], [`UserRequest`],
//! [`UserUpdate`]), and [`Client::reencrypt`] (`POST /v1/keyring/reencrypt`, admins: re-encrypt
//! every secret under the active key of the cluster's [`keyring`], answering a
//! [`ReencryptReport`]). Credentials are set once per client with [`Client::with_token`] or
//! [`Client::with_api_key`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), st2kv_api::ClientError> {
//! let anon = st2kv_api::Client::new(&["http://127.0.0.1"])?;
//! let auth = st2kv_api::auth_url("http://127.0.0.1")?; // http://127.0.0.1:9100
//! let token = anon.login(auth.as_str(), "st2admin", "secret", Some(3600)).await?;
//! let client = st2kv_api::Client::new(&["http://127.0.0.1"])?.with_token(Some(token.token));
//! let key = client.apikeys().create(&Default::default()).await?;
//! println!("{}", key.key.unwrap_or_default());
//! # Ok(()) }
//! ```
//!
//! ## What this crate deliberately does not do
//! It does not depend on axum, sled or openraft, and holds no server logic: it is what the CLI and
//! other Rust programs link. It never retries a DELETE or POST that reached a node, because one
//! that timed out may still have been applied. It keeps no files: caching tokens in `~/.st2` is the
//! CLI's business. A login goes to one auth root; trying several is up to the caller.

mod client;
pub mod keyring;
mod types;

pub use client::{
    auth_url, endpoint_url, tokens_url, ApiKeyListOptions, ApiKeys, Client, ClientError, DeleteOptions,
    GetOptions, Keys, ListOptions, ReencryptFailure, ReencryptReport, Users, REENCRYPT_TIMEOUT,
};
/// The URL type of [`Client::endpoints`] and [`auth_url`] (reqwest's, re-exported so callers
/// need not depend on reqwest).
pub use reqwest::Url;
pub use types::{
    ApiKey, ApiKeyRequest, ApiKeyUpdate, Authentication, ErrorBody, KeyValuePair, KeyValuePairRequest, Rbac,
    Token, User, UserRequest, UserUpdate, WhoAmI,
};

/// The API port StackStorm clients assume when a base URL has none.
pub const DEFAULT_API_PORT: u16 = 9101;
/// The auth port StackStorm clients assume when a base URL has none.
pub const DEFAULT_AUTH_PORT: u16 = 9100;
