//! Running each `key` command against the cluster through [`st2kv_api::Client`]. Every command
//! returns an [`Outcome`] (what to print, and the exit code); nothing here prints or exits, so
//! `run` in the crate root is the one place that talks to the terminal. The other commands are in
//! [`crate::accounts`].

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};

use serde_json::Value;
use st2kv_api::{Client, ClientError, DeleteOptions, GetOptions, KeyValuePairRequest, ListOptions, Url};

use crate::args::{
    DeleteArgs, DeleteByPrefixArgs, GetArgs, KeyCommand, ListArgs, LoadArgs, ReencryptArgs, SetArgs,
};
use crate::load;
use crate::output::{self, Format};
use crate::session::{Credentials, Settings};

/// Exit code of every failure but the one below.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code of `key delete` when there is no such key (st2's).
pub const EXIT_NOT_FOUND: i32 = 2;
/// Exit code of an invalid command line (as argparse and clap use).
pub const EXIT_USAGE: i32 = 2;

/// How a command ended: text for stdout, at most one error line for stderr, and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    /// Printed as `ERROR: <message>` on stderr.
    pub error: Option<String>,
    /// Printed on stderr after the error: what to do about it (`(log in with: ...)`).
    pub hint: Option<String>,
    pub code: i32,
}

impl Outcome {
    pub fn ok(stdout: impl Into<String>) -> Outcome {
        Outcome { stdout: stdout.into(), error: None, hint: None, code: 0 }
    }

    pub fn fail(message: impl Into<String>) -> Outcome {
        Outcome { stdout: String::new(), error: Some(message.into()), hint: None, code: EXIT_FAILURE }
    }
}

/// What the command needs besides its own arguments.
pub struct Context<'a> {
    /// Authenticated with [`Context::creds`].
    pub client: &'a Client,
    pub format: Format,
    /// `--stale`: reads may be served from a node's local state.
    pub stale: bool,
    pub settings: &'a Settings,
    pub creds: &'a Credentials,
}

impl Context<'_> {
    /// A client error as the one line the user sees (see [`describe_error`]).
    pub fn describe(&self, e: &ClientError) -> String {
        describe_error(e, self.client.endpoints())
    }
}

/// A client error as the one line the user sees: `<status>: <faultstring>` for an answer from
/// the server, the `endpoints` tried when none could be reached.
pub fn describe_error(e: &ClientError, endpoints: &[Url]) -> String {
    match e {
        ClientError::Unreachable(last) => {
            let tried: Vec<_> = endpoints.iter().map(|u| u.as_str()).collect();
            let mut msg = format!("no st2kv node reachable (tried {})", tried.join(", "));
            // The client reports `<endpoint>: <error>`; reqwest's generic "error sending
            // request for url (...)" says nothing the list above does not.
            let detail = last.split_once(": ").map_or(last.as_str(), |(_, d)| d);
            if !detail.is_empty() && !detail.starts_with("error sending request") {
                msg.push_str(&format!("; last error: {detail}"));
            }
            msg
        }
        ClientError::Api { status, message } if message.trim().is_empty() => {
            format!("{status}: {}", reason(*status))
        }
        // A long message is not a faultstring but some proxy's HTML page: keep its start.
        ClientError::Api { status, message } if message.chars().count() > MAX_MESSAGE_CHARS => {
            let start: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
            format!("{status}: {start}…")
        }
        other => other.to_string(),
    }
}

/// How much of an error body to show (StackStorm's faultstrings are far shorter).
const MAX_MESSAGE_CHARS: usize = 300;

/// A status's reason phrase, for error answers without a body (from a proxy, say).
fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "(no message)",
    }
}

/// How the server will spell a scope (`system` → `st2kv.system`; `all` and anything containing
/// `st2kv` unchanged), so the `key load` report reads the same for loaded and failed items.
pub fn full_scope(scope: &str) -> String {
    if scope == "all" || scope.contains("st2kv") {
        scope.to_string()
    } else {
        format!("st2kv.{scope}")
    }
}

