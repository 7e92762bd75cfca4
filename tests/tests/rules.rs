//! Templates and rules on a live cluster: the seed's daily rule picking up key changes, secrets
//! reaching an action in plaintext but never the records or logs, webhooks through followers,
//! exactly-once firing across a leader kill, key-change events, invalid rules refused with the
//! field named, and the template dry-run.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use st2kv_api::keyring::Keyring;
use st2kv_tests::{all_bytes_under, st2kv, unique, ClusterOptions, TestCluster};

async fn call(
    c: &TestCluster,
    node: usize,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut rb = c.anon().request(method.parse().unwrap(), format!("{}{}", c.url(node), path));
    rb = rb.header("X-Auth-Token", token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn admin(c: &TestCluster, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    call(c, 1, &c.admin_token, method, path, body).await
}

async fn set_key(c: &TestCluster, node: usize, name: &str, body: Value) {
    let (s, b) = call(c, node, &c.admin_token, "PUT", &format!("/v1/keys/{name}"), Some(body)).await;
    assert_eq!(s, 200, "setting {name}: {b}");
}

async fn create_rule(c: &TestCluster, rule: Value) -> Value {
    let (s, b) = admin(c, "POST", "/v1/rules", Some(rule)).await;
    assert_eq!(s, 201, "creating a rule: {b}");
    b
}

async fn executions(c: &TestCluster, node: usize, rule: &str) -> Vec<Value> {
    let (s, b) =
        call(c, node, &c.admin_token, "GET", &format!("/v1/executions?rule={rule}&limit=100000"), None).await;
    assert_eq!(s, 200, "{b}");
    b.as_array().cloned().unwrap_or_default()
}

/// Poll (bounded) until `pred` holds for the rule's executions; return them.
async fn wait_executions(
    c: &TestCluster,
    rule: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let node = c.leader().await.unwrap_or(1);
        let list = executions(c, node, rule).await;
        if pred(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "{what}: not reached within {within:?}; executions: {list:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn keyring(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("keyring.json");
    Keyring::generate().save(&path, false).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_rule_carries_the_current_value_of_its_key() {
    // The seed's rule verbatim, with `st2.timer.daily` shortened to two seconds.
    let opts = ClusterOptions {
        node_args: vec!["--daily-timer-period-ms".into(), "2000".into()],
        ..Default::default()
    };
    let c = TestCluster::start_with(3, opts).await;
    set_key(
        &c,
        2,
        "os_keystone_endpoint",
        json!({"name": "os_keystone_endpoint", "value": "http://ks-1:5000"}),
    )
    .await;
    let seed = json!({"name": "daily_clean_up_rule", "trigger": {"name": "st2.timer.daily"}, "enabled": true,
                      "action": {"name": "daily_clean_up_action",
                                 "parameters": {"os_keystone_endpoint": "{{st2kv.system.os_keystone_endpoint}}"}}});
    let created = create_rule(&c, seed).await;
    assert_eq!(created["ref"], "default.daily_clean_up_rule");

    let first =
        wait_executions(&c, "default.daily_clean_up_rule", Duration::from_secs(20), "first run", |l| {
            !l.is_empty()
        })
        .await;
    let ex = &first[0];
    assert_eq!(ex["parameters"]["os_keystone_endpoint"], "http://ks-1:5000");
    assert_eq!(ex["action"]["ref"], "daily_clean_up_action");
    // Not a built-in action: waiting for an external worker.
    assert_eq!(ex["status"], "requested");
    assert_eq!(ex["trigger"]["type"], "st2.timer.daily");

    set_key(
        &c,
        3,
        "os_keystone_endpoint",
        json!({"name": "os_keystone_endpoint", "value": "http://ks-2:5000"}),
    )
    .await;
    let later = wait_executions(
        &c,
        "default.daily_clean_up_rule",
        Duration::from_secs(20),
        "a run after the change",
        |l| l.first().is_some_and(|e| e["parameters"]["os_keystone_endpoint"] == "http://ks-2:5000"),
    )
    .await;
    // One execution per timer tick: no two share a trigger instance.
    let mut seen = std::collections::HashSet::new();
    for e in &later {
        assert!(seen.insert(e["trigger_instance"]["id"].as_str().unwrap().to_string()), "duplicate: {e}");
    }

    // An external worker claims the newest one (getting the parameters) and completes it.
    let id = later[0]["id"].as_str().unwrap().to_string();
    let (s, claimed) = call(&c, 2, &c.admin_token, "POST", &format!("/v1/executions/{id}/claim"), None).await;
    assert_eq!(s, 200, "{claimed}");
    assert_eq!(claimed["status"], "running");
    assert_eq!(claimed["parameters"]["os_keystone_endpoint"], "http://ks-2:5000");
    let (s, again) = call(&c, 3, &c.admin_token, "POST", &format!("/v1/executions/{id}/claim"), None).await;
    assert_eq!(s, 409, "a second claim must fail: {again}");
    let (s, done) = call(
        &c,
        3,
        &c.admin_token,
        "PUT",
        &format!("/v1/executions/{id}"),
        Some(json!({"status": "succeeded", "result": {"cleaned": 3}})),
    )
    .await;
    assert_eq!(s, 200, "{done}");
    let (_, got) = call(&c, 1, &c.admin_token, "GET", &format!("/v1/executions/{id}"), None).await;
    assert_eq!(got["status"], "succeeded");
    assert_eq!(got["result"]["cleaned"], 3);

    // Disabled, it stops firing.
    let (s, b) = admin(&c, "POST", "/v1/rules/default.daily_clean_up_rule/disable", None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["enabled"], false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = executions(&c, 1, "default.daily_clean_up_rule").await.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(executions(&c, 1, "default.daily_clean_up_rule").await.len(), n, "a disabled rule fired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decrypted_secret_reaches_the_action_but_never_the_records_or_logs() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ClusterOptions { keyring: Some(keyring(dir.path())), ..Default::default() };
    let c = TestCluster::start_with(3, opts).await;
    let secret = format!("S3cret{:016x}", rand::random::<u64>());
    set_key(&c, 1, "db_password", json!({"name": "db_password", "value": secret, "secret": true})).await;
    let out_file = dir.path().join("action-saw.txt");
    let rule = json!({
        "name": "use_secret", "pack": "ops",
        "trigger": {"type": "core.st2.webhook", "parameters": {"url": "deploy"}},
        "action": {"ref": "core.local", "parameters": {
            "cmd": format!("printf %s '{{{{ st2kv.system.db_password | decrypt_kv }}}}' > {} && echo pw={{{{ st2kv.system.db_password | decrypt_kv }}}}", out_file.display()),
        }}
    });
    create_rule(&c, rule).await;
    let follower = c.follower().await;
    let (s, b) =
        call(&c, follower, &c.admin_token, "POST", "/v1/webhooks/deploy", Some(json!({"v": 1}))).await;
    assert_eq!(s, 202, "{b}");
    let list = wait_executions(&c, "ops.use_secret", Duration::from_secs(30), "the run to finish", |l| {
        l.first().is_some_and(|e| e["status"] == "succeeded" || e["status"] == "failed")
    })
    .await;
    let ex = &list[0];
    assert_eq!(ex["status"], "succeeded", "{ex:#}");
    // The action got the plaintext...
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), secret);
    // ...but the record holds it masked, in the parameters and in the captured output.
    let cmd = ex["parameters"]["cmd"].as_str().unwrap();
    assert!(cmd.contains("'********'") && !cmd.contains(&secret), "{cmd}");
    assert_eq!(ex["result"]["stdout"].as_str().unwrap().trim(), "pw=********");
    assert!(!ex.to_string().contains(&secret));
    // Nowhere on disk in plaintext: not in any node's log, store or Raft log.
    drop(list);
    for i in 1..=3 {
        let bytes = all_bytes_under(&c.node(i).data_dir);
        assert!(
            memchr::memmem::find(&bytes, secret.as_bytes()).is_none(),
            "node {i} holds the plaintext secret somewhere in its data dir (log or store)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_posted_to_a_follower_runs_its_rule_once() {
    let c = TestCluster::start(3).await;
    create_rule(
        &c,
        json!({"name": "hook", "trigger": {"type": "core.st2.webhook", "parameters": {"url": "build/done"}},
               "criteria": {"trigger.body.branch": {"type": "equals", "pattern": "main"}},
               "action": {"ref": "core.noop", "parameters": {"branch": "{{ trigger.body.branch }}"}}}),
    )
    .await;
    let follower = c.follower().await;
    let (s, b) =
        call(&c, follower, &c.admin_token, "POST", "/v1/webhooks/build/done", Some(json!({"branch": "dev"})))
            .await;
    assert_eq!(s, 202, "{b}");
    let (s, b) = call(
        &c,
        follower,
        &c.admin_token,
        "POST",
        "/v1/webhooks/build/done",
        Some(json!({"branch": "main"})),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b, json!({"branch": "main"}), "StackStorm echoes the body");
    let list = wait_executions(&c, "default.hook", Duration::from_secs(20), "one run", |l| {
        l.first().is_some_and(|e| e["status"] == "succeeded")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let list_after = executions(&c, follower, "default.hook").await;
    assert_eq!(list_after.len(), 1, "the criteria let exactly one post through, once: {list_after:#?}");
    assert_eq!(list[0]["parameters"]["branch"], "main");
    // Unknown webhook: 404 with a faultstring.
    let (s, b) = call(&c, 1, &c.admin_token, "POST", "/v1/webhooks/nobody-listens", Some(json!({}))).await;
    assert_eq!(s, 404);
    assert!(b["faultstring"].as_str().unwrap().contains("nobody-listens"), "{b}");
    // No credentials: 401.
    let resp =
        c.anon().post(format!("{}/v1/webhooks/build/done", c.url(1))).json(&json!({})).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_during_a_burst_of_webhooks_neither_loses_nor_repeats_a_firing() {
    let mut c = TestCluster::start(3).await;
    create_rule(
        &c,
        json!({"name": "burst", "trigger": {"type": "core.st2.webhook", "parameters": {"url": "burst"}},
               "action": {"ref": "core.noop", "parameters": {"n": "{{ trigger.body.n }}"}}}),
    )
    .await;
    let leader = c.wait_for_leader(Duration::from_secs(10)).await;
    let urls: Vec<String> = (1..=3).map(|i| c.url(i)).collect();
    let token = c.admin_token.clone();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    // Posters through every node, in parallel, while the leader is killed part-way.
    let mut tasks = Vec::new();
    for (w, url) in urls.iter().enumerate() {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for k in 0..40u64 {
                let n = (w as u64) * 1000 + k;
                let r = http
                    .post(format!("{url}/v1/webhooks/burst"))
                    .header("X-Auth-Token", &token)
                    .json(&json!({"n": n}))
                    .send()
                    .await;
                if matches!(&r, Ok(resp) if resp.status() == 202) {
                    acked.push(n);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.kill(leader);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(acked.len() >= 40, "too few posts acknowledged to mean anything: {}", acked.len());
    wait_executions(&c, "default.burst", Duration::from_secs(60), "every acknowledged post to run", |l| {
        let ran: std::collections::HashSet<String> =
            l.iter().map(|e| e["parameters"]["n"].to_string()).collect();
        acked.iter().all(|n| ran.contains(&format!("\"{n}\"")))
    })
    .await;
    // Let any straggler (a duplicate would be one) land, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let node = c.wait_for_leader(Duration::from_secs(10)).await;
    let list = executions(&c, node, "default.burst").await;
    let mut per_post: HashMap<String, usize> = HashMap::new();
    let mut per_instance: HashMap<String, usize> = HashMap::new();
    for e in &list {
        *per_post.entry(e["parameters"]["n"].to_string()).or_default() += 1;
        *per_instance.entry(e["trigger_instance"]["id"].to_string()).or_default() += 1;
    }
    let repeated: Vec<_> = per_post.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "posts that fired twice: {repeated:?}");
    assert!(per_instance.values().all(|n| *n == 1));
    // Nothing stays scheduled: what the killed leader recorded but never started, the new leader
    // runs. (A run the killed leader had started stays `running` until it is declared abandoned.)
    assert!(wait_none_scheduled(&c).await, "some executions were never started");
}

async fn wait_none_scheduled(c: &TestCluster) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let node = c.leader().await.unwrap_or(2);
        let list = executions(c, node, "default.burst").await;
        if list.iter().all(|e| e["status"] == "succeeded" || e["status"] == "running") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_changes_trigger_rules_and_invalid_rules_are_refused_by_field() {
    let c = TestCluster::start(3).await;
    // A key-change rule, with criteria on the changed key.
    create_rule(
        &c,
        json!({"name": "watch", "trigger": {"type": "core.st2.key_value_pair.value_change"},
               "criteria": {"trigger.new_object.name": {"type": "startswith", "pattern": "watched."}},
               "action": {"ref": "core.noop", "parameters": {
                   "from": "{{ trigger.old_object.value }}", "to": "{{ trigger.new_object.value }}"}}}),
    )
    .await;
    set_key(&c, 2, "watched.level", json!({"name": "watched.level", "value": "low"})).await;
    set_key(&c, 3, "other", json!({"name": "other", "value": "1"})).await;
    set_key(&c, 3, "other", json!({"name": "other", "value": "2"})).await;
    set_key(&c, 2, "watched.level", json!({"name": "watched.level", "value": "high"})).await;
    // Same value again: an update, not a value change.
    set_key(&c, 1, "watched.level", json!({"name": "watched.level", "value": "high"})).await;
    let list =
        wait_executions(&c, "default.watch", Duration::from_secs(20), "the value change to fire", |l| {
            !l.is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(list);
    let list = executions(&c, 1, "default.watch").await;
    assert_eq!(list.len(), 1, "only low → high is a value change of a watched key: {list:#?}");
    assert_eq!(list[0]["parameters"], json!({"from": "low", "to": "high"}));

    // Invalid rules, each refused with a message naming the field; nothing stored.
    let cases = [
        (
            json!({"name": "bad1", "trigger": {"type": "core.st2.nope"}, "action": {"ref": "core.noop"}}),
            "trigger.type",
        ),
        (
            json!({"name": "bad2", "trigger": {"type": "core.st2.webhook", "parameters": {"url": "x"}},
                   "action": {"ref": "core.noop", "parameters": {"p": "{{ st2kv.system.x "}}}),
            "action.parameters.p",
        ),
        (
            json!({"name": "bad3", "trigger": {"type": "core.st2.webhook", "parameters": {"url": "x"}},
                   "criteria": {"trigger.body.a": {"type": "eq", "pattern": "1"}},
                   "action": {"ref": "core.noop"}}),
            "criteria",
        ),
        (
            json!({"name": "bad4", "trigger": {"type": "core.st2.webhook", "parameters": {"url": "x"}}}),
            "action",
        ),
        (
            json!({"name": "bad5", "trigger": {"type": "core.st2.IntervalTimer", "parameters": {"unit": "seconds", "delta": 0}},
                   "action": {"ref": "core.noop"}}),
            "trigger.parameters.delta",
        ),
    ];
    for (rule, field) in cases {
        let (s, b) = admin(&c, "POST", "/v1/rules", Some(rule.clone())).await;
        assert_eq!(s, 400, "{rule}: {b}");
        let msg = b["faultstring"].as_str().unwrap_or_default();
        assert!(msg.contains(field), "{rule}: message {msg:?} should name {field}");
    }
    let (_, all) = admin(&c, "GET", "/v1/rules", None).await;
    let names: Vec<&str> = all.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["watch"]);
    // Creating twice: 409. Non-admins may read but not create.
    let (s, _) = admin(
        &c,
        "POST",
        "/v1/rules",
        Some(json!({"name": "watch", "trigger": {"type": "core.st2.key_value_pair.create"}, "action": {"ref": "core.noop"}})),
    )
    .await;
    assert_eq!(s, 409);
    let (s, b) = admin(
        &c,
        "POST",
        "/v1/users",
        Some(json!({"name": "alice", "password": "alice-password", "role": "user"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let alice = c.login(2, "alice", "alice-password", None).await.unwrap();
    let (s, _) = call(&c, 2, &alice, "GET", "/v1/rules/default.watch", None).await;
    assert_eq!(s, 200);
    let (s, b) = call(
        &c,
        2,
        &alice,
        "POST",
        "/v1/rules",
        Some(json!({"name": "mine", "trigger": {"type": "core.st2.key_value_pair.create"}, "action": {"ref": "core.local", "parameters": {"cmd": "id"}}})),
    )
    .await;
    assert_eq!(s, 403, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dry_run_reports_every_problem_and_the_cli_manages_rules() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ClusterOptions { keyring: Some(keyring(dir.path())), ..Default::default() };
    let c = TestCluster::start_with(3, opts).await;
    set_key(&c, 1, "region", json!({"name": "region", "value": "eu-1"})).await;
    set_key(&c, 1, "api.token", json!({"name": "api.token", "value": "tok-123", "secret": true})).await;
    let (s, b) = admin(
        &c,
        "POST",
        "/v1/users",
        Some(json!({"name": "bob", "password": "bob-password", "role": "user"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let bob = c.login(3, "bob", "bob-password", None).await.unwrap();
    let (s, b) = call(
        &c,
        3,
        &bob,
        "PUT",
        "/v1/keys/home?scope=user",
        Some(json!({"name": "home", "value": "/home/bob", "scope": "user"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // Bob: a dotted system key, his own user key, a missing key, a secret he may not decrypt,
    // all reported at once.
    let template = "{{ st2kv.system.region }} {{ st2kv.user.home }} [{{ st2kv.system.nope }}] {{ st2kv.system.api.token | decrypt_kv }}";
    let (s, b) = call(&c, 2, &bob, "POST", "/v1/templates/render", Some(json!({"template": template}))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["result"], "eu-1 /home/bob [] ********");
    assert_eq!(b["missing"], json!(["st2kv.system.nope"]));
    assert_eq!(b["denied"], json!(["st2kv.system.api.token"]));
    // The admin may decrypt; rendering as bob gives bob's view.
    let (_, b) = admin(
        &c,
        "POST",
        "/v1/templates/render",
        Some(json!({"template": "{{ st2kv.system.api.token | decrypt_kv }}"})),
    )
    .await;
    assert_eq!(b["result"], "tok-123");
    let (_, b) = admin(
        &c,
        "POST",
        "/v1/templates/render",
        Some(json!({"template": "{{ st2kv.user.home }}", "user": "bob"})),
    )
    .await;
    assert_eq!(b["result"], "/home/bob");
    let (s, _) =
        call(&c, 3, &bob, "POST", "/v1/templates/render", Some(json!({"template": "x", "user": "st2admin"})))
            .await;
    assert_eq!(s, 403);
    // decrypt_kv of a missing key: StackStorm's message.
    let (_, b) = admin(
        &c,
        "POST",
        "/v1/templates/render",
        Some(json!({"template": "{{ st2kv.system.gone | decrypt_kv }}"})),
    )
    .await;
    let errors = b["errors"].to_string();
    assert!(
        errors.contains("Referenced datastore item \\\"st2kv.system.gone\\\" doesn't exist or it contains an empty string"),
        "{b}"
    );
    // The st2kv() function with a default.
    let (_, b) = admin(
        &c,
        "POST",
        "/v1/templates/render",
        Some(json!({"template": "{{ st2kv('system.nope', default='dflt') }}-{{ st2kv('system.region') }}"})),
    )
    .await;
    assert_eq!(b["result"], "dflt-eu-1");

    // A manual run as bob resolves bob's st2kv.user keys; bob may not run commands on the
    // cluster nor pass a secret he may not decrypt.
    let (s, b) = call(
        &c,
        1,
        &bob,
        "POST",
        "/v1/executions",
        Some(json!({"action": "core.noop", "parameters": {"home": "{{ st2kv.user.home }}"}})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["parameters"]["home"], "/home/bob");
    assert_eq!(b["context"]["user"], "bob");
    let id = b["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, e) = call(&c, 2, &bob, "GET", &format!("/v1/executions/{id}"), None).await;
        if e["status"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "the manual run did not finish: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, b) = call(
        &c,
        1,
        &bob,
        "POST",
        "/v1/executions",
        Some(json!({"action": "core.local", "parameters": {"cmd": "id"}})),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = call(
        &c,
        1,
        &bob,
        "POST",
        "/v1/executions",
        Some(
            json!({"action": "core.noop", "parameters": {"t": "{{ st2kv.system.api.token | decrypt_kv }}"}}),
        ),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    // Rules see system keys only: a rule reading st2kv.user fails its execution, saying why.
    create_rule(
        &c,
        json!({"name": "userish", "trigger": {"type": "core.st2.webhook", "parameters": {"url": "userish"}},
                           "action": {"ref": "core.noop", "parameters": {"h": "{{ st2kv.user.home }}"}}}),
    )
    .await;
    let (s, _) = admin(&c, "POST", "/v1/webhooks/userish", Some(json!({}))).await;
    assert_eq!(s, 202);
    let list = wait_executions(&c, "default.userish", Duration::from_secs(20), "the rule to fail", |l| {
        !l.is_empty()
    })
    .await;
    assert_eq!(list[0]["status"], "failed");
    assert!(
        list[0]["result"]["error"].as_str().unwrap().contains("st2kv.user is not available to rules"),
        "{}",
        list[0]
    );

    // Our CLI: rules from YAML, list/get/disable/enable/delete, and `render` against a rule.
    let home = tempfile::tempdir().unwrap();
    let env = [("ST2_AUTH_TOKEN", c.admin_token.as_str())];
    let url = c.url(2);
    let rule_file = home.path().join("rule.yaml");
    std::fs::write(
        &rule_file,
        "name: notify\npack: ops\ndescription: tell the API\ntrigger:\n  type: core.st2.webhook\n  parameters: {url: notify}\n\
         action:\n  ref: core.http\n  parameters:\n    url: \"http://127.0.0.1:1/{{ st2kv.system.region }}\"\n    headers: {Authorization: \"Bearer {{ st2kv.system.api.token | decrypt_kv }}\"}\n",
    )
    .unwrap();
    let rule_path = rule_file.display().to_string();
    let out = st2kv(home.path(), &["--url", &url, "rule", "create", &rule_path], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = st2kv(home.path(), &["--url", &url, "rule", "list"], &env);
    assert!(out.stdout.contains("ops.notify") && out.stdout.contains("core.http"), "{}", out.stdout);
    let out = st2kv(home.path(), &["--url", &url, "rule", "disable", "ops.notify", "-j"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("\"enabled\": false"), "{}", out.stdout);
    let out = st2kv(home.path(), &["--url", &url, "render", &rule_path], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("http://127.0.0.1:1/eu-1") && out.stdout.contains("Bearer tok-123"),
        "{}",
        out.stdout
    );
    // As bob: the secret is denied, reported, and the exit status says so.
    let bob_env = [("ST2_AUTH_TOKEN", bob.as_str())];
    let out = st2kv(home.path(), &["--url", &url, "render", &rule_path], &bob_env);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("may not decrypt: st2kv.system.api.token"), "{}", out.stderr);
    assert!(!out.stdout.contains("tok-123"));
    let bad = home.path().join("bad.json");
    std::fs::write(&bad, r#"{"name": "b", "trigger": {"type": "core.st2.webhook", "parameters": {"url": "b"}}, "criteria": {"trigger.x": {"type": "like"}}, "action": {"ref": "core.noop"}}"#).unwrap();
    let out = st2kv(home.path(), &["--url", &url, "rule", "create", &bad.display().to_string()], &env);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("400") && out.stderr.contains("criteria"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {}", out.stderr);
    let out = st2kv(home.path(), &["--url", &url, "rule", "delete", "ops.notify"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = st2kv(home.path(), &["--url", &url, "rule", "get", "ops.notify"], &env);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("404"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn core_http_calls_out_and_the_execution_cli_shows_it() {
    // A one-shot HTTP server on loopback that records what it is sent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("\"hello\"") {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}").unwrap();
        String::from_utf8_lossy(&got).into_owned()
    });
    let c = TestCluster::start(3).await;
    set_key(&c, 1, "greeting", json!({"name": "greeting", "value": "hello"})).await;
    let name = unique("callout");
    create_rule(
        &c,
        json!({"name": name, "trigger": {"type": "core.st2.webhook", "parameters": {"url": "callout"}},
               "action": {"ref": "core.http", "parameters": {
                   "url": format!("http://127.0.0.1:{port}/hook"), "method": "POST",
                   "body": "{\"msg\": \"{{ st2kv.system.greeting }}\"}"}}}),
    )
    .await;
    let (s, _) = call(&c, 3, &c.admin_token, "POST", "/v1/webhooks/callout", Some(json!({}))).await;
    assert_eq!(s, 202);
    let rule = format!("default.{name}");
    let list = wait_executions(&c, &rule, Duration::from_secs(30), "the call to finish", |l| {
        l.first().is_some_and(|e| e["status"] == "succeeded" || e["status"] == "failed")
    })
    .await;
    assert_eq!(list[0]["status"], "succeeded", "{:#}", list[0]);
    assert_eq!(list[0]["result"]["status_code"], 200);
    assert_eq!(list[0]["result"]["body"], json!({"ok": true}));
    let request = server.join().unwrap();
    assert!(request.starts_with("POST /hook"), "{request}");
    assert!(request.contains("{\"msg\": \"hello\"}"), "{request}");

    let home = tempfile::tempdir().unwrap();
    let env = [("ST2_AUTH_TOKEN", c.admin_token.as_str())];
    let out = st2kv(home.path(), &["--url", &c.url(2), "execution", "list", "--rule", &rule], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("core.http") && out.stdout.contains("succeeded"), "{}", out.stdout);
    let id = list[0]["id"].as_str().unwrap();
    let out = st2kv(home.path(), &["--url", &c.url(3), "execution", "get", id, "-j"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["id"], id);
}
