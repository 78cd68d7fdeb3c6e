//! The faults that take down one member of a replicated setup, under the same steady load as
//! every fault:
//! - cluster node kill / restart: on a 3-node RabbitMQ cluster (every quorum queue with 3
//!   replicas), the node leading the work queue is SIGKILLed (or stopped gracefully), stays
//!   down for a while, and is started again; the roles, spread over the nodes, move to a live
//!   node by themselves.
//! - Sentinel failover: Redis under three Sentinels with one replica; the master is SIGKILLed
//!   while Dify calls hold leases, and the Sentinels promote the replica. What the replica had
//!   not yet received from the master (replication is asynchronous) is measured: idempotency
//!   records, ingress "seen" keys, delivered markers, and the target's rate-limit state.
use crate::account::Mark;
use crate::env::Isolated;
use crate::pipeline::Pipeline;
use crate::scenarios::{mark, until};
use deadpool_redis::redis;
use shared::topology::Stage;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the struck node stays down.
const NODE_DOWN: Duration = Duration::from_secs(5);

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("join")
}

/// Which node leads `queue`, asked of a running node.
async fn leader(env: &Arc<Isolated>, queue: &str) -> Option<usize> {
    let (e, q) = (env.clone(), queue.to_owned());
    blocking(move || {
        let asker = e.nodes.iter().find(|n| n.is_running())?;
        let name = asker.queue_leader(&q)?;
        e.nodes.iter().position(|n| n.name == name)
    })
    .await
}

/// Kills (`graceful`: stops) the node leading the work queue, keeps it down for a while under
/// load, and starts it again.
pub async fn cluster_node(
    p: &Pipeline,
    env: &Arc<Isolated>,
    marks: &mut Vec<Mark>,
    graceful: bool,
) {
    let work = p.topology().stage_queue(Stage::Work);
    let i = leader(env, &work)
        .await
        .expect("the work queue's leader (rabbitmqctl list_queues)");
    let name = env.nodes[i].name.clone();
    let e = env.clone();
    if graceful {
        mark(
            marks,
            format!(
                "node {} ({name}, leading the work queue) stopping (SIGTERM)",
                i + 1
            ),
        );
        blocking(move || e.stop_node(i)).await;
        mark(marks, format!("node {} stopped", i + 1));
    } else {
        blocking(move || e.kill_node(i)).await;
        mark(
            marks,
            format!(
                "node {} ({name}, leading the work queue) killed (SIGKILL to its VM)",
                i + 1
            ),
        );
    }
    let down = Instant::now();
    if let Some(now) = leader(env, &work).await {
        mark(
            marks,
            format!("the work queue is now led by node {}", now + 1),
        );
    }
    tokio::time::sleep(NODE_DOWN.saturating_sub(down.elapsed())).await;
    let e = env.clone();
    blocking(move || e.start_node(i))
        .await
        .expect("the node starts again");
    mark(
        marks,
        format!("node {} started again (same data dir)", i + 1),
    );
    let e = env.clone();
    let n = env.nodes.len();
    until(
        "the node to rejoin the cluster",
        Duration::from_secs(60),
        || {
            let e = e.clone();
            async move { blocking(move || e.nodes[i].running_nodes() == Some(n)).await }
        },
    )
    .await;
    mark(
        marks,
        format!("node {} back in the cluster ({n} running)", i + 1),
    );
    p.wait_ready(Duration::from_secs(60)).await;
    mark(marks, "every role connected");
}

/// What the old master held just before the kill, and what the new one holds after.
struct Snapshot {
    /// Key family (`idem`, `seen`, `delivered`) -> keys.
    families: BTreeMap<&'static str, HashSet<String>>,
    /// The target's GCRA state: limit -> theoretical arrival time (µs, Redis clock).
    rate: BTreeMap<String, i64>,
}

const FAMILIES: [&str; 3] = ["idem", "seen", "delivered"];

