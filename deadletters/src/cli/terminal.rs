//! Where the `dlq` commands write: a [`Console`] that is the process's terminal or memory (so
//! that tests and the bench run every command with captured output), and the helpers every
//! command prints through: a line of output, a note on stderr, the replay's progress bar.
//! Tables and other text are built by [`crate::render`]; this module only writes them.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::sync::{Arc, Mutex};

use crate::DlqError;

/// Where a command reads answers and writes output; a real terminal or memory (tests).
pub struct Console {
    pub out: Box<dyn Write + Send>,
    pub err: Box<dyn Write + Send>,
    pub input: Box<dyn BufRead + Send>,
    /// Whether a person can answer the confirmation prompt.
    pub stdin_tty: bool,
    /// Whether the progress bar is drawn.
    pub stderr_tty: bool,
    /// Table width, when stdout is a terminal.
    pub width: Option<u16>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("stdin_tty", &self.stdin_tty)
            .field("stderr_tty", &self.stderr_tty)
            .finish()
    }
}

impl Console {
    /// The process's stdin, stdout and stderr.
    pub fn terminal() -> Self {
        let stdout_tty = std::io::stdout().is_terminal();
        Self {
            out: Box::new(BufWriter::new(std::io::stdout())),
            err: Box::new(std::io::stderr()),
            input: Box::new(BufReader::new(std::io::stdin())),
            stdin_tty: std::io::stdin().is_terminal(),
            stderr_tty: std::io::stderr().is_terminal(),
            width: if stdout_tty {
                comfy_table::Table::new().width()
            } else {
                None
            },
        }
    }

    /// A console on memory: `input` is what the "person" types; nothing is a terminal unless
    /// `stdin_tty` says stdin is.
    pub fn in_memory(input: &str, stdin_tty: bool) -> (Self, Captured) {
        let captured = Captured::default();
        let console = Self {
            out: Box::new(SharedBuf(captured.out.clone())),
            err: Box::new(SharedBuf(captured.err.clone())),
            input: Box::new(std::io::Cursor::new(input.as_bytes().to_vec())),
            stdin_tty,
            stderr_tty: false,
            width: None,
        };
        (console, captured)
    }

    /// Writes one piece of output (with a newline) to stdout.
    pub fn print(&mut self, text: &str) -> Result<(), DlqError> {
        writeln!(self.out, "{text}").map_err(|e| DlqError::Write {
            path: "stdout".into(),
            reason: e.to_string(),
        })
    }

    /// Writes a note for the person (with a newline) to stderr; a note that cannot be written
    /// is not worth failing the command for.
    pub fn note(&mut self, text: &str) {
        let _ = writeln!(self.err, "{text}");
    }

    /// A progress bar for `len` sends, drawn on stderr when it is a terminal (hidden otherwise).
    pub fn progress(&self, len: u64) -> ProgressBar {
        if !self.stderr_tty || len == 0 {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} replaying [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb
    }
}

/// What a [`Console::in_memory`] received.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Captured {
    pub fn stdout(&self) -> String {
        read(&self.out)
    }
    pub fn stderr(&self) -> String {
        read(&self.err)
    }
}

fn read(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    match buf.lock() {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(p) => String::from_utf8_lossy(&p.into_inner()).into_owned(),
    }
}

struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut b) => b.extend_from_slice(data),
            Err(p) => p.into_inner().extend_from_slice(data),
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
