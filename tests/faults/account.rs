//! The accounting after a fault: every event the ingress acknowledged is delivered (the
//! receiver accepted a body whose `query` is the event's id) or a dead letter (its original
//! message carries the id) — anything else is lost. Dify runs are counted per event from the
//! tap (runs Dify started; refusals apart), deliveries per job from the receiver (per
//! `webhook-id`) and per event (one platform event answered under two job ids would be a
//! duplicate too). Each duplicate is matched against the windows docs/GUARANTEES.md names,
//! using when the fault struck: a duplicate in a named window is reported, any other is a
//! finding. The result renders as a row of the table in docs/RELIABILITY.md plus its details.
use crate::load::Sent;
use crate::pipeline::Drain;
use crate::tap::TapCall;
use deadletters::record::Letter;
use standins::receiver::Received;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The faults, one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    WorkerKill,
    DispatcherKill,
    BrokerRestart,
    BrokerCrash,
    RedisRestart,
    ReceiverDown,
    DifyDown,
    Poison,
    CrashLoop,
    ClusterNodeKill,
    ClusterNodeRestart,
    SentinelFailover,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::WorkerKill => "worker-kill",
            Fault::DispatcherKill => "dispatcher-kill",
            Fault::BrokerRestart => "broker-restart",
            Fault::BrokerCrash => "broker-crash",
            Fault::RedisRestart => "redis-restart",
            Fault::ReceiverDown => "receiver-down",
            Fault::DifyDown => "dify-down",
            Fault::Poison => "poison",
            Fault::CrashLoop => "crash-loop",
            Fault::ClusterNodeKill => "cluster-node-kill",
            Fault::ClusterNodeRestart => "cluster-node-restart",
            Fault::SentinelFailover => "sentinel-failover",
        }
    }
}

/// A moment of the fault: `what` happened `at`.
#[derive(Debug, Clone)]
pub struct Mark {
    pub what: String,
    pub at: Instant,
}

/// A message fed straight to a stage queue; `marker` is in its body.
#[derive(Debug, Clone)]
pub struct Fed {
    pub what: &'static str,
    pub queue: String,
    pub marker: String,
}

/// Everything observed during one fault.
pub struct Facts {
    pub fault: Fault,
    pub started: Instant,
    pub sent: Vec<Sent>,
    pub received: Vec<Received>,
    pub calls: Vec<TapCall>,
    pub letters: Vec<Letter>,
    pub marks: Vec<Mark>,
    pub fed: Vec<Fed>,
    pub drain: Drain,
    pub receiver_latency: Duration,
    /// What the surviving roles counted, one line per process.
    pub role_counters: Vec<String>,
}

/// One duplicate and the window that explains it (`None`: no documented window does).
#[derive(Debug, Clone)]
pub struct Duplicate {
    pub id: String,
    pub what: &'static str,
    pub count: usize,
    pub window: Option<&'static str>,
    pub evidence: String,
}

/// What a fed message became.
#[derive(Debug, Clone)]
pub struct FedOutcome {
    pub fed: Fed,
    /// The reasons of the dead letters carrying its marker (one expected).
    pub letters: Vec<String>,
    /// Runs Dify started for it and deliveries of its answer (a readable fed event only).
    pub runs: usize,
    pub delivered: usize,
}

/// The result of one fault.
pub struct Outcome {
    pub fault: Fault,
    pub acked: usize,
    /// Acknowledged only on a retry (the first tries were answered non-2xx or not at all).
    pub acked_on_retry: usize,
    /// Never acknowledged (the platform was told to retry and gave up): no promise was made.
    pub refused: Vec<String>,
    pub delivered: usize,
    /// Acknowledged, not delivered, dead-lettered: by reason.
    pub dead: BTreeMap<String, usize>,
    /// The same, one line per dead letter: the event, its reason and error.
    pub dead_letters: Vec<String>,
    pub lost: Vec<String>,
    /// Runs Dify started per acknowledged event -> how many events.
    pub runs_per_event: BTreeMap<usize, usize>,
    /// Run calls Dify refused (down): retried, not runs.
    pub refused_calls: usize,
    /// Accepted deliveries per job -> how many jobs.
    pub deliveries_per_job: BTreeMap<usize, usize>,
    pub duplicates: Vec<Duplicate>,
    pub fed: Vec<FedOutcome>,
    pub marks: Vec<(f64, String)>,
    /// From the strike to the acknowledgement of the first event sent after it.
    pub acks_resume: Option<Duration>,
    /// The longest time without any acknowledgement, from the strike on.
    pub ack_gap: Option<Duration>,
    pub drain: Drain,
    pub role_counters: Vec<String>,
}

