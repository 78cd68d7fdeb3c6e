//! The faults, each under steady load (5 signed events per second from before the fault
//! until a few seconds after recovery), each on a fresh isolated broker and Redis: warm up until
//! answers flow, strike, recover, keep the load on a little longer, stop the load, drain, and
//! hand everything observed to the accounting.
//!
//! How each fault is shaped, and why:
//! - worker kill: Dify takes 2 s per call in 10 stream events, so calls are in flight and each
//!   spends its first 200 ms before revealing ids (window 2 is real, not theoretical); the kill
//!   waits until at least 4 calls are in flight in the (only) worker, and a replacement starts at
//!   once, finding the dead worker's leases still held for up to 2 s.
//! - dispatcher kill: the receiver takes 1 s per request, the kill waits for at least 3
//!   deliveries in flight in the (only) dispatcher, and a replacement starts at once; the dead
//!   one's job locks lapse after 9 s (3 × the receiver timeout).
//! - broker restart: a graceful stop of the whole node (not just its app) and a start on the same
//!   Mnesia dir, with the roles left to reconnect by themselves; the ingress answers 503 in
//!   between and the load generator retries like a platform.
//! - broker crash: the same with SIGKILL to the node's VM: what was confirmed must survive
//!   without a clean shutdown (quorum queues write to disk before confirming).
//! - Redis restart: Redis is stopped while Dify calls (1 s) hold leases, stays down for 2 s, and
//!   comes back empty (no persistence): every idempotency record, lease, conversation and
//!   delivered marker is gone — the harshest Redis restart there is.
//! - receiver down and Dify down: 503 for 5 s, well inside the suite's retry schedules, so the
//!   expected end is "delivered", not "exhausted".
//! - poison: messages no producer of ours would write, published straight to the stage queues.
//! - crash loop: a readable event that crashes every worker that calls Dify for it (the suite
//!   SIGKILLs the worker as soon as the call reaches Dify, and starts a replacement at once, as
//!   a supervisor would); the broker's delivery limit is what should end it, as poison.
use crate::account::{account, Facts, Fault, Fed, Mark, Outcome};
use crate::env::{Isolated, Shape};
use crate::load::Load;
use crate::pipeline::{Pipeline, Tuning, SECRET};
use shared::topology::Stage;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events per second sent during every fault.
pub const RATE: u32 = 5;
/// Load kept on after recovery, so events sent right after the fault are in the count too.
const TAIL: Duration = Duration::from_secs(4);
/// How long a dependency stays down in the "for a while" faults.
const OUTAGE: Duration = Duration::from_secs(5);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the streams exist before the broker-crash fault strikes.
const STREAMS_SETTLED: Duration = Duration::from_secs(5);

fn tuning(fault: Fault) -> Tuning {
    let ms = Duration::from_millis;
    match fault {
        Fault::WorkerKill => Tuning {
            dify_latency: ms(2000),
            dify_chunks: 10,
            ..Default::default()
        },
        Fault::DispatcherKill => Tuning {
            dify_latency: ms(100),
            dify_chunks: 2,
            receiver_latency: ms(1000),
            ..Default::default()
        },
        Fault::RedisRestart => Tuning {
            dify_latency: ms(1000),
            dify_chunks: 5,
            ..Default::default()
        },
        Fault::CrashLoop => Tuning {
            // Long enough to kill the worker before the run reveals its ids (200 ms), so each
            // new owner calls again and crashes again, as a message that crashes it would.
            dify_latency: ms(2000),
            dify_chunks: 10,
            ..Default::default()
        },
        Fault::SentinelFailover => Tuning {
            dify_latency: ms(1000),
            dify_chunks: 5,
            // Below the load's 5/s, so that the limiter holds state (a backlog paces through it)
            // whose loss across the failover can be measured.
            target_rate: Some("4/s"),
            ..Default::default()
        },
        _ => Tuning::default(),
    }
}

