//! Where to connect and who to be: endpoints, the auth URL and credentials, from the command
//! line, the environment and `~/.st2` (`../shared/st2-contract.md` §4.1–4.3).
//!
//! Precedence, as st2client's: flags, then environment variables, then the config file, then
//! defaults. Credentials: `-t`/`$ST2_AUTH_TOKEN` and `--api-key`/`$ST2_API_KEY`; if neither is
//! given, the config's `[credentials] username` selects the cached `~/.st2/token-USER` while it is
//! fresh, or, if the config also holds a password, a new login (cached in turn); failing both,
//! the config's `[credentials] api_key`. The environment is passed in as a function so tests can
//! give their own.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use st2kv_api::{Client, ClientError, Token};

use crate::args::{self, Cli};
use crate::config::{self, CachedToken, Config};

/// Reads an environment variable (`std::env::var` in the binary, a map in tests).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Everything but credentials that a command needs to reach the cluster.
#[derive(Debug, Clone)]
pub struct Settings {
    /// API endpoints as the user gave them (see [`st2kv_api::endpoint_url`]).
    pub endpoints: Vec<String>,
    /// Auth roots to try in order for a login: the one given, or one derived per endpoint.
    pub auth_roots: Vec<String>,
    /// `~/.st2`, where tokens are cached; `None` when `$HOME` is not set.
    pub st2_dir: Option<PathBuf>,
    /// The config file: `--config-file`, `$ST2_CONFIG_FILE` or `~/.st2/config` (`login` writes it).
    pub config_path: Option<PathBuf>,
    /// Its contents; default when skipped or absent.
    pub config: Config,
    /// `--skip-config` or `$ST2_CLI_SKIP_CONFIG`.
    pub skip_config: bool,
    /// An explicitly named config file that does not exist (an error for every command but
    /// `login`, which creates it).
    pub missing_config: Option<PathBuf>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

/// `~/x` → `$HOME/x`, as st2client's `expanduser` (shells do it only at the start of a word).
fn expand_home(path: &Path, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path.to_path_buf(),
    }
}

/// Whether an environment flag such as `ST2_CLI_SKIP_CONFIG=1` is on.
fn truthy(v: Option<String>) -> bool {
    v.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

impl Settings {
    /// Work out the settings of a command line. Fails only on an unreadable config file or an
    /// empty `--url`.
    pub fn resolve(cli: &Cli, env: Env) -> Result<Settings, String> {
        let home = non_empty(env("HOME")).map(PathBuf::from);
        let st2_dir = home.as_ref().map(|h| h.join(".st2"));
        let skip_config = cli.skip_config || truthy(env("ST2_CLI_SKIP_CONFIG"));
        let explicit =
            cli.config_file.clone().or_else(|| non_empty(env("ST2_CONFIG_FILE")).map(PathBuf::from));
        let config_path = match &explicit {
            Some(p) => Some(expand_home(p, home.as_deref())),
            None => st2_dir.as_ref().map(|d| d.join("config")),
        };
        let mut config = Config::default();
        let mut missing_config = None;
        if let (false, Some(path)) = (skip_config, &config_path) {
            if path.exists() {
                config = Config::load(path)?;
            } else if explicit.is_some() {
                missing_config = Some(path.clone());
            }
        }
        let endpoints = endpoints(
            cli.url.as_deref(),
            &[
                env("ST2_API_URL").as_deref(),
                env("ST2_BASE_URL").as_deref(),
                config.api_url.as_deref(),
                config.base_url.as_deref(),
            ],
        )?;
        let given_auth =
            [non_empty(cli.auth_url.clone()), non_empty(env("ST2_AUTH_URL")), config.auth_url.clone()]
                .into_iter()
                .flatten()
                .next();
        let auth_roots = auth_roots(given_auth.as_deref(), &endpoints);
        Ok(Settings { endpoints, auth_roots, st2_dir, config_path, config, skip_config, missing_config })
    }
}

/// The endpoints to use: `--url` if given, else the first of `fallbacks` (`$ST2_API_URL`,
/// `$ST2_BASE_URL`, `[api] url`, `[general] base_url`) that names any, split at commas; else
/// [`args::DEFAULT_URL`].
pub fn endpoints(flag: Option<&str>, fallbacks: &[Option<&str>]) -> Result<Vec<String>, String> {
    let split =
        |s: &str| s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect::<Vec<_>>();
    if let Some(flag) = flag {
        let list = split(flag);
        if list.is_empty() {
            return Err(format!("--url {flag:?} names no endpoint"));
        }
        return Ok(list);
    }
    Ok(fallbacks
        .iter()
        .flatten()
        .map(|s| split(s))
        .find(|list| !list.is_empty())
        .unwrap_or_else(|| vec![args::DEFAULT_URL.to_string()]))
}

/// The auth roots to try: the given one alone, or one derived from each endpoint
/// ([`st2kv_api::auth_url`]), without repeats.
pub fn auth_roots(given: Option<&str>, endpoints: &[String]) -> Vec<String> {
    if let Some(g) = given {
        return vec![g.trim().trim_end_matches('/').to_string()];
    }
    let mut out: Vec<String> = Vec::new();
    for e in endpoints {
        if let Ok(u) = st2kv_api::auth_url(e) {
            let u = u.as_str().trim_end_matches('/').to_string();
            if !out.contains(&u) {
                out.push(u);
            }
        }
    }
    out
}

/// Where the token a command sends came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// No token is sent.
    None,
    /// `-t`/`--token` or `$ST2_AUTH_TOKEN`.
    Given,
    /// The cache file of the config's user.
    Cached,
    /// A login with the config's password, just now.
    LoggedIn,
}

