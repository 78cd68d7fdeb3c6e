//! Long answers split to a kind's limit. Pure: no I/O, no clock. A part never ends inside a
//! UTF-8 sequence; cuts prefer a paragraph break, then a line break, then a space, in the second
//! half of what fits; parts keep the answer's order and, when there is more than one, start with
//! `(i/n) `, a prefix counted within the limit. An answer never becomes more than [`MAX_PARTS`]
//! messages: the last one then says the rest was cut ([`CUT_MARKER`]). Sending the parts (and remembering which were
//! sent) is the target's business, not this module's.

/// How a platform counts the length of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// UTF-8 bytes (WeCom).
    Bytes,
    /// Unicode scalar values (Slack, Rocket.Chat).
    Chars,
    /// UTF-16 code units (Telegram counts these: an emoji outside the BMP is two).
    Utf16,
    /// Bytes once the text is escaped as a JSON string (limits on a JSON body: Feishu).
    JsonBytes,
}

/// A platform's limit on one message's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: usize,
    pub measure: Measure,
}

impl Limit {
    pub const fn bytes(max: usize) -> Self {
        Self {
            max,
            measure: Measure::Bytes,
        }
    }

    pub const fn chars(max: usize) -> Self {
        Self {
            max,
            measure: Measure::Chars,
        }
    }

    pub const fn utf16(max: usize) -> Self {
        Self {
            max,
            measure: Measure::Utf16,
        }
    }

    pub const fn json_bytes(max: usize) -> Self {
        Self {
            max,
            measure: Measure::JsonBytes,
        }
    }

    /// The length of `text` as the platform counts it.
    pub fn measure(&self, text: &str) -> usize {
        text.chars().map(|c| self.cost(c)).sum()
    }

    fn cost(&self, c: char) -> usize {
        match self.measure {
            Measure::Bytes => c.len_utf8(),
            Measure::Chars => 1,
            Measure::Utf16 => c.len_utf16(),
            Measure::JsonBytes => match c {
                '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
                c if (c as u32) < 0x20 => 6,
                c => c.len_utf8(),
            },
        }
    }
}

/// The most messages one answer becomes: a chat flooded with more is not answered, it is spammed
/// (and each message spends the target's rate limit).
pub const MAX_PARTS: usize = 20;
/// The last of [`MAX_PARTS`] messages when the answer needed more.
pub const CUT_MARKER: &str = "[… the answer was too long for this chat: the rest was cut]";

/// Splits `text` into parts that each fit `limit`, numbered `(i/n) ` when there are several,
/// at most [`MAX_PARTS`] of them. A text that fits (even exactly) is one part, unchanged.
pub fn split(text: &str, limit: Limit) -> Vec<String> {
    if limit.measure(text) <= limit.max {
        return vec![text.to_owned()];
    }
    // The prefix's width depends on the number of parts: try one digit, then two, …
    for digits in 1..=6u32 {
        let widest = 10usize.pow(digits) - 1;
        let prefix = format!("({widest}/{widest}) ").len();
        if prefix >= limit.max {
            break;
        }
        let chunks = capped(text, limit, limit.max - prefix);
        if chunks.len() <= widest {
            let n = chunks.len();
            return chunks
                .into_iter()
                .enumerate()
                .map(|(i, c)| format!("({}/{n}) {c}", i + 1))
                .collect();
        }
    }
    // A limit too small to hold a number: unnumbered parts rather than none.
    capped(text, limit, limit.max.max(1))
}

/// The chunks of `text`, at most [`MAX_PARTS`]: when there would be more, the last is the
/// [`CUT_MARKER`] (as much of it as fits the budget).
fn capped(text: &str, limit: Limit, budget: usize) -> Vec<String> {
    let mut chunks = chunk(text, limit, budget, MAX_PARTS + 1);
    if chunks.len() > MAX_PARTS {
        chunks.truncate(MAX_PARTS - 1);
        chunks.extend(chunk(CUT_MARKER, limit, budget, 1).into_iter().take(1));
    }
    chunks
}

