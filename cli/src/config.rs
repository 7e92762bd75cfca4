//! The client files st2client keeps in `~/.st2` (`../shared/st2-contract.md` §4.2–4.3), read and
//! written the same way so `st2` and `st2kv` can share them:
//!
//! - `~/.st2/config`, an INI file (Python `configparser`): `[general] base_url`, `[api] url`,
//!   `[auth] url`, `[credentials] username, password, api_key` and `[cli] cache_token` are the
//!   settings used here; everything else is kept untouched when `login` rewrites the file.
//! - `~/.st2/token-USER`, the cached token: `{"token": "...", "expire_timestamp": <unix seconds>}`,
//!   trusted while `expire_timestamp - 15 > now` (st2client's margin).
//!
//! Nothing here talks to the network or looks at the environment; paths are passed in, so tests
//! run against a temporary directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Seconds before its expiry at which a cached token is no longer used (st2client's).
pub const EXPIRY_MARGIN_S: i64 = 15;

/// The settings of a config file that st2kv uses. Empty values count as absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[general] base_url`: an endpoint fallback after `--url`/`$ST2_API_URL`/`$ST2_BASE_URL` and
    /// `[api] url`.
    pub base_url: Option<String>,
    /// `[api] url`.
    pub api_url: Option<String>,
    /// `[auth] url`: where to log in, after `--auth-url` and `$ST2_AUTH_URL`.
    pub auth_url: Option<String>,
    /// `[credentials] username`: whose cached token to use.
    pub username: Option<String>,
    /// `[credentials] password`: lets the CLI log in by itself when there is no usable cached token.
    pub password: Option<String>,
    /// `[credentials] api_key`: used when no token is.
    pub api_key: Option<String>,
    /// `[cli] cache_token` (default true): read and write `~/.st2/token-USER` when logging in from
    /// the config's credentials.
    pub cache_token: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            base_url: None,
            api_url: None,
            auth_url: None,
            username: None,
            password: None,
            api_key: None,
            cache_token: true,
        }
    }
}

/// INI sections: section name → (lower-cased option name → value).
pub type Ini = BTreeMap<String, BTreeMap<String, String>>;

/// What one line of an INI file is.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// Blank, or a `#`/`;` comment.
    Blank,
    Section(&'a str),
    /// `name = value` or `name: value` (name lower-cased later).
    Option(&'a str, &'a str),
    /// An indented line after an option: more of its value.
    Continuation(&'a str),
    /// Anything else (configparser would refuse the file; we skip the line).
    Junk,
}

fn classify(line: &str) -> Line<'_> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
        return Line::Blank;
    }
    if line.starts_with([' ', '\t']) {
        return Line::Continuation(trimmed);
    }
    if let Some(name) = trimmed.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return Line::Section(name);
    }
    // configparser splits at the first `=` or `:`.
    match trimmed.find(['=', ':']) {
        Some(i) if i > 0 => Line::Option(trimmed[..i].trim(), trimmed[i + 1..].trim()),
        _ => Line::Junk,
    }
}

/// Undo configparser's `%%` escaping (its default interpolation). Other `%(name)s` references
/// are left as written.
fn unescape(value: &str) -> String {
    value.replace("%%", "%")
}

/// Parse INI text as Python's `configparser` would for the files st2 writes: option names are
/// case-insensitive, section names are not, later duplicates win, lines outside a section are
/// ignored.
pub fn parse_ini(text: &str) -> Ini {
    let mut ini = Ini::new();
    let mut section: Option<String> = None;
    let mut last: Option<String> = None;
    for line in text.lines() {
        match classify(line) {
            Line::Blank => {}
            Line::Section(name) => {
                ini.entry(name.to_string()).or_default();
                section = Some(name.to_string());
                last = None;
            }
            Line::Option(name, value) => {
                if let Some(s) = &section {
                    let name = name.to_ascii_lowercase();
                    ini.entry(s.clone()).or_default().insert(name.clone(), value.to_string());
                    last = Some(name);
                }
            }
            Line::Continuation(more) => {
                if let (Some(s), Some(name)) = (&section, &last) {
                    if let Some(v) = ini.get_mut(s).and_then(|m| m.get_mut(name)) {
                        v.push('\n');
                        v.push_str(more);
                    }
                }
            }
            Line::Junk => last = None,
        }
    }
    ini
}