/// The credentials a command sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub token: Option<String>,
    pub api_key: Option<String>,
    pub source: TokenSource,
    /// The config's `[credentials] username`, if any (named in the hint after a 401).
    pub config_user: Option<String>,
}

impl Credentials {
    /// No credentials at all (`login`, `auth`).
    pub fn none() -> Credentials {
        Credentials { token: None, api_key: None, source: TokenSource::None, config_user: None }
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A token's expiry as unix seconds (rounded down, as st2client's `timegm` does).
pub fn expire_timestamp(token: &Token) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(&token.expiry).map(|t| t.timestamp()).map_err(|_| {
        format!("unexpected answer from server: token expiry {:?} is not a timestamp", token.expiry)
    })
}

/// Log in at the first of `roots` that can be reached.
pub async fn login_any(
    client: &Client,
    roots: &[String],
    user: &str,
    password: &str,
    ttl: Option<i64>,
) -> Result<Token, ClientError> {
    let mut failures = Vec::new();
    for root in roots {
        match client.login(root, user, password, ttl).await {
            Err(ClientError::Unreachable(why)) => failures.push(why),
            other => return other,
        }
    }
    Err(ClientError::Unreachable(failures.join("; ")))
}

/// A login error as one line. Unreachable auth roots are named (they are not the API endpoints
/// the usual message lists), with what to do about it.
pub fn describe_login_error(
    e: &ClientError,
    roots: &[String],
    fallback: impl Fn(&ClientError) -> String,
) -> String {
    match e {
        ClientError::Unreachable(_) => {
            let tried: Vec<String> = roots
                .iter()
                .map(|r| st2kv_api::tokens_url(r).map(|u| u.to_string()).unwrap_or_else(|_| r.clone()))
                .collect();
            format!(
                "cannot reach the auth service (tried {}); give its URL with --auth-url or $ST2_AUTH_URL",
                tried.join(", ")
            )
        }
        other => fallback(other),
    }
}

