//! Our `st2kv` CLI against a live 3-node cluster: the key commands, failover across `--url`
//! endpoints, the migration round trip, and a user's session with login, user scope and API keys.

use serde_json::Value;
use st2kv_tests::{st2kv, TestCluster, ADMIN_PASSWORD, ADMIN_USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_commands_work_against_any_node_and_fail_over_between_urls() {
    let mut c = TestCluster::start(3).await;
    let home = tempfile::tempdir().unwrap();
    let token = c.admin_token.clone();
    let env = [("ST2_AUTH_TOKEN", token.as_str())];
    let urls = c.urls();
    let run = |args: &[&str]| {
        let mut a = vec!["--url", urls.as_str()];
        a.extend_from_slice(args);
        st2kv(home.path(), &a, &env)
    };

    let out = run(&["key", "set", "greeting", "hello world", "--description", "a test key"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(&["key", "set", "session", "abc", "--ttl", "600"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(&["-j", "key", "get", "greeting"]);
    assert_eq!(out.code, 0, "{out:?}");
    let got: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(got["value"], "hello world");
    assert_eq!(got["scope"], "st2kv.system");
    // Table output by default.
    let out = run(&["key", "list"]);
    assert!(out.stdout.contains("greeting") && out.stdout.contains("hello world"), "{out:?}");

    // A dump of `key list -j` loads back after the keys are gone.
    let out = run(&["-j", "key", "list"]);
    let dump: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(dump.len(), 2);
    assert!(dump.iter().any(|k| k["name"] == "session" && k["expire_timestamp"].is_string()));
    std::fs::write(home.path().join("dump.json"), &out.stdout).unwrap();
    let out = run(&["key", "delete_by_prefix", "-p", "se"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("Deleted 1 keys"), "{out:?}");
    let out = run(&["key", "delete", "greeting"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("Resource with id \"greeting\" has been successfully deleted."), "{out:?}");
    let out = run(&["key", "delete", "greeting"]);
    assert_eq!(out.code, 2, "{out:?}");
    let out = run(&["key", "get", "greeting"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("Key Value Pair \"greeting\" is not found."), "{out:?}");
    let out = run(&["key", "load", "dump.json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("hello world"), "load never prints values: {out:?}");
    let out = run(&["-j", "key", "get", "greeting"]);
    assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap()["value"], "hello world");

    // YAML files load too, and a bad item fails the command after the good ones are loaded.
    std::fs::write(
        home.path().join("more.yaml"),
        "- name: from_yaml\n  value: y\n- name: bad\n  value: {a: 1}\n",
    )
    .unwrap();
    let out = run(&["key", "load", "more.yaml"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("from_yaml") || out.stderr.contains("from_yaml"), "{out:?}");
    let out = run(&["key", "load", "more.yaml", "-c"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(&["-j", "key", "get", "bad"]);
    assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap()["value"], "{\"a\": 1}");

    // With node 1 down, the CLI moves on to the next URL.
    c.kill(1);
    c.wait_for_leader(std::time::Duration::from_secs(20)).await;
    let out = run(&["key", "set", "after-failover", "ok"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(&["-j", "key", "get", "after-failover"]);
    assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap()["value"], "ok");

    // Bad input: one line, non-zero exit.
    let out = run(&["key", "set", "x", "y", "--scope", "galaxy"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("Scope st2kv.galaxy is not in allowed scopes list"), "{out:?}");
    let out = run(&["key", "load", "no-such-file.json"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.starts_with("ERROR:"), "{out:?}");
    let out = st2kv(home.path(), &["--url", "http://127.0.0.1:1", "key", "list"], &env);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no st2kv node reachable"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_logs_in_keeps_private_keys_and_uses_an_api_key() {
    let c = TestCluster::start(3).await;
    let admin_home = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let url = c.url(2);
    let admin = |args: &[&str]| {
        let mut a = vec!["--url", url.as_str()];
        a.extend_from_slice(args);
        st2kv(admin_home.path(), &a, &[])
    };
    let out = admin(&["login", ADMIN_USER, "-p", ADMIN_PASSWORD]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&format!("Logged in as {ADMIN_USER}")), "{out:?}");
    let out = admin(&["user", "add", "frank", "-p", "frank-password", "--role", "user"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = admin(&["-j", "user", "list"]);
    assert!(out.stdout.contains("frank"), "{out:?}");

    let user = |args: &[&str]| {
        let mut a = vec!["--url", url.as_str()];
        a.extend_from_slice(args);
        st2kv(home.path(), &a, &[])
    };
    let out = user(&["login", "frank", "-p", "frank-password"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(home.path().join(".st2/token-frank").exists());
    let out = user(&["-j", "whoami"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("frank"), "{out:?}");
    let out = user(&["key", "set", "date_cmd", "date -u", "--scope", "user"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = user(&["key", "set", "global", "nope"]);
    assert_eq!(out.code, 1, "a user may not write system keys: {out:?}");
    assert!(out.stderr.contains("key_value_pair_set"), "{out:?}");
    let out = user(&["-j", "key", "list"]);
    let listed: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    assert!(listed.iter().any(|k| k["name"] == "date_cmd" && k["user"] == "frank"), "{out:?}");
    // The admin's default list shows no one's user keys but the admin's own.
    let out = admin(&["-j", "key", "list"]);
    assert!(!out.stdout.contains("date -u"), "{out:?}");

    let out = user(&["apikey", "create", "-k"]);
    assert_eq!(out.code, 0, "{out:?}");
    let key = out.stdout.trim().to_string();
    assert!(key.len() >= 40, "{out:?}");
    let other = tempfile::tempdir().unwrap();
    let out = st2kv(
        other.path(),
        &["--url", &url, "--api-key", &key, "-j", "key", "get", "date_cmd", "--scope", "user"],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("date -u"), "{out:?}");
    let out = user(&["-j", "apikey", "list"]);
    let keys: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let id = keys[0]["id"].as_str().unwrap().to_string();
    let out = user(&["apikey", "disable", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = st2kv(other.path(), &["--url", &url, "--api-key", &key, "key", "list"], &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("API key is disabled"), "{out:?}");

    let out = user(&["logout"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = user(&["key", "list"]);
    assert_eq!(out.code, 1, "logged out: {out:?}");
}
