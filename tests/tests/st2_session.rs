//! The real `st2` CLI's logged-in session, unchanged, against any node: login, whoami, an API
//! key, user-scope keys, and a second user who never sees the first user's private keys.

use serde_json::Value;
use st2kv_tests::{st2_cli, st2_env, TestCluster, ADMIN_PASSWORD, ADMIN_USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_st2_cli_logs_in_and_keeps_user_keys_private() {
    let Some(cli) = st2_cli() else { return };
    let c = TestCluster::start(3).await;
    let follower = c.follower().await;
    let admin_home = tempfile::tempdir().unwrap();
    // A logged-in session reads ~/.st2/config and the token cache: no skip, no token in the env.
    let session = [("ST2_CLI_SKIP_CONFIG", ""), ("ST2_AUTH_TOKEN", "")];
    let admin = |node: usize, args: &[&str]| st2_env(&cli, &c, node, admin_home.path(), args, &session);

    let out = admin(follower, &["login", ADMIN_USER, "-p", ADMIN_PASSWORD]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&format!("Logged in as {ADMIN_USER}")), "{out:?}");
    let out = admin(1, &["whoami"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(ADMIN_USER), "{out:?}");

    let out = admin(2, &["apikey", "create", "-k"]);
    assert_eq!(out.code, 0, "{out:?}");
    let key = out.stdout.trim().to_string();
    assert!(!key.is_empty() && !key.contains(' '), "{out:?}");

    let out = admin(3, &["key", "set", "date_cmd", "date -u", "--scope=user"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = admin(1, &["key", "set", "os_keystone_endpoint", "http://keystone:5000/v3"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = admin(follower, &["key", "get", "date_cmd", "--scope=user", "-j"]);
    assert_eq!(out.code, 0, "{out:?}");
    let got: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!((got["value"].as_str(), got["scope"].as_str()), (Some("date -u"), Some("st2kv.user")));
    // `st2 key list` shows both scopes.
    let out = admin(2, &["key", "list", "-j"]);
    assert_eq!(out.code, 0, "{out:?}");
    let listed: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let scopes: Vec<&str> = listed.iter().filter_map(|k| k["scope"].as_str()).collect();
    assert!(scopes.contains(&"st2kv.user") && scopes.contains(&"st2kv.system"), "{listed:?}");

    // The API key works for the st2 CLI too.
    let other = tempfile::tempdir().unwrap();
    let out = st2_env(
        &cli,
        &c,
        3,
        other.path(),
        &["key", "get", "date_cmd", "--scope=user", "-j"],
        &[("ST2_AUTH_TOKEN", ""), ("ST2_API_KEY", key.as_str())],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("date -u"));

    // A second user: logs in with st2, sees the system key, never the admin's user key.
    let resp = c
        .http()
        .post(format!("{}/v1/users", c.url(1)))
        .json(&serde_json::json!({"name": "grace", "password": "grace-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let grace_home = tempfile::tempdir().unwrap();
    let grace = |args: &[&str]| st2_env(&cli, &c, follower, grace_home.path(), args, &session);
    let out = grace(&["login", "grace", "-p", "grace-password"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = grace(&["key", "list", "-j"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("os_keystone_endpoint"), "{out:?}");
    assert!(!out.stdout.contains("date -u"), "grace saw the admin's user key: {out:?}");
    let out = grace(&["key", "get", "date_cmd", "--scope=user"]);
    assert_ne!(out.code, 0, "{out:?}");
    let out = grace(&["key", "set", "os_keystone_endpoint", "evil"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("403 Client Error: Forbidden"), "{out:?}");
    let out = grace(&["key", "list", "--scope=user", "--user", ADMIN_USER, "-j"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("\"user\" attribute can only be provided by admins"), "{out:?}");
}
