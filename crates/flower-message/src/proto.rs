//! Conversions to and from the protobuf forms of messages and records
//! (flwr's `common/serde.py`: `message_to_proto`, `recorddict_to_proto`,
//! ...). The Fleet API sends messages as metadata plus an empty or error
//! payload (the content travels as objects); the protobuf records are used
//! inline by `Context.state` and other APIs.

use flower_proto as pb;
use pb::record_dict::item::Value as PbRecord;

use crate::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, Error, Message, MessageError, Metadata,
    MetricRecord, MetricValue, Payload, Record, RecordDict,
};

impl TryFrom<&Array> for pb::Array {
    type Error = Error;

    /// Fails when a dimension exceeds `i32::MAX` (the protobuf `shape` is
    /// `repeated int32`).
    fn try_from(a: &Array) -> Result<Self, Error> {
        let shape = a
            .shape
            .iter()
            .map(|&d| {
                i32::try_from(d).map_err(|_| {
                    Error::InvalidValue(format!("dimension {d} does not fit a protobuf int32"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(pb::Array {
            dtype: a.dtype.clone(),
            shape,
            stype: a.stype.clone(),
            data: a.data.clone(),
        })
    }
}

impl TryFrom<pb::Array> for Array {
    type Error = Error;

    fn try_from(a: pb::Array) -> Result<Self, Error> {
        let shape = a
            .shape
            .iter()
            .map(|&d| {
                usize::try_from(d)
                    .map_err(|_| Error::InvalidValue(format!("negative dimension {d}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Array {
            dtype: a.dtype,
            shape,
            stype: a.stype,
            data: a.data,
        })
    }
}

impl TryFrom<&RecordDict> for pb::RecordDict {
    type Error = Error;

    fn try_from(rd: &RecordDict) -> Result<Self, Error> {
        let items = rd
            .iter()
            .map(|(key, record)| {
                let value = match record {
                    Record::Array(r) => PbRecord::ArrayRecord(pb::ArrayRecord {
                        items: r
                            .iter()
                            .map(|(k, a)| {
                                Ok(pb::array_record::Item {
                                    key: k.clone(),
                                    value: Some(a.try_into()?),
                                })
                            })
                            .collect::<Result<_, Error>>()?,
                    }),
                    Record::Config(r) => PbRecord::ConfigRecord(pb::ConfigRecord {
                        items: r
                            .iter()
                            .map(|(k, v)| pb::config_record::Item {
                                key: k.clone(),
                                value: Some(v.to_proto()),
                            })
                            .collect(),
                    }),
                    Record::Metric(r) => PbRecord::MetricRecord(pb::MetricRecord {
                        items: r
                            .iter()
                            .map(|(k, v)| pb::metric_record::Item {
                                key: k.clone(),
                                value: Some(v.to_proto()),
                            })
                            .collect(),
                    }),
                };
                Ok(pb::record_dict::Item {
                    key: key.clone(),
                    value: Some(value),
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(pb::RecordDict { items })
    }
}

impl TryFrom<pb::RecordDict> for RecordDict {
    type Error = Error;

    /// Later duplicates of a key replace earlier ones in place, as Python's
    /// dict comprehension does.
    fn try_from(rd: pb::RecordDict) -> Result<Self, Error> {
        let mut out = RecordDict::new();
        for item in rd.items {
            let record = match item.value {
                Some(PbRecord::ArrayRecord(r)) => Record::Array(
                    r.items
                        .into_iter()
                        .map(|i| Ok((i.key, i.value.unwrap_or_default().try_into()?)))
                        .collect::<Result<ArrayRecord, Error>>()?,
                ),
                Some(PbRecord::ConfigRecord(r)) => Record::Config(
                    r.items
                        .into_iter()
                        .map(|i| Ok((i.key, ConfigValue::try_from(i.value.unwrap_or_default())?)))
                        .collect::<Result<ConfigRecord, Error>>()?,
                ),
                Some(PbRecord::MetricRecord(r)) => Record::Metric(
                    r.items
                        .into_iter()
                        .map(|i| Ok((i.key, MetricValue::try_from(i.value.unwrap_or_default())?)))
                        .collect::<Result<MetricRecord, Error>>()?,
                ),
                None => {
                    return Err(Error::InvalidValue(format!(
                        "RecordDict item {:?} holds no record",
                        item.key
                    )))
                }
            };
            out.insert(item.key, record);
        }
        Ok(out)
    }
}

impl TryFrom<&Message> for pb::Message {
    type Error = Error;

    /// flwr's `message_to_proto`: metadata plus content or error.
    fn try_from(m: &Message) -> Result<Self, Error> {
        let (content, error) = match &m.payload {
            Payload::Content(c) => (Some(c.try_into()?), None),
            Payload::Error(e) => (None, Some(e.into())),
        };
        Ok(pb::Message {
            metadata: Some((&m.metadata).into()),
            content,
            error,
        })
    }
}

impl TryFrom<pb::Message> for Message {
    type Error = Error;

    /// flwr's `message_from_proto`; a message with neither content nor
    /// error (flwr's SuperLink never sends one) is refused.
    fn try_from(m: pb::Message) -> Result<Self, Error> {
        let metadata = Metadata::from(m.metadata.unwrap_or_default());
        let payload = match (m.content, m.error) {
            (None, Some(e)) => Payload::Error(MessageError::from(e)),
            (Some(c), None) => Payload::Content(c.try_into()?),
            (Some(_), Some(_)) => {
                return Err(Error::InvalidValue(
                    "a Message carries both content and an error".into(),
                ))
            }
            (None, None) => {
                return Err(Error::InvalidValue(
                    "a Message carries neither content nor an error".into(),
                ))
            }
        };
        Ok(Message { metadata, payload })
    }
}

impl Message {
    /// What the Fleet API's `PullMessages`/`PushMessages` carry for this
    /// message: its metadata, and its error or an empty `RecordDict` (the
    /// content itself travels as objects).
    pub fn to_wire_proto(&self) -> pb::Message {
        let (content, error) = match &self.payload {
            Payload::Content(_) => (Some(pb::RecordDict::default()), None),
            Payload::Error(e) => (None, Some(e.into())),
        };
        pb::Message {
            metadata: Some((&self.metadata).into()),
            content,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refusals() {
        let content = RecordDict::new()
            .with(
                "a",
                ArrayRecord::new().with(
                    "w",
                    Array {
                        dtype: "float32".into(),
                        shape: vec![0, 3],
                        stype: "numpy.ndarray".into(),
                        data: bytes::Bytes::from_static(b"npy"),
                    },
                ),
            )
            .with("c", ConfigRecord::new().with("x", vec!["s".to_owned()]))
            .with("m", MetricRecord::new().with("y", u64::MAX));
        let message = Message::new(Metadata::default(), content);
        let proto = pb::Message::try_from(&message);
        let back = proto.and_then(Message::try_from).ok();
        assert_eq!(back.as_ref(), Some(&message));
        let wire = message.to_wire_proto();
        assert_eq!(wire.content, Some(pb::RecordDict::default()));
        assert!(wire.error.is_none());

        let mut big = message.clone();
        if let Payload::Content(c) = &mut big.payload {
            c.insert(
                "big".into(),
                ArrayRecord::new()
                    .with(
                        "b",
                        Array {
                            dtype: "uint8".into(),
                            shape: vec![1 << 31],
                            stype: String::new(),
                            data: bytes::Bytes::new(),
                        },
                    )
                    .into(),
            );
        }
        assert!(matches!(
            pb::Message::try_from(&big),
            Err(Error::InvalidValue(_))
        ));
        let neither = pb::Message::default();
        assert!(Message::try_from(neither).is_err());
        let negative = pb::Array {
            shape: vec![-1],
            ..Default::default()
        };
        assert!(Array::try_from(negative).is_err());
    }
}
