//! The command line, as clap types. Flag names, short forms and defaults follow `st2 key ...`,
//! `st2 login`, `st2 auth`, `st2 whoami` and `st2 apikey ...` (st2client 3.9.0,
//! `../shared/st2-contract.md` §4) so muscle memory and scripts carry over; `user ...`, `logout`,
//! `keygen` and `key reencrypt` are st2kv's own. The few deliberate differences are listed in the crate documentation.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Where the CLI talks to when neither `--url` nor an environment variable says otherwise
/// (st2client's default base URL; the API port 9101 and `/v1` are appended by the client).
pub const DEFAULT_URL: &str = "http://127.0.0.1";

/// The scope `key get`, `key set`, `key delete` and `key delete_by_prefix` use without `-s`
/// (st2's default).
pub const DEFAULT_SCOPE: &str = "system";

/// The scope `key list` uses without `-s`: st2 lists system keys and the caller's own user keys.
pub const DEFAULT_LIST_SCOPE: &str = "all";

/// How many keys `key list` asks for without `-n` (st2's default; `-n -1` asks for all).
pub const DEFAULT_LIST_LIMIT: i64 = 50;

/// The help heading of the options every command accepts.
const GLOBAL: &str = "Global options";

#[derive(Debug, Parser)]
#[command(
    name = "st2kv",
    version,
    arg_required_else_help = true,
    about = "Command-line client for st2kv, a StackStorm-compatible replicated key/value store.",
    after_help = "Credentials: -t/--token ($ST2_AUTH_TOKEN) and --api-key ($ST2_API_KEY); \
                  otherwise the token `st2kv login USER` cached in ~/.st2/token-USER for the \
                  config's [credentials] username (a new one is fetched when the config also has a \
                  password), or the config's [credentials] api_key.\n\n\
                  Exit status: 0 on success, 1 on any error, 2 when `key delete` finds no such key \
                  or the command line is invalid."
)]
pub struct Cli {
    /// API endpoint(s) of st2kv nodes, comma-separated; the next one is tried when a node cannot be
    /// reached. `http://host` means `http://host:9101/v1`. Without it: $ST2_API_URL, then
    /// $ST2_BASE_URL, then the config's `[api] url`, then its `[general] base_url`, then
    /// http://127.0.0.1.
    #[arg(long, global = true, value_name = "URL[,URL...]", help_heading = GLOBAL)]
    pub url: Option<String>,

    /// Where to log in (POST URL/tokens), for `login`, `auth` and logins with the config's
    /// password. Without it: $ST2_AUTH_URL, then the config's `[auth] url`, else derived from each
    /// endpoint: `http://host` → `http://host:9100`, `http://host:PORT` or
    /// `https://host/api/v1` → the same origin's `/auth/v1`.
    #[arg(long, global = true, value_name = "URL", help_heading = GLOBAL)]
    pub auth_url: Option<String>,

    /// Authentication token, sent as X-Auth-Token. Without it (and without an API key) the token
    /// cached by `st2kv login` for the config's `[credentials] username` is used.
    #[arg(short = 't', long, global = true, env = "ST2_AUTH_TOKEN", hide_env_values = true, help_heading = GLOBAL)]
    pub token: Option<String>,

    /// API key, sent as St2-Api-Key.
    #[arg(long, global = true, env = "ST2_API_KEY", hide_env_values = true, value_name = "KEY", help_heading = GLOBAL)]
    pub api_key: Option<String>,

    /// Client config file (st2's INI format) [default: ~/.st2/config] [env: ST2_CONFIG_FILE].
    #[arg(long, global = true, value_name = "PATH", help_heading = GLOBAL)]
    pub config_file: Option<PathBuf>,

    /// Do not read the config file, nor use the token it names [env: ST2_CLI_SKIP_CONFIG=1].
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub skip_config: bool,

    /// Serve reads (get, list) from the contacted node's local state, without a linearizable
    /// read barrier: faster and available without a leader, but possibly slightly out of date.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub stale: bool,

