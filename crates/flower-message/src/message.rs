//! [`Message`], its [`Metadata`], and the error a message can carry instead
//! of content (`flwr.app.Message`, `flwr.app.Metadata`, `flwr.app.Error`).

use flower_proto as pb;

use crate::RecordDict;

/// A message between the ServerApp and ClientApps (`flwr.app.Message`).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Routing and bookkeeping.
    pub metadata: Metadata,
    /// Records, or the error that replaced them.
    pub payload: Payload,
}

/// What a [`Message`] carries: content or an error, never both.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// The records.
    Content(RecordDict),
    /// The error reported instead of content.
    Error(MessageError),
}

/// The error a message carries instead of content (`flwr.app.Error`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageError {
    /// flwr's `ErrorCode` (e.g. 4 = reply unavailable, 5 = node unavailable).
    pub code: i64,
    /// Free text; empty means none (`None` in Python).
    pub reason: String,
}

/// A message's metadata (`flwr.app.Metadata`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// The run.
    pub run_id: u64,
    /// The message's object id (set by [`deflate`](crate::deflate) and
    /// [`inflate`](crate::inflate); excluded from the id itself).
    pub message_id: String,
    /// Sender.
    pub src_node_id: u64,
    /// Receiver.
    pub dst_node_id: u64,
    /// The instruction this replies to (empty for instructions).
    pub reply_to_message_id: String,
    /// Group (e.g. the server round).
    pub group_id: String,
    /// Time to live, seconds.
    pub ttl: f64,
    /// `"train"`, `"evaluate"`, `"query"`, `"system"`, optionally
    /// `"<type>.<action>"`.
    pub message_type: String,
    /// Creation time, Unix seconds.
    pub created_at: f64,
    /// Sending task, if any.
    pub src_task_id: Option<u64>,
    /// Receiving task, if any.
    pub dst_task_id: Option<u64>,
}

impl Message {
    /// A message with content.
    pub fn new(metadata: Metadata, content: RecordDict) -> Self {
        Message {
            metadata,
            payload: Payload::Content(content),
        }
    }

    /// A message with an error instead of content.
    pub fn with_error(metadata: Metadata, error: MessageError) -> Self {
        Message {
            metadata,
            payload: Payload::Error(error),
        }
    }

    /// The content, if the message has no error.
    pub fn content(&self) -> Option<&RecordDict> {
        match &self.payload {
            Payload::Content(c) => Some(c),
            Payload::Error(_) => None,
        }
    }

    /// The error, if the message carries one.
    pub fn error(&self) -> Option<&MessageError> {
        match &self.payload {
            Payload::Error(e) => Some(e),
            Payload::Content(_) => None,
        }
    }
}

impl From<&Metadata> for pb::Metadata {
    fn from(m: &Metadata) -> Self {
        pb::Metadata {
            run_id: m.run_id,
            message_id: m.message_id.clone(),
            src_node_id: m.src_node_id,
            dst_node_id: m.dst_node_id,
            reply_to_message_id: m.reply_to_message_id.clone(),
            group_id: m.group_id.clone(),
            ttl: m.ttl,
            message_type: m.message_type.clone(),
            created_at: m.created_at,
            src_task_id: m.src_task_id,
            dst_task_id: m.dst_task_id,
        }
    }
}

impl From<pb::Metadata> for Metadata {
    fn from(m: pb::Metadata) -> Self {
        Metadata {
            run_id: m.run_id,
            message_id: m.message_id,
            src_node_id: m.src_node_id,
            dst_node_id: m.dst_node_id,
            reply_to_message_id: m.reply_to_message_id,
            group_id: m.group_id,
            ttl: m.ttl,
            message_type: m.message_type,
            created_at: m.created_at,
            src_task_id: m.src_task_id,
            dst_task_id: m.dst_task_id,
        }
    }
}

impl From<&MessageError> for pb::Error {
    fn from(e: &MessageError) -> Self {
        pb::Error {
            code: e.code,
            reason: e.reason.clone(),
        }
    }
}

impl From<pb::Error> for MessageError {
    fn from(e: pb::Error) -> Self {
        MessageError {
            code: e.code,
            reason: e.reason,
        }
    }
}

