//! Jepsen-style faults against a 3-node cluster: clients read, write and delete a few keys
//! through random nodes while a nemesis isolates the leader, cuts a follower off, kills a node
//! with SIGKILL and restarts it, and pauses the leader (SIGSTOP) for several election timeouts.
//! Every operation is recorded with its invocation and completion time and checked for
//! linearizability key by key; afterwards every node converges to the same state.
//!
//! The short profile here (fault cycles for about a minute, every family in each cycle) runs in
//! the test suite; `NEMESIS_SECONDS=600 cargo test -p st2kv-tests --test nemesis -- --nocapture`
//! soaks longer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use st2kv_api::{ClientError, DeleteOptions, GetOptions, KeyValuePairRequest};
use st2kv_tests::linearizability::{check, History, OpKind, OpResult};
use st2kv_tests::{ClusterOptions, TestCluster};

const KEYS: usize = 4;
const CLIENTS: usize = 6;

/// What an error says about whether the operation took effect.
fn classify(e: &ClientError) -> OpResult {
    match e {
        // Refused before anything was sent: it cannot have happened.
        ClientError::Unreachable(_) => OpResult::Failed,
        ClientError::Api { status, .. } if (400..500).contains(status) => OpResult::Failed,
        // 503/504, a broken connection, a timeout: it may or may not have happened.
        _ => OpResult::Unknown,
    }
}

async fn client_loop(id: usize, urls: Vec<String>, token: String, history: History, stop: Arc<AtomicBool>) {
    let clients: Vec<st2kv_api::Client> =
        urls.iter().map(|u| st2kv_api::Client::new(&[u]).unwrap().with_token(Some(token.clone()))).collect();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (node, key, dice) = {
            let mut rng = rand::thread_rng();
            (rng.gen_range(0..clients.len()), format!("k{}", rng.gen_range(0..KEYS)), rng.gen_range(0..10))
        };
        let keys = clients[node].keys();
        if dice < 5 {
            let op = history.invoke(id, &key, OpKind::Read);
            match keys.get(&key, &GetOptions::default()).await {
                Ok(kv) => op.complete(OpResult::ReadOk(Some(kv.value))),
                Err(e) if e.is_not_found() => op.complete(OpResult::ReadOk(None)),
                Err(e) => op.complete(classify(&e)),
            }
        } else if dice < 9 {
            let value = format!("c{id}-{n}");
            let op = history.invoke(id, &key, OpKind::Write(Some(value.clone())));
            match keys.set(&KeyValuePairRequest::new(&key, &value)).await {
                Ok(_) => op.complete(OpResult::WriteOk),
                Err(e) => op.complete(classify(&e)),
            }
        } else {
            let op = history.invoke(id, &key, OpKind::Write(None));
            match keys.delete(&key, &DeleteOptions::default()).await {
                // 404: the key was absent when the delete was ordered; either way it is now.
                Ok(()) => op.complete(OpResult::WriteOk),
                Err(e) if e.is_not_found() => op.complete(OpResult::WriteOk),
                Err(e) => op.complete(classify(&e)),
            }
        }
        n += 1;
    }
}