const DIFY_W2: &str = "Dify window 2 (streaming, worker killed before Dify's first event)";
const DIFY_W4: &str = "Dify window 4 (Redis lost the idempotency record)";
const DELIVERY_W: &str =
    "delivery window (dispatcher killed between the receiver's 2xx and the delivered marker)";
/// Fewer events offered than this: the load did not run, and "lost 0" would mean nothing.
pub const MIN_OFFERED: usize = 10;

/// Why a fault's accounting proves nothing, if it does not: too few events offered, or fewer than
/// half of those offered acknowledged (docs/RELIABILITY.md, "A fault fails"). Every event the
/// load offers is retried for 40 s, far longer than any outage the suite causes, so a healthy
/// run acknowledges all of them; a run that acknowledged nothing must not pass with lost = 0.
pub fn too_few_acknowledged(acked: usize, offered: usize) -> Option<String> {
    if offered < MIN_OFFERED {
        Some(format!(
            "the load offered {offered} event(s), fewer than {MIN_OFFERED}: nothing was tested"
        ))
    } else if acked * 2 < offered {
        Some(format!(
            "only {acked} of {offered} offered events were acknowledged (at least half must be): \
             lost = 0 over so few says nothing"
        ))
    } else {
        None
    }
}

/// Ids that reached the worker less than this before it died may not have been recorded yet.
const RECORD_SLACK: Duration = Duration::from_millis(250);

fn ms(from: Instant, to: Instant) -> i64 {
    if to >= from {
        to.duration_since(from).as_millis() as i64
    } else {
        -(from.duration_since(to).as_millis() as i64)
    }
}

/// The event id (the suite's webhook id) an original message was about.
fn event_of(message: &serde_json::Value) -> Option<String> {
    message["text"]
        .as_str()
        .or_else(|| message["payload"]["query"].as_str())
        .or_else(|| message["dedup_key"].as_str())
        .map(str::to_owned)
}

/// The first worker kill at or after `from` (the one that cut the run started at `from`).
fn kill_between(marks: &[Mark], from: Instant) -> Option<Instant> {
    marks
        .iter()
        .filter(|m| m.what.starts_with("worker killed") && m.at >= from)
        .map(|m| m.at)
        .min()
}

fn mark_at(marks: &[Mark], prefix: &str) -> Option<Instant> {
    marks
        .iter()
        .find(|m| m.what.starts_with(prefix))
        .map(|m| m.at)
}

/// When acknowledgements resumed after the strike (the first mark after "answers flowing"):
/// the first event sent at or after it, and the longest stretch without any acknowledgement.
fn acks_after_strike(f: &Facts) -> (Option<Duration>, Option<Duration>) {
    let Some(strike) = f
        .marks
        .iter()
        .skip_while(|m| !m.what.starts_with("answers flowing"))
        .nth(1)
        .map(|m| m.at)
    else {
        return (None, None);
    };
    let resume = f
        .sent
        .iter()
        .filter(|s| s.first_at >= strike)
        .filter_map(|s| s.acked_at)
        .min()
        .map(|t| t.duration_since(strike));
    let mut acks: Vec<Instant> = f
        .sent
        .iter()
        .filter_map(|s| s.acked_at)
        .filter(|t| *t >= strike)
        .collect();
    acks.insert(0, strike);
    acks.sort();
    let gap = acks.windows(2).map(|w| w[1].duration_since(w[0])).max();
    (resume, gap)
}

