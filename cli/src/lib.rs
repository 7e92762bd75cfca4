//! # st2kv-cli: the `st2kv` command
//!
//! `st2kv key ...` does what `st2 key ...` does, and `login`, `auth`, `whoami` and `apikey ...`
//! what st2's do (st2client 3.9.0, `../shared/st2-contract.md` §3–4), against any node of an
//! st2kv cluster; `logout`, `user ...`, `keygen` and `key reencrypt` are st2kv's own:
//!
//! | command | request(s) |
//! |---|---|
//! | `key set NAME [VALUE] [-l/--ttl N] [--description D] [-s S] [-u U] [-e/--encrypt \| --encrypted]` | `PUT /v1/keys/NAME` |
//! | `key get NAME [-s S] [-u U] [-d/--decrypt]` | `GET /v1/keys/NAME` |
//! | `key list [--prefix P] [-s S] [-u U] [-d] [-n/--last N]` | `GET /v1/keys` |
//! | `key delete NAME [-s S] [-u U]` | `DELETE /v1/keys/NAME` |
//! | `key delete_by_prefix -p P [-s S] [-u U]` | `GET /v1/keys?prefix=P&limit=-1`, then one DELETE per key |
//! | `key load FILE [-c/--convert]` | one `PUT /v1/keys/NAME` per item of a JSON or YAML file |
//! | `key reencrypt [--batch N]` | `POST /v1/keyring/reencrypt[?batch=N]` (admins) |
//! | `keygen --key-path FILE [--force \| --rotate \| --retire KEY_ID]` | none: writes the local keyring file |
//! | `login USER [-p PW] [-l TTL]` | `POST <auth>/tokens` (HTTP Basic, body `{}` or `{"ttl": N}`); caches the token |
//! | `auth USER [-p PW] [-l TTL] [-t/--only-token]` | the same POST; prints the token, caches nothing |
//! | `logout` | `DELETE /v1/tokens/TOKEN`, then deletes the cache file |
//! | `whoami` | `GET /v1/user` |
//! | `apikey create [-u USER] [-m JSON] [-k/--only-key]` | `POST /v1/apikeys` |
//! | `apikey list [-u USER] [--show-secrets]` | `GET /v1/apikeys` |
//! | `apikey get ID` / `delete ID` | `GET` / `DELETE /v1/apikeys/ID` |
//! | `apikey enable ID` / `disable ID` | `PUT /v1/apikeys/ID` `{"enabled": true\|false}` |
//! | `user add NAME [-p PW] [--role admin\|user]` | `POST /v1/users` `{name, password, role}` |
//! | `user list` / `delete NAME` | `GET /v1/users` / `DELETE /v1/users/NAME` |
//! | `user passwd NAME [-p PW]` / `role NAME admin\|user` | `PUT /v1/users/NAME` `{password}` / `{role}` |
//!
//! Scopes (`system`, `user`, `st2kv.system`, `st2kv.user`, and `all` for listing) are passed to the
//! server as typed; the server validates them and its 400 message is shown. Defaults are st2's:
//! `system` for the single-key commands, `all` with a limit of 50 for `list` (`-n -1` lists
//! everything). `-e` asks the server to encrypt (body `secret: true`); `--encrypted` sends
//! ciphertext made with the server's key (body `encrypted: true`); `get`/`list -d` ask for
//! plaintext (`?decrypt=true`, always sent as `true` or `false`).
//!
//! ## Secrets and the keyring ([`keygen`])
//! Nodes encrypt secrets with a keyring file ([`st2kv_api::keyring`]), which `keygen` writes
//! locally, needing no server, config or credentials (every global flag but `-j`/`-y` is ignored):
//! `keygen --key-path FILE` creates one with a single active key (mode 0600, replaced atomically;
//! an existing file only with `--force`) and prints `Wrote a new keyring to FILE (active key ID)`.
//! Rotation is `keygen --rotate --key-path FILE` (adds a key and makes it active, keeping the old
//! ones so existing ciphertexts stay readable), copying FILE to every node (they re-read it),
//! `key reencrypt` (the cluster rewrites every secret not yet under the active key; safe to
//! repeat, exit 1 if any secret could not be decrypted), and only then `keygen --retire OLD_ID`
//! (refused for the active key or an id not in the file; ids in any case) and copying FILE again.
//! Output shows key ids, never key material; with `-j`/`-y`, `keygen` prints
//! `{key_path, active_key, key_ids[, added_key | retired_key]}` and `key reencrypt` the server's
//! report (`{active_key, total, reencrypted, changed_concurrently, failed: [{key, scope, error}]}`).
//! `key reencrypt` may run for up to 15 minutes ([`st2kv_api::REENCRYPT_TIMEOUT`]) instead of the
//! usual 30 seconds. A `key list -j` dump loads back as it was: items with `encrypted: true`
//! are sent as ciphertext (`secret`/`encrypted` are sent when true), not encrypted again.
//!
//! ## Talking to the cluster
//! The endpoint is `--url`, else `$ST2_API_URL`, else `$ST2_BASE_URL`, else the config file's
//! `[api] url`, else its `[general] base_url`, else `http://127.0.0.1`. Each may list several
//! nodes separated by commas; `http://host` means `http://host:9101/v1`
//! ([`st2kv_api::endpoint_url`]). When a node cannot be reached the client moves on to the next,
//! and if none can, the error names every endpoint tried. `--stale` lets reads (`get`, `list`) be
//! served from the contacted node's local state instead of a linearizable read.
//!
//! ## Who you are ([`session`], [`config`])
//! Credentials are, in st2client's order: `-t/--token` (`$ST2_AUTH_TOKEN`) and `--api-key`
//! (`$ST2_API_KEY`), sent as `X-Auth-Token` and `St2-Api-Key`; else, when the config file names a
//! `[credentials] username`, that user's token cached in `~/.st2/token-USER` while
//! `expire_timestamp - 15 > now`; else, if the config also holds `[credentials] password`, a fresh
//! login, cached in turn (unless `[cli] cache_token` is false); else the config's
//! `[credentials] api_key`. The config file is `--config-file`, else `$ST2_CONFIG_FILE`, else
//! `~/.st2/config`; a file named explicitly must exist (except for `login`, which creates it), and
//! `--skip-config` or `ST2_CLI_SKIP_CONFIG=1` ignores it, cache included.
//!
//! `login USER` gets a token and writes it as st2 does: `~/.st2/token-USER` holds
//! `{"token": "...", "expire_timestamp": <unix seconds>}` (mode 0600, in `~/.st2` created with mode
//! 0700; both replaced atomically), and the config gets `[credentials] username = USER` with any
//! old `password` line removed (it was someone else's, as st2 also reasons); every other line is
//! kept. Without `-p`, the password is prompted for without echo on a terminal (twice for new
//! passwords in `user add`/`user passwd`), or read as one line from standard input otherwise.
//!
//! Logins go to `<auth>/tokens`, where `<auth>` is `--auth-url`, else `$ST2_AUTH_URL`, else the
//! config's `[auth] url`, else derived from each endpoint in turn ([`st2kv_api::auth_url`]):
//! `http://host` → `http://host:9100` (st2client's `<base>:9100`), `http://host:PORT` or
//! `https://host/api/v1` → that origin's `/auth/v1`, which every st2kv API listener also serves.
//! The next candidate is tried when one cannot be reached.
//!
//! ## Output
//! Tables by default; `-j` prints JSON the way st2 does (`json.dumps(doc, indent=4,
//! sort_keys=True)`, only the attributes st2 selects, absent ones omitted) and `-y` YAML.
//! `get` shows `name, value, secret, encrypted, scope, expire_timestamp`, plus `user` for a
//! user-scoped key (and `description`, in the table only); `list` shows those plus `user` for
//! each key, `[]` or `No matching items found` when there is none. Expiry and creation times are
//! ISO 8601 in JSON/YAML and `Fri, 04 Dec 2026 15:28:25 UTC` in tables, as st2 shows them. API
//! keys and users print as property tables (one) or column tables (lists), and as the server's
//! whole documents with `-j`/`-y`; `auth -j` prints `{expiry, token, user}`, `auth -t` and
//! `apikey create -k` only the secret, `whoami` st2's text.
//!
//! Every failure is one line on stderr, `ERROR: <message>` (`ERROR: <status>: <faultstring>` for an
//! answer from the server), and exit status 1. After a 401 (other than from `login`/`auth`) a
//! second line says `(log in with: st2kv login USER)`, naming the config's user when the
//! credentials were its. Exceptions, kept from st2: `key get` of a missing key also prints
//! `Key Value Pair "NAME" is not found.` on stdout; `key delete` of a missing key prints only that
//! and exits 2. An invalid command line is also one `ERROR:` line, exit 2.
//!
//! ## Where we differ from st2, on purpose
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
//! - The auth URL of an endpoint with a port or a path is that origin's `/auth/v1`, not st2's
//!   `<base>:9100` (which would be `http://h:9101:9100`); without `-p`, `login`/`auth` read the
//!   password from standard input when it is not a terminal; the token cache is 0600 in a 0700
//!   directory (st2: 0660 and 2770); a failed login prints the server's answer, not st2's
//!   "Failed to log in as USER"; a config user without password or fresh token means no
//!   credentials (and the 401 hint), where st2 fails trying to log in with no password.
//! - In `auth`, `-t` means `--only-token` (as in st2) while `-t/--token` elsewhere, and before the
//!   subcommand, is the token; `auth --token T` still sets the global token.
//! - `apikey list -u USER` filters here too (the server lists every key to an admin whatever
//!   `?user=` says), shows an `enabled` column, and lists all keys rather than st2's first 50;
//!   `apikey enable/disable` send only `{"enabled": ...}` and show the key without its hash.
//!
//! ## What this crate deliberately does not do
//! - It holds no storage or consensus code and does not link sled, openraft or axum: everything
//!   goes through [`st2kv_api::Client`], the only HTTP layer, like any other client would.
//! - It never retries a request that reached a node. Failing over happens only when a node cannot
//!   be connected to; a write that timed out may have been applied, so it is reported as such
//!   ("outcome unknown") rather than repeated.
//! - It never validates a token before using it (as st2client, it trusts the cache's expiry),
//!   never stores a password (st2's `login -w` is not offered), and never revokes tokens by itself:
//!   `user passwd` leaves existing tokens working until they expire or are logged out.
//! - It does not validate scopes, names or passwords (the server is the authority, and its 400
//!   message is shown), nor encrypt or decrypt any value itself: the server does, with the keyring
//!   `keygen` writes, and `keygen` never contacts a server or copies the file to nodes.
//! - `--api-version`, `--cacert` and `[credentials] basic_auth` are not supported.
//!
//! The binary (`main.rs`) only calls [`run`]; the pieces are [`args`] (the clap definitions),
//! [`session`] (endpoints, auth URLs, credentials, password prompts), [`config`] (`~/.st2/config`
//! and the token cache), [`commands`] (the `key` commands, each returning an
//! [`commands::Outcome`]), [`accounts`] (the account commands), [`keygen`] (the keyring file),
//! [`load`] (the `key load` file) and [`output`] (tables, JSON, YAML).