/// Work out the credentials to send (see the module documentation). `client` is only used to log
/// in with the config's password.
pub async fn credentials(
    cli: &Cli,
    settings: &Settings,
    client: &Client,
    describe: impl Fn(&ClientError) -> String,
) -> Result<Credentials, String> {
    let token = non_empty(cli.token.clone());
    let api_key = non_empty(cli.api_key.clone());
    let config_user = if settings.skip_config { None } else { settings.config.username.clone() };
    if token.is_some() || api_key.is_some() {
        let source = if token.is_some() { TokenSource::Given } else { TokenSource::None };
        return Ok(Credentials { token, api_key, source, config_user });
    }
    let mut creds = Credentials { token: None, api_key: None, source: TokenSource::None, config_user };
    if settings.skip_config {
        return Ok(creds);
    }
    let cfg = &settings.config;
    if let Some(user) = &cfg.username {
        let cached = match (&settings.st2_dir, cfg.cache_token) {
            (Some(dir), true) => config::read_token(dir, user).filter(|t| t.is_fresh(now())),
            _ => None,
        };
        if let Some(t) = cached {
            creds.token = Some(t.token);
            creds.source = TokenSource::Cached;
        } else if let Some(password) = &cfg.password {
            let tok = login_any(client, &settings.auth_roots, user, password, None).await.map_err(|e| {
                let why = describe_login_error(&e, &settings.auth_roots, &describe);
                let file =
                    settings.config_path.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
                format!("cannot log in as {user:?} with the password in {file}: {why}")
            })?;
            // Caching is a convenience: a login that cannot be cached still serves this command.
            if let (Some(dir), true, Ok(ts)) = (&settings.st2_dir, cfg.cache_token, expire_timestamp(&tok)) {
                let _ = config::write_token(
                    dir,
                    user,
                    &CachedToken { token: tok.token.clone(), expire_timestamp: ts },
                );
            }
            creds.token = Some(tok.token);
            creds.source = TokenSource::LoggedIn;
        }
    }
    if creds.token.is_none() {
        creds.api_key = cfg.api_key.clone();
    }
    Ok(creds)
}

