//! # st2kv-rules: StackStorm rules, as pure logic
//!
//! A StackStorm rule says "when this trigger fires and its payload meets these criteria, run this
//! action with these parameters", and the parameters are Jinja templates that may read the
//! datastore (`{{ st2kv.system.os_keystone_endpoint }}`). This crate holds everything about
//! rules that needs no I/O, so that the node can run them and tests can pin them down:
//!
//! - [`parse_rule`] reads a rule in StackStorm's JSON or YAML shape ([`Rule`]), ignoring the
//!   bookkeeping fields StackStorm adds (`id`, `uid`, `ref`, `tags`, ...). [`validate`] checks it
//!   all at once, failing with one [`RuleError::Invalid`] whose message starts with the field at
//!   fault (`trigger.parameters.delta: must be a positive integer`).
//! - [`Rule::trigger`] classifies the trigger ([`Trigger`]): webhooks, interval, cron
//!   (APScheduler semantics, UTC only) and daily timers, and the four key-value triggers.
//!   [`next_fire_ms`] says when a timer fires next.
//! - [`matches`] evaluates the criteria against a trigger payload with StackStorm's operators
//!   (`equals`, `icontains`, `regex`, `lessthan`, `exists`, ...); string patterns may be templates.
//! - [`Renderer`] renders templates with minijinja and StackStorm's datastore helpers: the
//!   `st2kv` global (`st2kv.system.a.b`, `st2kv.user.x`, `st2kv("system.a", decrypt=true)`) and
//!   the `decrypt_kv` filter. Every plaintext a decryption yields is remembered, so
//!   [`Rendered::masked`] can show the result with secrets replaced by [`MASK`]. In collect mode
//!   (dry runs) it records missing keys, denied keys and errors in a [`Report`] and carries on.
//!
//! ```
//! use std::sync::Arc;
//! use st2kv_rules::*;
//!
//! struct Keys;
//! impl Lookup for Keys {
//!     fn get(&self, scope: Scope, name: &str) -> Result<Option<Stored>, LookupError> {
//!         Ok((scope == Scope::System && name == "os_keystone_endpoint")
//!             .then(|| Stored { value: "http://keystone:5000".into(), secret: false }))
//!     }
//!     fn decrypt(&self, _: Option<(Scope, &str)>, _: &str) -> Result<String, LookupError> {
//!         Err(LookupError::Denied("no secrets here".into()))
//!     }
//! }
//!
//! let rule = parse_rule(r#"{"name": "daily_clean_up_rule", "trigger": {"name": "st2.timer.daily"},
//!     "action": {"name": "daily_clean_up_action",
//!                "parameters": {"os_keystone_endpoint": "{{st2kv.system.os_keystone_endpoint}}"}}}"#)?;
//! validate(&rule)?;
//! assert_eq!(rule.trigger()?, Trigger::Daily);
//! assert_eq!(next_fire_ms(&Trigger::Daily, 1_000, 86_400_000), Some(86_400_000));
//!
//! // Rules see system-scope keys only.
//! let renderer = Renderer::new(Arc::new(Keys), RenderOptions { user_scope: false, collect: false });
//! let payload = serde_json::json!({});
//! assert!(matches(&rule, &payload, &renderer)?);
//! let params = serde_json::Value::Object(rule.action.parameters.clone());
//! let rendered = renderer.render(&params, &serde_json::json!({ "trigger": payload }))?;
//! assert_eq!(rendered.value["os_keystone_endpoint"], "http://keystone:5000");
//! # Ok::<(), RuleError>(())
//! ```
//!
//! ## What this crate deliberately does not do
//! - No I/O of any kind: it reads no key space, clock, file or network. Keys are read and
//!   decrypted through the caller's [`Lookup`], which also decides who may read or decrypt what
//!   (the node runs its read barrier before rendering). Times come in as arguments.
//! - It does not run actions, schedule timers, store rules or keep execution history; it has no
//!   dependency on the node, and the node decides when to call it.
//! - It implements the subset of StackStorm that st2kv's rules use: no trigger types beyond the
//!   eight listed in [`validate`]'s message, no time zones other than UTC, and none of
//!   StackStorm's other Jinja filters. `st2kv.system.x` is a lazy object rather than a string, so
//!   `==` against a string needs `|string` first (printing, string filters, `length`, `default`
//!   and truthiness work directly).

mod criteria;
mod cron;
mod error;
mod model;
mod render;

pub use criteria::matches;
pub use error::RuleError;
pub use model::*;
pub use render::{mask, Lookup, LookupError, RenderOptions, Rendered, Renderer, Report, Scope, Stored, MASK};

#[cfg(test)]
mod testutil;
