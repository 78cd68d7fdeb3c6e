//! A scenario's results as people and programs read them: tables printed to the terminal, the
//! targets with met / missed, and the same as JSON (`<out>/<scenario>.json`) together with the
//! machine and what else was running on it when the run started. Formatting only: the figures
//! are computed by the scenarios.
use anyhow::Context as _;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One table of a report.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Section {
    pub fn new(title: &str, header: &[&str]) -> Self {
        Self {
            title: title.into(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// A target of an issue and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// The machine and its load when the scenario started.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    /// `/proc/loadavg` at the start.
    pub loadavg: String,
    /// Compilers (`rustc`, `cargo`) of anyone running at the start: they distort the figures.
    pub compilers_running: usize,
}

impl Machine {
    pub fn now() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            compilers_running: compilers_running(),
        }
    }
}

/// `rustc` and `cargo` processes on the machine (other than this one's parent `cargo run`,
/// which is idle while the benchmark runs).
pub fn compilers_running() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "rustc")
        .count()
}

/// Everything one scenario reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub command: String,
    pub machine: Machine,
    pub started_at: String,
    pub sections: Vec<Section>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
    /// The figures, structured, for programs.
    pub figures: serde_json::Value,
}

impl Report {
    pub fn new(scenario: &str, machine: Machine) -> Self {
        Self {
            scenario: scenario.into(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            machine,
            started_at: chrono::Utc::now().to_rfc3339(),
            sections: Vec::new(),
            checks: Vec::new(),
            notes: Vec::new(),
            figures: serde_json::Value::Null,
        }
    }

    pub fn check(&mut self, what: &str, target: &str, measured: String, met: bool) {
        self.checks.push(Check {
            what: what.into(),
            target: target.into(),
            measured,
            met,
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Prints the tables, the targets and the notes.
    pub fn print(&self) {
        println!(
            "\n== {} == ({} cores, load {}, {} rustc running at start)",
            self.scenario, self.machine.cores, self.machine.loadavg, self.machine.compilers_running
        );
        for s in &self.sections {
            println!("\n{}", s.title);
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            t.set_header(&s.header);
            for r in &s.rows {
                t.add_row(r);
            }
            println!("{t}");
        }
        if !self.checks.is_empty() {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            t.set_header(["target", "wanted", "measured", ""]);
            for c in &self.checks {
                t.add_row([
                    c.what.clone(),
                    c.target.clone(),
                    c.measured.clone(),
                    if c.met { "met" } else { "MISSED" }.into(),
                ]);
            }
            println!("\nTargets\n{t}");
        }
        for n in &self.notes {
            println!("note: {n}");
        }
    }

    /// Writes `<dir>/<scenario>.json`.
    pub fn write_json(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.json", self.scenario));
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

/// A table of CPU and memory per process over a span.
pub fn resources(title: &str, usage: &[(String, Option<super::procs::Usage>)]) -> Section {
    let mut t = Section::new(
        title,
        &["process", "CPU % of one core", "RSS MB", "peak RSS MB"],
    );
    let mut total = 0.0;
    for (name, u) in usage {
        total += u.map_or(0.0, |u| u.cpu_percent);
        t.row(vec![
            name.clone(),
            u.map_or("–".into(), |u| format!("{:.0}", u.cpu_percent)),
            u.map_or("–".into(), |u| format!("{:.0}", u.rss_mb)),
            u.map_or("–".into(), |u| format!("{:.0}", u.peak_rss_mb)),
        ]);
    }
    t.row(vec![
        "all of the above (200 = both cores)".into(),
        format!("{total:.0}"),
        String::new(),
        String::new(),
    ]);
    t
}

/// Usage as JSON rows.
pub fn resources_json(usage: &[(String, Option<super::procs::Usage>)]) -> serde_json::Value {
    usage
        .iter()
        .map(|(n, u)| serde_json::json!({"process": n, "usage": u}))
        .collect()
}

/// Redis commands run during a span, per unit of work (request, event, job).
pub fn redis_commands(
    title: &str,
    commands: &[(String, u64)],
    units: usize,
    unit: &str,
) -> Section {
    let per = format!("per {unit}");
    let mut t = Section::new(title, &["command", "calls", per.as_str()]);
    let mut total = 0;
    for (name, calls) in commands {
        total += calls;
        t.row(vec![
            name.to_uppercase(),
            count(*calls as f64),
            format!("{:.2}", *calls as f64 / units.max(1) as f64),
        ]);
    }
    t.row(vec![
        "all".into(),
        count(total as f64),
        format!("{:.2}", total as f64 / units.max(1) as f64),
    ]);
    t
}

/// `1234.5` as `1,235`-style text without a locale: thousands separated by commas.
pub fn count(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Milliseconds with one decimal.
pub fn ms(v: f64) -> String {
    format!("{v:.1}")
}

/// A ratio with two decimals, or `–`.
pub fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{r:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.4), "999");
        assert_eq!(count(1234.5), "1,235");
        assert_eq!(count(1_000_000.0), "1,000,000");
        assert_eq!(count(-12345.0), "-12,345");
        assert_eq!(ratio(Some(0.8123)), "0.81");
        assert_eq!(ratio(None), "–");
    }
}
