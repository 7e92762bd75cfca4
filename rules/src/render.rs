//! Jinja rendering (minijinja) with StackStorm's datastore helpers: the `st2kv` global
//! (`st2kv.system.a.b`, `st2kv.user.x`, and `st2kv("system.a", decrypt=true, default="")`) and the
//! `decrypt_kv` filter. Key reads and decryption go through the caller's [`Lookup`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use minijinja::value::{Kwargs, Object, ObjectRepr, Rest};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior, Value};
use serde::Serialize;

use crate::error::RuleError;

/// What a denied decryption renders as in collect mode, and what [`mask`] puts in place of secrets.
pub const MASK: &str = "********";

const RULES_NO_USER: &str = "st2kv.user is not available to rules: automations only see system-scope keys";

/// The two datastore scopes a template can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `st2kv.system.*`: keys shared by everyone.
    System,
    /// `st2kv.user.*`: the requesting user's own keys.
    User,
}

impl Scope {
    /// `"system"` or `"user"`, as in `st2kv.system.x`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::System => "system",
            Scope::User => "user",
        }
    }
}

/// A stored key as [`Lookup::get`] answers it: for a secret, `value` is the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub value: String,
    pub secret: bool,
}

/// Why a [`Lookup`] call did not answer. The message is shown to the user as is.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The requester may not read or decrypt this key.
    #[error("{0}")]
    Denied(String),
    /// Anything else (a corrupt ciphertext, a missing encryption key, ...).
    #[error("{0}")]
    Failed(String),
}

/// Implemented by the node: reads its local state machine (caller already ran a read barrier) and
/// decides rights. `get(User, name)` reads the requesting user's key `name`.
pub trait Lookup: Send + Sync {
    /// The key `name` in `scope`, `None` when there is no such key.
    fn get(&self, scope: Scope, name: &str) -> Result<Option<Stored>, LookupError>;
    /// Decrypt `value`. `key` is Some((scope, name)) when the value came from a datastore lookup,
    /// None when a plain string was piped into decrypt_kv. The node checks rights here.
    fn decrypt(&self, key: Option<(Scope, &str)>, value: &str) -> Result<String, LookupError>;
}

/// How a [`Renderer`] treats the datastore and failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// st2kv.user available (manual renders, executions with a requesting user). false for rules:
    /// any st2kv.user access is an error "st2kv.user is not available to rules: automations only see system-scope keys".
    pub user_scope: bool,
    /// Dry-run: collect missing/denied/errors and keep going instead of failing on the first one.
    pub collect: bool,
}

/// What a render ran into. Each list keeps first-seen order without duplicates.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Keys read but not found, as `st2kv.system.a.b` / `st2kv.user.x`.
    pub missing: Vec<String>,
    /// Keys whose read or decryption was denied (collect mode only), same form.
    pub denied: Vec<String>,
    /// Other failures (collect mode only), as `path: message`.
    pub errors: Vec<String>,
}

/// The result of [`Renderer::render`].
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The rendered value, with plaintext secrets: hand it to the action, never log it.
    pub value: serde_json::Value,
    /// `value` with every decrypted secret replaced by [`MASK`]: safe to show and store.
    pub masked: serde_json::Value,
    pub report: Report,
    /// Every plaintext that decryption produced during this render.
    pub secrets: Vec<String>,
}

/// Renders templates. Cheap to share: `Send + Sync`, one per lookup/options pair.
pub struct Renderer {
    lookup: Arc<dyn Lookup>,
    opts: RenderOptions,
    env: Environment<'static>,
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renderer").field("opts", &self.opts).finish_non_exhaustive()
    }
}

impl Renderer {
    pub fn new(lookup: Arc<dyn Lookup>, opts: RenderOptions) -> Self {
        Renderer { lookup, opts, env: environment() }
    }