    /// Print JSON (indent 4, sorted keys, as st2 does).
    #[arg(short = 'j', long, global = true, conflicts_with = "yaml", help_heading = GLOBAL)]
    pub json: bool,

    /// Print YAML.
    #[arg(short = 'y', long, global = true, help_heading = GLOBAL)]
    pub yaml: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage keys in the datastore (like `st2 key`).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Log in: get a token, cache it in ~/.st2/token-USER and make USER the config's user.
    #[command(after_help = "Later commands use the cached token until it expires (they need no -t). \
                            Without -p the password is prompted for on a terminal, or read as one \
                            line from standard input otherwise.")]
    Login(LoginArgs),
    /// Get a token and print it, without caching it (like `st2 auth`).
    Auth(AuthArgs),
    /// Revoke the token in use (-t, or the config user's cached one) and delete its cache file.
    Logout,
    /// Show who the credentials in use belong to.
    Whoami,
    /// Manage API keys (like `st2 apikey`).
    #[command(subcommand)]
    Apikey(ApikeyCommand),
    /// Manage user accounts (admins; users may change their own password).
    #[command(subcommand)]
    User(UserCommand),
    /// Inspect and change the cluster's membership (admins).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Back up the cluster (admins).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Manage rules (StackStorm's shape, JSON or YAML files; changes need an admin).
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Inspect what rules ran.
    #[command(subcommand)]
    Execution(ExecutionCommand),
    /// Render a template, a JSON/YAML object or a rule's action parameters against the live
    /// cluster, reporting every missing key and every key you may not decrypt.
    #[command(after_help = "FILE holding a rule (an object with `trigger` and `action`) renders the \
                            rule's action parameters as the rules engine would (system keys only); \
                            any other JSON/YAML object or array is rendered leaf by leaf; anything \
                            else is one template. `-` reads standard input. Exit status 1 when \
                            something was missing, denied or failed.")]
    Render(RenderArgs),
    /// Create, rotate or prune the keyring nodes encrypt secrets with (a local file; no server
    /// or credentials needed).
    #[command(after_help = "Key rotation: `st2kv keygen --rotate --key-path FILE`, copy FILE to every \
                            node (each re-reads it within a second), run `st2kv key reencrypt`, and \
                            only then `st2kv keygen --retire OLD_ID --key-path FILE` and copy FILE \
                            again. A node refuses to start with a keyring lacking a key that a \
                            stored secret needs.")]
    Keygen(KeygenArgs),
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The keyring file (JSON, written with mode 0600).
    #[arg(long, value_name = "FILE")]
    pub key_path: PathBuf,

    /// Replace an existing file with a new keyring (its keys are lost, and with them every secret
    /// encrypted with them).
    #[arg(long, conflicts_with_all = ["rotate", "retire"])]
    pub force: bool,

    /// Add a new key to the existing keyring and make it the active one; older keys are kept so
    /// existing secrets stay readable.
    #[arg(long, conflicts_with = "retire")]
    pub rotate: bool,

    /// Remove a key that is no longer active from the existing keyring (after `st2kv key
    /// reencrypt` has moved every secret off it).
    #[arg(long, value_name = "KEY_ID")]
    pub retire: Option<String>,
}

/// The roles a user may have.
pub const ROLES: [&str; 2] = ["admin", "user"];

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User to log in as.
    pub username: String,

    /// Password; prompted for (or read from standard input) when absent.
    #[arg(short = 'p', long)]
    pub password: Option<String>,

    /// Lifetime of the token in seconds (the server's maximum applies) [default: the server's].
    #[arg(short = 'l', long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub ttl: Option<i64>,
}

#[derive(Debug, Args)]
pub struct AuthArgs {
    #[command(flatten)]
    pub login: LoginArgs,

    /// Print only the token.
    #[arg(short = 't', long = "only-token")]
    pub only_token: bool,