fn shape(fault: Fault) -> Shape {
    match fault {
        Fault::ClusterNodeKill | Fault::ClusterNodeRestart => Shape {
            nodes: 3,
            ..Shape::default()
        },
        Fault::SentinelFailover => Shape {
            sentinel: true,
            ..Shape::default()
        },
        _ => Shape::default(),
    }
}

/// Polls `cond` until it holds; panics naming `what` after `timeout`.
pub async fn until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn mark(marks: &mut Vec<Mark>, what: impl Into<String>) {
    marks.push(Mark {
        what: what.into(),
        at: Instant::now(),
    });
}

/// Runs one fault from a fresh isolated broker and Redis to its accounting.
pub async fn run(fault: Fault) -> Outcome {
    let env = Arc::new(
        tokio::task::spawn_blocking(move || Isolated::start_shaped(shape(fault)))
            .await
            .expect("join")
            .expect("the isolated RabbitMQ node and Redis"),
    );
    let tuning = tuning(fault);
    let mut p = Pipeline::start(env.clone(), fault.name(), tuning).await;
    let started = Instant::now();
    let mut marks = vec![Mark {
        what: format!("load started, {RATE} events/s"),
        at: started,
    }];
    let load = Load::start(p.base(), SECRET, fault.name(), RATE);
    let receiver = p.receiver.clone();
    until("the first answers", Duration::from_secs(30), || {
        let r = receiver.clone();
        async move { r.accepted() >= 3 }
    })
    .await;
    mark(&mut marks, "answers flowing");
    let mut fed = Vec::new();
    strike(fault, &mut p, &env, &mut marks, &mut fed).await;
    tokio::time::sleep(TAIL).await;
    let sent = load.finish().await;
    mark(
        &mut marks,
        format!("load stopped after {} events", sent.len()),
    );
    let drain = p.drain(DRAIN_TIMEOUT).await;
    mark(
        &mut marks,
        if drain.settled {
            "drained: nothing queued or in flight"
        } else {
            "drain deadline passed"
        },
    );
    let facts = Facts {
        fault,
        started,
        sent,
        received: p.receiver.received(),
        calls: p.tap.calls(),
        letters: p.dead_letters().await,
        marks,
        fed,
        drain,
        receiver_latency: tuning.receiver_latency,
        role_counters: p.role_counters().await,
    };
    p.shutdown().await;
    // Stopping the node blocks for a moment: not on the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || drop(env)).await;
    account(facts)
}