    /// Render every string leaf of `input` (recursively through arrays/objects; object keys are not rendered)
    /// with `context` (a JSON object, e.g. {"trigger": payload}) plus the global `st2kv`.
    /// Non-collect mode: first failure -> Err(RuleError::Render("<path>: <message>")). Collect mode: Ok with report.
    ///
    /// Paths are relative to `input`: `os_keystone_endpoint`, `hosts[0].name` (a bare string input
    /// has the empty path, and its messages carry no prefix). Strings holding no `{{`, `{%` or `{#`
    /// are not templates and are passed through untouched. A leaf that fails in collect mode keeps
    /// its template text.
    pub fn render(
        &self,
        input: &serde_json::Value,
        context: &serde_json::Value,
    ) -> Result<Rendered, RuleError> {
        let call = Arc::new(Call::new(self.lookup.clone(), self.opts));
        let ctx = context_value(context, &call);
        let value = self.render_value(&call, input, "", &ctx)?;
        let inner = call.lock();
        let masked = mask(&value, &inner.secrets);
        Ok(Rendered { value, masked, report: inner.report.clone(), secrets: inner.secrets.clone() })
    }

    /// Renders one template to plaintext (used for criteria patterns). It always stops at the first
    /// failure, whatever [`RenderOptions::collect`] says.
    pub fn render_str(&self, template: &str, context: &serde_json::Value) -> Result<String, RuleError> {
        let opts = RenderOptions { collect: false, ..self.opts };
        let call = Arc::new(Call::new(self.lookup.clone(), opts));
        let ctx = context_value(context, &call);
        self.render_leaf(&call, template, "", &ctx)
    }

    fn render_value(
        &self,
        call: &Arc<Call>,
        v: &serde_json::Value,
        path: &str,
        ctx: &Value,
    ) -> Result<serde_json::Value, RuleError> {
        Ok(match v {
            serde_json::Value::String(s) if is_template(s) => {
                serde_json::Value::String(self.render_leaf(call, s, path, ctx)?)
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| self.render_value(call, x, &format!("{path}[{i}]"), ctx))
                    .collect::<Result<_, _>>()?,
            ),
            serde_json::Value::Object(map) => serde_json::Value::Object(
                map.iter()
                    .map(|(k, x)| Ok((k.clone(), self.render_value(call, x, &join(path, k), ctx)?)))
                    .collect::<Result<_, RuleError>>()?,
            ),
            other => other.clone(),
        })
    }

    fn render_leaf(
        &self,
        call: &Arc<Call>,
        template: &str,
        path: &str,
        ctx: &Value,
    ) -> Result<String, RuleError> {
        call.lock().path = path.to_string();
        let out = self.env.render_str(template, ctx);
        let recorded = call.lock().error.take();
        let msg = match (out, recorded) {
            (Ok(s), None) => return Ok(s),
            (_, Some(msg)) => msg,
            (Err(e), None) => describe(&e),
        };
        if call.opts.collect {
            call.record_error(msg);
            Ok(template.to_string())
        } else {
            Err(RuleError::Render(prefixed(path, &msg)))
        }
    }
}

/// Replace each non-empty secret occurrence inside string leaves with "********" (longest first).
pub fn mask(v: &serde_json::Value, secrets: &[String]) -> serde_json::Value {
    let mut sorted: Vec<&str> = secrets.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    mask_sorted(v, &sorted)
}

fn mask_sorted(v: &serde_json::Value, secrets: &[&str]) -> serde_json::Value {
    match v {
        serde_json::Value::String(s) => {
            let mut out = s.clone();
            for secret in secrets {
                if out.contains(secret) {
                    out = out.replace(secret, MASK);
                }
            }
            serde_json::Value::String(out)
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(|x| mask_sorted(x, secrets)).collect())
        }
        serde_json::Value::Object(map) => {
            serde_json::Value::Object(map.iter().map(|(k, x)| (k.clone(), mask_sorted(x, secrets))).collect())
        }
        other => other.clone(),
    }
}

/// Does `s` contain template syntax (`{{`, `{%` or `{#`)? Other strings are never rendered.
pub(crate) fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// The environment every render and every syntax check uses: jinja2-like lenient undefined values,
/// no autoescaping, trailing newlines kept, plus `decrypt_kv` and datastore-aware `length`/`count`
/// and `default`/`d`.
pub(crate) fn environment<'a>() -> Environment<'a> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_keep_trailing_newline(true);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.add_filter("decrypt_kv", decrypt_kv);
    env.add_filter("length", length);
    env.add_filter("count", length);
    env.add_filter("default", default);
    env.add_filter("d", default);
    env
}