async fn snapshot(url: &str, prefix: &str, target: &str) -> Option<Snapshot> {
    let client = redis::Client::open(url).ok()?;
    let mut c = client.get_multiplexed_async_connection().await.ok()?;
    let mut families = BTreeMap::new();
    for family in FAMILIES {
        let pattern = format!("{prefix}:{family}:*");
        let mut keys = HashSet::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .ok()?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        families.insert(family, keys);
    }
    let rate: BTreeMap<String, i64> = redis::cmd("HGETALL")
        .arg(format!("{prefix}:rate:{target}"))
        .query_async(&mut c)
        .await
        .ok()?;
    Some(Snapshot { families, rate })
}

/// The port the Sentinels name as master now.
fn master_port(env: &Isolated) -> Option<u16> {
    env.sentinels.iter().find_map(|s| {
        let reply = s.command(&[
            "SENTINEL",
            "get-master-addr-by-name",
            crate::env::MASTER_NAME,
        ])?;
        reply.split_whitespace().nth(1)?.parse().ok()
    })
}

/// SIGKILLs the Redis master while Dify calls hold leases and measures what the promoted
/// replica lacks.
pub async fn sentinel_failover(p: &Pipeline, env: &Arc<Isolated>, marks: &mut Vec<Mark>) {
    let dify = p.dify.clone();
    until("3 Dify calls in flight", Duration::from_secs(30), || {
        let d = dify.clone();
        async move { d.in_flight() >= 3 }
    })
    .await;
    let prefix = p.config.redis.prefix.clone();
    let target = p.config.targets[0].id.clone();
    let before = snapshot(&env.redis_url(), &prefix, &target)
        .await
        .expect("the master's keys before the kill");
    let calls = p.dify.in_flight();
    let e = env.clone();
    blocking(move || e.redis.kill()).await;
    let killed = Instant::now();
    mark(
        marks,
        format!("redis master killed (SIGKILL) with {calls} Dify calls in flight"),
    );
    // The replica takes no writes until it is promoted, and gets nothing from a dead master:
    // what it holds now is what the new master starts with.
    let replica = env.replica.as_ref().expect("a replica").port;
    let after = snapshot(&format!("redis://127.0.0.1:{replica}"), &prefix, &target)
        .await
        .expect("the replica's keys");
    let old = env.redis_port;
    let e = env.clone();
    until(
        "the Sentinels to promote the replica",
        Duration::from_secs(60),
        || {
            let e = e.clone();
            async move { blocking(move || master_port(&e).is_some_and(|p| p != old)).await }
        },
    )
    .await;
    let new_port = master_port(env).expect("the new master");
    assert_eq!(new_port, replica, "the Sentinels promoted the replica");
    mark(
        marks,
        format!(
            "the Sentinels promoted the replica on :{new_port} ({:.1} s after the kill)",
            killed.elapsed().as_secs_f64()
        ),
    );
    mark(marks, compare(&before, &after));
}

/// One line: how many of the old master's keys of each family the new master lacks, and how
/// far its rate-limit state is behind.
fn compare(before: &Snapshot, after: &Snapshot) -> String {
    let mut parts = Vec::new();
    for family in FAMILIES {
        let (b, a) = (&before.families[family], &after.families[family]);
        let missing = b.difference(a).count();
        parts.push(format!(
            "{family}: {} of {} kept",
            b.len() - missing,
            b.len()
        ));
    }
    let behind: Vec<String> = before
        .rate
        .iter()
        .map(|(limit, tat)| {
            let now = after.rate.get(limit).copied().unwrap_or(0);
            format!("{limit} {} ms behind", (tat - now).max(0) / 1000)
        })
        .collect();
    format!(
        "on the new master — {}; rate-limit state: {}",
        parts.join(", "),
        if behind.is_empty() {
            "none held".to_owned()
        } else {
            behind.join(", ")
        }
    )
}