/// A password: `given`, else typed at the terminal without echo (twice when `confirm`, for a new
/// password), else one line of standard input (one trailing line ending removed).
pub fn read_password(given: Option<String>, confirm: bool) -> Result<String, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let password = if std::io::stdin().is_terminal() {
        let prompt =
            |p: &str| rpassword::prompt_password(p).map_err(|e| format!("cannot read the password: {e}"));
        let first = prompt("Password: ")?;
        if confirm && prompt("Confirm password: ")? != first {
            return Err("the passwords do not match".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        crate::commands::strip_one_newline(line)
    };
    if password.is_empty() {
        return Err(
            "no password given: pass -p PASSWORD, type it at the prompt or pipe it on standard input".into(),
        );
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::Parser;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("st2kv").chain(args.iter().copied())).unwrap()
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn endpoint_precedence_is_flag_then_env_then_config() {
        let e = |f, rest: &[Option<&str>]| endpoints(f, rest).unwrap();
        assert_eq!(e(Some("http://a, http://b,"), &[Some("http://x")]), ["http://a", "http://b"]);
        assert_eq!(e(None, &[Some("http://x:9101/v1"), Some("http://y")]), ["http://x:9101/v1"]);
        assert_eq!(e(None, &[Some(" "), Some("http://y,http://z")]), ["http://y", "http://z"]);
        assert_eq!(e(None, &[None, None, None, Some("http://cfg")]), ["http://cfg"]);
        assert_eq!(e(None, &[None, None]), ["http://127.0.0.1"]);
        assert!(endpoints(Some(","), &[]).unwrap_err().contains("names no endpoint"));
    }

    #[test]
    fn auth_roots_are_given_or_derived_per_endpoint() {
        let eps = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(auth_roots(Some("https://h/auth/v1/"), &eps(&["http://a"])), ["https://h/auth/v1"]);
        assert_eq!(
            auth_roots(None, &eps(&["http://a", "127.0.0.2:9111", "http://a/", "https://p/api/v1"])),
            ["http://a:9100", "http://127.0.0.2:9111/auth/v1", "https://p/auth/v1"]
        );
        assert_eq!(auth_roots(None, &eps(&["http://"])), Vec::<String>::new());
    }

    #[test]
    fn settings_read_the_config_unless_skipped() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap();
        std::fs::create_dir(home.path().join(".st2")).unwrap();
        std::fs::write(
            home.path().join(".st2/config"),
            "[general]\nbase_url = http://cfg-base\n[auth]\nurl = http://cfg-auth:9100\n[credentials]\nusername = alice\n",
        )
        .unwrap();
        let s = Settings::resolve(&cli(&["whoami"]), &env_of(&[("HOME", h)])).unwrap();
        assert_eq!(s.endpoints, ["http://cfg-base"]);
        assert_eq!(s.auth_roots, ["http://cfg-auth:9100"]);
        assert_eq!(s.config.username.as_deref(), Some("alice"));
        assert_eq!(s.st2_dir, Some(home.path().join(".st2")));
        assert_eq!(s.missing_config, None);

        // The environment beats the config; flags beat the environment.
        let env = env_of(&[("HOME", h), ("ST2_BASE_URL", "http://env"), ("ST2_AUTH_URL", "http://env-auth")]);
        let s = Settings::resolve(&cli(&["whoami"]), &env).unwrap();
        assert_eq!((s.endpoints[0].as_str(), s.auth_roots[0].as_str()), ("http://env", "http://env-auth"));
        let s = Settings::resolve(&cli(&["--url", "http://flag", "--auth-url", "http://fa", "whoami"]), &env)
            .unwrap();
        assert_eq!((s.endpoints[0].as_str(), s.auth_roots[0].as_str()), ("http://flag", "http://fa"));

        for skipped in [
            Settings::resolve(&cli(&["--skip-config", "whoami"]), &env_of(&[("HOME", h)])).unwrap(),
            Settings::resolve(&cli(&["whoami"]), &env_of(&[("HOME", h), ("ST2_CLI_SKIP_CONFIG", "1")]))
                .unwrap(),
        ] {
            assert!(skipped.skip_config);
            assert_eq!(skipped.config, Config::default());
            assert_eq!(skipped.endpoints, ["http://127.0.0.1"]);
            assert_eq!(skipped.auth_roots, ["http://127.0.0.1:9100"]);
        }
        let s = Settings::resolve(&cli(&["whoami"]), &env_of(&[("HOME", h), ("ST2_CLI_SKIP_CONFIG", "0")]))
            .unwrap();
        assert!(!s.skip_config);
    }

    #[test]
    fn the_config_path_can_be_moved_and_must_then_exist() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap();
        let other = home.path().join("other.ini");
        std::fs::write(&other, "[api]\nurl = http://other:9101/v1\n").unwrap();
        let env = env_of(&[("HOME", h), ("ST2_CONFIG_FILE", other.to_str().unwrap())]);
        let s = Settings::resolve(&cli(&["whoami"]), &env).unwrap();
        assert_eq!(s.endpoints, ["http://other:9101/v1"]);
        assert_eq!(s.auth_roots, ["http://other:9101/auth/v1"]);
        assert_eq!(s.config_path.as_deref(), Some(other.as_path()));
        // `~/` is expanded, and the flag beats the environment.
        let s = Settings::resolve(&cli(&["--config-file", "~/nope.ini", "whoami"]), &env).unwrap();
        assert_eq!(s.missing_config, Some(home.path().join("nope.ini")));
        // The default path may be missing.
        let s = Settings::resolve(&cli(&["whoami"]), &env_of(&[("HOME", h)])).unwrap();
        assert_eq!((s.missing_config, s.config), (None, Config::default()));
        // Without $HOME there is no default config and no token cache.
        let s = Settings::resolve(&cli(&["whoami"]), &env_of(&[])).unwrap();
        assert_eq!((s.st2_dir, s.config_path), (None, None));
    }

    fn settings_with(home: &Path, config: &str) -> Settings {
        std::fs::create_dir_all(home.join(".st2")).unwrap();
        std::fs::write(home.join(".st2/config"), config).unwrap();
        // Port 1 on loopback: a login attempt fails at once.
        let env = env_of(&[("HOME", home.to_str().unwrap()), ("ST2_AUTH_URL", "http://127.0.0.1:1")]);
        Settings::resolve(&cli(&["whoami"]), &env).unwrap()
    }

    fn describe(e: &ClientError) -> String {
        e.to_string()
    }

    #[tokio::test]
    async fn given_credentials_win_over_the_config() {
        let home = tempfile::tempdir().unwrap();
        let s = settings_with(home.path(), "[credentials]\nusername = alice\npassword = pw\n");
        let client = Client::new(&s.endpoints).unwrap();
        let c = credentials(&cli(&["whoami", "-t", "T"]), &s, &client, describe).await.unwrap();
        assert_eq!((c.token.as_deref(), c.api_key, c.source), (Some("T"), None, TokenSource::Given));
        assert_eq!(c.config_user.as_deref(), Some("alice"));
        let c = credentials(&cli(&["whoami", "--api-key", "K"]), &s, &client, describe).await.unwrap();
        assert_eq!((c.token, c.api_key.as_deref(), c.source), (None, Some("K"), TokenSource::None));
    }

    #[tokio::test]
    async fn the_config_users_fresh_cached_token_is_used() {
        let home = tempfile::tempdir().unwrap();
        let s = settings_with(home.path(), "[credentials]\nusername = alice\napi_key = CFGKEY\n");
        let client = Client::new(&s.endpoints).unwrap();
        let dir = home.path().join(".st2");
        let whoami = cli(&["whoami"]);

        // No cache: the config's API key.
        let c = credentials(&whoami, &s, &client, describe).await.unwrap();
        assert_eq!((c.token, c.api_key.as_deref(), c.source), (None, Some("CFGKEY"), TokenSource::None));

        config::write_token(
            &dir,
            "alice",
            &CachedToken { token: "cached".into(), expire_timestamp: now() + 3600 },
        )
        .unwrap();
        let c = credentials(&whoami, &s, &client, describe).await.unwrap();
        assert_eq!((c.token.as_deref(), c.api_key, c.source), (Some("cached"), None, TokenSource::Cached));

        // Within 15 s of expiry it is not used any more.
        config::write_token(
            &dir,
            "alice",
            &CachedToken { token: "old".into(), expire_timestamp: now() + 10 },
        )
        .unwrap();
        let c = credentials(&whoami, &s, &client, describe).await.unwrap();
        assert_eq!(c.token, None);

        // Skipping the config skips the cache too.
        let mut skipped = s.clone();
        skipped.skip_config = true;
        skipped.config = Config::default();
        let c = credentials(&whoami, &skipped, &client, describe).await.unwrap();
        assert_eq!(c, Credentials::none());
    }

    #[tokio::test]
    async fn a_config_password_means_logging_in_and_its_failure_is_reported() {
        let home = tempfile::tempdir().unwrap();
        let s = settings_with(home.path(), "[credentials]\nusername = alice\npassword = pw\n");
        let client = Client::new(&s.endpoints).unwrap();
        let err = credentials(&cli(&["whoami"]), &s, &client, describe).await.unwrap_err();
        assert!(err.starts_with("cannot log in as \"alice\" with the password in "), "{err}");
        assert!(err.contains("cannot reach the auth service (tried http://127.0.0.1:1/tokens)"), "{err}");
        // With cache_token off, even a fresh cached token is ignored.
        let s = settings_with(home.path(), "[credentials]\nusername = alice\n[cli]\ncache_token = no\n");
        config::write_token(
            &home.path().join(".st2"),
            "alice",
            &CachedToken { token: "cached".into(), expire_timestamp: now() + 3600 },
        )
        .unwrap();
        let c = credentials(&cli(&["whoami"]), &s, &client, describe).await.unwrap();
        assert_eq!(c.token, None);
    }

    #[test]
    fn token_expiries_become_unix_seconds() {
        let tok = |expiry: &str| Token {
            token: "t".into(),
            user: "u".into(),
            expiry: expiry.into(),
            id: None,
            metadata: Default::default(),
            service: false,
        };
        assert_eq!(expire_timestamp(&tok("2026-12-04T15:28:25.697414Z")), Ok(1_796_398_105));
        assert_eq!(expire_timestamp(&tok("1970-01-01T00:01:00Z")), Ok(60));
        assert!(expire_timestamp(&tok("tomorrow")).is_err());
    }
}
