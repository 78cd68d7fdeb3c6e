//! One event of a Dify stream, read as the few fields the worker uses and borrowed from the
//! event's own text: its name, the ids it may reveal, a message's text chunk and a workflow's
//! `data.text` / `data.id`. Every other field is skipped unread, so reading a `message` event (the
//! bulk of every answer) builds no JSON tree and allocates nothing unless a string holds escapes.
//! A field of an unexpected type reads as absent instead of failing the event, as a lookup in a
//! parsed `serde_json::Value` would. The rare events whose nested content the worker keeps
//! (`message_end`'s usage, `workflow_finished`'s data, an `error`) are read whole by the
//! assembler. Pure: no I/O.
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// The fields of a stream event the assembler reads per event.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct StreamEvent<'a> {
    #[serde(borrow, default)]
    pub event: Text<'a>,
    #[serde(borrow, default)]
    pub task_id: Text<'a>,
    #[serde(borrow, default)]
    pub workflow_run_id: Text<'a>,
    #[serde(borrow, default)]
    pub conversation_id: Text<'a>,
    #[serde(borrow, default)]
    pub message_id: Text<'a>,
    /// The message's id in message events; a thought's or a file's elsewhere.
    #[serde(borrow, default)]
    pub id: Text<'a>,
    /// A message's chunk of text (or the whole text of `message_replace`).
    #[serde(borrow, default)]
    pub answer: Text<'a>,
    #[serde(borrow, default)]
    pub data: Data<'a>,
}

/// A string field: its text when it is a JSON string, absent when it is missing, `null` or of
/// any other type. Borrowed from the event unless the string holds escapes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Text<'a>(Option<Cow<'a, str>>);

impl<'a> Text<'a> {
    pub(crate) fn as_str(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// Of a workflow event's `data` object: `text` (a `text_chunk`'s) and `id` (the run's, in
/// `workflow_started`). Absent when `data` is not an object.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Data<'a> {
    pub text: Text<'a>,
    pub id: Text<'a>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Borrowed(v))))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Owned(v.to_owned()))))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Owned(v))))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Text(None))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Text(None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Text(None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Text(None))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Text(None))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Text(None))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Text::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Data<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DataVisitor)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = Data<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut data = Data::default();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match key.as_str() {
                Some("text") => data.text = map.next_value()?,
                Some("id") => data.id = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(data)
    }

    // Anything else is no object: nothing in it.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Data::default())
    }

    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
        Ok(Data::default())
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Data::default())
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Data::default())
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Data::default())
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Data::default())
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Data::default())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Data::default())
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Data::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Data::deserialize(d)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn read(json: &str) -> StreamEvent<'_> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_message_event_is_read_without_copying_its_strings() {
        let json = r#"{"event":"message","task_id":"t1","id":"m1","message_id":"m1","conversation_id":"c1","answer":"Hel","created_at":1,"from_variable_selector":null,"metadata":{"x":[1,2]}}"#;
        let e = read(json);
        assert_eq!(e.event.as_str(), Some("message"));
        assert_eq!(e.task_id.as_str(), Some("t1"));
        assert_eq!(e.message_id.as_str(), Some("m1"));
        assert_eq!(e.conversation_id.as_str(), Some("c1"));
        assert_eq!(e.answer.as_str(), Some("Hel"));
        assert_eq!(e.workflow_run_id, Text::default());
        assert!(matches!(e.answer.0, Some(Cow::Borrowed(_))), "borrowed");
    }

    #[test]
    fn escapes_are_decoded() {
        let e = read(r#"{"event":"message","answer":"line\none \"q\" \u00e9"}"#);
        assert_eq!(e.answer.as_str(), Some("line\none \"q\" é"));
    }

    #[test]
    fn fields_of_another_type_read_as_absent() {
        let e = read(
            r#"{"event":"message","id":7,"task_id":null,"answer":{"a":[1]},"conversation_id":["x"],"message_id":true,"data":"not an object"}"#,
        );
        assert_eq!(e.event.as_str(), Some("message"));
        for field in [
            &e.id,
            &e.task_id,
            &e.answer,
            &e.conversation_id,
            &e.message_id,
        ] {
            assert_eq!(field.as_str(), None);
        }
        assert_eq!(e.data, Data::default());
    }

    #[test]
    fn a_workflow_events_data_gives_its_text_and_id() {
        let e = read(
            r#"{"event":"text_chunk","data":{"text":"ab","from_variable_selector":["n","text"],"id":"r1","outputs":{"answer":"x"}}}"#,
        );
        assert_eq!(e.data.text.as_str(), Some("ab"));
        assert_eq!(e.data.id.as_str(), Some("r1"));
    }

    #[test]
    fn what_is_not_json_is_refused() {
        assert!(serde_json::from_str::<StreamEvent<'_>>("{\"event\":").is_err());
        assert!(serde_json::from_str::<StreamEvent<'_>>("data").is_err());
    }
}