/// Greedy cuts of at most `budget` each, at the best break of each window; at most `most` of
/// them (the text's rest is not looked at).
fn chunk(text: &str, limit: Limit, budget: usize, most: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() && parts.len() < most {
        let mut used = 0;
        let mut end = 0;
        for (i, c) in rest.char_indices() {
            let k = limit.cost(c);
            if used + k > budget {
                break;
            }
            used += k;
            end = i + c.len_utf8();
        }
        if end == rest.len() {
            push_part(&mut parts, rest);
            break;
        }
        if end == 0 {
            // One character wider than the budget: send it alone rather than loop forever.
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        let (cut, resume) = best_break(rest, end);
        push_part(&mut parts, &rest[..cut]);
        rest = &rest[resume..];
    }
    parts
}

fn push_part(parts: &mut Vec<String>, part: &str) {
    let part = part.trim_end();
    if !part.is_empty() {
        parts.push(part.to_owned());
    }
}

/// Where to cut `rest` given that `rest[..end]` fits: `(end of this part, start of the next)`.
/// A separator may start exactly at `end` (it is dropped, so it needs no room).
fn best_break(rest: &str, end: usize) -> (usize, usize) {
    let half = end / 2;
    let within = |extra: usize| {
        let mut e = end;
        // Only ASCII separators are looked for, so extend over ASCII bytes only.
        while e < rest.len() && e < end + extra && rest.as_bytes()[e].is_ascii() {
            e += 1;
        }
        &rest[..e]
    };
    let skip_newlines = |mut i: usize| {
        while rest.as_bytes().get(i) == Some(&b'\n') {
            i += 1;
        }
        i
    };
    if let Some(p) = within(2).rfind("\n\n").filter(|&p| p >= half && p > 0) {
        return (p, skip_newlines(p + 2));
    }
    let one = within(1);
    if let Some(p) = one.rfind('\n').filter(|&p| p >= half && p > 0) {
        return (p, p + 1);
    }
    if let Some(p) = one.rfind(' ').filter(|&p| p >= half && p > 0) {
        return (p, p + 1);
    }
    // Early breaks still beat cutting a word in two.
    if let Some(p) = one.rfind(['\n', ' ']).filter(|&p| p > 0) {
        return (p, p + 1);
    }
    (end, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_fits(parts: &[String], limit: Limit) {
        for p in parts {
            assert!(
                limit.measure(p) <= limit.max,
                "{} > {}: {p:?}",
                limit.measure(p),
                limit.max
            );
        }
    }

    /// The parts without their `(i/n) ` prefixes, joined back with single spaces.
    fn words(parts: &[String]) -> Vec<String> {
        parts
            .iter()
            .map(|p| match p.split_once(") ") {
                Some((n, rest)) if n.starts_with('(') && parts.len() > 1 => rest.to_owned(),
                _ => p.clone(),
            })
            .flat_map(|p| p.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn an_answer_needing_more_than_max_parts_is_cut_with_a_marker() {
        let limit = Limit::chars(100);
        let text = "word ".repeat(100_000);
        let parts = split(&text, limit);
        assert_eq!(parts.len(), MAX_PARTS);
        assert_fits(&parts, limit);
        assert!(parts[0].starts_with(&format!("(1/{MAX_PARTS}) word")));
        assert_eq!(
            parts.last().unwrap(),
            &format!("({MAX_PARTS}/{MAX_PARTS}) {CUT_MARKER}")
        );
        // Exactly MAX_PARTS parts' worth is not cut.
        let fits = split(&"word ".repeat(300), limit);
        assert!(fits.len() <= MAX_PARTS);
        assert!(fits.iter().all(|p| !p.contains(CUT_MARKER)));
        // A limit too narrow for the whole marker still holds its start.
        let narrow = split(&"x".repeat(10_000), Limit::bytes(20));
        assert_eq!(narrow.len(), MAX_PARTS);
        assert!(narrow.last().unwrap().contains("[…"), "{narrow:?}");
    }

    #[test]
    fn texts_that_fit_are_one_part_unchanged() {
        let cases = [
            ("", Limit::bytes(10)),
            ("hello", Limit::bytes(5)),
            ("héllo", Limit::bytes(6)),
            ("héllo", Limit::chars(5)),
            ("😀😀", Limit::utf16(4)),
            ("a\"b", Limit::json_bytes(4)),
            (&*"x".repeat(2048), Limit::bytes(2048)),
        ];
        for (text, limit) in cases {
            assert_eq!(split(text, limit), vec![text.to_owned()], "{limit:?}");
        }
    }

    #[test]
    fn measures_count_as_the_platforms_do() {
        let cases = [
            ("héllo", Measure::Bytes, 6),
            ("héllo", Measure::Chars, 5),
            ("😀a", Measure::Bytes, 5),
            ("😀a", Measure::Chars, 2),
            ("😀a", Measure::Utf16, 3),
            ("a\"\n\u{1}é", Measure::JsonBytes, 1 + 2 + 2 + 6 + 2),
        ];
        for (text, measure, want) in cases {
            assert_eq!(
                Limit { max: 0, measure }.measure(text),
                want,
                "{text:?} {measure:?}"
            );
        }
    }

    #[test]
    fn parts_never_cut_a_utf8_sequence_and_fit_the_limit() {
        // 4-byte emoji, 3-byte CJK, 2-byte accents, without any space to break at.
        let text = "😀中é".repeat(100);
        for limit in [
            Limit::bytes(64),
            Limit::bytes(65),
            Limit::bytes(66),
            Limit::bytes(67),
            Limit::chars(50),
            Limit::utf16(51),
        ] {
            let parts = split(&text, limit);
            assert!(parts.len() > 1);
            assert_fits(&parts, limit);
            let joined: String = parts
                .iter()
                .map(|p| p.split_once(") ").map_or(p.as_str(), |x| x.1))
                .collect();
            assert_eq!(joined, text, "{limit:?}");
        }
    }

    #[test]
    fn paragraph_breaks_are_preferred_then_lines_then_spaces() {
        let para = format!("{}\n\n{}", "a".repeat(30), "b".repeat(30));
        let line = format!("{} {}\n{}", "a".repeat(20), "a".repeat(9), "b".repeat(30));
        let space = format!("{} {}", "a".repeat(30), "b".repeat(30));
        let cases = [
            (
                para.as_str(),
                vec![
                    format!("(1/2) {}", "a".repeat(30)),
                    format!("(2/2) {}", "b".repeat(30)),
                ],
            ),
            (
                line.as_str(),
                vec![
                    format!("(1/2) {} {}", "a".repeat(20), "a".repeat(9)),
                    format!("(2/2) {}", "b".repeat(30)),
                ],
            ),
            (
                space.as_str(),
                vec![
                    format!("(1/2) {}", "a".repeat(30)),
                    format!("(2/2) {}", "b".repeat(30)),
                ],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(split(text, Limit::bytes(40)), want, "{text:?}");
        }
        // A paragraph break in the first half loses to a line break near the end of the window.
        let text = format!("aa\n\n{}\n{}", "c".repeat(28), "d".repeat(30));
        let parts = split(&text, Limit::bytes(40));
        assert_eq!(parts[0], format!("(1/2) aa\n\n{}", "c".repeat(28)));
    }

    #[test]
    fn numbering_is_counted_within_the_limit() {
        let text = (0..30)
            .map(|i| format!("word{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        for max in [24, 30, 47, 100] {
            let limit = Limit::chars(max);
            let parts = split(&text, limit);
            let n = parts.len();
            assert!(n > 1);
            assert_fits(&parts, limit);
            for (i, p) in parts.iter().enumerate() {
                assert!(p.starts_with(&format!("({}/{n}) ", i + 1)), "{p:?}");
            }
            assert_eq!(
                words(&parts).join(" "),
                text,
                "order and content kept at {max}"
            );
        }
    }

    #[test]
    fn ten_parts_or_more_get_wider_numbers_and_still_fit() {
        let text = "x ".repeat(400);
        let limit = Limit::bytes(30);
        let parts = split(&text, limit);
        assert!(parts.len() >= 10, "{}", parts.len());
        assert_fits(&parts, limit);
        assert!(parts[9].starts_with(&format!("(10/{}) ", parts.len())));
    }

    #[test]
    fn byte_and_character_limits_differ_for_non_ascii() {
        let text = "é".repeat(100);
        assert_eq!(split(&text, Limit::chars(100)).len(), 1);
        let parts = split(&text, Limit::bytes(100));
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_fits(&parts, Limit::bytes(100));
    }

    #[test]
    fn json_escapes_count_against_a_body_limit() {
        let text = "\"\n".repeat(30);
        let limit = Limit::json_bytes(64);
        let parts = split(&text, limit);
        assert!(parts.len() >= 2);
        assert_fits(&parts, limit);
    }

    #[test]
    fn a_limit_too_small_for_numbers_still_makes_progress() {
        let parts = split("😀😀😀", Limit::bytes(3));
        assert_eq!(parts, vec!["😀", "😀", "😀"]);
    }
}
