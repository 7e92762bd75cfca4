//! Killing every node at once with SIGKILL and restarting them keeps every acknowledged write,
//! including those acknowledged in the last 500 ms (sled's own background flush runs every
//! 500 ms, so this passes by fsync before acknowledgement, not by luck).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use st2kv_api::{GetOptions, KeyValuePairRequest};
use st2kv_tests::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_all_nodes_at_once_keeps_every_acknowledged_write() {
    let mut cluster = TestCluster::start(3).await;
    let acked: Arc<Mutex<BTreeMap<String, (String, Instant)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let client = cluster.client(w % 3 + 1);
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..100_000u32 {
                let (name, value) = (format!("durable-{w}-{n}"), format!("value-{w}-{n}"));
                match client.keys().set(&KeyValuePairRequest::new(&name, &value)).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(name, (value, Instant::now()));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = Instant::now();
    cluster.kill_all();
    for w in writers {
        let _ = w.await;
    }

    let acked = acked.lock().unwrap().clone();
    let recent =
        acked.values().filter(|(_, t)| killed_at.duration_since(*t) < Duration::from_millis(500)).count();
    assert!(recent > 0, "the test must have writes acknowledged within 500 ms of the kill");

    for i in 1..=3 {
        cluster.restart(i).await;
    }
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    for i in 1..=3 {
        let client = cluster.client(i);
        let keys = client.keys();
        for (name, (value, _)) in &acked {
            let got = keys.get(name, &GetOptions::default()).await.unwrap_or_else(|e| {
                panic!("node {i} lost acknowledged write {name} after kill -9 of all: {e}")
            });
            assert_eq!(&got.value, value);
        }
    }
    eprintln!(
        "{} acknowledged writes survived, {recent} of them acknowledged within 500 ms of the kill",
        acked.len()
    );
}