use std::ffi::OsString;
use std::io::Write;

use clap::error::ErrorKind;
use clap::Parser;
use st2kv_api::Client;

pub mod accounts;
pub mod args;
mod automation;
pub mod commands;
pub mod config;
pub mod keygen;
pub mod load;
mod ops;
pub mod output;
pub mod session;

use args::{Cli, Command};
use commands::{Context, Outcome, EXIT_USAGE};
use output::Format;
use session::{Credentials, Env, Settings, TokenSource};

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

/// Run a parsed command line in this process's environment.
pub async fn execute(cli: Cli) -> Outcome {
    execute_in(cli, &|name: &str| std::env::var(name).ok()).await
}

/// Run a parsed command line, reading environment variables (`$HOME` included) through `env`.
pub async fn execute_in(cli: Cli, env: Env<'_>) -> Outcome {
    let format = match (cli.json, cli.yaml) {
        (true, _) => Format::Json,
        (false, true) => Format::Yaml,
        _ => Format::Table,
    };
    // `keygen` works on a local file: no config, endpoints or credentials, so none can fail it.
    if let Command::Keygen(a) = &cli.command {
        return keygen::run(a, format);
    }
    let settings = match Settings::resolve(&cli, env) {
        Ok(s) => s,
        Err(e) => return Outcome::fail(e),
    };
    if let (Some(path), false) = (&settings.missing_config, matches!(cli.command, Command::Login(_))) {
        return Outcome::fail(format!("config file {} not found", path.display()));
    }
    let client = match Client::new(&settings.endpoints) {
        Ok(c) => c,
        Err(e) => return Outcome::fail(e.to_string()),
    };
    // `login` and `auth` authenticate with a password, `logout` with the token it revokes.
    let creds = if matches!(cli.command, Command::Login(_) | Command::Auth(_) | Command::Logout) {
        Credentials::none()
    } else {
        let describe = |e: &st2kv_api::ClientError| commands::describe_error(e, client.endpoints());
        match session::credentials(&cli, &settings, &client, describe).await {
            Ok(c) => c,
            Err(e) => return Outcome::fail(e),
        }
    };
    let client = client.with_token(creds.token.clone()).with_api_key(creds.api_key.clone());
    let cx = Context { client: &client, format, stale: cli.stale, settings: &settings, creds: &creds };
    // Credentials given on the command line or in the environment may be anybody's.
    let key_given = cli.api_key.as_deref().is_some_and(|k| !k.trim().is_empty());
    let hint_user = match creds.source {
        TokenSource::Given => None,
        _ if key_given => None,
        _ => creds.config_user.clone(),
    };
    let (mut outcome, may_hint) = match cli.command {
        Command::Key(cmd) => (commands::run(cmd, &cx).await, true),
        Command::Login(a) => (accounts::login(a, &cx).await, false),
        Command::Auth(a) => (accounts::auth(a, &cx).await, false),
        Command::Logout => (accounts::logout(cli.token.filter(|t| !t.trim().is_empty()), &cx).await, false),
        Command::Whoami => (accounts::whoami(&cx).await, true),
        Command::Apikey(cmd) => (accounts::apikey(cmd, &cx).await, true),
        Command::User(cmd) => (accounts::user(cmd, &cx).await, true),
        Command::Cluster(cmd) => (ops::cluster(cmd, &cx).await, true),
        Command::Snapshot(cmd) => (ops::snapshot(cmd, &cx).await, true),
        Command::Rule(cmd) => (automation::rule(cmd, &cx).await, true),
        Command::Execution(cmd) => (automation::execution(cmd, &cx).await, true),
        Command::Render(a) => (automation::render(a, &cx).await, true),
        // Handled before any of the above was set up; kept here so the match stays exhaustive.
        Command::Keygen(a) => (keygen::run(&a, format), false),
    };
    if may_hint && outcome.error.as_deref().is_some_and(|e| e.starts_with("401:")) {
        outcome.hint = Some(login_hint(hint_user.as_deref()));
    }
    outcome
}