pub fn account(f: Facts) -> Outcome {
    let (acks_resume, ack_gap) = acks_after_strike(&f);
    let acked: Vec<&Sent> = f.sent.iter().filter(|s| s.acked()).collect();
    let refused = f
        .sent
        .iter()
        .filter(|s| !s.acked())
        .map(|s| s.id.clone())
        .collect();
    let mut deliveries: HashMap<String, Vec<&Received>> = HashMap::new();
    for r in &f.received {
        if let Some(q) = r.body["query"].as_str() {
            deliveries.entry(q.to_owned()).or_default().push(r);
        }
    }
    let mut letters_of: HashMap<String, Vec<&Letter>> = HashMap::new();
    for l in &f.letters {
        if let Some(id) = event_of(&l.letter.message) {
            letters_of.entry(id).or_default().push(l);
        }
    }
    let mut runs: HashMap<String, Vec<&TapCall>> = HashMap::new();
    for c in f.calls.iter().filter(|c| c.ran()) {
        if let Some(q) = &c.query {
            runs.entry(q.clone()).or_default().push(c);
        }
    }
    let refused_calls = f.calls.iter().filter(|c| !c.ran()).count();

    let (mut delivered, mut dead, mut lost) = (0, BTreeMap::new(), Vec::new());
    let mut dead_letters = Vec::new();
    let mut runs_per_event = BTreeMap::new();
    let mut duplicates = Vec::new();
    for s in &acked {
        if deliveries.contains_key(&s.id) {
            delivered += 1;
        } else if let Some(ls) = letters_of.get(&s.id) {
            for l in ls {
                *dead.entry(l.letter.reason.as_str().to_owned()).or_insert(0) += 1;
                dead_letters.push(format!(
                    "{}: {} ({})",
                    s.id,
                    l.letter.reason.as_str(),
                    l.letter.error
                ));
            }
        } else {
            lost.push(s.id.clone());
        }
        let mut event_runs = runs.get(&s.id).cloned().unwrap_or_default();
        event_runs.sort_by_key(|c| c.at);
        *runs_per_event.entry(event_runs.len()).or_insert(0) += 1;
        if event_runs.len() > 1 {
            duplicates.push(dify_duplicate(&f, &s.id, &event_runs));
        }
        // One platform event answered under more than one job id (two event ids).
        let jobs: std::collections::BTreeSet<&str> = deliveries
            .get(&s.id)
            .map(|d| d.iter().map(|r| r.webhook_id.as_str()).collect())
            .unwrap_or_default();
        if jobs.len() > 1 {
            duplicates.push(Duplicate {
                id: s.id.clone(),
                what: "event delivered under two job ids",
                count: jobs.len(),
                window: None,
                evidence: format!(
                    "the ingress answered {:?} to this event's tries: it was kept more than once",
                    s.statuses
                ),
            });
        }
    }
    let mut per_job: HashMap<&str, Vec<&Received>> = HashMap::new();
    for r in &f.received {
        per_job.entry(r.webhook_id.as_str()).or_default().push(r);
    }
    let mut deliveries_per_job = BTreeMap::new();
    for (job, rs) in &per_job {
        *deliveries_per_job.entry(rs.len()).or_insert(0) += 1;
        if rs.len() > 1 {
            duplicates.push(delivery_duplicate(&f, job, rs));
        }
    }
    let fed = f
        .fed
        .iter()
        .map(|fed| FedOutcome {
            fed: fed.clone(),
            letters: f
                .letters
                .iter()
                .filter(|l| l.letter.message.to_string().contains(&fed.marker))
                .map(|l| format!("{} ({})", l.letter.reason.as_str(), l.letter.error))
                .collect(),
            runs: runs.get(&fed.marker).map_or(0, Vec::len),
            delivered: deliveries.get(&fed.marker).map_or(0, Vec::len),
        })
        .collect();
    Outcome {
        fault: f.fault,
        acked: acked.len(),
        acked_on_retry: acked.iter().filter(|s| s.statuses.len() > 1).count(),
        refused,
        delivered,
        dead,
        dead_letters,
        lost,
        runs_per_event,
        refused_calls,
        deliveries_per_job,
        duplicates,
        fed,
        marks: f
            .marks
            .iter()
            .map(|m| (m.at.duration_since(f.started).as_secs_f64(), m.what.clone()))
            .collect(),
        acks_resume,
        ack_gap,
        drain: f.drain,
        role_counters: f.role_counters,
    }
}