    /// Takes the place of the global `-t/--token` here, where `-t` means `--only-token` (as in
    /// `st2 auth`): clap then does not give this subcommand the global one, whose short flag would
    /// clash. The value still reaches `Cli::token`, and `auth` sends no token anyway.
    #[arg(long = "token", id = "token", value_name = "TOKEN", hide = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Create an API key; its secret is shown this once.
    Create(ApikeyCreateArgs),
    /// List API keys (all of them for admins, else your own).
    List(ApikeyListArgs),
    /// Show one API key.
    Get(ApikeyIdArgs),
    /// Delete an API key.
    Delete(ApikeyIdArgs),
    /// Enable an API key.
    Enable(ApikeyIdArgs),
    /// Disable an API key (requests made with it are refused until it is enabled again).
    Disable(ApikeyIdArgs),
}

#[derive(Debug, Args)]
pub struct ApikeyCreateArgs {
    /// Owner of the key [default: you]; only admins may name another user.
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,

    /// Metadata stored with the key, a JSON object, e.g. '{"used_by": "ci"}'.
    #[arg(short = 'm', long, value_name = "JSON")]
    pub metadata: Option<String>,

    /// Print only the key.
    #[arg(short = 'k', long = "only-key")]
    pub only_key: bool,
}

#[derive(Debug, Args)]
pub struct ApikeyListArgs {
    /// Only this user's keys.
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,

    /// Show key hashes unmasked (admins only).
    #[arg(long)]
    pub show_secrets: bool,
}