/// What to do after a 401: log in (again), as the config's user if the credentials were its.
fn login_hint(user: Option<&str>) -> String {
    format!("(log in with: st2kv login {})", user.unwrap_or("USER"))
}

/// Print an outcome. Write errors (a closed pipe, as in `st2kv key list | head -1`) are ignored:
/// there is nobody left to tell.
fn emit(outcome: &Outcome) {
    if !outcome.stdout.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", outcome.stdout).and_then(|()| out.flush());
    }
    if let Some(e) = &outcome.error {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "ERROR: {}", one_line(e));
        if let Some(hint) = &outcome.hint {
            let _ = writeln!(err, "{hint}");
        }
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
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("st2kv").chain(args.iter().copied())).unwrap()
    }

    /// Run a command line with `HOME` (and nothing else) set in its environment.
    async fn run_at_home(home: &std::path::Path, args: &[&str]) -> Outcome {
        let env: HashMap<String, String> = HashMap::from([("HOME".into(), home.to_str().unwrap().into())]);
        execute_in(cli(args), &move |k: &str| env.get(k).cloned()).await
    }

    /// A loopback HTTP server answering each connection with the next of `answers` (status line,
    /// JSON body); hands back the requests it got.
    async fn mock(
        answers: Vec<(&'static str, &'static str)>,
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut requests = Vec::new();
            for (status, body) in answers {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let complete = text.find("\r\n\r\n").is_some_and(|end| {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: ")?.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        buf.len() >= end + 4 + len
                    });
                    if complete || n == 0 {
                        break;
                    }
                }
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(resp.as_bytes()).await.unwrap();
                requests.push(String::from_utf8_lossy(&buf).to_string());
            }
            requests
        });
        (url, task)
    }

    const TOKEN: &str = r#"{"id":"1","user":"alice","token":"tok-123","expiry":"2099-01-01T00:00:00.000000Z","metadata":{},"service":false}"#;
    const WHOAMI: &str = r#"{"username":"alice","authentication":{"method":"authentication token","location":"header","token_expire":"2099-01-01T00:00:00Z"},"rbac":{"enabled":true,"roles":[],"is_admin":false}}"#;

    #[tokio::test]
    async fn login_caches_the_token_that_later_commands_send() {
        let home = tempfile::tempdir().unwrap();
        let (url, requests) = mock(vec![
            ("201 Created", TOKEN),
            ("200 OK", WHOAMI),
            ("401 Unauthorized", r#"{"faultstring":"Unauthorized"}"#),
        ])
        .await;
        let out = run_at_home(home.path(), &["--url", &url, "login", "alice", "-p", "pw", "-l", "600"]).await;
        assert_eq!((out.stdout.as_str(), out.error.as_deref(), out.code), ("Logged in as alice", None, 0));
        let dir = home.path().join(".st2");
        let cache = std::fs::read_to_string(dir.join("token-alice")).unwrap();
        assert_eq!(cache, r#"{"token": "tok-123", "expire_timestamp": 4070908800}"#);
        let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(dir.clone()), mode(dir.join("token-alice"))), (0o700, 0o600));
        assert_eq!(std::fs::read_to_string(dir.join("config")).unwrap(), "[credentials]\nusername = alice\n");

        let out = run_at_home(home.path(), &["--url", &url, "whoami"]).await;
        assert!(out.stdout.starts_with("Currently logged in as \"alice\"."), "{out:?}");
        let out = run_at_home(home.path(), &["--url", &url, "key", "list"]).await;
        assert_eq!(out.error.as_deref(), Some("401: Unauthorized"));
        assert_eq!(out.hint.as_deref(), Some("(log in with: st2kv login alice)"));

        let requests = requests.await.unwrap();
        // An explicit port: the API listener's /auth/v1 is where the login went.
        assert!(requests[0].starts_with("POST /auth/v1/tokens HTTP/1.1"), "{}", requests[0]);
        assert!(requests[0].ends_with(r#"{"ttl":600}"#), "{}", requests[0]);
        assert!(
            requests[1].starts_with("GET /v1/user HTTP/1.1") && requests[1].contains("x-auth-token: tok-123")
        );
        assert!(requests[2].contains("x-auth-token: tok-123"));
    }

    #[tokio::test]
    async fn a_failed_login_changes_nothing() {
        let home = tempfile::tempdir().unwrap();
        let (url, _requests) =
            mock(vec![("401 Unauthorized", r#"{"faultstring":"Invalid or missing credentials"}"#)]).await;
        let out = run_at_home(home.path(), &["--url", &url, "login", "alice", "-p", "bad"]).await;
        assert_eq!(
            (out.error.as_deref(), out.hint, out.code),
            (Some("401: Invalid or missing credentials"), None, 1)
        );
        assert!(!home.path().join(".st2").exists());
    }

    #[tokio::test]
    async fn a_named_config_must_exist_except_for_login_which_creates_it() {
        let home = tempfile::tempdir().unwrap();
        let cfg = home.path().join("elsewhere.ini");
        let cfg = cfg.to_str().unwrap();
        let out = run_at_home(home.path(), &["--config-file", cfg, "key", "list"]).await;
        assert_eq!(out.error, Some(format!("config file {cfg} not found")));
        // With the config skipped, its absence does not matter (the cluster's does).
        let out = run_at_home(
            home.path(),
            &["--config-file", cfg, "--skip-config", "--url", "127.0.0.1:1", "whoami"],
        )
        .await;
        assert!(out.error.unwrap().starts_with("no st2kv node reachable"));

        let (url, _requests) = mock(vec![("201 Created", TOKEN)]).await;
        let out = run_at_home(
            home.path(),
            &["--config-file", cfg, "--auth-url", &url, "login", "alice", "-p", "pw"],
        )
        .await;
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(std::fs::read_to_string(cfg).unwrap(), "[credentials]\nusername = alice\n");
        assert!(home.path().join(".st2/token-alice").exists());
    }

    #[tokio::test]
    async fn login_needs_a_home_and_logout_a_token() {
        let out = execute_in(cli(&["login", "alice", "-p", "pw"]), &|_: &str| None).await;
        assert!(out.error.unwrap().contains("$HOME is not set"));
        let home = tempfile::tempdir().unwrap();
        let out = run_at_home(home.path(), &["logout"]).await;
        assert!(out.error.unwrap().starts_with("not logged in"));
    }

    #[test]
    fn the_401_hint_names_the_config_user_when_there_is_one() {
        assert_eq!(login_hint(Some("alice")), "(log in with: st2kv login alice)");
        assert_eq!(login_hint(None), "(log in with: st2kv login USER)");
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
        let home = tempfile::tempdir().unwrap();
        let out =
            run_at_home(home.path(), &["--url", "http://127.0.0.1:1,127.0.0.1:2", "key", "get", "k"]).await;
        assert_eq!(out.code, 1);
        let err = out.error.unwrap();
        assert!(err.contains("no st2kv node reachable"), "{err}");
        assert!(err.contains("http://127.0.0.1:1/v1/") && err.contains("http://127.0.0.1:2/v1/"), "{err}");
    }

    #[tokio::test]
    async fn keygen_needs_no_config_home_or_server() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("keyring.json");
        let kp = key_path.to_str().unwrap();
        let missing_cfg = dir.path().join("no-such-config");
        let args = [
            "--config-file",
            missing_cfg.to_str().unwrap(),
            "--url",
            "http://127.0.0.1:1",
            "keygen",
            "--key-path",
            kp,
        ];
        let out = execute_in(cli(&args), &|_: &str| None).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.starts_with(&format!("Wrote a new keyring to {kp} (active key ")), "{out:?}");
        let out = execute_in(cli(&args), &|_: &str| None).await;
        assert_eq!(out.code, 1);
        assert!(out.error.unwrap().ends_with("already exists; pass --force to overwrite it"));
        let out = execute_in(cli(&["keygen", "--rotate", "--key-path", kp, "-j"]), &|_: &str| None).await;
        let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(doc["key_ids"].as_array().unwrap().len(), 2);
        assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[tokio::test]
    async fn reencrypt_reports_and_fails_on_secrets_it_could_not_rewrite() {
        let home = tempfile::tempdir().unwrap();
        let (url, requests) = mock(vec![
            ("200 OK", r#"{"active_key":"0badcafe","total":2,"reencrypted":2,"changed_concurrently":0,"failed":[]}"#),
            (
                "200 OK",
                r#"{"active_key":"0badcafe","total":2,"reencrypted":1,"changed_concurrently":0,"failed":[{"key":"db.pw","scope":"st2kv.system","error":"the value was encrypted with key 11111111, which this keyring does not hold"}]}"#,
            ),
            ("403 Forbidden", r#"{"faultstring":"Administrator access required"}"#),
        ])
        .await;
        let out =
            run_at_home(home.path(), &["--url", &url, "-t", "T", "key", "reencrypt", "--batch", "10"]).await;
        assert_eq!(
            (out.stdout.as_str(), out.error, out.code),
            ("Re-encrypted 2 of 2 secrets with the active key 0badcafe.", None, 0)
        );
        let out = run_at_home(home.path(), &["--url", &url, "-t", "T", "key", "reencrypt", "-j"]).await;
        assert_eq!(out.code, 1);
        assert_eq!(
            out.error.as_deref(),
            Some("1 secret could not be re-encrypted; do not retire the key they were encrypted with")
        );
        let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(doc["failed"][0]["key"], "db.pw");
        let out = run_at_home(home.path(), &["--url", &url, "-t", "T", "key", "reencrypt"]).await;
        assert_eq!((out.error.as_deref(), out.code), (Some("403: Administrator access required"), 1));

        let requests = requests.await.unwrap();
        assert!(requests[0].starts_with("POST /v1/keyring/reencrypt?batch=10 HTTP/1.1"), "{}", requests[0]);
        assert!(requests[0].contains("x-auth-token: T"), "{}", requests[0]);
        assert!(requests[1].starts_with("POST /v1/keyring/reencrypt HTTP/1.1"), "{}", requests[1]);
    }

    #[tokio::test]
    async fn secret_flags_reach_the_server() {
        const KV: &str = r#"{"name":"k","value":"v","secret":true,"encrypted":true,"scope":"st2kv.system"}"#;
        let home = tempfile::tempdir().unwrap();
        let dump = home.path().join("dump.json");
        std::fs::write(
            &dump,
            r#"[{"name": "sec", "value": "01AB", "secret": true, "encrypted": true, "scope": "st2kv.system"},
                {"name": "plain", "value": "p", "secret": false, "encrypted": false, "scope": "st2kv.system"}]"#,
        )
        .unwrap();
        let (url, requests) = mock(vec![
            ("200 OK", KV),
            ("200 OK", KV),
            ("200 OK", KV),
            ("200 OK", KV),
            ("200 OK", "[]"),
            ("200 OK", KV),
            ("200 OK", KV),
        ])
        .await;
        for args in [
            &["key", "set", "k", "v", "-e"][..],
            &["key", "set", "k", "01AB", "--encrypted"],
            &["key", "set", "k", "v"],
            &["key", "get", "k", "-d"],
            &["key", "list", "--decrypt"],
        ] {
            let args: Vec<&str> = ["--url", url.as_str(), "-t", "T"].iter().chain(args).copied().collect();
            let out = run_at_home(home.path(), &args).await;
            assert_eq!(out.code, 0, "{args:?}: {out:?}");
        }
        let out =
            run_at_home(home.path(), &["--url", &url, "-t", "T", "key", "load", dump.to_str().unwrap()])
                .await;
        assert_eq!(out.code, 0, "{out:?}");
        let r = requests.await.unwrap();
        let body = |i: usize| r[i].split("\r\n\r\n").nth(1).unwrap().to_string();
        assert_eq!(body(0), r#"{"name":"k","value":"v","scope":"system","secret":true}"#);
        assert_eq!(body(1), r#"{"name":"k","value":"01AB","scope":"system","encrypted":true}"#);
        assert_eq!(body(2), r#"{"name":"k","value":"v","scope":"system"}"#);
        assert!(r[3].starts_with("GET /v1/keys/k?decrypt=true&scope=system HTTP/1.1"), "{}", r[3]);
        assert!(r[4].starts_with("GET /v1/keys/?decrypt=true&scope=all&limit=50 HTTP/1.1"), "{}", r[4]);
        // A `key list -j` dump of a secret loads as ciphertext, not as a value to encrypt again.
        assert_eq!(
            body(5),
            r#"{"name":"sec","value":"01AB","scope":"st2kv.system","secret":true,"encrypted":true}"#
        );
        assert_eq!(body(6), r#"{"name":"plain","value":"p","scope":"st2kv.system"}"#);
    }

    #[tokio::test]
    async fn bad_load_files_fail_before_any_request() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broken.json");
        std::fs::write(&file, "[{\"name\": ").unwrap();
        let out =
            run_at_home(dir.path(), &["--url", "http://127.0.0.1:1", "key", "load", file.to_str().unwrap()])
                .await;
        assert_eq!(out.code, 1);
        assert!(out.error.unwrap().contains("invalid JSON"));
    }
}
