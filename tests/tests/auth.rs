//! Authentication and access, StackStorm with RBAC semantics: who may read and change which keys,
//! with which credentials, through any node.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use st2kv_tests::{ClusterOptions, TestCluster, ADMIN_PASSWORD, ADMIN_USER};

/// How a request authenticates in the matrix.
#[derive(Clone)]
enum Cred {
    None,
    Token(String),
    ApiKey(String),
}

struct Who {
    label: &'static str,
    cred: Cred,
    /// The user behind valid credentials; `None` for credentials that must be refused.
    user: Option<&'static str>,
    admin: bool,
}

async fn call(
    c: &TestCluster,
    node: usize,
    who: &Cred,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut rb = c.anon().request(method.parse().unwrap(), format!("{}{}", c.url(node), path));
    match who {
        Cred::None => {}
        Cred::Token(t) => rb = rb.header("X-Auth-Token", t),
        Cred::ApiKey(k) => rb = rb.header("St2-Api-Key", k),
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn admin(c: &TestCluster, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    call(c, 1, &Cred::Token(c.admin_token.clone()), method, path, body).await
}

async fn create_user(c: &TestCluster, name: &str, role: &str) {
    let (s, b) = admin(
        c,
        "POST",
        "/v1/users",
        Some(json!({"name": name, "password": format!("{name}-password"), "role": role})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
}

async fn login(c: &TestCluster, node: usize, user: &str, ttl: Option<i64>) -> String {
    c.login(node, user, &format!("{user}-password"), ttl).await.unwrap()
}

fn faultstring(v: &Value) -> &str {
    v["faultstring"].as_str().unwrap_or("")
}

/// Everyone in the matrix, with the keys they own.
async fn cast(c: &TestCluster) -> Vec<Who> {
    for (name, role) in [("alice", "user"), ("bob", "user"), ("carol", "user")] {
        create_user(c, name, role).await;
    }
    let alice = login(c, 2, "alice", None).await;
    let bob = login(c, 3, "bob", None).await;
    let expired = login(c, 1, "carol", Some(1)).await;
    let revoked = login(c, 1, "carol", None).await;
    let (s, _) =
        call(c, 2, &Cred::Token(revoked.clone()), "DELETE", &format!("/v1/tokens/{revoked}"), None).await;
    assert_eq!(s, 204);
    let (s, key) = call(c, 1, &Cred::Token(alice.clone()), "POST", "/v1/apikeys", Some(json!({}))).await;
    assert_eq!(s, 201, "{key}");
    let disabled_key = key["key"].as_str().unwrap().to_string();
    let (s, b) = admin(
        c,
        "PUT",
        &format!("/v1/apikeys/{}", key["id"].as_str().unwrap()),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // Keys: one system key, and the same name in system scope and in alice's and bob's scopes.
    for (who, body) in [
        (c.admin_token.clone(), json!({"name": "sys-k", "value": "system value"})),
        (c.admin_token.clone(), json!({"name": "shared", "value": "system shared"})),
        (alice.clone(), json!({"name": "shared", "value": "alice private", "scope": "user"})),
        (bob.clone(), json!({"name": "shared", "value": "bob private", "scope": "user"})),
    ] {
        let name = body["name"].as_str().unwrap().to_string();
        let (s, b) = call(c, 1, &Cred::Token(who), "PUT", &format!("/v1/keys/{name}"), Some(body)).await;
        assert_eq!(s, 200, "{b}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the 1 s token expire
    vec![
        Who { label: "admin", cred: Cred::Token(c.admin_token.clone()), user: Some(ADMIN_USER), admin: true },
        Who { label: "alice", cred: Cred::Token(alice), user: Some("alice"), admin: false },
        Who { label: "bob", cred: Cred::Token(bob), user: Some("bob"), admin: false },
        Who { label: "no credentials", cred: Cred::None, user: None, admin: false },
        Who {
            label: "bad token",
            cred: Cred::Token("0123456789abcdef0123456789abcdef".into()),
            user: None,
            admin: false,
        },
        Who { label: "expired token", cred: Cred::Token(expired), user: None, admin: false },
        Who { label: "revoked token", cred: Cred::Token(revoked), user: None, admin: false },
        Who { label: "disabled API key", cred: Cred::ApiKey(disabled_key), user: None, admin: false },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_matrix_holds_on_the_leader_and_on_a_follower() {
    let c = TestCluster::start(3).await;
    let everyone = cast(&c).await;
    let leader = c.wait_for_leader(Duration::from_secs(10)).await;
    let follower = c.follower().await;
    let mut n = 0;
    for node in [leader, follower] {
        for who in &everyone {
            let ctx = format!("{} on node {node}", who.label);
            let Some(user) = who.user else {
                // Every operation is refused with 401 and the right message, and leaks nothing.
                for (m, p) in [
                    ("GET", "/v1/keys"),
                    ("GET", "/v1/keys/sys-k"),
                    ("PUT", "/v1/keys/x"),
                    ("DELETE", "/v1/keys/sys-k"),
                    ("GET", "/v1/users"),
                ] {
                    let body = (m == "PUT").then(|| json!({"name": "x", "value": "y"}));
                    let (s, b) = call(&c, node, &who.cred, m, p, body).await;
                    assert_eq!(s, 401, "{ctx}: {m} {p} -> {b}");
                    let expected = match who.label {
                        "no credentials" => "Unauthorized - One of Token or API key required.",
                        "expired token" => "Unauthorized - Token has expired.",
                        "disabled API key" => "Unauthorized - API key is disabled.",
                        _ => "Unauthorized",
                    };
                    assert_eq!(faultstring(&b), expected, "{ctx}: {m} {p}");
                    n += 1;
                }
                continue;
            };
            // list and get system keys: everyone authenticated.
            let (s, b) = call(&c, node, &who.cred, "GET", "/v1/keys?scope=system", None).await;
            assert_eq!(s, 200, "{ctx}: list system");
            assert!(b.as_array().unwrap().iter().any(|k| k["name"] == "sys-k"), "{ctx}");
            let (s, b) = call(&c, node, &who.cred, "GET", "/v1/keys/sys-k", None).await;
            assert_eq!((s, b["value"].as_str()), (StatusCode::OK, Some("system value")), "{ctx}: get system");
            // set and delete system keys: admins only, with StackStorm's permission message.
            let name = format!("made-by-{}-{node}", who.label);
            let (s, b) = call(
                &c,
                node,
                &who.cred,
                "PUT",
                &format!("/v1/keys/{name}"),
                Some(json!({"name": name, "value": "v"})),
            )
            .await;
            if who.admin {
                assert_eq!(s, 200, "{ctx}: set system {b}");
                let (s, _) = call(&c, node, &who.cred, "DELETE", &format!("/v1/keys/{name}"), None).await;
                assert_eq!(s, 204, "{ctx}: delete system");
            } else {
                assert_eq!(s, 403, "{ctx}: set system {b}");
                assert_eq!(
                    faultstring(&b),
                    format!("User \"{user}\" doesn't have required permission \"key_value_pair_set\" on resource \"key_value_pair:st2kv.system:{name}\"")
                );
                let (s, _) = call(&c, node, &who.cred, "DELETE", "/v1/keys/sys-k", None).await;
                assert_eq!(s, 403, "{ctx}: delete system");
            }
            // own user scope: private, and the same name as a system key never clashes.
            let (s, b) = call(&c, node, &who.cred, "GET", "/v1/keys/shared?scope=user", None).await;
            let own = match user {
                "alice" => Some("alice private"),
                "bob" => Some("bob private"),
                _ => None,
            };
            match own {
                Some(v) => assert_eq!(
                    (s, b["value"].as_str(), b["user"].as_str()),
                    (StatusCode::OK, Some(v), Some(user)),
                    "{ctx}"
                ),
                None => assert_eq!(s, 404, "{ctx}: the admin has no user key of that name"),
            }
            let (s, b) = call(&c, node, &who.cred, "GET", "/v1/keys/shared", None).await;
            assert_eq!((s, b["value"].as_str()), (StatusCode::OK, Some("system shared")), "{ctx}");
            // scope=all: system keys, then the requester's own user keys, never anyone else's.
            let (s, b) = call(&c, node, &who.cred, "GET", "/v1/keys?scope=all", None).await;
            assert_eq!(s, 200);
            let users: Vec<&str> = b.as_array().unwrap().iter().filter_map(|k| k["user"].as_str()).collect();
            assert!(users.iter().all(|u| *u == user), "{ctx}: scope=all showed {users:?}");
            assert!(
                !b.to_string().contains(if user == "alice" { "bob private" } else { "alice private" }),
                "{ctx}"
            );
            // another user's key by name: admins only.
            let other = if user == "bob" { "alice" } else { "bob" };
            let (s, b) =
                call(&c, node, &who.cred, "GET", &format!("/v1/keys/shared?scope=user&user={other}"), None)
                    .await;
            if who.admin {
                assert_eq!(
                    (s, b["value"].as_str()),
                    (StatusCode::OK, Some(if other == "bob" { "bob private" } else { "alice private" })),
                    "{ctx}"
                );
            } else {
                assert_eq!(s, 403, "{ctx}: read {other}'s key");
                assert_eq!(faultstring(&b), "\"user\" attribute can only be provided by admins");
                assert!(!b.to_string().contains("private"));
                let (s, _) = call(
                    &c,
                    node,
                    &who.cred,
                    "DELETE",
                    &format!("/v1/keys/shared?scope=user&user={other}"),
                    None,
                )
                .await;
                assert_eq!(s, 403, "{ctx}: delete {other}'s key");
                let (s, _) = call(
                    &c,
                    node,
                    &who.cred,
                    "PUT",
                    "/v1/keys/shared",
                    Some(json!({"name": "shared", "value": "hijack", "scope": "user", "user": other})),
                )
                .await;
                assert_eq!(s, 403, "{ctx}: write {other}'s key");
            }
            // admin endpoints.
            for p in ["/v1/users", "/v1/cluster/status"] {
                let (s, _) = call(&c, node, &who.cred, "GET", p, None).await;
                assert_eq!(s, if who.admin { 200 } else { 403 }, "{ctx}: {p}");
            }
            n += 1;
        }
    }
    assert_eq!(n, 2 * (3 + 5 * 5), "every cell ran");
    // Nothing a refused request tried reached anyone's keys.
    let (_, b) = admin(&c, "GET", "/v1/keys/shared?scope=user&user=alice", None).await;
    assert_eq!(b["value"], "alice private");
    let (_, b) = admin(&c, "GET", "/v1/keys/sys-k", None).await;
    assert_eq!(b["value"], "system value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_revocations_hold_on_every_node_at_once() {
    let c = TestCluster::start(3).await;
    create_user(&c, "dave", "user").await;
    // A login on node 1, used on node 3 right away.
    let token = login(&c, 1, "dave", None).await;
    let (s, b) = call(&c, 3, &Cred::Token(token.clone()), "GET", "/v1/user", None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["username"], "dave");
    assert_eq!(b["authentication"]["method"], "authentication token");
    assert_eq!(b["rbac"]["is_admin"], false);
    // Writes too: a fresh token used at once on another node for a write (the node has not
    // necessarily applied the login yet, and must look again rather than refuse).
    let fresh = login(&c, 1, "dave", None).await;
    let body = json!({"name": "dave-key", "value": "v", "scope": "user"});
    let (s, b) = call(&c, 3, &Cred::Token(fresh.clone()), "PUT", "/v1/keys/dave-key", Some(body)).await;
    assert_eq!(s, 200, "{b}");
    // A revocation on node 2 is refused on node 1 as soon as the revoke returns, for reads and
    // for writes, and the refused write changes nothing.
    let (s, _) =
        call(&c, 2, &Cred::Token(token.clone()), "DELETE", &format!("/v1/tokens/{token}"), None).await;
    assert_eq!(s, 204);
    let (s, b) = call(&c, 1, &Cred::Token(token.clone()), "GET", "/v1/keys", None).await;
    assert_eq!((s, faultstring(&b)), (StatusCode::UNAUTHORIZED, "Unauthorized"));
    let (s, _) =
        call(&c, 2, &Cred::Token(fresh.clone()), "DELETE", &format!("/v1/tokens/{fresh}"), None).await;
    assert_eq!(s, 204);
    let body = json!({"name": "dave-key", "value": "after revoke", "scope": "user"});
    let (s, b) = call(&c, 3, &Cred::Token(fresh.clone()), "PUT", "/v1/keys/dave-key", Some(body)).await;
    assert_eq!((s, faultstring(&b)), (StatusCode::UNAUTHORIZED, "Unauthorized"));
    let (_, b) = admin(&c, "GET", "/v1/keys/dave-key?scope=user&user=dave", None).await;
    assert_eq!(b["value"], "v", "the refused write changed nothing");
    // Tokens also come from the API listener under /auth/v1, and work in the query and cookie.
    let resp = c
        .anon()
        .post(format!("{}/auth/v1/tokens", c.url(2)))
        .basic_auth("dave", Some("dave-password"))
        .json(&json!({"ttl": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let tok: Value = resp.json().await.unwrap();
    assert_eq!(tok["user"], "dave");
    assert_eq!(tok["token"].as_str().unwrap().len(), 32);
    assert!(tok["expiry"].as_str().unwrap().ends_with('Z'));
    let t = tok["token"].as_str().unwrap();
    let (s, _) = call(&c, 3, &Cred::None, "GET", &format!("/v1/keys?x-auth-token={t}"), None).await;
    assert_eq!(s, 200);
    let s = c
        .anon()
        .get(format!("{}/v1/keys", c.url(1)))
        .header("cookie", format!("auth-token={t}"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_logins_are_refused_and_a_guesser_is_slowed_without_blocking_others() {
    let opts = ClusterOptions { node_args: vec!["--login-burst".into(), "3".into()], ..Default::default() };
    let c = TestCluster::start_with(3, opts).await;
    create_user(&c, "erin", "user").await;
    let tokens = |node: usize| format!("http://{}/tokens", c.node(node).auth);
    // Wrong password, unknown user, malformed or missing Basic header: 401, StackStorm's message.
    for rb in [
        c.anon().post(tokens(1)).basic_auth("erin", Some("wrong")),
        c.anon().post(tokens(1)).basic_auth("nobody", Some("x")),
        c.anon().post(tokens(1)).header("authorization", "Basic !!!notbase64"),
        c.anon().post(tokens(1)).header("authorization", "Bearer abc"),
        c.anon().post(tokens(1)),
    ] {
        let resp = rb.json(&json!({})).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let b: Value = resp.json().await.unwrap();
        assert_eq!(faultstring(&b), "Invalid or missing credentials");
    }
    // A TTL above the maximum, and a non-positive one.
    let resp = c
        .anon()
        .post(tokens(2))
        .basic_auth("erin", Some("erin-password"))
        .json(&json!({"ttl": 90000}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        faultstring(&resp.json().await.unwrap()),
        "TTL specified 90000 is greater than max allowed 86400."
    );
    let resp = c
        .anon()
        .post(tokens(2))
        .basic_auth("erin", Some("erin-password"))
        .json(&json!({"ttl": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Two more failures for erin on node 1 (three in all) lock erin out there: 429 even with the
    // right password, while another user logs in on the same node.
    for _ in 0..2 {
        let resp =
            c.anon().post(tokens(1)).basic_auth("erin", Some("wrong")).json(&json!({})).send().await.unwrap();
        assert_eq!(resp.status(), 401);
    }
    let resp = c
        .anon()
        .post(tokens(1))
        .basic_auth("erin", Some("erin-password"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(faultstring(&resp.json().await.unwrap())
        .starts_with("Too many failed login attempts for user \"erin\""));
    assert!(c.login(1, ADMIN_USER, ADMIN_PASSWORD, None).await.is_ok(), "other users are not blocked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_users_and_name_tricks() {
    let c = TestCluster::start(3).await;
    for u in ["alice", "alice2"] {
        create_user(&c, u, "user").await;
    }
    let alice = Cred::Token(login(&c, 1, "alice", None).await);
    let alice2 = Cred::Token(login(&c, 2, "alice2", None).await);

    // An API key is shown once; afterwards only its (masked) hash.
    let (s, k) =
        call(&c, 2, &alice, "POST", "/v1/apikeys", Some(json!({"metadata": {"used_by": "ci"}}))).await;
    assert_eq!(s, 201, "{k}");
    let key = k["key"].as_str().unwrap().to_string();
    let (s, b) = call(&c, 3, &Cred::ApiKey(key.clone()), "GET", "/v1/user", None).await;
    assert_eq!(
        (s, b["username"].as_str(), b["authentication"]["method"].as_str()),
        (StatusCode::OK, Some("alice"), Some("API key"))
    );
    let (s, b) = call(&c, 3, &Cred::None, "GET", &format!("/v1/keys?st2-api-key={key}"), None).await;
    assert_eq!(s, 200, "{b}");
    let (_, list) = call(&c, 1, &alice, "GET", "/v1/apikeys", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["key_hash"], "********");
    assert!(!list.to_string().contains(&key));
    // Only admins create keys for someone else (StackStorm issue #6380).
    let (s, _) = call(&c, 1, &alice, "POST", "/v1/apikeys", Some(json!({"user": "alice2"}))).await;
    assert_eq!(s, 403);
    // alice2 cannot see, disable or delete alice's key.
    let id = k["id"].as_str().unwrap();
    for (m, body) in [("GET", None), ("PUT", Some(json!({"enabled": false}))), ("DELETE", None)] {
        let (s, _) = call(&c, 1, &alice2, m, &format!("/v1/apikeys/{id}"), body).await;
        assert_eq!(s, 404, "alice2 {m} alice's key");
    }
    // An unknown key is refused with StackStorm's message naming its hash.
    let (s, b) = call(&c, 1, &Cred::ApiKey("no-such-key".into()), "GET", "/v1/keys", None).await;
    assert_eq!(s, 401);
    assert!(faultstring(&b).starts_with("Unauthorized - ApiKey with key_hash="), "{b}");
    let (s, _) = call(&c, 1, &alice, "DELETE", &format!("/v1/apikeys/{id}"), None).await;
    assert_eq!(s, 204);
    let (s, _) = call(&c, 2, &Cred::ApiKey(key), "GET", "/v1/keys", None).await;
    assert_eq!(s, 401, "a deleted key stops working on every node");

    // User names that prefix each other never share keys.
    let (s, _) = call(
        &c,
        1,
        &alice,
        "PUT",
        "/v1/keys/token",
        Some(json!({"name": "token", "value": "alice's", "scope": "user"})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, mine) = call(&c, 3, &alice2, "GET", "/v1/keys?scope=user", None).await;
    assert_eq!(mine, json!([]));
    let (s, _) = call(&c, 3, &alice2, "GET", "/v1/keys/token?scope=user", None).await;
    assert_eq!(s, 404);
    // Encoded separators and dot segments reach no one else's key.
    for path in [
        "/v1/keys/alice%3Atoken",
        "/v1/keys/alice:token",
        "/v1/keys/..%2Falice%3Atoken?scope=user",
        "/v1/keys/%2E%2E?scope=user",
    ] {
        let (s, b) = call(&c, 3, &alice2, "GET", path, None).await;
        assert!(s == 404 || s == 400, "{path} -> {s} {b}");
        assert!(!b.to_string().contains("alice's"), "{path} leaked {b}");
    }

    // Users change their own password, not someone else's; roles are the admin's business.
    let (s, _) =
        call(&c, 1, &alice, "PUT", "/v1/users/alice", Some(json!({"password": "a-new-password"}))).await;
    assert_eq!(s, 200);
    assert!(c.login(2, "alice", "a-new-password", None).await.is_ok());
    assert!(c.login(2, "alice", "alice-password", None).await.is_err());
    let (s, _) =
        call(&c, 1, &alice, "PUT", "/v1/users/alice2", Some(json!({"password": "hijacked-password"}))).await;
    assert_eq!(s, 403);
    let (s, _) = call(&c, 1, &alice, "PUT", "/v1/users/alice", Some(json!({"role": "admin"}))).await;
    assert_eq!(s, 403);
    let (s, _) =
        admin(&c, "POST", "/v1/users", Some(json!({"name": "alice", "password": "whatever-pass"}))).await;
    assert_eq!(s, 409);
    let (s, b) =
        admin(&c, "POST", "/v1/users", Some(json!({"name": "ev:il", "password": "whatever-pass"}))).await;
    assert_eq!(s, 400, "{b}");
    // A deleted user's token stops working.
    let (s, _) = admin(&c, "DELETE", "/v1/users/alice2", None).await;
    assert_eq!(s, 204);
    let (s, _) = call(&c, 2, &alice2, "GET", "/v1/keys", None).await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_wants_the_cluster_secret_and_the_api_port_serves_no_raft() {
    let c = TestCluster::start(3).await;
    let peer = format!("http://{}", c.node(2).peer);
    for path in ["/raft/append", "/raft/vote", "/raft/write", "/raft/read_index"] {
        let resp = c.anon().post(format!("{peer}{path}")).body(vec![0u8; 8]).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path} without the secret");
        let resp = c
            .anon()
            .post(format!("{peer}{path}"))
            .header("x-st2kv-peer-secret", "guess")
            .body(vec![0u8; 8])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path} with a wrong secret");
        let (s, _) = call(&c, 2, &Cred::Token(c.admin_token.clone()), "POST", path, None).await;
        assert_eq!(s, 404, "{path} on the API port");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_refuses_to_start_without_admin_credentials_or_a_cluster_secret() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(st2kv_tests::bin("st2kv-node"))
            .arg("--data-dir")
            .arg(dir.path().join("n"))
            .args(["--api-bind", "127.0.0.1:0", "--auth-bind", "127.0.0.1:0", "--peer-bind", "127.0.0.1:0"])
            .args(extra)
            .env_remove("ST2KV_ADMIN_PASSWORD")
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no admin credentials were given") && err.contains("--insecure-no-auth"), "{err}");
    let out = run(&[
        "--id",
        "1",
        "--initial-cluster",
        "1=127.0.0.1:1,2=127.0.0.2:1",
        "--admin-password",
        "x-password-1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a cluster secret"), "{err}");
}
