//! # st2kv-cli: the `st2kv` command
//!
//! `st2kv key ...` does what `st2 key ...` does (st2client 3.9.0, `../shared/st2-contract.md`
//! §4.4–4.6), against any node of an st2kv cluster:
//!
//! | command | request(s) |
//! |---|---|
//! | `key set NAME [VALUE] [-l/--ttl N] [--description D] [-s S] [-u U] [-e/--encrypt \| --encrypted]` | `PUT /v1/keys/NAME` |
//! | `key get NAME [-s S] [-u U] [-d/--decrypt]` | `GET /v1/keys/NAME` |
//! | `key list [--prefix P] [-s S] [-u U] [-d] [-n/--last N]` | `GET /v1/keys` |
//! | `key delete NAME [-s S] [-u U]` | `DELETE /v1/keys/NAME` |
//! | `key delete_by_prefix -p P [-s S] [-u U]` | `GET /v1/keys?prefix=P&limit=-1`, then one DELETE per key |
//! | `key load FILE [-c/--convert]` | one `PUT /v1/keys/NAME` per item of a JSON or YAML file |
//!
//! Scopes (`system`, `user`, `st2kv.system`, `st2kv.user`, and `all` for listing) are passed to the
//! server as typed; the server validates them and its 400 message is shown. Defaults are st2's:
//! `system` for the single-key commands, `all` with a limit of 50 for `list` (`-n -1` lists
//! everything). `-e` asks the server to encrypt (body `secret: true`); `--encrypted` sends
//! ciphertext made with the server's key (body `encrypted: true`).
//!
//! ## Talking to the cluster
//! The endpoint is `--url`, else `$ST2_API_URL`, else `$ST2_BASE_URL`, else `http://127.0.0.1`.
//! Each may list several nodes separated by commas; `http://host` means `http://host:9101/v1`
//! ([`st2kv_api::endpoint_url`]). When a node cannot be reached the client moves on to the next,
//! and if none can, the error names every endpoint tried. `-t/--token` (`$ST2_AUTH_TOKEN`) and
//! `--api-key` (`$ST2_API_KEY`) are sent as `X-Auth-Token` and `St2-Api-Key`. `--stale` lets reads
//! (`get`, `list`) be served from the contacted node's local state instead of a linearizable read.
//!
//! ## Output
//! Tables by default; `-j` prints JSON the way st2 does (`json.dumps(doc, indent=4,
//! sort_keys=True)`, only the attributes st2 selects, absent ones omitted) and `-y` YAML.
//! `get` shows `name, value, secret, encrypted, scope, expire_timestamp`, plus `user` for a
//! user-scoped key (and `description`, in the table only); `list` shows those plus `user` for
//! each key, `[]` or `No matching items found` when there is none. Expiry times are ISO 8601 in
//! JSON/YAML and `Fri, 04 Dec 2026 15:28:25 UTC` in tables, as st2 shows them.
//!
//! Every failure is one line on stderr, `ERROR: <message>` (`ERROR: <status>: <faultstring>` for an
//! answer from the server), and exit status 1. Exceptions, kept from st2: `key get` of a missing
//! key also prints `Key Value Pair "NAME" is not found.` on stdout; `key delete` of a missing key
//! prints only that and exits 2. An invalid command line is also one `ERROR:` line, exit 2.
//!
//! ## Where we differ from `st2 key`, on purpose
//! - `list` prints keys in the server's order; st2 reverses it, which only makes a dump harder to
//!   compare with the store.
//! - `-u USER` without `-s` means user scope for `set`, `get`, `delete` and `delete_by_prefix`. The
//!   server already reads `?user=` that way on GET; st2 would instead write or delete the *system*
//!   key of that name on `set`/`delete`.
//! - `set` without VALUE reads all of stdin when it is not a terminal (one trailing newline
//!   removed, empty input refused); st2 prompts instead. Values starting with `-` go after `--`.
//! - `get` reports the server's actual error; st2 calls almost every failure "not found".
//! - `load` tries every item and reports each (name, scope, user, status) without ever showing a
//!   value (st2 issue #5924 prints secrets in clear); st2 stops at the first bad item. It exits 1 if
//!   any item failed. It also sends an item's `description`. `-c` stores non-string values as
//!   Python's `json.dumps` would (`{"x": 1}`), so loads match st2's byte for byte.
//! - `delete_by_prefix` refuses an empty prefix, accepts `-s`/`-u`, lists with `limit=-1` (st2 stops
//!   at the server's default of 100) and re-checks the prefix itself before deleting anything.
//! - JSON output keeps non-ASCII text as UTF-8 where Python would write `\u` escapes; YAML uses
//!   2-space indentation where st2 uses 4.
//!
//! ## What this crate deliberately does not do
//! - It holds no storage or consensus code and does not link sled, openraft or axum: everything
//!   goes through [`st2kv_api::Client`], the only HTTP layer, like any other client would.
//! - It never retries a request that reached a node. Failing over happens only when a node cannot
//!   be connected to; a write that timed out may have been applied, so it is reported as such
//!   ("outcome unknown") rather than repeated.
//! - It does not read `~/.st2/config`, log in or cache tokens (yet), validate scopes or names
//!   (the server is the authority), or encrypt anything itself (the server does).
//!
//! The binary (`main.rs`) only calls [`run`]; the pieces are [`args`] (the clap definitions),
//! [`commands`] (one function per command, returning an [`commands::Outcome`]), [`load`] (the
//! `key load` file) and [`output`] (tables, JSON, YAML).