/// A minijinja error as one line: its detail (or kind), and the line when past the first.
pub(crate) fn describe(e: &Error) -> String {
    let mut msg = match e.detail() {
        Some(detail) => detail.to_string(),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line().filter(|l| *l > 1) {
        msg.push_str(&format!(" (line {line})"));
    }
    msg
}

/// Calls `f(path, string)` for every string leaf of `v`, paths built like `a.b[0].c` from `prefix`.
pub(crate) fn walk_strings(v: &serde_json::Value, prefix: &str, f: &mut dyn FnMut(&str, &str)) {
    match v {
        serde_json::Value::String(s) => f(prefix, s),
        serde_json::Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                walk_strings(x, &format!("{prefix}[{i}]"), f);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, x) in map {
                walk_strings(x, &join(prefix, k), f);
            }
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn prefixed(path: &str, msg: &str) -> String {
    if path.is_empty() {
        msg.to_string()
    } else {
        format!("{path}: {msg}")
    }
}

fn key_ref(scope: Scope, name: &str) -> String {
    format!("st2kv.{}.{}", scope.as_str(), name)
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn context_value(context: &serde_json::Value, call: &Arc<Call>) -> Value {
    let mut map: BTreeMap<String, Value> = BTreeMap::new();
    if let serde_json::Value::Object(obj) = context {
        for (k, v) in obj {
            map.insert(k.clone(), Value::from_serialize(v));
        }
    }
    map.insert("st2kv".to_string(), Value::from_object(Root { call: call.clone() }));
    Value::from_iter(map)
}

/// The state of one render call, shared by every `st2kv` object and filter it creates.
struct Call {
    lookup: Arc<dyn Lookup>,
    opts: RenderOptions,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The leaf being rendered, for error messages.
    path: String,
    report: Report,
    secrets: Vec<String>,
    /// The first failure of the current leaf (non-collect mode), with our own message.
    error: Option<String>,
    cache: HashMap<(Scope, String), Option<Stored>>,
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call").field("opts", &self.opts).finish_non_exhaustive()
    }
}

/// What a key read came to, once failures were dealt with.
enum Res {
    Found(Stored),
    Missing,
    /// Denied in collect mode (already reported): renders as [`MASK`].
    Denied,
    /// Failed in collect mode (already reported): renders as nothing.
    Failed,
}

impl Call {
    fn new(lookup: Arc<dyn Lookup>, opts: RenderOptions) -> Self {
        Call { lookup, opts, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record_error(&self, msg: String) {
        let mut inner = self.lock();
        let entry = prefixed(&inner.path, &msg);
        push_unique(&mut inner.report.errors, entry);
    }

    /// A failure: collect mode records it and carries on (`Ok`), otherwise it is the leaf's error.
    fn fail(&self, msg: String) -> Result<(), Error> {
        if self.opts.collect {
            self.record_error(msg);
            Ok(())
        } else {
            let mut inner = self.lock();
            if inner.error.is_none() {
                inner.error = Some(msg.clone());
            }
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        }
    }

    fn denied(&self, reference: Option<&str>, msg: String) -> Result<(), Error> {
        match reference {
            Some(r) if self.opts.collect => {
                push_unique(&mut self.lock().report.denied, r.to_string());
                Ok(())
            }
            _ => self.fail(msg),
        }
    }

    fn get(&self, scope: Scope, name: &str, record_missing: bool) -> Result<Res, Error> {
        if scope == Scope::User && !self.opts.user_scope {
            self.fail(RULES_NO_USER.to_string())?;
            return Ok(Res::Failed);
        }
        let cached = self.lock().cache.get(&(scope, name.to_string())).cloned();
        let found = match cached {
            Some(found) => found,
            None => match self.lookup.get(scope, name) {
                Ok(found) => {
                    self.lock().cache.insert((scope, name.to_string()), found.clone());
                    found
                }
                Err(LookupError::Denied(msg)) => {
                    self.denied(Some(&key_ref(scope, name)), msg)?;
                    return Ok(Res::Denied);
                }
                Err(LookupError::Failed(msg)) => {
                    self.fail(msg)?;
                    return Ok(Res::Failed);
                }
            },
        };
        Ok(match found {
            Some(stored) => Res::Found(stored),
            None => {
                if record_missing {
                    push_unique(&mut self.lock().report.missing, key_ref(scope, name));
                }
                Res::Missing
            }
        })
    }

    /// Decrypts through the lookup and remembers the plaintext as a secret.
    fn decrypt(&self, key: Option<(Scope, &str)>, value: &str) -> Result<Value, Error> {
        match self.lookup.decrypt(key, value) {
            Ok(plain) => {
                if !plain.is_empty() {
                    push_unique(&mut self.lock().secrets, plain.clone());
                }
                Ok(Value::from(plain))
            }
            Err(LookupError::Denied(msg)) => {
                let reference = key.map(|(s, n)| key_ref(s, n));
                self.denied(reference.as_deref(), msg)?;
                Ok(Value::from(MASK))
            }
            Err(LookupError::Failed(msg)) => {
                self.fail(msg)?;
                Ok(Value::from(""))
            }
        }
    }

    /// The `st2kv(name, decrypt=false, default=...)` function.
    fn function(&self, args: &[Value]) -> Result<Value, Error> {
        let (positional, kwargs) = match args.split_last() {
            Some((last, rest)) if last.is_kwargs() => (rest, Kwargs::try_from(last.clone())?),
            _ => (args, Kwargs::from_iter(std::iter::empty::<(String, Value)>())),
        };
        if positional.is_empty() || positional.len() > 3 {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "st2kv() takes a key name, then optionally decrypt and default",
            ));
        }
        let Some(full) = positional[0].as_str() else {
            return Err(Error::new(ErrorKind::InvalidOperation, "st2kv(): the key name must be a string"));
        };
        let mut decrypt = positional.get(1).is_some_and(Value::is_true);
        let mut default = positional.get(2).cloned();
        if kwargs.has("decrypt") {
            decrypt = kwargs.get::<Value>("decrypt")?.is_true();
        }
        if kwargs.has("default") {
            default = Some(kwargs.get::<Value>("default")?);
        }
        kwargs.assert_all_used()?;
        let (scope, name) = match full.strip_prefix("system.") {
            Some(name) => (Scope::System, name),
            None => (Scope::User, full),
        };
        match self.get(scope, name, false)? {
            Res::Found(stored) if decrypt && stored.secret => {
                self.decrypt(Some((scope, name)), &stored.value)
            }
            Res::Found(stored) => Ok(Value::from(stored.value)),
            Res::Missing => match default {
                Some(default) => Ok(default),
                None => {
                    if self.opts.collect {
                        push_unique(&mut self.lock().report.missing, key_ref(scope, name));
                    } else {
                        self.fail(format!("Key \"{full}\" not found"))?;
                    }
                    Ok(Value::from(""))
                }
            },
            Res::Denied => Ok(Value::from(MASK)),
            Res::Failed => Ok(Value::from("")),
        }
    }
}

/// The `st2kv` global: `st2kv.system`, `st2kv.user`, and callable as `st2kv(name, ...)`.
#[derive(Debug)]
struct Root {
    call: Arc<Call>,
}

impl Object for Root {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let scope = match key.as_str()? {
            "system" => Scope::System,
            "user" => Scope::User,
            _ => return None,
        };
        Some(Value::from_object(KeyRef { call: self.call.clone(), scope, name: String::new() }))
    }

    fn call(self: &Arc<Self>, _state: &State<'_, '_>, args: &[Value]) -> Result<Value, Error> {
        self.call.function(args)
    }

    fn render(self: &Arc<Self>, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
}

/// `st2kv.<scope>.<name>`: a lazy key. Attribute and item access append `.segment` to the name;
/// the key is read only when the object is printed, tested or filtered.
#[derive(Debug)]
struct KeyRef {
    call: Arc<Call>,
    scope: Scope,
    name: String,
}

impl KeyRef {
    fn reference(&self) -> String {
        key_ref(self.scope, &self.name)
    }

    fn resolve(&self, record_missing: bool) -> Result<Res, Error> {
        if self.name.is_empty() {
            return Ok(Res::Missing);
        }
        self.call.get(self.scope, &self.name, record_missing)
    }

    /// What printing the key shows: its stored value (ciphertext for a secret), `""` when missing.
    fn text(&self) -> Result<String, Error> {
        Ok(match self.resolve(true)? {
            Res::Found(stored) => stored.value,
            Res::Denied => MASK.to_string(),
            Res::Missing | Res::Failed => String::new(),
        })
    }
}

impl Object for KeyRef {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let segment = match key.as_str() {
            Some(s) => s.to_string(),
            None => key.to_string(),
        };
        Some(Value::from_object(KeyRef {
            call: self.call.clone(),
            scope: self.scope,
            name: join(&self.name, &segment),
        }))
    }

    fn is_true(self: &Arc<Self>) -> bool {
        matches!(self.resolve(false), Ok(Res::Found(stored)) if !stored.value.is_empty())
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            return Ok(());
        }
        let text = self.text().map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

fn call_of(state: &State) -> Option<Arc<Call>> {
    let root = state.lookup("st2kv")?;
    root.downcast_object_ref::<Root>().map(|r| r.call.clone())
}

/// `{{ st2kv.system.pw | decrypt_kv }}` or `{{ "<ciphertext>" | decrypt_kv }}`.
fn decrypt_kv(state: &State, value: &Value) -> Result<Value, Error> {
    if let Some(key) = value.downcast_object_ref::<KeyRef>() {
        let call = &key.call;
        let empty = || {
            format!(
                "Referenced datastore item \"{}\" doesn't exist or it contains an empty string",
                key.reference()
            )
        };
        return match key.resolve(true)? {
            Res::Found(stored) if stored.value.is_empty() => {
                call.fail(empty())?;
                Ok(Value::from(""))
            }
            Res::Found(stored) if stored.secret => call.decrypt(Some((key.scope, &key.name)), &stored.value),
            Res::Found(stored) => Ok(Value::from(stored.value)),
            // Collect mode reports the key as missing, records StackStorm's error, carries on.
            Res::Missing => {
                call.fail(empty())?;
                Ok(Value::from(""))
            }
            Res::Denied => Ok(Value::from(MASK)),
            Res::Failed => Ok(Value::from("")),
        };
    }
    let Some(call) = call_of(state) else {
        return Err(Error::new(ErrorKind::InvalidOperation, "decrypt_kv is not available here"));
    };
    match value.as_str() {
        Some(text) => call.decrypt(None, text),
        None => {
            call.fail("decrypt_kv: expected a datastore item or a string".to_string())?;
            Ok(Value::from(""))
        }
    }
}

/// `length` / `count`, which also measure a datastore key's value.
fn length(value: &Value) -> Result<usize, Error> {
    match value.downcast_object_ref::<KeyRef>() {
        Some(key) => Ok(key.text()?.chars().count()),
        None => minijinja::filters::length(value),
    }
}

/// `default` / `d`, which also stands in for a datastore key that does not exist.
fn default(state: &State, value: &Value, args: Rest<Value>) -> Result<Value, Error> {
    if let Some(key) = value.downcast_object_ref::<KeyRef>() {
        if let Res::Missing = key.resolve(false)? {
            return minijinja::filters::default(state, &Value::UNDEFINED, args);
        }
    }
    minijinja::filters::default(state, value, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{renderer, FakeLookup};
    use serde_json::json;

    fn system() -> FakeLookup {
        FakeLookup::default()
            .with(Scope::System, "os_keystone_endpoint", "http://keystone:5000")
            .with(Scope::System, "a.b", "dotted")
            .with(Scope::System, "empty", "")
            .with_secret(Scope::System, "pw", "hunter2")
            .with_secret(Scope::System, "pw_long", "hunter2-long")
            .with_secret(Scope::User, "token", "u-secret")
            .with(Scope::User, "name", "alice")
    }

    fn one(r: &Renderer, template: &str) -> Result<String, RuleError> {
        r.render_str(template, &json!({}))
    }

    #[test]
    fn renderer_is_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<Renderer>();
    }

    #[test]
    fn dotted_keys_resolve_to_the_full_name() {
        let (r, _) = renderer(system(), false, false);
        assert_eq!(one(&r, "{{ st2kv.system.a.b }}").unwrap(), "dotted");
        assert_eq!(one(&r, "{{ st2kv.system['a.b'] }}").unwrap(), "dotted");
        assert_eq!(one(&r, "{{ st2kv.system.a['b'] }}!").unwrap(), "dotted!");
        assert_eq!(one(&r, "{{st2kv.system.os_keystone_endpoint}}").unwrap(), "http://keystone:5000");
    }

    #[test]
    fn key_objects_behave_like_strings_where_minijinja_allows() {
        let (r, _) = renderer(system(), false, false);
        assert_eq!(one(&r, "{{ st2kv.system.a.b | upper }}").unwrap(), "DOTTED");
        assert_eq!(one(&r, "{{ st2kv.system.a.b | length }}").unwrap(), "6");
        assert_eq!(one(&r, "{{ st2kv.system.a.b | string == 'dotted' }}").unwrap(), "True");
        assert_eq!(one(&r, "{% if st2kv.system.a.b %}yes{% else %}no{% endif %}").unwrap(), "yes");
        assert_eq!(one(&r, "{% if st2kv.system.nope %}yes{% else %}no{% endif %}").unwrap(), "no");
        assert_eq!(one(&r, "{% if st2kv.system.empty %}yes{% else %}no{% endif %}").unwrap(), "no");
        assert_eq!(one(&r, "{{ st2kv.system.nope | default('fallback') }}").unwrap(), "fallback");
        assert_eq!(one(&r, "{{ st2kv.system.a.b | default('fallback') }}").unwrap(), "dotted");
        assert_eq!(one(&r, "{{ st2kv.system.a.b is defined }}").unwrap(), "True");
    }

    #[test]
    fn missing_key_renders_empty_and_is_reported() {
        let (r, _) = renderer(system(), false, false);
        let out = r
            .render(
                &json!({"x": "[{{ st2kv.system.no.such }}]", "y": "{{ st2kv.system.no.such }}"}),
                &json!({}),
            )
            .unwrap();
        assert_eq!(out.value, json!({"x": "[]", "y": ""}));
        assert_eq!(out.report.missing, vec!["st2kv.system.no.such"]);
        assert!(out.report.errors.is_empty() && out.report.denied.is_empty());
    }

    #[test]
    fn secrets_render_as_ciphertext_without_decrypt_kv() {
        let (r, lookup) = renderer(system(), false, false);
        let out = r.render(&json!("{{ st2kv.system.pw }}"), &json!({})).unwrap();
        assert_eq!(out.value, json!("enc:hunter2"));
        assert!(out.secrets.is_empty());
        assert!(lookup.decrypts.lock().unwrap().is_empty());
    }

    #[test]
    fn decrypt_kv_decrypts_system_and_user_keys_and_taints_them() {
        let (r, lookup) = renderer(system(), true, false);
        let out = r
            .render(
                &json!({"p": "{{ st2kv.system.pw | decrypt_kv }}", "u": "x={{ st2kv.user.token | decrypt_kv }}"}),
                &json!({}),
            )
            .unwrap();
        assert_eq!(out.value, json!({"p": "hunter2", "u": "x=u-secret"}));
        assert_eq!(out.masked, json!({"p": MASK, "u": format!("x={MASK}")}));
        assert_eq!(out.secrets, vec!["hunter2", "u-secret"]);
        let calls = lookup.decrypts.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![
                (Some((Scope::System, "pw".to_string())), "enc:hunter2".to_string()),
                (Some((Scope::User, "token".to_string())), "enc:u-secret".to_string()),
            ]
        );
    }

    #[test]
    fn decrypt_kv_on_a_plain_string_passes_no_key() {
        let (r, lookup) = renderer(system(), false, false);
        assert_eq!(one(&r, "{{ 'enc:abc' | decrypt_kv }}").unwrap(), "abc");
        assert_eq!(lookup.decrypts.lock().unwrap()[0], (None, "enc:abc".to_string()));
        let err = one(&r, "{{ 'plain' | decrypt_kv }}").unwrap_err();
        assert_eq!(err.to_string(), "not a ciphertext");
    }

    #[test]
    fn decrypt_kv_missing_or_empty_has_the_stackstorm_message() {
        let (r, _) = renderer(system(), false, false);
        let err =
            r.render(&json!({"password": "{{ st2kv.system.nope | decrypt_kv }}"}), &json!({})).unwrap_err();
        assert!(matches!(err, RuleError::Render(_)));
        assert_eq!(
            err.to_string(),
            "password: Referenced datastore item \"st2kv.system.nope\" doesn't exist or it contains an empty string"
        );
        assert_eq!(
            one(&r, "{{ st2kv.system.empty | decrypt_kv }}").unwrap_err().to_string(),
            "Referenced datastore item \"st2kv.system.empty\" doesn't exist or it contains an empty string"
        );
    }

    #[test]
    fn decrypt_kv_denied_fails_or_masks_in_collect_mode() {
        let lookup = || system().deny_decrypt(Scope::System, "pw");
        let (strict, _) = renderer(lookup(), false, false);
        let err =
            strict.render(&json!({"a": ["{{ st2kv.system.pw | decrypt_kv }}"]}), &json!({})).unwrap_err();
        assert_eq!(err.to_string(), "a[0]: decrypting pw needs admin");

        let (collect, _) = renderer(lookup(), false, true);
        let out = collect.render(&json!({"a": ["{{ st2kv.system.pw | decrypt_kv }}"]}), &json!({})).unwrap();
        assert_eq!(out.value, json!({"a": [MASK]}));
        assert_eq!(out.report.denied, vec!["st2kv.system.pw"]);
    }

    #[test]
    fn denied_reads_fail_or_are_reported() {
        let (strict, _) = renderer(system().deny_read(Scope::System, "a.b"), false, false);
        assert_eq!(one(&strict, "{{ st2kv.system.a.b }}").unwrap_err().to_string(), "read of a.b denied");
        let (collect, _) = renderer(system().deny_read(Scope::System, "a.b"), false, true);
        let out = collect.render(&json!("{{ st2kv.system.a.b }}"), &json!({})).unwrap();
        assert_eq!(out.value, json!(MASK));
        assert_eq!(out.report.denied, vec!["st2kv.system.a.b"]);
    }

    #[test]
    fn st2kv_function_with_default_and_decrypt() {
        let (r, _) = renderer(system(), true, false);
        assert_eq!(one(&r, "{{ st2kv('system.a.b') }}").unwrap(), "dotted");
        assert_eq!(one(&r, "{{ st2kv('system.pw') }}").unwrap(), "enc:hunter2");
        assert_eq!(one(&r, "{{ st2kv('system.pw', decrypt=true) }}").unwrap(), "hunter2");
        assert_eq!(one(&r, "{{ st2kv('system.pw', true) }}").unwrap(), "hunter2");
        assert_eq!(one(&r, "{{ st2kv('name') }}").unwrap(), "alice");
        assert_eq!(one(&r, "{{ st2kv('token', decrypt=true) }}").unwrap(), "u-secret");
        assert_eq!(one(&r, "{{ st2kv('system.nope', default='dflt') }}").unwrap(), "dflt");
        assert_eq!(one(&r, "{{ st2kv('system.nope', false, 'pos') }}").unwrap(), "pos");
        assert_eq!(
            one(&r, "{{ st2kv('system.nope') }}").unwrap_err().to_string(),
            "Key \"system.nope\" not found"
        );
        assert!(one(&r, "{{ st2kv('system.a.b', bogus=1) }}").is_err());

        let out = r.render(&json!({"k": "{{ st2kv('system.pw', decrypt=true) }}"}), &json!({})).unwrap();
        assert_eq!(out.secrets, vec!["hunter2"]);
        assert_eq!(out.masked, json!({"k": MASK}));
    }

    #[test]
    fn rules_mode_refuses_st2kv_user() {
        let (r, _) = renderer(system(), false, false);
        for template in
            ["{{ st2kv.user.name }}", "{{ st2kv('name') }}", "{{ st2kv.user.token | decrypt_kv }}"]
        {
            let err = r.render(&json!({"p": template}), &json!({})).unwrap_err();
            assert_eq!(err.to_string(), format!("p: {RULES_NO_USER}"), "{template}");
        }
        let (user, _) = renderer(system(), true, false);
        assert_eq!(one(&user, "{{ st2kv.user.name }}").unwrap(), "alice");
    }

    #[test]
    fn masking_reaches_nested_parameters() {
        let (r, _) = renderer(system(), false, false);
        let input = json!({
            "auth": {"header": "Bearer {{ st2kv.system.pw | decrypt_kv }}",
                     "list": [{"x": "{{ st2kv.system.pw_long | decrypt_kv }}"}, 5, true]},
            "url": "{{ st2kv.system.os_keystone_endpoint }}",
            "plain": "hunter2 appears here too"
        });
        let out = r.render(&input, &json!({})).unwrap();
        assert_eq!(out.value["auth"]["list"][0]["x"], json!("hunter2-long"));
        assert_eq!(
            out.masked,
            json!({
                "auth": {"header": format!("Bearer {MASK}"), "list": [{"x": MASK}, 5, true]},
                "url": "http://keystone:5000",
                "plain": format!("{MASK} appears here too")
            })
        );
        // Longest first: "hunter2-long" is masked whole, not as "********-long".
        assert_eq!(mask(&json!(["hunter2-long"]), &["hunter2".into(), "hunter2-long".into()]), json!([MASK]));
        assert_eq!(mask(&json!({"k": "abc"}), &["".into()]), json!({"k": "abc"}));
    }

    #[test]
    fn collect_mode_reports_several_problems_at_once() {
        let (r, _) = renderer(system().deny_decrypt(Scope::System, "pw"), false, true);
        let input = json!({
            "a": "{{ st2kv.system.missing1 }}",
            "b": "{{ st2kv.system.pw | decrypt_kv }}",
            "c": "{{ st2kv.user.name }}",
            "d": "{{ st2kv('system.missing2') }}",
            "e": "{{ nonsense | no_such_filter }}",
            "f": "{{ st2kv.system.missing1 }} again",
            "g": "{{ st2kv.system.a.b }}"
        });
        let out = r.render(&input, &json!({})).unwrap();
        assert_eq!(out.report.missing, vec!["st2kv.system.missing1", "st2kv.system.missing2"]);
        assert_eq!(out.report.denied, vec!["st2kv.system.pw"]);
        assert_eq!(out.report.errors.len(), 2, "{:?}", out.report.errors);
        assert_eq!(out.report.errors[0], format!("c: {RULES_NO_USER}"));
        assert!(out.report.errors[1].starts_with("e: "), "{:?}", out.report.errors);
        assert_eq!(out.value["e"], json!("{{ nonsense | no_such_filter }}"));
        assert_eq!(out.value["g"], json!("dotted"));
        assert_eq!(out.value["f"], json!(" again"));
    }

    #[test]
    fn context_is_available_and_undefined_renders_empty() {
        let (r, _) = renderer(system(), false, false);
        let ctx = json!({"trigger": {"body": {"host": "web1", "ports": [80, 443]}}});
        let input = json!({
            "h": "{{ trigger.body.host }}:{{ trigger.body.ports[1] }}",
            "u": "[{{ trigger.body.nothing }}]",
            "keep": "no template\n",
            "n": 42,
        });
        let out = r.render(&input, &ctx).unwrap();
        assert_eq!(out.value, json!({"h": "web1:443", "u": "[]", "keep": "no template\n", "n": 42}));
        assert_eq!(r.render_str("{{ trigger.body.host }}\n", &ctx).unwrap(), "web1\n");
    }

    #[test]
    fn syntax_errors_fail_with_the_path() {
        let (r, _) = renderer(system(), false, false);
        let err = r.render(&json!({"x": {"y": "{{ oops"}}), &json!({})).unwrap_err();
        assert!(err.to_string().starts_with("x.y: "), "{err}");
    }
}