pub async fn run(cmd: KeyCommand, cx: &Context<'_>) -> Outcome {
    match cmd {
        KeyCommand::Set(a) => set(a, cx).await,
        KeyCommand::Get(a) => get(a, cx).await,
        KeyCommand::List(a) => list(a, cx).await,
        KeyCommand::Delete(a) => delete(a, cx).await,
        KeyCommand::DeleteByPrefix(a) => delete_by_prefix(a, cx).await,
        KeyCommand::Load(a) => load_file(a, cx).await,
        KeyCommand::Reencrypt(a) => reencrypt(a, cx).await,
    }
}

/// st2's message for a key that does not exist.
fn not_found(name: &str) -> String {
    format!("Key Value Pair \"{name}\" is not found.")
}

async fn set(a: SetArgs, cx: &Context<'_>) -> Outcome {
    let value = match a.value {
        Some(v) => v,
        None => match value_from_stdin() {
            Ok(v) => v,
            Err(e) => return Outcome::fail(e),
        },
    };
    let req = KeyValuePairRequest {
        scope: Some(a.scope.effective_scope()),
        user: a.scope.user,
        secret: a.encrypt.then_some(true),
        encrypted: a.encrypted.then_some(true),
        // Like st2, send only a meaningful TTL: 0 means "never expires" anyway.
        ttl: a.ttl.filter(|t| *t != 0),
        description: a.description.filter(|d| !d.is_empty()),
        ..KeyValuePairRequest::new(a.name, value)
    };
    match cx.client.keys().set(&req).await {
        Ok(kv) => Outcome::ok(output::render_key(&kv, output::SET_ATTRS, &["description"], cx.format)),
        Err(e) => Outcome::fail(cx.describe(&e)),
    }
}

/// The value of `key set NAME` without VALUE: all of stdin, unless stdin is a terminal (there is
/// no prompt: a script would hang on it) or empty (almost certainly a mistake, such as stdin
/// being /dev/null; pass `""` to store an empty value).
fn value_from_stdin() -> Result<String, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err("no VALUE given: pass it as an argument or pipe it on standard input".into());
    }
    let mut buf = Vec::new();
    stdin
        .lock()
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the value from standard input: {e}"))?;
    if buf.is_empty() {
        return Err("no VALUE given and standard input is empty".into());
    }
    let text =
        String::from_utf8(buf).map_err(|_| "the value on standard input is not valid UTF-8".to_string())?;
    Ok(strip_one_newline(text))
}

/// `echo secret | st2kv key set k` stores `secret`, not `secret\n`; only one line ending goes.
pub fn strip_one_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

async fn get(a: GetArgs, cx: &Context<'_>) -> Outcome {
    let opts = GetOptions {
        scope: Some(a.scope.effective_scope()),
        user: a.scope.user,
        decrypt: a.decrypt,
        stale: cx.stale,
    };
    match cx.client.keys().get(&a.name, &opts).await {
        Ok(kv) => Outcome::ok(output::render_key(&kv, output::GET_ATTRS, &["description"], cx.format)),
        // st2 prints the notice on stdout and an error line on stderr, and exits 1.
        Err(e) if e.is_not_found() => Outcome {
            stdout: not_found(&a.name),
            error: Some(cx.describe(&e)),
            hint: None,
            code: EXIT_FAILURE,
        },
        Err(e) => Outcome::fail(cx.describe(&e)),
    }
}

async fn list(a: ListArgs, cx: &Context<'_>) -> Outcome {
    let opts = ListOptions {
        prefix: a.prefix,
        scope: Some(a.scope),
        user: a.user,
        decrypt: a.decrypt,
        limit: Some(a.limit),
        offset: None,
        stale: cx.stale,
    };
    match cx.client.keys().list(&opts).await {
        // Server order, deliberately not reversed as st2 does (see the crate documentation).
        Ok(kvs) => Outcome::ok(output::render_keys(&kvs, output::LIST_ATTRS, cx.format)),
        Err(e) => Outcome::fail(cx.describe(&e)),
    }
}

