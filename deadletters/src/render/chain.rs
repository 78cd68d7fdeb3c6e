//! How `dlq audit --verify` reads on a terminal: the chain's state, where it starts and ends,
//! and every entry that was not trusted. Pure.
use crate::chain::{ChainReport, ChainStart, ChainState};

use super::time;

/// The verification report as text.
pub fn chain(r: &ChainReport) -> String {
    let mut out = String::new();
    let state = match &r.state {
        ChainState::Empty => "empty (no chained replay record yet, or all expired)".to_owned(),
        ChainState::Intact => "intact".to_owned(),
        ChainState::Broken { offset, seq, why } => {
            let place = match (seq, offset) {
                (Some(s), Some(o)) => format!(" at record {s} (stream offset {o})"),
                (Some(s), None) => format!(" at record {s}"),
                _ => String::new(),
            };
            format!("BROKEN{place}: {why}")
        }
    };
    out.push_str(&format!("Replay record chain: {state}\n"));
    let start = match &r.start {
        ChainStart::None => "-".to_owned(),
        ChainStart::Genesis => "at its first record (nothing expired yet)".to_owned(),
        ChainStart::Cut {
            seq,
            written_at,
            checkpoint,
        } => format!(
            "at record {seq} ({}{}); the records before it expired by retention",
            time(*written_at),
            if *checkpoint { ", a checkpoint" } else { "" }
        ),
    };
    out.push_str(&format!("  starts         {start}\n"));
    out.push_str(&format!(
        "  records        {} verified and linked\n",
        r.records
    ));
    if let Some((seq, digest, offset)) = &r.tip {
        out.push_str(&format!(
            "  last           record {seq} at stream offset {offset}, sha256 {digest}\n"
        ));
    }
    if r.duplicates > 0 {
        out.push_str(&format!(
            "  duplicates     {} (a record appended again after a crash; counted once)\n",
            r.duplicates
        ));
    }
    if r.unchained > 0 {
        out.push_str(&format!(
            "  unchained      {} record(s) from before the audit key: listed, never trusted\n",
            r.unchained
        ));
    }
    for (offset, why) in &r.rejected {
        out.push_str(&format!("  rejected       stream offset {offset}: {why}\n"));
    }
    out
}