use std::ffi::OsString;
use std::io::Write;

use clap::error::ErrorKind;
use clap::Parser;
use st2kv_api::Client;

pub mod args;
pub mod commands;
pub mod load;
pub mod output;

use args::{Cli, Command};
use commands::{Context, Outcome, EXIT_USAGE};
use output::Format;

/// Run the `st2kv` command line `args` (program name first) and return its exit status.
/// Prints results to stdout and errors to stderr; never panics on bad input.
pub async fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let outcome = execute(cli).await;
    emit(&outcome);
    outcome.code
}

/// Run a parsed command line.
pub async fn execute(cli: Cli) -> Outcome {
    let env = |name: &str| std::env::var(name).ok();
    let endpoints =
        match endpoints(cli.url.as_deref(), env("ST2_API_URL").as_deref(), env("ST2_BASE_URL").as_deref()) {
            Ok(e) => e,
            Err(e) => return Outcome::fail(e),
        };
    let client = match Client::new(&endpoints) {
        Ok(c) => c,
        Err(e) => return Outcome::fail(e.to_string()),
    };
    let client = client.with_token(non_empty(cli.token)).with_api_key(non_empty(cli.api_key));
    let format = match (cli.json, cli.yaml) {
        (true, _) => Format::Json,
        (false, true) => Format::Yaml,
        _ => Format::Table,
    };
    let cx = Context { client: &client, format, stale: cli.stale };
    match cli.command {
        Command::Key(cmd) => commands::run(cmd, &cx).await,
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

/// The endpoints to use: the first of `--url`, `$ST2_API_URL`, `$ST2_BASE_URL` that names any,
/// split at commas; else [`args::DEFAULT_URL`].
pub fn endpoints(
    flag: Option<&str>,
    api_env: Option<&str>,
    base_env: Option<&str>,
) -> Result<Vec<String>, String> {
    let split =
        |s: &str| s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect::<Vec<_>>();
    if let Some(flag) = flag {
        let list = split(flag);
        if list.is_empty() {
            return Err(format!("--url {flag:?} names no endpoint"));
        }
        return Ok(list);
    }
    Ok([api_env, base_env]
        .into_iter()
        .flatten()
        .map(split)
        .find(|list| !list.is_empty())
        .unwrap_or_else(|| vec![args::DEFAULT_URL.to_string()]))
}

/// Print an outcome. Write errors (a closed pipe, as in `st2kv key list | head -1`) are ignored:
/// there is nobody left to tell.
fn emit(outcome: &Outcome) {
    if !outcome.stdout.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", outcome.stdout).and_then(|()| out.flush());
    }
    if let Some(e) = &outcome.error {
        let _ = writeln!(std::io::stderr().lock(), "ERROR: {}", one_line(e));
    }
}

/// Messages (server faultstrings included) are printed on one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Help and version go to stdout with status 0; a bare `st2kv` or `st2kv key` prints the help;
/// any other problem is one `ERROR:` line with the usage, status 2.
fn usage_error(e: clap::Error) -> i32 {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            e.exit_code()
        }
        _ => {
            let _ = writeln!(std::io::stderr().lock(), "ERROR: {}", usage_message(&e));
            EXIT_USAGE
        }
    }
}

