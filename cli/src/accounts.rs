//! `login`, `auth`, `logout`, `whoami`, `apikey ...` and `user ...`: who may use the cluster.
//! Like [`crate::commands`], every function returns an [`Outcome`] and prints nothing.

use serde_json::Value;
use st2kv_api::{ApiKeyListOptions, ApiKeyRequest, Client, ClientError, UserRequest, UserUpdate};

use crate::args::{ApikeyCommand, ApikeyCreateArgs, ApikeyListArgs, AuthArgs, LoginArgs, UserCommand};
use crate::commands::{Context, Outcome};
use crate::config::{self, CachedToken};
use crate::output::{self, Doc, Format};
use crate::session;

/// Attributes of a token, in st2's order (`st2 auth`).
const TOKEN_ATTRS: &[&str] = &["user", "token", "expiry"];
/// Columns of `apikey list` (st2's `id, user, metadata`, plus whether it works).
const APIKEY_LIST_ATTRS: &[&str] = &["id", "user", "metadata", "enabled"];
/// Rows of one API key, in display order.
const APIKEY_ATTRS: &[&str] = &["id", "user", "key", "metadata", "enabled", "created_at", "key_hash", "uid"];
/// What `apikey enable/disable` show: never the hash, which the server's PUT answer reveals to
/// admins unasked.
const APIKEY_TOGGLE_ATTRS: &[&str] = &["id", "user", "metadata", "enabled", "created_at"];
/// Columns and rows of users.
const USER_ATTRS: &[&str] = &["name", "role", "enabled", "created_at"];

fn fail(cx: &Context<'_>, e: &ClientError) -> Outcome {
    Outcome::fail(cx.describe(e))
}

/// Get a token: the password from `-p` or the terminal, then a login at the first reachable auth
/// root.
async fn get_token(a: &LoginArgs, cx: &Context<'_>) -> Result<st2kv_api::Token, String> {
    let password = session::read_password(a.password.clone(), false)?;
    let roots = &cx.settings.auth_roots;
    if roots.is_empty() {
        return Err("no auth URL: give one with --auth-url or $ST2_AUTH_URL".into());
    }
    session::login_any(cx.client, roots, &a.username, &password, a.ttl)
        .await
        .map_err(|e| session::describe_login_error(&e, roots, |e| cx.describe(e)))
}

/// `login USER`: get a token, cache it in `~/.st2/token-USER`, and record USER in the config.
pub async fn login(a: LoginArgs, cx: &Context<'_>) -> Outcome {
    if let Err(e) = config::check_cache_user(&a.username) {
        return Outcome::fail(e);
    }
    let (Some(dir), Some(config_path)) = (&cx.settings.st2_dir, &cx.settings.config_path) else {
        return Outcome::fail(
            "$HOME is not set, so there is no ~/.st2 to cache the token in (use `st2kv auth`)",
        );
    };
    let token = match get_token(&a, cx).await {
        Ok(t) => t,
        Err(e) => return Outcome::fail(e),
    };
    let expire_timestamp = match session::expire_timestamp(&token) {
        Ok(ts) => ts,
        Err(e) => return Outcome::fail(e),
    };
    let cached = CachedToken { token: token.token, expire_timestamp };
    if let Err(e) = config::write_token(dir, &a.username, &cached) {
        return Outcome::fail(e);
    }
    if let Err(e) = config::write_username(config_path, &a.username) {
        return Outcome::fail(e);
    }
    Outcome::ok(format!("Logged in as {}", a.username))
}

/// `auth USER`: get a token and print it; nothing is cached.
pub async fn auth(a: AuthArgs, cx: &Context<'_>) -> Outcome {
    let token = match get_token(&a.login, cx).await {
        Ok(t) => t,
        Err(e) => return Outcome::fail(e),
    };
    if a.only_token {
        return Outcome::ok(token.token);
    }
    let doc = output::select(output::to_doc(&token), TOKEN_ATTRS);
    Outcome::ok(output::render_object(&doc, TOKEN_ATTRS, cx.format))
}

