//! `dlq export`: the dead letters a filter selects as JSON Lines, one full record per line (the
//! `DeadLetter` envelope plus where it sits in the store and its replays), to a file or stdout.
//! A file is removed again when the read fails or nothing matched, so an empty or partial
//! export is never mistaken for a whole one.
use shared::config::AuditorConfig;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::Path;

use super::read::{none_found, open, select};
use super::{Console, ExportArgs};
use crate::audit::Ledger;
use crate::filter::Filter;
use crate::record::{self, Names};
use crate::report::ExportLine;
use crate::store::Store;
use crate::DlqError;

pub(super) async fn export(
    a: &ExportArgs,
    filter: Filter,
    config: &AuditorConfig,
    c: &mut Console,
) -> Result<(), DlqError> {
    let (store, names, ledger) = open(config).await?;
    let path = a.out.as_ref().map(|p| p.display().to_string());
    let mut file = match &a.out {
        None => None,
        Some(p) => Some(create(p)?),
    };
    let out: &mut (dyn Write + Send) = match file.as_mut() {
        Some(f) => f,
        None => &mut c.out,
    };
    let written = write_lines(&store, &names, &ledger, &filter, out).await;
    store.close().await;
    let flushed = match file.as_mut() {
        Some(f) => f.flush(),
        None => Ok(()),
    };
    let out_err = |e: std::io::Error| DlqError::Write {
        path: path.clone().unwrap_or_else(|| "stdout".into()),
        reason: e.to_string(),
    };
    let cleanup = || {
        if let Some(p) = &a.out {
            let _ = std::fs::remove_file(p);
        }
    };
    if let Err(e) = written.read {
        cleanup();
        return Err(e);
    }
    if let Some(e) = written.failed {
        return Err(out_err(e));
    }
    flushed.map_err(out_err)?;
    if written.count == 0 {
        cleanup();
        return none_found(&filter, c);
    }
    c.note(&format!(
        "exported {} dead letter(s) to {}",
        written.count,
        path.as_deref().unwrap_or("stdout")
    ));
    Ok(())
}

/// Creates the export file readable and writable by its owner only (mode 0600, set by the
/// `open` that creates it, so there is no moment when others may open it). An existing file is
/// not overwritten: its mode (and whatever a link points at) is not ours to vouch for.
fn create(path: &Path) -> Result<BufWriter<File>, DlqError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map(BufWriter::new)
        .map_err(|e| DlqError::Write {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// How an export's read went: its result, the lines written, and the write that failed (which
/// stopped the read).
struct Written {
    read: Result<(), DlqError>,
    count: u64,
    failed: Option<std::io::Error>,
}

/// Writes one line per selected dead letter until the read ends or a write fails.
async fn write_lines(
    store: &Store,
    names: &Names,
    ledger: &Ledger,
    filter: &Filter,
    out: &mut (dyn Write + Send),
) -> Written {
    let mut count = 0u64;
    let mut failed = None;
    let read = select(store, names, filter, |e, _| {
        let l = record::letter(e.offset, &e.body, &e.meta, names);
        let line = serde_json::to_string(&ExportLine::new(&l, ledger.marks(l.letter.id)))
            .unwrap_or_default();
        match writeln!(out, "{line}") {
            Ok(()) => {
                count += 1;
                ControlFlow::Continue(())
            }
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        }
    })
    .await;
    Written {
        read,
        count,
        failed,
    }
}