/// clap's multi-line error as one line: `<what is wrong> (usage: st2kv key set ...)`. The message
/// is every line before the usage (a missing argument is named on its own line), minus tips.
fn usage_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let what: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage: ") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    let what = what.join(" ");
    let what = what.strip_prefix("error: ").unwrap_or(&what);
    match text.lines().find_map(|l| l.trim().strip_prefix("Usage: ")) {
        Some(usage) => format!("{what} (usage: {usage})"),
        None => what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_precedence_is_flag_then_api_url_then_base_url() {
        let e = |f, a, b| endpoints(f, a, b).unwrap();
        assert_eq!(e(Some("http://a, http://b,"), Some("http://x"), None), ["http://a", "http://b"]);
        assert_eq!(e(None, Some("http://x:9101/v1"), Some("http://y")), ["http://x:9101/v1"]);
        assert_eq!(e(None, Some(" "), Some("http://y,http://z")), ["http://y", "http://z"]);
        assert_eq!(e(None, None, None), ["http://127.0.0.1"]);
        assert!(endpoints(Some(","), None, None).unwrap_err().contains("names no endpoint"));
    }

    #[test]
    fn usage_errors_become_one_line() {
        let e = Cli::try_parse_from(["st2kv", "key", "set", "k", "v", "-e", "--encrypted"]).unwrap_err();
        let msg = usage_message(&e);
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.starts_with("the argument '--encrypt' cannot be used with '--encrypted'"), "{msg}");
        assert!(msg.contains("(usage: st2kv key set"), "{msg}");
        let e = Cli::try_parse_from(["st2kv", "key", "get"]).unwrap_err();
        let msg = usage_message(&e);
        assert!(
            msg.starts_with("the following required arguments were not provided: <NAME> (usage:"),
            "{msg}"
        );
    }

    #[test]
    fn server_messages_are_flattened() {
        assert_eq!(one_line("400: bad\n  thing\n"), "400: bad thing");
    }

    #[tokio::test]
    async fn unreachable_cluster_is_one_clear_error() {
        // Port 1 on loopback: nothing listens there, so the connection is refused at once.
        let cli =
            Cli::try_parse_from(["st2kv", "--url", "http://127.0.0.1:1,127.0.0.1:2", "key", "get", "k"])
                .unwrap();
        let out = execute(cli).await;
        assert_eq!(out.code, 1);
        let err = out.error.unwrap();
        assert!(err.contains("no st2kv node reachable"), "{err}");
        assert!(err.contains("http://127.0.0.1:1/v1/") && err.contains("http://127.0.0.1:2/v1/"), "{err}");
    }

    #[tokio::test]
    async fn bad_load_files_fail_before_any_request() {
        let dir = std::env::temp_dir().join(format!("st2kv-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("broken.json");
        std::fs::write(&file, "[{\"name\": ").unwrap();
        let cli = Cli::try_parse_from([
            "st2kv",
            "--url",
            "http://127.0.0.1:1",
            "key",
            "load",
            file.to_str().unwrap(),
        ])
        .unwrap();
        let out = execute(cli).await;
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(out.code, 1);
        assert!(out.error.unwrap().contains("invalid JSON"));
    }
}