/// `logout`: revoke the token in use and forget it. The token is `-t`/`$ST2_AUTH_TOKEN` if given,
/// else the config user's cached one (even an expired one, whose file then goes).
pub async fn logout(given_token: Option<String>, cx: &Context<'_>) -> Outcome {
    let settings = cx.settings;
    let user = if settings.skip_config { None } else { settings.config.username.clone() };
    let cache = match (&settings.st2_dir, &user) {
        (Some(dir), Some(u)) => config::read_token(dir, u).map(|t| (dir, u, t)),
        _ => None,
    };
    let revoke = |token: String| async move {
        let client = Client::new(&settings.endpoints)?.with_token(Some(token.clone()));
        client.revoke_token(&token).await
    };
    if let Some(token) = given_token {
        let result = revoke(token.clone()).await;
        if let Err(e) = result {
            return fail(cx, &e);
        }
        // The token was also the cached one: its file is useless now.
        if let Some((dir, u, cached)) = &cache {
            if cached.token == token {
                let _ = config::remove_token(dir, u);
            }
        }
        return Outcome::ok("Logged out: the token has been revoked.");
    }
    let Some((dir, user, cached)) = cache else {
        return Outcome::fail(match user {
            Some(u) => format!("not logged in: no cached token for {u} (nothing to log out)"),
            None => "not logged in: no -t TOKEN and no [credentials] username in the config".to_string(),
        });
    };
    let note = match revoke(cached.token.clone()).await {
        Ok(()) => "",
        // Expired, revoked, or its user deleted: there is nothing left to revoke.
        Err(e) if matches!(e.status(), Some(401 | 404)) => " (the cached token was no longer valid)",
        Err(e) => {
            return Outcome::fail(format!(
                "the token was not revoked, and stays cached so that logout can be retried: {}",
                cx.describe(&e)
            ))
        }
    };
    match config::remove_token(dir, user) {
        Ok(()) => Outcome::ok(format!("Logged out {user}{note}")),
        Err(e) => Outcome::fail(e),
    }
}

/// `whoami`: `GET /v1/user`, shown as st2 does.
pub async fn whoami(cx: &Context<'_>) -> Outcome {
    let me = match cx.client.whoami().await {
        Ok(me) => me,
        Err(e) => return fail(cx, &e),
    };
    match cx.format {
        Format::Json | Format::Yaml => {
            Outcome::ok(output::render_object(&output::to_doc(&me), &[], cx.format))
        }
        Format::Table => {
            let authn = &me.authentication;
            let mut lines = vec![
                format!("Currently logged in as \"{}\".", me.username),
                String::new(),
                format!("Authentication method: {}", authn.method),
                format!("Authentication source: {}", authn.location),
            ];
            if let Some(exp) = &authn.token_expire {
                lines.push(format!("Authentication token expire time: {}", output::human_time(exp)));
            }
            let yes_no = |b: bool| if b { "True" } else { "False" };
            lines.extend([
                String::new(),
                "RBAC:".to_string(),
                format!(" - Enabled: {}", yes_no(me.rbac.enabled)),
                format!(" - Roles: {}", me.rbac.roles.join(", ")),
                format!(" - Admin: {}", yes_no(me.rbac.is_admin)),
            ]);
            Outcome::ok(lines.join("\n"))
        }
    }
}

/// `apikey ...`.
pub async fn apikey(cmd: ApikeyCommand, cx: &Context<'_>) -> Outcome {
    let keys = cx.client.apikeys();
    match cmd {
        ApikeyCommand::Create(a) => apikey_create(a, cx).await,
        ApikeyCommand::List(a) => apikey_list(a, cx).await,
        ApikeyCommand::Get(a) => match keys.get(&a.id, false).await {
            Ok(k) => Outcome::ok(output::render_object(&output::to_doc(&k), APIKEY_ATTRS, cx.format)),
            Err(e) => fail(cx, &e),
        },
        ApikeyCommand::Delete(a) => match keys.delete(&a.id).await {
            Ok(()) => Outcome::ok(deleted(&a.id)),
            Err(e) => fail(cx, &e),
        },
        ApikeyCommand::Enable(a) => toggle(cx, &a.id, true).await,
        ApikeyCommand::Disable(a) => toggle(cx, &a.id, false).await,
    }
}

/// st2's words after a deletion.
fn deleted(id: &str) -> String {
    format!("Resource with id \"{id}\" has been successfully deleted.")
}

/// `-m`: a JSON object.
pub fn parse_metadata(text: &str) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("--metadata must be a JSON object, such as '{\"used_by\": \"ci\"}'".into()),
        Err(e) => Err(format!("--metadata is not valid JSON: {e}")),
    }
}

