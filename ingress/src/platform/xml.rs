//! A small XML reader for the platforms that still speak XML (WeCom's callbacks): it turns a
//! document into JSON, an element with children becoming an object and a leaf its text
//! (CDATA or escaped text, concatenated). It refuses DTDs and deep nesting, never expands
//! anything but the five predefined entities, and never panics. It does not validate schemas;
//! the platform modules read the fields they need from the JSON.
use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::{Map, Value};

/// Deeper documents are refused: platform callbacks nest two or three levels.
const MAX_DEPTH: usize = 16;

struct Frame {
    name: String,
    text: String,
    children: Map<String, Value>,
}

/// The root element of `xml` as JSON (its own name is dropped).
pub fn to_json(xml: &str) -> Result<Value, String> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Frame> = Vec::new();
    loop {
        let event = reader.read_event().map_err(|e| format!("bad XML: {e}"))?;
        match event {
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err("XML nested too deep".into());
                }
                let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                stack.push(Frame {
                    name,
                    text: String::new(),
                    children: Map::new(),
                });
            }
            Event::Empty(empty) => {
                let name = String::from_utf8_lossy(empty.local_name().as_ref()).into_owned();
                match stack.last_mut() {
                    Some(parent) => {
                        insert(&mut parent.children, name, Value::String(String::new()))
                    }
                    None => return Ok(Value::Object(Map::new())),
                }
            }
            Event::Text(text) => {
                let text = text.unescape().map_err(|e| format!("bad XML text: {e}"))?;
                match stack.last_mut() {
                    Some(frame) => frame.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err("text outside the root element".into()),
                }
            }
            Event::CData(cdata) => {
                let bytes = cdata.into_inner();
                let text =
                    std::str::from_utf8(&bytes).map_err(|_| "CDATA is not UTF-8".to_string())?;
                match stack.last_mut() {
                    Some(frame) => frame.text.push_str(text),
                    None => return Err("CDATA outside the root element".into()),
                }
            }
            Event::End(_) => {
                // quick-xml checks that end names match their start, so the top frame is this one.
                let Some(frame) = stack.pop() else {
                    return Err("unbalanced end tag".into());
                };
                // An element with children is an object; the whitespace between children is layout.
                let value = if frame.children.is_empty() {
                    Value::String(frame.text)
                } else {
                    Value::Object(frame.children)
                };
                match stack.last_mut() {
                    Some(parent) => insert(&mut parent.children, frame.name, value),
                    None => {
                        return Ok(match value {
                            Value::Object(_) => value,
                            _ => Value::Object(Map::new()),
                        })
                    }
                }
            }
            // A DTD could declare entities; no platform sends one, so it is refused outright.
            Event::DocType(_) => return Err("DTDs are not accepted".into()),
            Event::Eof => return Err("XML ends before its root element closes".into()),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
}

/// A repeated element becomes an array of its values, in order.
fn insert(map: &mut Map<String, Value>, name: String, value: Value) {
    match map.get_mut(&name) {
        None => {
            map.insert(name, value);
        }
        Some(Value::Array(items)) => items.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_table() {
        let cases: &[(&str, Result<Value, ()>)] = &[
            (
                "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n<CreateTime>1409659813</CreateTime>\n<Content><![CDATA[a <b> & c]]></Content></xml>",
                Ok(json!({"ToUserName": "wx5823bf96d3bd56c7", "CreateTime": "1409659813", "Content": "a <b> & c"})),
            ),
            ("<?xml version=\"1.0\"?><xml><A>x &amp; y</A><B/></xml>", Ok(json!({"A": "x & y", "B": ""}))),
            ("<xml><L><I>1</I><I>2</I></L></xml>", Ok(json!({"L": {"I": ["1", "2"]}}))),
            ("<xml/>", Ok(json!({}))),
            ("<xml>text</xml>", Ok(json!({}))),
            ("<xml><A>1</B></xml>", Err(())),
            ("<xml><A>1</A>", Err(())),
            ("<!DOCTYPE x [<!ENTITY e \"boom\">]><xml><A>&e;</A></xml>", Err(())),
            ("<xml><A>&e;</A></xml>", Err(())),
            ("", Err(())),
            ("garbage", Err(())),
        ];
        for (xml, want) in cases {
            assert_eq!(to_json(xml).map_err(|_| ()), *want, "{xml}");
        }
        let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert!(to_json(&deep).is_err());
    }
}