/// Encodes a `Message` object body: `flwr.proto.Message{metadata, error}`
/// with `message_id` blanked and no content, as Python's
/// `SerializeToString(deterministic=True)` writes it.
///
/// Written by hand rather than with prost because Python serializes a
/// `double` field whenever its bits are non-zero (so `-0.0` is written) and
/// prost skips any value `== 0.0`; everything else is the same.
pub(crate) fn encode_message_body(metadata: &Metadata, error: Option<&MessageError>) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, WireType};

    let mut meta = Vec::with_capacity(64);
    let uint = |buf: &mut Vec<u8>, tag: u32, v: u64| {
        if v != 0 {
            encode_key(tag, WireType::Varint, buf);
            encode_varint(v, buf);
        }
    };
    let string = |buf: &mut Vec<u8>, tag: u32, v: &str| {
        if !v.is_empty() {
            encode_key(tag, WireType::LengthDelimited, buf);
            encode_varint(v.len() as u64, buf);
            buf.extend_from_slice(v.as_bytes());
        }
    };
    let double = |buf: &mut Vec<u8>, tag: u32, v: f64| {
        if v.to_bits() != 0 {
            encode_key(tag, WireType::SixtyFourBit, buf);
            buf.extend_from_slice(&v.to_le_bytes());
        }
    };
    uint(&mut meta, 1, metadata.run_id);
    // 2: message_id, always blank in the body.
    uint(&mut meta, 3, metadata.src_node_id);
    uint(&mut meta, 4, metadata.dst_node_id);
    string(&mut meta, 5, &metadata.reply_to_message_id);
    string(&mut meta, 6, &metadata.group_id);
    double(&mut meta, 7, metadata.ttl);
    string(&mut meta, 8, &metadata.message_type);
    double(&mut meta, 9, metadata.created_at);
    // Explicit presence: written when set, even to 0.
    for (tag, v) in [(10, metadata.src_task_id), (11, metadata.dst_task_id)] {
        if let Some(v) = v {
            encode_key(tag, WireType::Varint, &mut meta);
            encode_varint(v, &mut meta);
        }
    }

    let mut out = Vec::with_capacity(meta.len() + 16);
    encode_key(1, WireType::LengthDelimited, &mut out);
    encode_varint(meta.len() as u64, &mut out);
    out.extend_from_slice(&meta);
    if let Some(e) = error {
        let mut err = Vec::with_capacity(e.reason.len() + 12);
        if e.code != 0 {
            prost::encoding::sint64::encode(1, &e.code, &mut err);
        }
        string(&mut err, 2, &e.reason);
        encode_key(3, WireType::LengthDelimited, &mut out);
        encode_varint(err.len() as u64, &mut out);
        out.extend_from_slice(&err);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn body_matches_prost_except_negative_zero() {
        let mut m = Metadata {
            run_id: 3,
            message_id: "ignored".into(),
            src_node_id: 1,
            dst_node_id: u64::MAX,
            reply_to_message_id: "r".into(),
            group_id: "g".into(),
            ttl: 3600.0,
            message_type: "train".into(),
            created_at: 1.5,
            src_task_id: Some(0),
            dst_task_id: None,
        };
        let err = MessageError {
            code: -4,
            reason: "gone".into(),
        };
        let mut blank = pb::Metadata::from(&m);
        blank.message_id.clear();
        let expected = pb::Message {
            metadata: Some(blank.clone()),
            content: None,
            error: Some((&err).into()),
        }
        .encode_to_vec();
        assert_eq!(encode_message_body(&m, Some(&err)), expected);
        // prost drops -0.0; Python (and we) keep it, and it decodes back.
        m.ttl = -0.0;
        let body = encode_message_body(&m, None);
        let decoded = pb::Message::decode(body.as_slice()).unwrap_or_default();
        let ttl = decoded.metadata.map(|m| m.ttl).unwrap_or(1.0);
        assert!(ttl == 0.0 && ttl.is_sign_negative());
        assert_eq!(
            encode_message_body(&Metadata::default(), None),
            [0x0a, 0x00],
            "an empty metadata is still present"
        );
    }
}