async fn delete(a: DeleteArgs, cx: &Context<'_>) -> Outcome {
    let opts = DeleteOptions { scope: Some(a.scope.effective_scope()), user: a.scope.user };
    match cx.client.keys().delete(&a.name, &opts).await {
        Ok(()) => Outcome::ok(format!("Resource with id \"{}\" has been successfully deleted.", a.name)),
        Err(e) if e.is_not_found() => {
            Outcome { stdout: not_found(&a.name), error: None, hint: None, code: EXIT_NOT_FOUND }
        }
        Err(e) => Outcome::fail(cx.describe(&e)),
    }
}

async fn delete_by_prefix(a: DeleteByPrefixArgs, cx: &Context<'_>) -> Outcome {
    if a.prefix.is_empty() {
        return Outcome::fail("refusing to delete by an empty prefix, which would delete every key");
    }
    let scope = a.scope.effective_scope();
    let opts = ListOptions {
        prefix: Some(a.prefix.clone()),
        scope: Some(scope.clone()),
        user: a.scope.user.clone(),
        limit: Some(-1),
        // Deletion decisions are made on up-to-date data, whatever --stale says.
        stale: false,
        ..Default::default()
    };
    let kvs = match cx.client.keys().list(&opts).await {
        Ok(kvs) => kvs,
        Err(e) => return Outcome::fail(cx.describe(&e)),
    };
    let mut deleted = Vec::new();
    let mut error = None;
    // The prefix is checked here too: a server that ignores it (StackStorm with RBAC, st2 issue
    // #6335) must not make this delete unrelated keys.
    for kv in kvs.iter().filter(|kv| kv.name.starts_with(&a.prefix)) {
        let opts =
            DeleteOptions { scope: kv.scope.clone().or_else(|| Some(scope.clone())), user: kv.user.clone() };
        match cx.client.keys().delete(&kv.name, &opts).await {
            Ok(()) => deleted.push(kv.name.as_str()),
            // Deleted by someone else meanwhile: it is gone, which is what was asked.
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                error = Some(format!("failed to delete \"{}\": {}", kv.name, cx.describe(&e)));
                break;
            }
        }
    }
    let stdout = format!("Deleted {} keys\nDeleted key ids: {}", deleted.len(), deleted.join(", "));
    match error {
        None => Outcome::ok(stdout),
        Some(e) => Outcome { stdout, error: Some(e), hint: None, code: EXIT_FAILURE },
    }
}

/// Columns of the `key load` report. There is deliberately no value column (st2 issue #5924).
const LOAD_COLUMNS: &[&str] = &["name", "scope", "user", "status"];

/// What loading one item came to: the scope and user the server reported, or why it failed.
type LoadStatus = Result<(Option<String>, Option<String>), String>;

/// How many `key load` writes are in flight at once.
const LOAD_CONCURRENCY: usize = 64;

/// The round in which each item is written: items naming the same key go in successive rounds,
/// so a file that sets a key twice still leaves the later value, while distinct keys are written
/// concurrently.
fn load_rounds(items: &[load::Item]) -> Vec<usize> {
    let mut seen: std::collections::HashMap<(String, String, String), usize> = Default::default();
    items
        .iter()
        .map(|item| match &item.request {
            Ok(req) => {
                let id = (full_scope(&item.scope), item.user.clone().unwrap_or_default(), req.name.clone());
                let n = seen.entry(id).or_insert(0);
                *n += 1;
                *n - 1
            }
            Err(_) => 0,
        })
        .collect()
}

