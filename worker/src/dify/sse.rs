//! An incremental parser for server-sent events (the `text/event-stream` format Dify streams
//! answers in). Bytes go in as they arrive, split anywhere — inside a line, between `\r` and
//! `\n`, inside a multi-byte character — and each complete event is handed to the caller as it
//! completes, borrowing the parser's buffers (reading an event allocates nothing). Lines may end
//! in `\n`, `\r\n` or `\r`; `data:` lines of one event are joined with `\n`; comments (`:`) and
//! events without data (Dify's `event: ping`) produce nothing. Memory is bounded: one event may
//! hold at most `limit` bytes. This module does no I/O and knows nothing about Dify's JSON.

/// One dispatched event: its `event:` name, if any, and its data lines joined by `\n`. It borrows
/// the parser's buffers, so reading an event allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    pub event: Option<&'a str>,
    pub data: &'a str,
}

/// Why the stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("a server-sent event is larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// The parser's state between two pieces of input. Its buffers are kept from event to event.
#[derive(Debug)]
pub struct SseParser {
    /// The start of a line whose end has not arrived yet.
    line: Vec<u8>,
    /// The last byte seen was `\r`: a `\n` that follows belongs to the same line end.
    after_cr: bool,
    /// No line has been completed yet (a leading byte-order mark is dropped from it).
    first_line: bool,
    /// The `event:` name of the event being read; meaningful only with `has_event`.
    event: String,
    has_event: bool,
    /// The data lines of the event being read, each followed by `\n`.
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
            event: String::new(),
            has_event: false,
            data: String::new(),
            has_data: false,
            limit,
        }
    }

    /// Reads the next piece of the stream and hands every event it completes to `on_event`, in
    /// order. The first error, the parser's or `on_event`'s, stops the reading and is returned.
    pub fn feed<E: From<SseError>>(
        &mut self,
        bytes: &[u8],
        mut on_event: impl FnMut(SseEvent<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut rest = bytes;
        if self.after_cr && !rest.is_empty() {
            // `\r` ended the previous piece; a `\n` here completes the same `\r\n`.
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
            self.after_cr = false;
        }
        // `memchr2` looks at many bytes per step; a byte-by-byte search was about 12 % of the
        // worker's instructions per answer (22 events, ~5 KB; docs/PERFORMANCE.md).
        while let Some(i) = memchr::memchr2(b'\n', b'\r', rest) {
            if self.line.is_empty() {
                // The whole line is in this piece: read it where it lies.
                self.check_room(i)?;
                self.process_line(&rest[..i], &mut on_event)?;
            } else {
                self.push_line_bytes(&rest[..i])?;
                let line = std::mem::take(&mut self.line);
                let processed = self.process_line(&line, &mut on_event);
                // Keep the line buffer's allocation for the next line.
                self.line = line;
                self.line.clear();
                processed?;
            }
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
        self.push_line_bytes(rest).map_err(E::from)
    }

    /// True when the stream stopped in the middle of an event (it is discarded, as the format
    /// requires; the caller decides whether that matters).
    pub fn has_partial_event(&self) -> bool {
        self.has_data || !self.line.is_empty()
    }

    /// Refuses a line of `more` bytes that would take the event over the limit.
    fn check_room(&self, more: usize) -> Result<(), SseError> {
        if self.line.len() + self.data.len() + more > self.limit {
            return Err(SseError::TooLarge { limit: self.limit });
        }
        Ok(())
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        self.check_room(bytes.len())?;
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line<E>(
        &mut self,
        line: &[u8],
        on_event: &mut impl FnMut(SseEvent<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut line = line;
        if self.first_line {
            self.first_line = false;
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if line.is_empty() {
            return self.dispatch(on_event);
        }
        if line[0] == b':' {
            return Ok(());
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
                self.data.push_str(&text(value));
                self.data.push('\n');
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&text(value));
                self.has_event = true;
            }
            // `id` and `retry` matter to browsers reconnecting; a Dify call is never resumed.
            _ => {}
        }
        Ok(())
    }

    fn dispatch<E>(
        &mut self,
        on_event: &mut impl FnMut(SseEvent<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let has_event = std::mem::take(&mut self.has_event);
        if !std::mem::take(&mut self.has_data) {
            return Ok(());
        }
        // Without the `\n` after the last data line.
        let data = &self.data[..self.data.len() - 1];
        let event = SseEvent {
            event: has_event.then_some(self.event.as_str()),
            data,
        };
        let handled = on_event(event);
        self.data.clear();
        handled
    }
}

/// A line's value as text, invalid bytes as U+FFFD. Valid UTF-8 (every line Dify writes) is
/// checked by `str::from_utf8`, which reads ASCII many bytes at a time; `from_utf8_lossy` walks
/// every byte, and only a line that needs replacing goes through it.
fn text(value: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(valid) => valid.into(),
        Err(_) => String::from_utf8_lossy(value),
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

    /// An event as the tests keep it: its name and data, owned.
    type Owned = (Option<String>, String);

    fn expected() -> Vec<Owned> {
        let ev = |event: Option<&str>, data: &str| (event.map(str::to_owned), data.to_owned());
        vec![
            ev(None, "{\"event\": \"message\", \"answer\": \"hé\"}"),
            ev(None, "{\"event\": \"message\",\n\"answer\": \"lo\"}"),
            ev(Some("message_end"), "{\"event\":\"message_end\"}"),
            ev(None, ""),
            ev(None, "last"),
        ]
    }

    /// Feeds `bytes` and keeps every event it completes.
    fn feed(parser: &mut SseParser, bytes: &[u8], out: &mut Vec<Owned>) -> Result<(), SseError> {
        parser.feed(bytes, |e: SseEvent<'_>| {
            out.push((e.event.map(str::to_owned), e.data.to_owned()));
            Ok::<_, SseError>(())
        })
    }

    fn parse_in_pieces(pieces: &[&[u8]]) -> (Vec<Owned>, bool) {
        let mut parser = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for piece in pieces {
            feed(&mut parser, piece, &mut out).unwrap();
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
    fn invalid_utf_8_becomes_replacement_characters_and_valid_text_is_kept_as_it_is() {
        let stream: &[u8] =
            b"event: n\xFFme\ndata: {\"answer\": \"\xC3\xA9 \xE2\x82\xAC \xFF\xC3\"}\n\n\
data: \xC3\xA9\xF0\x9F\x98\x80 only valid\n\n";
        let want = vec![
            (
                Some("n\u{FFFD}me".to_owned()),
                "{\"answer\": \"é € \u{FFFD}\u{FFFD}\"}".to_owned(),
            ),
            (None, "é😀 only valid".to_owned()),
        ];
        assert_eq!(parse_in_pieces(&[stream]).0, want);
        // Split anywhere, even inside a character, the same.
        let pieces: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_in_pieces(&pieces).0, want);
    }

    #[test]
    fn the_callers_error_stops_the_reading() {
        let mut parser = SseParser::new(1 << 20);
        let mut seen = 0;
        let result = parser.feed(b"data: 1\n\ndata: 2\n\ndata: 3\n\n", |_| {
            seen += 1;
            if seen == 2 {
                Err(SseError::TooLarge { limit: 0 })
            } else {
                Ok(())
            }
        });
        assert_eq!(result, Err(SseError::TooLarge { limit: 0 }));
        assert_eq!(seen, 2, "the third event is not read");
    }

    #[test]
    fn an_event_larger_than_the_limit_is_refused() {
        let mut parser = SseParser::new(16);
        let mut out = Vec::new();
        feed(&mut parser, b"data: 0123456789\n", &mut out).unwrap();
        assert_eq!(
            feed(&mut parser, b"data: 0123456789\n", &mut out),
            Err(SseError::TooLarge { limit: 16 })
        );
        let mut parser = SseParser::new(16);
        assert!(feed(&mut parser, &[b'x'; 17], &mut out).is_err());
        // A whole line in one piece is held to the same limit.
        let mut parser = SseParser::new(16);
        assert!(feed(&mut parser, b"data: 0123456789abcdef\n", &mut out).is_err());
    }
}