#[derive(Debug, Args)]
pub struct ApikeyIdArgs {
    /// The key's id (or the key itself).
    pub id: String,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, voters and learners, leader, term, log and applied index, replication lag.
    Status,
    /// Add a node: it joins as a learner and becomes a voter once caught up.
    Add {
        /// The new node's id.
        id: u64,
        /// HOST:PORT of its peer listener.
        peer_addr: String,
        /// HOST:PORT of its API listener (shown in status).
        #[arg(long, default_value = "")]
        api_addr: String,
    },
    /// Remove a node (the leader too); stop it afterwards.
    Remove {
        /// The node's id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a consistent snapshot (with a checksum) to FILE; restore with `st2kv-node --restore-from FILE`.
    Save {
        /// Where to write the backup.
        file: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Add(UserAddArgs),
    /// List users.
    List,
    /// Delete a user (their tokens and API keys stop working at once).
    Delete(UserNameArgs),
    /// Change a user's password.
    Passwd(UserPasswdArgs),
    /// Change a user's role.
    Role(UserRoleArgs),
}

#[derive(Debug, Args)]
pub struct UserAddArgs {
    /// User name.
    pub name: String,

    /// Password (at least 8 characters); prompted for twice (or read from standard input) when
    /// absent.
    #[arg(short = 'p', long)]
    pub password: Option<String>,

    /// Role.
    #[arg(long, value_name = "ROLE", value_parser = ROLES, default_value = "user")]
    pub role: String,
}

#[derive(Debug, Args)]
pub struct UserNameArgs {
    /// User name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct UserPasswdArgs {
    /// User name.
    pub name: String,

    /// New password (at least 8 characters); prompted for twice (or read from standard input)
    /// when absent.
    #[arg(short = 'p', long)]
    pub password: Option<String>,
}

#[derive(Debug, Args)]
pub struct UserRoleArgs {
    /// User name.
    pub name: String,

    /// New role.
    #[arg(value_name = "ROLE", value_parser = ROLES)]
    pub role: String,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create or replace a key.
    #[command(after_help = "Without VALUE the value is read from standard input when it is not a \
                            terminal (one trailing newline is removed), e.g. `cat cert.pem | st2kv key \
                            set cert`. Values starting with '-' go after `--`: `st2kv key set n -- -5`.")]
    Set(SetArgs),
    /// Show one key.
    Get(GetArgs),
    /// List keys, in the order the server returns them.
    List(ListArgs),
    /// Delete one key.
    Delete(DeleteArgs),
    /// Delete every key whose name starts with a prefix (lists, then deletes one by one).
    #[command(name = "delete_by_prefix", alias = "delete-by-prefix")]
    DeleteByPrefix(DeleteByPrefixArgs),
    /// Create or replace keys from a JSON or YAML file, such as the output of `key list -j`.
    #[command(after_help = "The file (.json, .yaml or .yml) holds a list of items or a single item. \
                            Each item needs `name` and a string `value`; `scope` (default system), \
                            `user`, `secret`, `encrypted`, `ttl` and `description` are optional, other \
                            fields are ignored. Every item is tried; the report never shows values.")]
    Load(LoadArgs),
    /// Re-encrypt every secret under the keyring's active key (admins; after a rotation).
    #[command(after_help = "Run it once the rotated keyring is on every node. Secrets already under \
                            the active key are left alone, so it is safe to repeat. Exits 1 if any \
                            secret could not be re-encrypted.")]
    Reencrypt(ReencryptArgs),
}

#[derive(Debug, Args)]
pub struct ReencryptArgs {
    /// Secrets rewritten per batch [default: the server's, 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: Option<u32>,
}

/// `-s/--scope` and `-u/--user` of the single-key commands.
#[derive(Debug, Clone, Args)]
pub struct ScopeArgs {
    /// Scope: system, user, st2kv.system or st2kv.user (validated by the server).
    /// [default: system, or user when --user is given]
    #[arg(short = 's', long, value_name = "SCOPE")]
    pub scope: Option<String>,

    /// Owner of a user-scoped key (the server allows only admins to name another user).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
}

impl ScopeArgs {
    /// The scope to send: `-s` if given; else `user` if `-u` names a user (the server already reads
    /// `?user=` as user scope, and deleting or writing a *system* key because `-s` was forgotten
    /// would be a nasty surprise); else `system`.
    pub fn effective_scope(&self) -> String {
        match (&self.scope, &self.user) {
            (Some(s), _) => s.clone(),
            (None, Some(_)) => "user".to_string(),
            (None, None) => DEFAULT_SCOPE.to_string(),
        }
    }
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// Key name.
    pub name: String,

    /// Value; read from standard input when omitted and stdin is not a terminal.
    pub value: Option<String>,

    /// Seconds until the key expires (0 = never).
    #[arg(short = 'l', long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub ttl: Option<i64>,

    /// Free-text description stored with the key.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,

    #[command(flatten)]
    pub scope: ScopeArgs,

    /// Store the value as a secret, encrypted by the server.
    #[arg(short = 'e', long, conflicts_with = "encrypted")]
    pub encrypt: bool,

    /// The value is already ciphertext made with the server's crypto key; store it as-is.
    #[arg(long)]
    pub encrypted: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Key name.
    pub name: String,

    #[command(flatten)]
    pub scope: ScopeArgs,

    /// Show the plaintext of a secret.
    #[arg(short = 'd', long)]
    pub decrypt: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only keys whose name starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,

    /// Scope: all, system, user, st2kv.system or st2kv.user (validated by the server).
    #[arg(short = 's', long, value_name = "SCOPE", default_value = DEFAULT_LIST_SCOPE)]
    pub scope: String,

    /// List this user's user-scoped keys (admins only for other users).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,

    /// Show the plaintext of secrets.
    #[arg(short = 'd', long)]
    pub decrypt: bool,

    /// At most this many keys per scope; -1 for all.
    #[arg(
        short = 'n',
        long = "last",
        visible_alias = "limit",
        value_name = "N",
        default_value_t = DEFAULT_LIST_LIMIT,
        allow_negative_numbers = true
    )]
    pub limit: i64,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Key name.
    pub name: String,

    #[command(flatten)]
    pub scope: ScopeArgs,
}

#[derive(Debug, Args)]
pub struct DeleteByPrefixArgs {
    /// Delete keys whose name starts with this (must not be empty).
    #[arg(short = 'p', long, value_name = "PREFIX")]
    pub prefix: String,

    #[command(flatten)]
    pub scope: ScopeArgs,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// JSON or YAML file (.json, .yaml, .yml).
    pub file: PathBuf,