async fn strike(
    fault: Fault,
    p: &mut Pipeline,
    env: &Arc<Isolated>,
    marks: &mut Vec<Mark>,
    fed: &mut Vec<Fed>,
) {
    const T: Duration = Duration::from_secs(30);
    match fault {
        Fault::WorkerKill => {
            let dify = p.dify.clone();
            let worker = &p.workers[0];
            until("4 Dify calls in flight in the worker", T, || {
                let d = dify.clone();
                async move { d.in_flight() >= 4 && worker.in_flight().await.unwrap_or(0) >= 4 }
            })
            .await;
            let (pid, calls) = (p.workers[0].pid(), p.dify.in_flight());
            p.workers[0].kill9();
            mark(
                marks,
                format!("worker killed (SIGKILL, pid {pid}) with {calls} Dify calls in flight"),
            );
            p.spawn_worker();
            mark(marks, "replacement worker started");
        }
        Fault::DispatcherKill => {
            let dispatcher = &p.dispatchers[0];
            until(
                "3 deliveries in flight in the dispatcher",
                T,
                || async move { dispatcher.in_flight().await.unwrap_or(0) >= 3 },
            )
            .await;
            let pid = p.dispatchers[0].pid();
            let n = p.dispatchers[0].in_flight().await.unwrap_or(0);
            p.dispatchers[0].kill9();
            mark(
                marks,
                format!(
                    "dispatcher killed (SIGKILL, pid {pid}) with about {n} deliveries in flight"
                ),
            );
            p.spawn_dispatcher();
            mark(marks, "replacement dispatcher started");
        }
        Fault::BrokerRestart => {
            mark(marks, "broker stopping (SIGTERM to the node)");
            let e = env.clone();
            tokio::task::spawn_blocking(move || e.stop_broker())
                .await
                .expect("join");
            mark(marks, "broker stopped");
            let e = env.clone();
            tokio::task::spawn_blocking(move || e.start_broker())
                .await
                .expect("join")
                .expect("the node starts again");
            mark(marks, "broker started again (same data dir)");
            p.wait_ready(Duration::from_secs(60)).await;
            mark(marks, "every role reconnected by itself");
        }
        Fault::BrokerCrash => {
            // A node killed within about a second of creating the dead-letter stream brings
            // it back unavailable for many minutes (RabbitMQ 3.10; see docs/RELIABILITY.md),
            // and every role declares it on connect. A broker in service has had its streams
            // for longer than that: crash it as such a broker.
            tokio::time::sleep_until((p.started + STREAMS_SETTLED).into()).await;
            let e = env.clone();
            tokio::task::spawn_blocking(move || e.kill_broker())
                .await
                .expect("join");
            mark(marks, "broker killed (SIGKILL to the node's VM)");
            let e = env.clone();
            tokio::task::spawn_blocking(move || e.start_broker())
                .await
                .expect("join")
                .expect("the node starts again after a crash");
            mark(marks, "broker started again (same data dir)");
            p.wait_ready(Duration::from_secs(60)).await;
            mark(marks, "every role reconnected by itself");
        }
        Fault::CrashLoop => crash_loop(p, marks, fed).await,
        Fault::ClusterNodeKill => crate::failover::cluster_node(p, env, marks, false).await,
        Fault::ClusterNodeRestart => crate::failover::cluster_node(p, env, marks, true).await,
        Fault::SentinelFailover => crate::failover::sentinel_failover(p, env, marks).await,
        Fault::RedisRestart => {
            let dify = p.dify.clone();
            until("3 Dify calls in flight", T, || {
                let d = dify.clone();
                async move { d.in_flight() >= 3 }
            })
            .await;
            let calls = p.dify.in_flight();
            let e = env.clone();
            tokio::task::spawn_blocking(move || e.stop_redis())
                .await
                .expect("join");
            mark(
                marks,
                format!("redis stopped with {calls} Dify calls in flight (every key is gone)"),
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            let e = env.clone();
            tokio::task::spawn_blocking(move || e.start_redis())
                .await
                .expect("join")
                .expect("redis starts again");
            mark(marks, "redis started again, empty");
        }
        Fault::ReceiverDown => {
            p.receiver.set_down(true);
            mark(marks, "receiver down (503)");
            tokio::time::sleep(OUTAGE).await;
            p.receiver.set_down(false);
            mark(marks, "receiver back");
        }
        Fault::DifyDown => {
            p.dify.set_down(true);
            mark(marks, "Dify down (503)");
            tokio::time::sleep(OUTAGE).await;
            p.dify.set_down(false);
            mark(marks, "Dify back");
        }
        Fault::Poison => {
            let work = p.topology().stage_queue(Stage::Work);
            let deliver = p.topology().stage_queue(Stage::Deliver);
            let tag = uuid::Uuid::now_v7().simple().to_string();
            let feeds: [(&'static str, &String, String); 4] = [
                (
                    "a body that is not JSON",
                    &work,
                    format!("not json at all: poison-1-{tag}"),
                ),
                (
                    "a dispatch_job envelope on the work queue",
                    &work,
                    format!(r#"{{"envelope":"dispatch_job","v":1,"marker":"poison-2-{tag}"}}"#),
                ),
                (
                    "an inbound_event of an unknown schema version",
                    &work,
                    format!(r#"{{"envelope":"inbound_event","v":99,"marker":"poison-3-{tag}"}}"#),
                ),
                (
                    "a body that is not JSON",
                    &deliver,
                    format!("garbage on the deliver queue: poison-4-{tag}"),
                ),
            ];
            for (i, (what, queue, body)) in feeds.iter().enumerate() {
                p.publish_raw(queue, body.as_bytes()).await;
                fed.push(Fed {
                    what,
                    queue: (*queue).clone(),
                    marker: format!("poison-{}-{tag}", i + 1),
                });
            }
            mark(marks, format!("{} poison messages published", feeds.len()));
        }
    }
}

/// A readable event that crashes every worker calling Dify for it, published straight to the
/// work queue; the suite plays the crash (SIGKILL as soon as the call reaches Dify) and the
/// supervisor (a replacement worker at once). docs/GUARANTEES.md: "A message that keeps
/// crashing its consumers is given up by the broker after `broker.delivery_limit` deliveries
/// and lands in the dead-letter stream as poison". The loop stops once the event is a dead
/// letter, or after `delivery_limit + 2` crashes; the event is then answered normally.
async fn crash_loop(p: &mut Pipeline, marks: &mut Vec<Mark>, fed: &mut Vec<Fed>) {
    use shared::envelope::{encode, ChatType, Conversation, InboundEvent};
    let limit = p.config.broker.delivery_limit as usize;
    let id = format!("crash-loop-poison-{}", uuid::Uuid::now_v7().simple());
    let event = InboundEvent {
        id: uuid::Uuid::now_v7(),
        source: "hooks".into(),
        platform: "standard".into(),
        dedup_key: id.clone(),
        kind: "message".into(),
        received_at: chrono::Utc::now(),
        conversation: Conversation {
            chat_id: id.clone(),
            chat_type: ChatType::Single,
            sender_id: id.clone(),
            sender_name: None,
            thread_id: None,
        },
        text: id.clone(),
        reply: None,
        payload: serde_json::json!({}),
        attempts: Vec::new(),
        replay_of: None,
    };
    let work = p.topology().stage_queue(Stage::Work);
    p.publish_raw(&work, &encode(&event)).await;
    fed.push(Fed {
        what: "an event that crashes every worker calling Dify for it",
        queue: work,
        marker: id.clone(),
    });
    mark(marks, "crashing event published");
    let calls_for = |tap: &crate::tap::Tap| {
        tap.calls()
            .iter()
            .filter(|c| c.query.as_deref() == Some(id.as_str()))
            .count()
    };
    // Watches the dead letters apart from the loop, so that reading them never delays a kill.
    let dead = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (dead, config, id) = (dead.clone(), p.config.clone(), id.clone());
        tokio::spawn(async move {
            while !dead.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let letters = crate::pipeline::read_dead_letters(&config).await;
                if letters
                    .iter()
                    .any(|l| l.letter.message.to_string().contains(&id))
                {
                    dead.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    let mut crashes = 0;
    while crashes < limit + 2 {
        let tap = p.tap.clone();
        let seen = calls_for(&tap);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Poll fast: the kill must land before the run's first event (200 ms).
        while calls_for(&tap) == seen && Instant::now() < deadline && !dead.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if dead.load(Ordering::SeqCst) {
            mark(marks, "the crashing event is a dead letter");
            break;
        }
        if calls_for(&tap) == seen {
            mark(marks, "the crashing event was not taken again within 30 s");
            break;
        }
        let worker = p.workers.last_mut().expect("a worker");
        let pid = worker.pid();
        worker.kill9();
        crashes += 1;
        mark(
            marks,
            format!("worker killed on the crashing event (crash {crashes}, pid {pid})"),
        );
        p.spawn_worker();
    }
    watcher.abort();
    mark(
        marks,
        format!("stopped crashing after {crashes} crashes (delivery limit {limit})"),
    );
}