async fn load_file(a: LoadArgs, cx: &Context<'_>) -> Outcome {
    let raw = match load::read_items(&a.file) {
        Ok(raw) => raw,
        Err(e) => return Outcome::fail(e),
    };
    if raw.is_empty() && cx.format == Format::Table {
        return Outcome::ok(format!("No items found in {}", a.file.display()));
    }
    let items: Vec<load::Item> =
        raw.iter().enumerate().map(|(i, v)| load::to_item(v, i, a.convert)).collect();
    let rounds = load_rounds(&items);
    // One unreachable cluster is enough to know: do not wait for it once per item.
    let unreachable: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut results: Vec<Option<LoadStatus>> = vec![None; items.len()];
    for round in 0..=rounds.iter().copied().max().unwrap_or(0) {
        let writes = (0..items.len()).filter(|&i| rounds[i] == round).map(|i| {
            let unreachable = &unreachable;
            let item = &items[i];
            async move {
                let status = match &item.request {
                    Err(msg) => Err(msg.clone()),
                    Ok(_) if unreachable.lock().expect("lock").is_some() => {
                        Err("not attempted: no st2kv node reachable".to_string())
                    }
                    Ok(req) => match cx.client.keys().set(req).await {
                        Ok(kv) => Ok((kv.scope, kv.user)),
                        Err(e) => {
                            if matches!(e, ClientError::Unreachable(_)) {
                                unreachable.lock().expect("lock").get_or_insert_with(|| cx.describe(&e));
                            }
                            Err(cx.describe(&e))
                        }
                    },
                };
                (i, status)
            }
        });
        let done: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
            futures::stream::iter(writes),
            LOAD_CONCURRENCY,
        ))
        .await;
        for (i, status) in done {
            results[i] = Some(status);
        }
    }
    let mut rows = Vec::new();
    let mut failed = 0;
    for (item, status) in items.into_iter().zip(results) {
        let status = status.unwrap_or_else(|| Err("not attempted".to_string()));
        let (mut scope, mut user) = (full_scope(&item.scope), item.user.clone());
        if let Ok((s, u)) = &status {
            scope = s.clone().unwrap_or(scope);
            user = u.clone().or(user);
        }
        failed += usize::from(status.is_err());
        let mut row: BTreeMap<&'static str, Value> = BTreeMap::new();
        row.insert("name", Value::String(item.label));
        row.insert("scope", Value::String(scope));
        if let Some(u) = user {
            row.insert("user", Value::String(u));
        }
        row.insert("status", Value::String(status.err().unwrap_or_else(|| "loaded".to_string())));
        rows.push(row);
    }
    let stdout = output::render_rows(&rows, LOAD_COLUMNS, cx.format);
    match (unreachable.into_inner().expect("lock"), failed) {
        (Some(e), _) => Outcome { stdout, error: Some(e), hint: None, code: EXIT_FAILURE },
        (None, 0) => Outcome::ok(stdout),
        (None, n) => Outcome {
            stdout,
            error: Some(format!("{n} of {} items failed to load", rows.len())),
            hint: None,
            code: EXIT_FAILURE,
        },
    }
}

/// Columns of the table of secrets `key reencrypt` could not re-encrypt.
const REENCRYPT_FAILED_COLUMNS: &[&str] = &["key", "scope", "error"];

async fn reencrypt(a: ReencryptArgs, cx: &Context<'_>) -> Outcome {
    let report = match cx.client.reencrypt(a.batch).await {
        Ok(r) => r,
        Err(e @ ClientError::Transport(_)) => {
            let mut out = Outcome::fail(cx.describe(&e));
            out.hint = Some("(re-encryption is safe to repeat: run `st2kv key reencrypt` again)".into());
            return out;
        }
        Err(e) => return Outcome::fail(cx.describe(&e)),
    };
    let stdout = render_reencrypt(&report, cx.format);
    match report.failed.len() {
        0 => Outcome::ok(stdout),
        n => Outcome {
            stdout,
            error: Some(format!(
                "{n} secret{} could not be re-encrypted; do not retire the key{} they were encrypted with",
                if n == 1 { "" } else { "s" },
                if n == 1 { "" } else { "s" },
            )),
            hint: None,
            code: EXIT_FAILURE,
        },
    }
}