/// configparser's booleans.
fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

impl Config {
    pub fn parse(text: &str) -> Config {
        let ini = parse_ini(text);
        let get = |section: &str, name: &str| {
            ini.get(section).and_then(|s| s.get(name)).map(|v| unescape(v)).filter(|v| !v.trim().is_empty())
        };
        Config {
            base_url: get("general", "base_url"),
            api_url: get("api", "url"),
            auth_url: get("auth", "url"),
            username: get("credentials", "username"),
            password: get("credentials", "password"),
            api_key: get("credentials", "api_key"),
            cache_token: get("cli", "cache_token").and_then(|v| parse_bool(&v)).unwrap_or(true),
        }
    }

    /// Read and parse a config file.
    pub fn load(path: &Path) -> Result<Config, String> {
        std::fs::read_to_string(path)
            .map(|t| Config::parse(&t))
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))
    }
}

/// `text` with `[credentials] username = USER` set and any `[credentials] password` removed (it
/// belonged to whoever was logged in before; st2 login does the same unless told to store the
/// new one). Every other line, comments included, is kept as it was.
pub fn set_username(text: &str, user: &str) -> String {
    let entry = format!("username = {}", user.replace('%', "%%"));
    let mut out: Vec<String> = Vec::new();
    let mut in_credentials = false;
    let mut seen_section = false;
    let mut written = false;
    // Whether the previous option line was dropped, so its continuation lines go too.
    let mut dropping = false;
    for line in text.lines() {
        let kind = classify(line);
        if let Line::Continuation(_) = kind {
            if dropping {
                continue;
            }
        } else if kind != Line::Blank {
            dropping = false;
        }
        match kind {
            Line::Section(name) => {
                in_credentials = name == "credentials";
                out.push(line.to_string());
                if in_credentials && !seen_section {
                    seen_section = true;
                    out.push(entry.clone());
                    written = true;
                }
            }
            Line::Option(name, _) if in_credentials => {
                let name = name.to_ascii_lowercase();
                if name == "username" || name == "password" {
                    dropping = true;
                } else {
                    out.push(line.to_string());
                }
            }
            _ => out.push(line.to_string()),
        }
    }
    if !written {
        while out.last().is_some_and(|l| l.trim().is_empty()) {
            out.pop();
        }
        if !out.is_empty() {
            out.push(String::new());
        }
        out.push("[credentials]".into());
        out.push(entry);
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// A token as cached in `~/.st2/token-USER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedToken {
    pub token: String,
    /// Unix seconds.
    pub expire_timestamp: i64,
}

impl CachedToken {
    /// Whether st2client would still use it at `now` (unix seconds).
    pub fn is_fresh(&self, now: i64) -> bool {
        self.expire_timestamp - EXPIRY_MARGIN_S > now
    }

    /// The file's text, byte for byte what st2client's `json.dumps` writes.
    pub fn to_json(&self) -> String {
        let token = serde_json::Value::String(self.token.clone());
        format!("{{\"token\": {token}, \"expire_timestamp\": {}}}", self.expire_timestamp)
    }

    /// Parse a cache file's text; `None` if it is not one.
    pub fn parse(text: &str) -> Option<CachedToken> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let token = v.get("token")?.as_str()?.to_string();
        let ts = v.get("expire_timestamp")?;
        // Python may have written a float; st2client compares it as a number either way.
        let expire_timestamp = ts.as_i64().or_else(|| ts.as_f64().map(|f| f as i64))?;
        (!token.is_empty()).then_some(CachedToken { token, expire_timestamp })
    }
}

/// A user name that can safely be part of a file name (`token-USER`).
pub fn check_cache_user(user: &str) -> Result<(), String> {
    if user.is_empty() || user == "." || user == ".." || user.contains(['/', '\0']) {
        return Err(format!("invalid user name {user:?}"));
    }
    Ok(())
}

