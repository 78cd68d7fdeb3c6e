//! An incremental parser for server-sent events (the `text/event-stream` format Dify streams
//! answers in). Bytes go in as they arrive, split anywhere — inside a line, between `\r` and
//! `\n`, inside a multi-byte character — and complete events come out. Lines may end in `\n`,
//! `\r\n` or `\r`; `data:` lines of one event are joined with `\n`; comments (`:`) and events
//! without data (Dify's `event: ping`) produce nothing. Memory is bounded: one event may hold at
//! most `limit` bytes. This module does no I/O and knows nothing about Dify's JSON.

/// One dispatched event: its `event:` name, if any, and its data lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Why the stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("a server-sent event is larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// The parser's state between two pieces of input.
#[derive(Debug)]
pub struct SseParser {
    /// The line being read, without its end.
    line: Vec<u8>,
    /// The last byte seen was `\r`: a `\n` that follows belongs to the same line end.
    after_cr: bool,
    /// No line has been completed yet (a leading byte-order mark is dropped from it).
    first_line: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    limit: usize,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    /// A parser that refuses events larger than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            event: None,
            data: String::new(),
            has_data: false,
            limit,
        }
    }

    /// Reads the next piece of the stream and appends every event it completes to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut rest = bytes;
        if self.after_cr && !rest.is_empty() {
            // `\r` ended the previous piece; a `\n` here completes the same `\r\n`.
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
            self.after_cr = false;
        }
        while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.push_line_bytes(&rest[..i])?;
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out);
            // Keep the line buffer's allocation for the next line.
            self.line = line;
            self.line.clear();
            if rest[i] == b'\r' {
                match rest.get(i + 1) {
                    Some(b'\n') => rest = &rest[i + 2..],
                    Some(_) => rest = &rest[i + 1..],
                    None => {
                        self.after_cr = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[i + 1..];
            }
        }
        self.push_line_bytes(rest)
    }

    /// True when the stream stopped in the middle of an event (it is discarded, as the format
    /// requires; the caller decides whether that matters).
    pub fn has_partial_event(&self) -> bool {
        self.has_data || !self.line.is_empty()
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + self.data.len() + bytes.len() > self.limit {
            return Err(SseError::TooLarge { limit: self.limit });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        let mut line = line;
        if self.first_line {
            self.first_line = false;
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                // Lines never split a UTF-8 character (`\r` and `\n` are ASCII), so decoding
                // line by line is exact; invalid bytes become U+FFFD rather than an error.
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            // `id` and `retry` matter to browsers reconnecting; a Dify call is never resumed.
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the `\n` after the last data line
        out.push(SseEvent { event, data });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// A stream with every shape the parser must handle.
    const STREAM: &[u8] = b"\xEF\xBB\xBFevent: ping\n\n\
: a comment line\n\
data: {\"event\": \"message\", \"answer\": \"h\xC3\xA9\"}\n\n\
data: {\"event\": \"message\",\r\ndata: \"answer\": \"lo\"}\r\n\r\n\
event: message_end\rdata:{\"event\":\"message_end\"}\r\r\
data\n\n\
id: 7\nretry: 100\ndata: last\n\n\
data: cut off";

    fn expected() -> Vec<SseEvent> {
        let ev = |event: Option<&str>, data: &str| SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        };
        vec![
            ev(None, "{\"event\": \"message\", \"answer\": \"hé\"}"),
            ev(None, "{\"event\": \"message\",\n\"answer\": \"lo\"}"),
            ev(Some("message_end"), "{\"event\":\"message_end\"}"),
            ev(None, ""),
            ev(None, "last"),
        ]
    }

    fn parse_in_pieces(pieces: &[&[u8]]) -> (Vec<SseEvent>, bool) {
        let mut parser = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for piece in pieces {
            parser.feed(piece, &mut out).unwrap();
        }
        (out, parser.has_partial_event())
    }

    #[test]
    fn whole_stream_gives_every_complete_event_and_keeps_the_cut_one_pending() {
        let (events, partial) = parse_in_pieces(&[STREAM]);
        assert_eq!(events, expected());
        assert!(partial);
    }

    #[test]
    fn byte_by_byte_gives_the_same_events() {
        let pieces: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_in_pieces(&pieces).0, expected());
    }

    #[test]
    fn random_splits_give_the_same_events() {
        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..500 {
            let mut pieces = Vec::new();
            let mut rest = STREAM;
            while !rest.is_empty() {
                let n = rng.gen_range(0..=rest.len().min(9));
                let (a, b) = rest.split_at(n);
                pieces.push(a);
                rest = b;
            }
            assert_eq!(parse_in_pieces(&pieces).0, expected(), "{pieces:?}");
        }
    }

    #[test]
    fn an_event_larger_than_the_limit_is_refused() {
        let mut parser = SseParser::new(16);
        let mut out = Vec::new();
        parser.feed(b"data: 0123456789\n", &mut out).unwrap();
        assert_eq!(
            parser.feed(b"data: 0123456789\n", &mut out),
            Err(SseError::TooLarge { limit: 16 })
        );
        let mut parser = SseParser::new(16);
        assert!(parser.feed(&[b'x'; 17], &mut out).is_err());
    }
}
