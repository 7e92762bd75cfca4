//! Operating the cluster: growing it from 3 to 5 nodes and shrinking it back under load, removing
//! the leader, health and Prometheus metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use st2kv_api::{GetOptions, KeyValuePairRequest};
use st2kv_tests::TestCluster;

async fn wait_voters(c: &TestCluster, node: usize, want: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut v = c.voters(node).await;
        v.sort();
        if v == want {
            return;
        }
        assert!(Instant::now() < deadline, "voters stayed {v:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_grows_to_five_and_shrinks_to_three_under_load_without_losing_a_write() {
    let mut c = TestCluster::start(3).await;
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, acked, stop) = (c.client_all(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (k, v) = (format!("load-{n}"), format!("v{n}"));
                if client.keys().set(&KeyValuePairRequest::new(&k, &v)).await.is_ok() {
                    acked.lock().unwrap().insert(k, v);
                }
                n += 1;
            }
        })
    };
    // Node 4 joins by itself (--join); node 5 is started the same way.
    let n4 = c.add_joining_node(2).await;
    wait_voters(&c, 1, &[1, 2, 3, 4]).await;
    let n5 = c.add_joining_node(3).await;
    wait_voters(&c, 1, &[1, 2, 3, 4, 5]).await;
    assert_eq!((n4, n5), (4, 5));

    // Shrink back to three, removing the leader first, through the admin API of another node.
    let leader = c.wait_for_leader(Duration::from_secs(10)).await;
    let other = (1..=5).find(|i| *i != leader).unwrap();
    let r = c.http().delete(format!("{}/v1/cluster/members/{leader}", c.url(other))).send().await.unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    c.kill(leader);
    let survivors: Vec<usize> = (1..=5).filter(|i| *i != leader).collect();
    let second = survivors[0];
    let via = survivors[1];
    let r = c.http().delete(format!("{}/v1/cluster/members/{second}", c.url(via))).send().await.unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    c.kill(second);
    let mut want: Vec<u64> = survivors[1..].iter().map(|i| *i as u64).collect();
    want.sort();
    wait_voters(&c, via, &want).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "the writer made progress");
    // The shrunk cluster takes writes.
    c.client(via).keys().set(&KeyValuePairRequest::new("after-shrink", "ok")).await.unwrap();
    c.wait_converged(Duration::from_secs(30)).await;
    for i in &survivors[1..] {
        let client = c.client(*i);
        for (k, v) in &acked {
            let got = client
                .keys()
                .get(k, &GetOptions::default())
                .await
                .unwrap_or_else(|e| panic!("node {i} lost {k}: {e}"));
            assert_eq!(&got.value, v);
        }
    }
    // Bad membership requests are refused clearly.
    let r = c.http().delete(format!("{}/v1/cluster/members/42", c.url(via))).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .http()
        .post(format!("{}/v1/cluster/members", c.url(via)))
        .json(&json!({"id": 9, "peer_addr": "nohost"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_tell_an_operator_what_is_going_on() {
    let c = TestCluster::start(3).await;
    let follower = c.follower().await;
    for i in 0..20 {
        c.client(follower).keys().set(&KeyValuePairRequest::new(format!("m{i}"), "v")).await.unwrap();
    }
    let _ = c.anon().get(format!("{}/v1/keys", c.url(follower))).send().await.unwrap(); // a 401
    for i in 1..=3 {
        let r = c.anon().get(format!("{}/v1/health/ready", c.url(i))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = c.anon().get(format!("{}/v1/health/live", c.url(i))).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let text =
        c.anon().get(format!("{}/metrics", c.url(follower))).send().await.unwrap().text().await.unwrap();
    for series in [
        "st2kv_raft_state{state=\"Follower\"} 1",
        "st2kv_raft_term ",
        "st2kv_raft_leader ",
        "st2kv_raft_applied_index ",
        "st2kv_raft_log_entries ",
        "st2kv_raft_snapshot_age_seconds ",
        "st2kv_proposals_total ",
        "st2kv_proposal_seconds_bucket",
        "st2kv_forwarded_batches_total ",
        "st2kv_auth_failures_total 1",
        "st2kv_http_requests_total{method=\"PUT\",route=\"/v1/keys/{name}\",status=\"200\"} 20",
    ] {
        assert!(text.contains(series), "missing {series:?} in\n{text}");
    }
    let forwarded: f64 = text
        .lines()
        .find(|l| l.starts_with("st2kv_forwarded_batches_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(forwarded >= 1.0, "a follower forwards its writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_fresh_cluster_with_identical_keys_and_ciphertext_only() {
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("ring.json");
    st2kv_api::keyring::Keyring::generate().save(&ring, false).unwrap();
    let opts = st2kv_tests::ClusterOptions { keyring: Some(ring.clone()), ..Default::default() };
    let c = TestCluster::start_with(3, opts).await;
    for i in 0..50 {
        c.client(i % 3 + 1)
            .keys()
            .set(&KeyValuePairRequest::new(format!("k{i:02}"), format!("v{i}")))
            .await
            .unwrap();
    }
    let mut secret = KeyValuePairRequest::new("api_token", "BACKUP-CANARY-S3CRET");
    secret.secret = Some(true);
    c.client(2).keys().set(&secret).await.unwrap();

    // `st2kv snapshot save` through a follower.
    let home = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snap");
    let (url, token) = (c.url(c.follower().await), c.admin_token.clone());
    let out = st2kv_tests::st2kv(
        home.path(),
        &["--url", &url, "snapshot", "save", &file.display().to_string()],
        &[("ST2_AUTH_TOKEN", token.as_str())],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        memchr::memmem::find(&bytes, b"BACKUP-CANARY-S3CRET").is_none(),
        "secrets stay ciphertext in a backup"
    );
    let listing = |c: &TestCluster| {
        let client = c.client(1);
        async move {
            let opts = st2kv_api::ListOptions { limit: Some(-1), ..Default::default() };
            let mut l: Vec<(String, String, bool)> = client
                .keys()
                .list(&opts)
                .await
                .unwrap()
                .into_iter()
                .map(|k| (k.name, k.value, k.secret))
                .collect();
            l.sort();
            l
        }
    };
    let before = listing(&c).await;
    assert_eq!(before.len(), 51);

    // A corrupted copy is refused at start.
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let bad_file = dir.path().join("bad.snap");
    std::fs::write(&bad_file, &bad).unwrap();
    let out = std::process::Command::new(st2kv_tests::bin("st2kv-node"))
        .arg("--data-dir")
        .arg(dir.path().join("refused"))
        .args([
            "--api-bind",
            "127.0.0.1:0",
            "--auth-bind",
            "127.0.0.1:0",
            "--peer-bind",
            "127.0.0.1:0",
            "--insecure-no-auth",
        ])
        .arg("--restore-from")
        .arg(&bad_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"));

    // `st2kv-node restore` seeds an empty data dir, and refuses one that holds a store.
    let seeded = dir.path().join("seeded");
    let restore = |target: &std::path::Path| {
        std::process::Command::new(st2kv_tests::bin("st2kv-node"))
            .arg("restore")
            .arg(&file)
            .arg("--data-dir")
            .arg(target)
            .output()
            .unwrap()
    };
    let out = restore(&seeded);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = restore(&seeded);
    assert!(!out.status.success(), "a second restore into the same dir is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds data"));

    // A fresh 3-node cluster seeded from the backup holds exactly the same keys.
    let opts = st2kv_tests::ClusterOptions {
        keyring: Some(ring),
        node_args: vec!["--restore-from".into(), file.display().to_string()],
        ..Default::default()
    };
    let restored = TestCluster::start_with(3, opts).await;
    assert_eq!(listing(&restored).await, before);
    let plain = restored
        .client(3)
        .keys()
        .get("api_token", &GetOptions { decrypt: true, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(plain.value, "BACKUP-CANARY-S3CRET");
    restored.wait_converged(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_fails_no_client_operation() {
    let mut c = TestCluster::start(3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let writer = {
        let (client, stop, failures, acked) = (c.client_all(), stop.clone(), failures.clone(), acked.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (k, v) = (format!("roll-{n}"), format!("v{n}"));
                match client.keys().set(&KeyValuePairRequest::new(&k, &v)).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(k, v);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{k}: {e}")),
                }
                n += 1;
            }
        })
    };
    for i in 1..=3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(c.stop(i), "node {i} stops cleanly");
        c.restart(i).await;
        c.wait_for_leader(Duration::from_secs(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed operations: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "the writer made progress");
    let client = c.client(2);
    for (k, v) in &acked {
        assert_eq!(&client.keys().get(k, &GetOptions::default()).await.unwrap().value, v);
    }
}
