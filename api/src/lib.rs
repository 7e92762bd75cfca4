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
//! refused, or no answer before it was sent) moves on to the next, so any live node serves it.
//!
//! ## What this crate deliberately does not do
//! It does not depend on axum, sled or openraft, and holds no server logic: it is what the CLI and
//! other Rust programs link. It never retries a request that reached a node, because a write that
//! timed out may still have been applied.

mod client;
mod types;

pub use client::{endpoint_url, Client, ClientError, DeleteOptions, GetOptions, ListOptions};
pub use types::{ErrorBody, KeyValuePair, KeyValuePairRequest};

/// The API port StackStorm clients assume when a base URL has none.
pub const DEFAULT_API_PORT: u16 = 9101;
/// The auth port StackStorm clients assume when a base URL has none.
pub const DEFAULT_AUTH_PORT: u16 = 9100;
