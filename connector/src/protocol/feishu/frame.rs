//! The frame of Feishu/Lark's long connection, `pbbp2.Frame` of the official SDKs
//! (`larksuite/oapi-sdk-go`, package `ws`), derived by hand (no protoc): every WebSocket message
//! either way is one, binary. `method` 0 is a control frame (`type` header `ping`/`pong`), 1 a
//! data frame (`type` `event`/`card`, `message_id`, and `sum`/`seq` when the payload came in
//! fragments). The field numbers and proto2 labels are the SDK's.
use prost::Message as _;

pub const METHOD_CONTROL: i32 = 0;
pub const METHOD_DATA: i32 = 1;

/// One `headers` entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Header {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, required, tag = "2")]
    pub value: String,
}

/// `pbbp2.Frame`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PbFrame {
    #[prost(uint64, required, tag = "1")]
    pub seq_id: u64,
    #[prost(uint64, required, tag = "2")]
    pub log_id: u64,
    #[prost(int32, required, tag = "3")]
    pub service: i32,
    #[prost(int32, required, tag = "4")]
    pub method: i32,
    #[prost(message, repeated, tag = "5")]
    pub headers: Vec<Header>,
    #[prost(string, optional, tag = "6")]
    pub payload_encoding: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub payload_type: Option<String>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub payload: Option<Vec<u8>>,
    #[prost(string, optional, tag = "9")]
    pub log_id_new: Option<String>,
}

impl PbFrame {
    /// A control frame of `kind` (`ping`, `pong`) for `service`.
    pub fn control(service: i32, kind: &str) -> Self {
        Self {
            service,
            method: METHOD_CONTROL,
            headers: vec![Header {
                key: "type".into(),
                value: kind.into(),
            }],
            ..Self::default()
        }
    }

    /// The first header named `key`.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| h.value.as_str())
    }

    /// A header as a number (0 when absent or not one, as the SDK reads it).
    pub fn header_int(&self, key: &str) -> usize {
        self.header(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    pub fn add_header(&mut self, key: &str, value: impl Into<String>) {
        self.headers.push(Header {
            key: key.into(),
            value: value.into(),
        });
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        Self::decode(bytes)
    }
}