async fn apikey_create(a: ApikeyCreateArgs, cx: &Context<'_>) -> Outcome {
    let metadata = match a.metadata.as_deref().map(parse_metadata).transpose() {
        Ok(m) => m.filter(|m| !m.is_empty()),
        Err(e) => return Outcome::fail(e),
    };
    let req = ApiKeyRequest { user: a.user.filter(|u| !u.is_empty()), metadata, ..Default::default() };
    match cx.client.apikeys().create(&req).await {
        Ok(k) if a.only_key => match k.key {
            Some(key) => Outcome::ok(key),
            None => Outcome::fail("unexpected answer from server: the new API key has no key"),
        },
        Ok(k) => Outcome::ok(output::render_object(&output::to_doc(&k), APIKEY_ATTRS, cx.format)),
        Err(e) => fail(cx, &e),
    }
}

async fn apikey_list(a: ApikeyListArgs, cx: &Context<'_>) -> Outcome {
    let opts = ApiKeyListOptions { user: a.user, show_secrets: a.show_secrets, ..Default::default() };
    match cx.client.apikeys().list(&opts).await {
        Ok(keys) => {
            let docs: Vec<Doc> = keys.iter().map(output::to_doc).collect();
            let mut columns = APIKEY_LIST_ATTRS.to_vec();
            if a.show_secrets {
                columns.push("key_hash");
            }
            Outcome::ok(output::render_rows(&docs, &columns, cx.format))
        }
        Err(e) => fail(cx, &e),
    }
}

async fn toggle(cx: &Context<'_>, id: &str, enabled: bool) -> Outcome {
    match cx.client.apikeys().set_enabled(id, enabled).await {
        Ok(k) => {
            let doc = output::select(output::to_doc(&k), APIKEY_TOGGLE_ATTRS);
            Outcome::ok(output::render_object(&doc, APIKEY_TOGGLE_ATTRS, cx.format))
        }
        Err(e) => fail(cx, &e),
    }
}

/// `user ...`.
pub async fn user(cmd: UserCommand, cx: &Context<'_>) -> Outcome {
    let users = cx.client.users();
    let show =
        |u: &st2kv_api::User| Outcome::ok(output::render_object(&output::to_doc(u), USER_ATTRS, cx.format));
    match cmd {
        UserCommand::Add(a) => {
            let password = match session::read_password(a.password, true) {
                Ok(p) => p,
                Err(e) => return Outcome::fail(e),
            };
            let req = UserRequest { name: a.name, password, role: Some(a.role), enabled: None };
            match users.create(&req).await {
                Ok(u) => show(&u),
                Err(e) => fail(cx, &e),
            }
        }
        UserCommand::List => match users.list().await {
            Ok(list) => {
                let docs: Vec<Doc> = list.iter().map(output::to_doc).collect();
                Outcome::ok(output::render_rows(&docs, USER_ATTRS, cx.format))
            }
            Err(e) => fail(cx, &e),
        },
        UserCommand::Delete(a) => match users.delete(&a.name).await {
            Ok(()) => Outcome::ok(deleted(&a.name)),
            Err(e) => fail(cx, &e),
        },
        UserCommand::Passwd(a) => {
            let password = match session::read_password(a.password, true) {
                Ok(p) => p,
                Err(e) => return Outcome::fail(e),
            };
            let update = UserUpdate { password: Some(password), ..Default::default() };
            match users.update(&a.name, &update).await {
                Ok(_) => Outcome::ok(format!("Password of user \"{}\" has been changed.", a.name)),
                Err(e) => fail(cx, &e),
            }
        }
        UserCommand::Role(a) => {
            let update = UserUpdate { role: Some(a.role), ..Default::default() };
            match users.update(&a.name, &update).await {
                Ok(u) => show(&u),
                Err(e) => fail(cx, &e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_must_be_a_json_object() {
        assert_eq!(parse_metadata(r#"{"a": 1}"#).unwrap()["a"], 1);
        assert!(parse_metadata("[1]").unwrap_err().contains("JSON object"));
        assert!(parse_metadata("{").unwrap_err().contains("not valid JSON"));
    }

    #[test]
    fn deletions_are_reported_in_st2s_words() {
        assert_eq!(deleted("k1"), "Resource with id \"k1\" has been successfully deleted.");
    }
}
