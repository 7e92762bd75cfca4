//! Killing the leader with SIGKILL during a stream of writes loses no acknowledged write, and
//! writes resume through the surviving nodes once a new leader is elected.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use st2kv_api::{GetOptions, KeyValuePairRequest};
use st2kv_tests::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_stream_loses_no_acknowledged_write() {
    let mut cluster = TestCluster::start(3).await;
    let acked: Arc<Mutex<BTreeMap<String, (String, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..4 {
        let client = cluster.client_all();
        let acked = acked.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 5_000 {
                let (name, value) = (format!("stream-{w}-{n}"), format!("v{n}"));
                if client.keys().set(&KeyValuePairRequest::new(&name, &value)).await.is_ok() {
                    acked.lock().unwrap().insert(name, (value, Instant::now()));
                }
                n += 1;
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let old_leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let acked_before_kill = acked.lock().unwrap().len();
    let killed_at = Instant::now();
    cluster.kill(old_leader);

    let new_leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    assert_ne!(new_leader, old_leader);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let after_kill = acked.values().filter(|(_, t)| *t > killed_at).count();
    assert!(acked_before_kill > 0, "no write was acknowledged before the kill");
    assert!(after_kill > 0, "writes did not resume after the leader was killed");

    for i in (1..=3).filter(|i| *i != old_leader) {
        let client = cluster.client(i);
        let keys = client.keys();
        for (name, (value, _)) in &acked {
            let got = keys.get(name, &GetOptions::default()).await.unwrap_or_else(|e| {
                panic!("node {i} lost acknowledged write {name}: {e}");
            });
            assert_eq!(&got.value, value);
        }
    }

    // The old leader comes back as a follower and converges with the others.
    cluster.restart(old_leader).await;
    cluster.wait_converged(Duration::from_secs(30)).await;
}