    /// Store non-string values as their JSON text instead of refusing them.
    #[arg(short = 'c', long)]
    pub convert: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("st2kv").chain(args.iter().copied()))
    }

    fn command(args: &[&str]) -> Command {
        parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}")).command
    }

    fn key(args: &[&str]) -> KeyCommand {
        match command(args) {
            Command::Key(k) => k,
            other => panic!("{other:?}"),
        }
    }

    fn apikey(args: &[&str]) -> ApikeyCommand {
        match command(args) {
            Command::Apikey(k) => k,
            other => panic!("{other:?}"),
        }
    }

    fn user(args: &[&str]) -> UserCommand {
        match command(args) {
            Command::User(u) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn single_key_commands_default_to_system_scope() {
        let KeyCommand::Get(g) = key(&["key", "get", "k"]) else { panic!() };
        assert_eq!(g.scope.effective_scope(), "system");
        assert!(!g.decrypt);
        let KeyCommand::Set(s) = key(&["key", "set", "k", "v"]) else { panic!() };
        assert_eq!(s.scope.effective_scope(), "system");
        assert_eq!(s.value.as_deref(), Some("v"));
        let KeyCommand::Delete(d) = key(&["key", "delete", "k"]) else { panic!() };
        assert_eq!(d.scope.effective_scope(), "system");
        let KeyCommand::DeleteByPrefix(p) = key(&["key", "delete_by_prefix", "-p", "a"]) else { panic!() };
        assert_eq!((p.prefix.as_str(), p.scope.effective_scope().as_str()), ("a", "system"));
    }

    #[test]
    fn user_implies_user_scope_unless_scope_is_given() {
        let KeyCommand::Delete(d) = key(&["key", "delete", "k", "-u", "bob"]) else { panic!() };
        assert_eq!(d.scope.effective_scope(), "user");
        assert_eq!(d.scope.user.as_deref(), Some("bob"));
        let KeyCommand::Set(s) = key(&["key", "set", "-s", "st2kv.system", "-u", "bob", "k", "v"]) else {
            panic!()
        };
        assert_eq!(s.scope.effective_scope(), "st2kv.system");
        let KeyCommand::Get(g) = key(&["key", "get", "--scope", "user", "k"]) else { panic!() };
        assert_eq!(g.scope.effective_scope(), "user");
    }

    #[test]
    fn list_defaults_to_all_scopes_and_50_keys() {
        let KeyCommand::List(l) = key(&["key", "list"]) else { panic!() };
        assert_eq!((l.scope.as_str(), l.limit), ("all", 50));
        assert_eq!(l.prefix, None);
    }

    #[test]
    fn list_accepts_minus_one_for_everything() {
        for args in [
            &["key", "list", "-n", "-1"][..],
            &["key", "list", "--last=-1"],
            &["key", "list", "--limit", "-1"],
        ] {
            let KeyCommand::List(l) = key(args) else { panic!() };
            assert_eq!(l.limit, -1, "{args:?}");
        }
        let KeyCommand::List(l) = key(&["key", "list", "--prefix", "a.", "-n", "3", "-s", "user", "-d"])
        else {
            panic!()
        };
        assert_eq!(
            (l.prefix.as_deref(), l.limit, l.scope.as_str(), l.decrypt),
            (Some("a."), 3, "user", true)
        );
        assert!(parse(&["key", "list", "-n", "many"]).is_err());
    }

    #[test]
    fn encrypt_and_encrypted_are_mutually_exclusive() {
        let e = parse(&["key", "set", "k", "v", "-e", "--encrypted"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let KeyCommand::Set(s) = key(&["key", "set", "k", "v", "--encrypt"]) else { panic!() };
        assert!(s.encrypt && !s.encrypted);
        let KeyCommand::Set(s) = key(&["key", "set", "k", "v", "--encrypted"]) else { panic!() };
        assert!(!s.encrypt && s.encrypted);
    }

    #[test]
    fn set_takes_ttl_description_and_an_optional_value() {
        let KeyCommand::Set(s) = key(&["key", "set", "k", "--ttl", "60", "--description", "d"]) else {
            panic!()
        };
        assert_eq!((s.value, s.ttl, s.description.as_deref()), (None, Some(60), Some("d")));
        let KeyCommand::Set(s) = key(&["key", "set", "k", "v", "-l", "5"]) else { panic!() };
        assert_eq!(s.ttl, Some(5));
        let KeyCommand::Set(s) = key(&["key", "set", "k", "--", "-5"]) else { panic!() };
        assert_eq!(s.value.as_deref(), Some("-5"));
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let cli =
            parse(&["--url", "http://a,http://b", "key", "list", "-j", "--stale", "-t", "tok"]).unwrap();
        assert_eq!(cli.url.as_deref(), Some("http://a,http://b"));
        assert!(cli.json && cli.stale && !cli.yaml);
        assert_eq!(cli.token.as_deref(), Some("tok"));
        let cli = parse(&["-y", "key", "get", "k", "--api-key", "K"]).unwrap();
        assert!(cli.yaml && !cli.json);
        assert_eq!(cli.api_key.as_deref(), Some("K"));
        assert!(parse(&["key", "get", "k", "-j", "-y"]).is_err());
    }

    #[test]
    fn delete_by_prefix_requires_a_prefix_and_has_a_dashed_alias() {
        assert!(parse(&["key", "delete_by_prefix"]).is_err());
        assert!(matches!(key(&["key", "delete-by-prefix", "--prefix", "x"]), KeyCommand::DeleteByPrefix(_)));
    }

    #[test]
    fn load_takes_a_file_and_convert() {
        let KeyCommand::Load(l) = key(&["key", "load", "f.yaml", "-c"]) else { panic!() };
        assert_eq!((l.file, l.convert), (PathBuf::from("f.yaml"), true));
        let KeyCommand::Load(l) = key(&["key", "load", "f.json"]) else { panic!() };
        assert!(!l.convert);
    }

    #[test]
    fn login_takes_a_user_and_optional_password_and_ttl() {
        let Command::Login(l) = command(&["login", "st2admin"]) else { panic!() };
        assert_eq!((l.username.as_str(), l.password, l.ttl), ("st2admin", None, None));
        let Command::Login(l) = command(&["login", "bob", "-p", "pw", "-l", "60"]) else { panic!() };
        assert_eq!((l.password.as_deref(), l.ttl), (Some("pw"), Some(60)));
        let Command::Login(l) = command(&["login", "bob", "--password=-x", "--ttl", "-1"]) else { panic!() };
        assert_eq!((l.password.as_deref(), l.ttl), (Some("-x"), Some(-1)));
        assert!(parse(&["login"]).is_err());
        assert!(parse(&["login", "bob", "-l", "soon"]).is_err());
    }

    #[test]
    fn auth_t_means_only_token_but_the_global_token_still_works() {
        let cli = parse(&["auth", "bob", "-p", "pw", "-t", "-l", "5", "-j"]).unwrap();
        assert!(cli.json && cli.token.is_none());
        let Command::Auth(a) = cli.command else { panic!() };
        assert!(a.only_token);
        assert_eq!(
            (a.login.username.as_str(), a.login.password.as_deref(), a.login.ttl),
            ("bob", Some("pw"), Some(5))
        );
        let cli = parse(&["auth", "bob", "--only-token"]).unwrap();
        let Command::Auth(a) = cli.command else { panic!() };
        assert!(a.only_token);
        // Before the subcommand, or spelled out, -t/--token is still the global token.
        let cli = parse(&["-t", "TOK", "auth", "bob"]).unwrap();
        assert_eq!(cli.token.as_deref(), Some("TOK"));
        let Command::Auth(a) = cli.command else { panic!() };
        assert!(!a.only_token);
        let cli = parse(&["auth", "bob", "--token", "TOK2"]).unwrap();
        assert_eq!(cli.token.as_deref(), Some("TOK2"));
        // Everywhere else -t is the token.
        let cli = parse(&["whoami", "-t", "TOK3"]).unwrap();
        assert_eq!(cli.token.as_deref(), Some("TOK3"));
        assert!(matches!(cli.command, Command::Whoami));
    }

    #[test]
    fn logout_and_whoami_take_only_global_flags() {
        assert!(matches!(command(&["logout"]), Command::Logout));
        let cli = parse(&["whoami", "-j", "--api-key", "K", "--url", "http://h"]).unwrap();
        assert!(cli.json && matches!(cli.command, Command::Whoami));
        assert!(parse(&["whoami", "extra"]).is_err());
    }

    #[test]
    fn global_config_flags_parse_anywhere() {
        let cli = parse(&[
            "key",
            "list",
            "--config-file",
            "/tmp/c",
            "--skip-config",
            "--auth-url",
            "http://h:9100",
        ])
        .unwrap();
        assert_eq!(cli.config_file, Some(PathBuf::from("/tmp/c")));
        assert!(cli.skip_config);
        assert_eq!(cli.auth_url.as_deref(), Some("http://h:9100"));
        let cli = parse(&["--skip-config", "login", "u", "-p", "p"]).unwrap();
        assert!(cli.skip_config && cli.config_file.is_none());
    }

    #[test]
    fn apikey_commands_parse_like_st2s() {
        let ApikeyCommand::Create(c) = apikey(&["apikey", "create"]) else { panic!() };
        assert_eq!((c.user, c.metadata, c.only_key), (None, None, false));
        let ApikeyCommand::Create(c) = apikey(&["apikey", "create", "-u", "bob", "-m", r#"{"a":1}"#, "-k"])
        else {
            panic!()
        };
        assert_eq!(
            (c.user.as_deref(), c.metadata.as_deref(), c.only_key),
            (Some("bob"), Some(r#"{"a":1}"#), true)
        );
        let ApikeyCommand::Create(c) = apikey(&["apikey", "create", "--user", "x", "--only-key"]) else {
            panic!()
        };
        assert!(c.only_key && c.user.as_deref() == Some("x"));
        let ApikeyCommand::List(l) = apikey(&["apikey", "list"]) else { panic!() };
        assert_eq!((l.user, l.show_secrets), (None, false));
        let cli = parse(&["apikey", "list", "-u", "bob", "--show-secrets", "-j"]).unwrap();
        assert!(cli.json);
        let Command::Apikey(ApikeyCommand::List(l)) = cli.command else { panic!() };
        assert_eq!((l.user.as_deref(), l.show_secrets), (Some("bob"), true));
        for (verb, id) in [("get", "k1"), ("delete", "k2"), ("enable", "k3"), ("disable", "k4")] {
            let (ApikeyCommand::Get(a)
            | ApikeyCommand::Delete(a)
            | ApikeyCommand::Enable(a)
            | ApikeyCommand::Disable(a)) = apikey(&["apikey", verb, id])
            else {
                panic!()
            };
            assert_eq!(a.id, id);
            assert!(parse(&["apikey", verb]).is_err(), "{verb} needs an id");
        }
        assert!(matches!(apikey(&["apikey", "enable", "k"]), ApikeyCommand::Enable(_)));
        assert!(matches!(apikey(&["apikey", "disable", "k"]), ApikeyCommand::Disable(_)));
        assert!(parse(&["apikey", "update", "k"]).is_err());
    }

    #[test]
    fn user_commands_parse() {
        let UserCommand::Add(a) = user(&["user", "add", "bob"]) else { panic!() };
        assert_eq!((a.name.as_str(), a.password, a.role.as_str()), ("bob", None, "user"));
        let UserCommand::Add(a) = user(&["user", "add", "bob", "-p", "pw", "--role", "admin"]) else {
            panic!()
        };
        assert_eq!((a.password.as_deref(), a.role.as_str()), (Some("pw"), "admin"));
        assert!(parse(&["user", "add", "bob", "--role", "root"]).is_err());
        assert!(matches!(user(&["user", "list"]), UserCommand::List));
        let UserCommand::Delete(d) = user(&["user", "delete", "bob"]) else { panic!() };
        assert_eq!(d.name, "bob");
        let UserCommand::Passwd(p) = user(&["user", "passwd", "bob"]) else { panic!() };
        assert_eq!((p.name.as_str(), p.password), ("bob", None));
        let UserCommand::Passwd(p) = user(&["user", "passwd", "bob", "--password", "new-pass"]) else {
            panic!()
        };
        assert_eq!(p.password.as_deref(), Some("new-pass"));
        let UserCommand::Role(r) = user(&["user", "role", "bob", "admin"]) else { panic!() };
        assert_eq!((r.name.as_str(), r.role.as_str()), ("bob", "admin"));
        assert!(parse(&["user", "role", "bob"]).is_err());
        assert!(parse(&["user", "role", "bob", "superuser"]).is_err());
        assert!(parse(&["user", "delete"]).is_err());
    }

    #[test]
    fn keygen_takes_a_path_and_one_of_force_rotate_retire() {
        let Command::Keygen(k) = command(&["keygen", "--key-path", "/k.json"]) else { panic!() };
        assert_eq!((k.key_path, k.force, k.rotate, k.retire), (PathBuf::from("/k.json"), false, false, None));
        let Command::Keygen(k) = command(&["keygen", "--key-path", "k", "--force"]) else { panic!() };
        assert!(k.force && !k.rotate);
        let Command::Keygen(k) = command(&["keygen", "--rotate", "--key-path", "k"]) else { panic!() };
        assert!(k.rotate && k.retire.is_none());
        let Command::Keygen(k) = command(&["keygen", "--key-path=k", "--retire", "1a2b3c4d"]) else {
            panic!()
        };
        assert_eq!((k.rotate, k.retire.as_deref()), (false, Some("1a2b3c4d")));
        assert!(parse(&["keygen"]).is_err(), "--key-path is required");
        assert!(parse(&["keygen", "--key-path", "k", "--retire"]).is_err(), "--retire needs an id");
        for conflict in [
            &["keygen", "--key-path", "k", "--rotate", "--retire", "1a2b3c4d"][..],
            &["keygen", "--key-path", "k", "--rotate", "--force"],
            &["keygen", "--key-path", "k", "--force", "--retire", "1a2b3c4d"],
        ] {
            assert_eq!(parse(conflict).unwrap_err().kind(), clap::error::ErrorKind::ArgumentConflict);
        }
    }

    #[test]
    fn reencrypt_takes_an_optional_positive_batch() {
        let KeyCommand::Reencrypt(r) = key(&["key", "reencrypt"]) else { panic!() };
        assert_eq!(r.batch, None);
        let cli = parse(&["key", "reencrypt", "--batch", "500", "-j"]).unwrap();
        assert!(cli.json);
        let Command::Key(KeyCommand::Reencrypt(r)) = cli.command else { panic!() };
        assert_eq!(r.batch, Some(500));
        for bad in ["0", "-1", "many"] {
            assert!(parse(&["key", "reencrypt", "--batch", bad]).is_err(), "{bad}");
        }
        assert!(parse(&["key", "reencrypt", "extra"]).is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Create a rule from a JSON or YAML file (`-` for standard input).
    Create { file: PathBuf },
    /// List rules.
    List,
    /// Show one rule.
    Get {
        /// The rule's ref (`pack.name`) or id.
        r#ref: String,
    },
    /// Replace a rule with the one in FILE (same pack and name).
    Update { r#ref: String, file: PathBuf },
    /// Delete a rule.
    Delete { r#ref: String },
    /// Enable a rule.
    Enable { r#ref: String },
    /// Disable a rule.
    Disable { r#ref: String },
}

#[derive(Debug, Subcommand)]
pub enum ExecutionCommand {
    /// List executions, newest first.
    List {
        /// Only this rule's (ref).
        #[arg(long)]
        rule: Option<String>,
        /// Only executions in this status (scheduled, requested, running, succeeded, failed, abandoned).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(short = 'n', long, default_value_t = 50)]
        last: u32,
    },
    /// Show one execution.
    Get { id: String },
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The template, object or rule (JSON or YAML; `-` for standard input).
    pub file: PathBuf,
    /// Render as this user (admins; others may only name themselves): their `st2kv.user` keys
    /// and their rights.
    #[arg(long)]
    pub user: Option<String>,
    /// A trigger payload (JSON) for `{{ trigger.* }}`.
    #[arg(long, value_name = "JSON")]
    pub trigger: Option<String>,
}