/// A second run of one event: which window allowed it, if any.
fn dify_duplicate(f: &Facts, id: &str, runs: &[&TapCall]) -> Duplicate {
    let (first, second) = (runs[0], runs[1]);
    let mut evidence = format!(
        "{} runs; the 2nd started {} ms after the 1st, {}",
        runs.len(),
        ms(first.at, second.at),
        if first.trace_id == second.trace_id {
            "for the same copy of the event (same X-Trace-Id)"
        } else {
            "for another copy of the event (another X-Trace-Id: kept twice)"
        }
    );
    let window = match f.fault {
        Fault::WorkerKill | Fault::CrashLoop => kill_between(&f.marks, first.at).and_then(|kill| {
            let ids = first.ids_at.map(|t| ms(t, kill));
            let _ = write!(
                evidence,
                "; the 1st started {} ms before the kill, its ids reached the worker {}",
                ms(first.at, kill),
                match ids {
                    Some(d) if d >= 0 => format!("{d} ms before the kill"),
                    Some(d) => format!("{} ms after the kill (never)", -d),
                    None => "never".into(),
                }
            );
            // Every run but the last was cut by a kill before its ids could be recorded.
            let in_window = runs.windows(2).all(|pair| {
                kill_between(&f.marks, pair[0].at).is_some_and(|k| {
                    pair[1].at > k && pair[0].ids_at.is_none_or(|t| t + RECORD_SLACK > k)
                })
            }) && first.at <= kill;
            in_window.then_some(DIFY_W2)
        }),
        Fault::RedisRestart | Fault::SentinelFailover => mark_at(
            &f.marks,
            if f.fault == Fault::RedisRestart {
                "redis stopped"
            } else {
                "redis master killed"
            },
        )
        .and_then(|down| {
            let _ = write!(
                evidence,
                "; the 1st started {} ms before Redis stopped",
                ms(first.at, down)
            );
            (first.at <= down && second.at > down).then_some(DIFY_W4)
        }),
        _ => None,
    };
    Duplicate {
        id: id.to_owned(),
        what: "Dify run",
        count: runs.len(),
        window,
        evidence,
    }
}

/// A job accepted twice: which window allowed it, if any.
fn delivery_duplicate(f: &Facts, job: &str, rs: &[&Received]) -> Duplicate {
    let mut at: Vec<Instant> = rs.iter().map(|r| r.at).collect();
    at.sort();
    let id = rs[0].body["query"].as_str().unwrap_or(job).to_owned();
    let mut evidence = format!("job {job}: accepted {} times", rs.len());
    let window = match f.fault {
        Fault::DispatcherKill => mark_at(&f.marks, "dispatcher killed").and_then(|kill| {
            let _ = write!(
                evidence,
                "; the 1st acceptance {} ms after the kill, the 2nd {} ms after",
                ms(kill, at[0]),
                ms(kill, at[1])
            );
            // The receiver answers after its latency: a request it accepted up to then may
            // have been sent by the dispatcher that died before reading the answer.
            let earliest = kill.checked_sub(Duration::from_millis(500)).unwrap_or(kill);
            let latest = kill + f.receiver_latency + Duration::from_secs(1);
            (at[0] >= earliest && at[0] <= latest && at[1] > kill).then_some(DELIVERY_W)
        }),
        _ => None,
    };
    Duplicate {
        id,
        what: "delivery of a job",
        count: rs.len(),
        window,
        evidence,
    }
}