/// `DIR/token-USER`, where DIR is `~/.st2`.
pub fn token_path(st2_dir: &Path, user: &str) -> PathBuf {
    st2_dir.join(format!("token-{user}"))
}

/// The cached token of `user`, if there is a readable one (fresh or not). An unreadable or
/// corrupt file counts as none, as for st2client.
pub fn read_token(st2_dir: &Path, user: &str) -> Option<CachedToken> {
    if check_cache_user(user).is_err() {
        return None;
    }
    std::fs::read_to_string(token_path(st2_dir, user)).ok().as_deref().and_then(CachedToken::parse)
}

/// Create `dir` (and its parents) with mode 0700 if it does not exist; an existing one is left as
/// it is.
pub fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Replace `path` with `contents` atomically: a temporary file in the same directory, created
/// with `mode` (so the data is never readable by others, not even briefly), then renamed over.
fn write_atomically(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may have narrowed `mode`; never widened it, but make it exact.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Cache `token` for `user` in `DIR/token-USER` (mode 0600; DIR created with mode 0700).
/// Returns the file's path.
pub fn write_token(st2_dir: &Path, user: &str, token: &CachedToken) -> Result<PathBuf, String> {
    check_cache_user(user)?;
    ensure_private_dir(st2_dir)?;
    let path = token_path(st2_dir, user);
    write_atomically(&path, &token.to_json(), 0o600)?;
    Ok(path)
}

/// Delete `user`'s cached token; a missing file is fine.
pub fn remove_token(st2_dir: &Path, user: &str) -> Result<(), String> {
    check_cache_user(user)?;
    let path = token_path(st2_dir, user);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("cannot remove {}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Record `user` as the config's `[credentials] username` (see [`set_username`]), creating the
/// file (mode 0600) and its directory (mode 0700) if needed. An existing file keeps its mode.
pub fn write_username(config_path: &Path, user: &str) -> Result<(), String> {
    // Write through a symlink to the file it names, as editing in place would.
    let path = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    let (old, mode) = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o600);
            (text, mode)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                ensure_private_dir(dir)?;
            }
            (String::new(), 0o600)
        }
        Err(e) => return Err(format!("cannot read the config file {}: {e}", path.display())),
    };
    write_atomically(&path, &set_username(&old, user), mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# st2 client config
[general]
base_url = http://st2.example
api_version = v1

[credentials]
username = olduser
Password: old%%pass
api_key =

[cli]
cache_token = False
[api]
url = https://st2.example/api/v1
  continued
";

    #[test]
    fn configs_parse_like_configparser() {
        let c = Config::parse(SAMPLE);
        assert_eq!(c.base_url.as_deref(), Some("http://st2.example"));
        assert_eq!(c.api_url.as_deref(), Some("https://st2.example/api/v1\ncontinued"));
        assert_eq!(c.auth_url, None);
        assert_eq!(c.username.as_deref(), Some("olduser"));
        // Option names are case-insensitive, `:` works like `=`, and `%%` is a `%`.
        assert_eq!(c.password.as_deref(), Some("old%pass"));
        assert_eq!(c.api_key, None, "empty values count as absent");
        assert!(!c.cache_token);
        assert_eq!(Config::parse(""), Config::default());
        assert!(Config::default().cache_token);
        let c = Config::parse("stray = line\n[auth]\nurl=http://h:9100\n[Credentials]\nusername=x\n");
        assert_eq!(c.auth_url.as_deref(), Some("http://h:9100"));
        assert_eq!(c.username, None, "section names are case-sensitive");
    }

    #[test]
    fn login_sets_the_username_drops_the_password_and_keeps_the_rest() {
        let out = set_username(SAMPLE, "alice");
        let c = Config::parse(&out);
        assert_eq!(c.username.as_deref(), Some("alice"));
        assert_eq!(c.password, None);
        assert_eq!(c.base_url.as_deref(), Some("http://st2.example"));
        assert!(!c.cache_token);
        assert!(out.starts_with("# st2 client config\n[general]\n"), "{out}");
        assert!(out.contains("[credentials]\nusername = alice\napi_key =\n"), "{out}");
        assert_eq!(out.matches("username").count(), 1, "{out}");
        assert!(out.ends_with("url = https://st2.example/api/v1\n  continued\n"), "{out}");
        // Idempotent.
        assert_eq!(set_username(&out, "alice"), out);
    }

    #[test]
    fn login_adds_a_credentials_section_when_there_is_none() {
        assert_eq!(set_username("", "bob"), "[credentials]\nusername = bob\n");
        assert_eq!(
            set_username("[general]\nbase_url = http://h\n\n", "bob"),
            "[general]\nbase_url = http://h\n\n[credentials]\nusername = bob\n"
        );
        // A multi-line password goes entirely.
        let out = set_username("[credentials]\npassword = a\n  b\nuser = x\n", "bob%");
        assert_eq!(out, "[credentials]\nusername = bob%%\nuser = x\n");
        assert_eq!(Config::parse(&out).username.as_deref(), Some("bob%"));
    }

    #[test]
    fn cached_tokens_round_trip_in_st2clients_format() {
        let t = CachedToken { token: "abc\"d".into(), expire_timestamp: 1_800_000_000 };
        assert_eq!(t.to_json(), r#"{"token": "abc\"d", "expire_timestamp": 1800000000}"#);
        assert_eq!(CachedToken::parse(&t.to_json()), Some(t.clone()));
        assert_eq!(
            CachedToken::parse(r#"{"token":"x","expire_timestamp":1.5e9}"#).map(|t| t.expire_timestamp),
            Some(1_500_000_000)
        );
        for bad in
            ["", "{}", r#"{"token": "", "expire_timestamp": 1}"#, r#"{"token": 1, "expire_timestamp": 1}"#]
        {
            assert_eq!(CachedToken::parse(bad), None, "{bad}");
        }
        // Fresh only while more than 15 seconds remain.
        assert!(t.is_fresh(1_800_000_000 - 16));
        assert!(!t.is_fresh(1_800_000_000 - 15));
    }

    #[test]
    fn token_cache_files_are_private() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".st2");
        let t = CachedToken { token: "tok".into(), expire_timestamp: 42 };
        let path = write_token(&dir, "alice", &t).unwrap();
        assert_eq!(path, dir.join("token-alice"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(read_token(&dir, "alice"), Some(t));
        // Overwriting an existing, too-open file leaves a private one.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let t2 = CachedToken { token: "tok2".into(), expire_timestamp: 43 };
        write_token(&dir, "alice", &t2).unwrap();
        assert_eq!((read_token(&dir, "alice"), mode(&path)), (Some(t2), 0o600));
        assert_eq!(read_token(&dir, "bob"), None);
        std::fs::write(token_path(&dir, "bob"), "garbage").unwrap();
        assert_eq!(read_token(&dir, "bob"), None);
        remove_token(&dir, "alice").unwrap();
        remove_token(&dir, "alice").unwrap();
        assert!(!path.exists());
        assert!(
            write_token(&dir, "../evil", &CachedToken { token: "x".into(), expire_timestamp: 1 }).is_err()
        );
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("token-bob")]);
    }

    #[test]
    fn the_config_is_created_private_or_edited_keeping_its_mode() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join(".st2").join("config");
        write_username(&path, "alice").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[credentials]\nusername = alice\n");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&path), mode(path.parent().unwrap())), (0o600, 0o700));

        std::fs::write(&path, "[general]\nbase_url = http://h\n[credentials]\nusername = x\npassword = y\n")
            .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_username(&path, "bob").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[general]\nbase_url = http://h\n[credentials]\nusername = bob\n"
        );
        assert_eq!(mode(&path), 0o640);

        // Through a symlink, the file it names is edited and the link stays.
        let real = home.path().join("real-config");
        std::fs::write(&real, "[cli]\ncache_token = true\n").unwrap();
        let link = home.path().join("link-config");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_username(&link, "carol").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(Config::load(&link).unwrap().username.as_deref(), Some("carol"));
    }
}