/// The answer of `POST /v1/keyring/reencrypt`: the whole document as JSON/YAML, else a sentence
/// and a table of the secrets that failed.
pub fn render_reencrypt(r: &st2kv_api::ReencryptReport, fmt: Format) -> String {
    if fmt != Format::Table {
        let doc = output::to_doc(r);
        return if fmt == Format::Json { output::to_json(&doc) } else { output::to_yaml(&doc) };
    }
    let mut text = if r.total == 0 && r.reencrypted == 0 && r.failed.is_empty() {
        format!("Every secret is already encrypted with the active key {}.", r.active_key)
    } else {
        let plural = if r.total == 1 { "" } else { "s" };
        format!(
            "Re-encrypted {} of {} secret{plural} with the active key {}.",
            r.reencrypted, r.total, r.active_key
        )
    };
    if r.changed_concurrently > 0 {
        text.push_str(&format!(
            " {} changed meanwhile and were left to their new writer.",
            r.changed_concurrently
        ));
    }
    if !r.failed.is_empty() {
        let rows: Vec<BTreeMap<&str, Value>> = r
            .failed
            .iter()
            .map(|f| {
                BTreeMap::from([
                    ("key", Value::String(f.key.clone())),
                    ("scope", Value::String(f.scope.clone())),
                    ("error", Value::String(f.error.clone())),
                ])
            })
            .collect();
        text.push_str("\nNot re-encrypted:\n");
        text.push_str(&output::render_rows(&rows, REENCRYPT_FAILED_COLUMNS, Format::Table));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_named_twice_in_a_load_file_is_written_in_order() {
        let doc: Vec<serde_yaml::Value> = serde_yaml::from_str(
            r#"[{"name": "a", "value": "1"}, {"name": "b", "value": "1"},
                {"name": "a", "value": "2", "scope": "st2kv.system"},
                {"name": "a", "value": "u", "scope": "user"}, {"name": "a", "value": "3"}, {"value": "no name"}]"#,
        )
        .unwrap();
        let items: Vec<load::Item> =
            doc.iter().enumerate().map(|(i, v)| load::to_item(v, i, false)).collect();
        // `system` and `st2kv.system` are the same scope; the user-scope `a` is another key.
        assert_eq!(load_rounds(&items), vec![0, 0, 1, 0, 2, 0]);
    }

    #[test]
    fn scopes_are_reported_as_the_server_spells_them() {
        assert_eq!(full_scope("system"), "st2kv.system");
        assert_eq!(full_scope("st2kv.user"), "st2kv.user");
        assert_eq!(full_scope("all"), "all");
    }

    #[test]
    fn reencrypt_reports_read_as_sentences() {
        use st2kv_api::{ReencryptFailure, ReencryptReport};
        let none = ReencryptReport { active_key: "1a2b3c4d".into(), ..Default::default() };
        assert_eq!(
            render_reencrypt(&none, Format::Table),
            "Every secret is already encrypted with the active key 1a2b3c4d."
        );
        let some = ReencryptReport { total: 3, reencrypted: 2, changed_concurrently: 1, ..none.clone() };
        assert_eq!(
            render_reencrypt(&some, Format::Table),
            "Re-encrypted 2 of 3 secrets with the active key 1a2b3c4d. 1 changed meanwhile and were \
             left to their new writer."
        );
        let failed = ReencryptReport {
            total: 1,
            failed: vec![ReencryptFailure {
                key: "tok".into(),
                scope: "st2kv.system".into(),
                error: "bad".into(),
            }],
            ..none
        };
        let text = render_reencrypt(&failed, Format::Table);
        assert!(text
            .starts_with("Re-encrypted 0 of 1 secret with the active key 1a2b3c4d.\nNot re-encrypted:\n+"));
        assert!(
            text.contains("| tok ") && text.contains("| st2kv.system ") && text.contains("| bad "),
            "{text}"
        );
        let json: Value = serde_json::from_str(&render_reencrypt(&failed, Format::Json)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"active_key": "1a2b3c4d", "total": 1, "reencrypted": 0, "changed_concurrently": 0,
                               "failed": [{"key": "tok", "scope": "st2kv.system", "error": "bad"}]})
        );
    }

    #[test]
    fn one_trailing_line_ending_is_stripped_from_stdin_values() {
        assert_eq!(strip_one_newline("v\n".into()), "v");
        assert_eq!(strip_one_newline("v\r\n".into()), "v");
        assert_eq!(strip_one_newline("a\nb\n\n".into()), "a\nb\n");
        assert_eq!(strip_one_newline("v".into()), "v");
    }
}