/// A linearizable read of every key through each of `nodes`, recorded in `history`, once the
/// faults are over: the checker then also judges what the cluster finally holds.
async fn final_reads(c: &TestCluster, history: &History, nodes: impl IntoIterator<Item = usize>) {
    for i in nodes {
        let client = c.client(i);
        for k in 0..KEYS {
            let key = format!("k{k}");
            let op = history.invoke(100 + i, &key, OpKind::Read);
            match client.keys().get(&key, &GetOptions::default()).await {
                Ok(kv) => op.complete(OpResult::ReadOk(Some(kv.value))),
                Err(e) if e.is_not_found() => op.complete(OpResult::ReadOk(None)),
                Err(e) => panic!("final read of {key} on node {i} failed after the faults: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_stay_linearizable_under_partitions_crashes_and_pauses() {
    let seconds: u64 = std::env::var("NEMESIS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let mut c = TestCluster::start_with(3, ClusterOptions { record_peers: true, ..Default::default() }).await;
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = (1..=3).map(|i| c.url(i)).collect();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client_loop(id, urls.clone(), c.admin_token.clone(), history.clone(), stop.clone()))
        })
        .collect();

    let started = Instant::now();
    let mut cycles = 0;
    loop {
        cycles += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
        // 1. The leader is isolated from both followers (a minority of one); a new leader is
        //    elected on the majority side, the old one cannot commit or serve linearizable reads.
        let leader = c.wait_for_leader(Duration::from_secs(20)).await;
        let others: Vec<usize> = (1..=3).filter(|i| *i != leader).collect();
        eprintln!("[nemesis] cycle {cycles}: isolating leader {leader}");
        c.partition(&[&[leader], &others]);
        tokio::time::sleep(Duration::from_secs(4)).await;
        c.heal();
        tokio::time::sleep(Duration::from_secs(2)).await;
        // 2. A follower is cut off (majority/minority), then rejoins.
        let leader = c.wait_for_leader(Duration::from_secs(20)).await;
        let follower = (1..=3).find(|i| *i != leader).unwrap();
        let rest: Vec<usize> = (1..=3).filter(|i| *i != follower).collect();
        eprintln!("[nemesis] cutting follower {follower} off");
        c.partition(&[&[follower], &rest]);
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.heal();
        // 3. SIGKILL a random node, restart it.
        let victim = rand::thread_rng().gen_range(1..=3);
        eprintln!("[nemesis] kill -9 node {victim}");
        c.kill(victim);
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.restart(victim).await;
        // 4. Pause the leader for several election timeouts.
        let leader = c.wait_for_leader(Duration::from_secs(20)).await;
        eprintln!("[nemesis] SIGSTOP leader {leader}");
        c.pause(leader);
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.resume(leader);
        tokio::time::sleep(Duration::from_secs(2)).await;
        if started.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    // After healing every node converges, and a final read of every key through every node is
    // part of the history the checker judges.
    c.wait_converged(Duration::from_secs(30)).await;
    final_reads(&c, &history, 1..=3).await;
    let ops = history.ops();
    let acked = ops.iter().filter(|o| o.result == OpResult::WriteOk).count();
    let unknown = ops.iter().filter(|o| o.result == OpResult::Unknown).count();
    assert!(acked > 0, "the clients made progress through the faults ({acked} acknowledged writes)");
    let verdict = check(&ops);
    eprintln!(
        "[nemesis] {} ops ({acked} acknowledged writes, {unknown} unknown outcomes): {verdict}",
        ops.len()
    );
    assert!(verdict.ok, "not linearizable:\n{verdict}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_stay_linearizable_while_membership_goes_from_three_to_five_and_back() {
    let mut c = TestCluster::start(3).await;
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = (1..=3).map(|i| c.url(i)).collect();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client_loop(id, urls.clone(), c.admin_token.clone(), history.clone(), stop.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("[nemesis] growing to five");
    c.add_joining_node(1).await;
    c.add_joining_node(2).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.voters(1).await.len() != 5 {
        assert!(Instant::now() < deadline, "never reached five voters");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Shrink back to three, the leader first, then one more of the original nodes.
    let leader = c.wait_for_leader(Duration::from_secs(10)).await;
    let removed = [leader, (1..=3).find(|i| *i != leader).unwrap()];
    for victim in removed {
        let via = (1..=5).find(|i| !removed.contains(i)).unwrap();
        eprintln!("[nemesis] removing node {victim} through node {via}");
        let r = c.http().delete(format!("{}/v1/cluster/members/{victim}", c.url(via))).send().await.unwrap();
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
        c.kill(victim);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    c.wait_converged(Duration::from_secs(30)).await;
    let survivors: Vec<usize> = (1..=5).filter(|i| !removed.contains(i)).collect();
    final_reads(&c, &history, survivors).await;
    let ops = history.ops();
    let verdict = check(&ops);
    eprintln!("[nemesis] membership: {} ops: {verdict}", ops.len());
    assert!(ops.iter().any(|o| o.result == OpResult::WriteOk), "the clients made progress");
    assert!(verdict.ok, "not linearizable:\n{verdict}");
}