fn histogram(h: &BTreeMap<usize, usize>) -> String {
    if h.is_empty() {
        return "-".into();
    }
    let total: usize = h.values().sum();
    let sum: usize = h.iter().map(|(k, v)| k * v).sum();
    let spread = h
        .iter()
        .map(|(k, v)| format!("{v}×{k}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{:.3} ({spread})", sum as f64 / total as f64)
}

impl Outcome {
    /// A documented window or none: the suite fails on lost events and undocumented duplicates.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(too_few_acknowledged(
            self.acked,
            self.acked + self.refused.len(),
        ));
        if !self.lost.is_empty() {
            out.push(format!(
                "lost {} event(s): {:?}",
                self.lost.len(),
                self.lost
            ));
        }
        for d in self.duplicates.iter().filter(|d| d.window.is_none()) {
            out.push(format!(
                "undocumented duplicate: {} of {} ({}x): {}",
                d.what, d.id, d.count, d.evidence
            ));
        }
        for f in &self.fed {
            if f.letters.len() != 1 {
                out.push(format!(
                    "fed {} ({}) ended as {} dead letter(s), not one",
                    f.fed.what,
                    f.fed.queue,
                    f.letters.len()
                ));
            }
        }
        if !self.drain.settled {
            out.push(format!(
                "the pipeline did not settle within {:.0}s (messages still queued or in flight)",
                self.drain.took.as_secs_f64()
            ));
        }
        out
    }

    /// The table's header (markdown).
    pub fn header() -> String {
        let columns = [
            "fault",
            "acknowledged",
            "delivered",
            "dead-lettered (reason)",
            "lost",
            "Dify runs per event",
            "deliveries per job",
            "duplicates (window)",
            "acks resume (longest gap)",
            "drained in",
        ];
        format!(
            "| {} |\n|{}",
            columns.join(" | "),
            "---|".repeat(columns.len())
        )
    }

    /// This fault's row (markdown).
    pub fn row(&self) -> String {
        let dead = if self.dead.is_empty() {
            "0".to_owned()
        } else {
            self.dead
                .iter()
                .map(|(r, n)| format!("{n} ({r})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let fed_dead: usize = self.fed.iter().map(|f| f.letters.len()).sum();
        let dead = if self.fed.is_empty() {
            dead
        } else {
            format!("{dead}; fed: {fed_dead} of {}", self.fed.len())
        };
        // One entry per kind and window: which events, and how many extra copies in all.
        let mut groups: BTreeMap<(&str, &str), (Vec<&str>, usize)> = BTreeMap::new();
        for d in &self.duplicates {
            let g = groups
                .entry((d.what, d.window.unwrap_or("**undocumented**")))
                .or_default();
            g.0.push(d.id.as_str());
            g.1 += d.count - 1;
        }
        let dups = if groups.is_empty() {
            "0".to_owned()
        } else {
            groups
                .iter()
                .map(|((what, window), (ids, extra))| {
                    let ids = if ids.len() > 2 {
                        format!("{}, … ({} events)", ids[..2].join(", "), ids.len())
                    } else {
                        ids.join(", ")
                    };
                    format!("{what}: {extra} extra for {ids} — {window}")
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut refused = String::new();
        if self.acked_on_retry > 0 {
            let _ = write!(refused, " ({} on a retry)", self.acked_on_retry);
        }
        if !self.refused.is_empty() {
            let _ = write!(refused, " (+{} never acknowledged)", self.refused.len());
        }
        let runs = if self.refused_calls > 0 {
            format!(
                "{} + {} refused calls",
                histogram(&self.runs_per_event),
                self.refused_calls
            )
        } else {
            histogram(&self.runs_per_event)
        };
        let secs =
            |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
        format!(
            "| {} | {}{refused} | {} | {dead} | {} | {runs} | {} | {dups} | {} ({}) | {:.1} s{} |",
            self.fault.name(),
            self.acked,
            self.delivered,
            self.lost.len(),
            histogram(&self.deliveries_per_job),
            secs(self.acks_resume),
            secs(self.ack_gap),
            self.drain.took.as_secs_f64(),
            if self.drain.settled {
                ""
            } else {
                " (not settled)"
            }
        )
    }

    /// The timeline and every duplicate's evidence.
    pub fn details(&self) -> String {
        let mut s = format!("{}:\n", self.fault.name());
        for (t, what) in &self.marks {
            let _ = writeln!(s, "  t={t:6.2}s  {what}");
        }
        for d in &self.dead_letters {
            let _ = writeln!(s, "  acknowledged, dead-lettered: {d}");
        }
        for c in &self.role_counters {
            let _ = writeln!(s, "  {c}");
        }
        for d in &self.duplicates {
            let _ = writeln!(
                s,
                "  duplicate: {} {} x{} -> {}; {}",
                d.what,
                d.id,
                d.count,
                d.window.unwrap_or("UNDOCUMENTED"),
                d.evidence
            );
        }
        for f in &self.fed {
            let _ = writeln!(
                s,
                "  fed {} to {}: {} dead letter(s) {:?}; {} Dify run(s), {} delivery(ies)",
                f.fed.what,
                f.fed.queue,
                f.letters.len(),
                f.letters,
                f.runs,
                f.delivered
            );
        }
        if !self.refused.is_empty() {
            let _ = writeln!(s, "  never acknowledged: {:?}", self.refused);
        }
        if !self.lost.is_empty() {
            let _ = writeln!(s, "  LOST: {:?}", self.lost);
        }
        s
    }
}

#[test]
fn a_fault_needs_an_offered_load_and_half_of_it_acknowledged() {
    // (acknowledged, offered, passes)
    let table = [
        (0, 0, false),
        (9, 9, false),
        (0, 40, false),
        (19, 40, false),
        (20, 40, true),
        (40, 40, true),
        (10, 10, true),
        (5, 10, true),
        (4, 10, false),
    ];
    for (acked, offered, passes) in table {
        assert_eq!(
            too_few_acknowledged(acked, offered).is_none(),
            passes,
            "{acked} of {offered}"
        );
    }
}
