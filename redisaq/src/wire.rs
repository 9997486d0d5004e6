//! The one place that knows what redisaq stores in Redis and how replies look on the wire.
//! Everything else speaks in the types below.
//!
//! A job is a stream entry with the fields `id` (the [`JobId`]), `payload` (JSON),
//! `enqueued_at` (Unix ms) and, when enqueued with a key, `key`. How many attempts a
//! group made is not stored in the entry: each group keeps it in its pending-entries
//! list (the delivery counter), so groups retry independently.

use redis::{ErrorKind, RedisError, Value};

use crate::job::JobId;

/// Field names of a job entry.
pub(crate) mod field {
    pub const ID: &str = "id";
    pub const PAYLOAD: &str = "payload";
    pub const ENQUEUED_AT: &str = "enqueued_at";
    pub const KEY: &str = "key";
    /// The one group that runs the job (a replay); the others acknowledge it unread.
    pub const GROUP: &str = "group";
    /// The entry format, when newer than 1.
    pub const FORMAT: &str = "v";
    /// The enqueuing span's W3C trace context, which the handler's span continues.
    pub const TRACEPARENT: &str = "traceparent";
    /// The same, for a delayed job: the handler's span links to it.
    pub const TRACELINK: &str = "tracelink";
}

/// The newest entry format this version reads: 1 (no `v` field) or 2 (may name the one
/// group that runs it).
pub(crate) const FORMAT: u32 = 2;

/// One stream entry as read. `fields` is `None` when the entry was deleted from the
/// stream while it was still pending.
#[derive(Debug, Clone)]
pub(crate) struct StreamEntry {
    pub id: String,
    pub fields: Option<Vec<(String, String)>>,
}

impl StreamEntry {
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A decoded job entry, borrowing its text from the entry.
#[derive(Debug, Clone)]
pub(crate) struct Envelope<'a> {
    pub id: JobId,
    pub payload: &'a str,
    pub enqueued_at_ms: u64,
    pub key: Option<&'a str>,
    /// The one group that runs it, if not every group.
    pub for_group: Option<&'a str>,
    /// The enqueuing span's trace context.
    pub trace: Option<crate::trace::Carried>,
}

/// Why an entry is not a job this version can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Undecodable {
    /// Not a job: it goes to the dead-letter queue with this reason.
    Malformed(String),
    /// Written by a newer redisaq in a format this version does not know: left alone.
    Newer(u32),
}

/// The fields of a job entry, written straight into an `XADD` (or a script's
/// arguments) without copying the payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobFields<'a> {
    pub id: &'a str,
    pub payload: &'a str,
    pub enqueued_at_ms: u64,
    pub key: Option<&'a str>,
    /// The one group that runs it (format 2, a replay); `None` for every group.
    pub for_group: Option<&'a str>,
    /// The enqueuing span's trace context: continued, or (`true`) linked to.
    pub trace: Option<(&'a str, bool)>,
}

impl redis::ToRedisArgs for JobFields<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg(field::ID.as_bytes());
        out.write_arg(self.id.as_bytes());
        out.write_arg(field::PAYLOAD.as_bytes());
        out.write_arg(self.payload.as_bytes());
        out.write_arg(field::ENQUEUED_AT.as_bytes());
        out.write_arg_fmt(self.enqueued_at_ms);
        if let Some(key) = self.key {
            out.write_arg(field::KEY.as_bytes());
            out.write_arg(key.as_bytes());
        }
        if let Some((traceparent, link)) = self.trace {
            let name = if link {
                field::TRACELINK
            } else {
                field::TRACEPARENT
            };
            out.write_arg(name.as_bytes());
            out.write_arg(traceparent.as_bytes());
        }
        if let Some(group) = self.for_group {
            out.write_arg(field::FORMAT.as_bytes());
            out.write_arg(b"2");
            out.write_arg(field::GROUP.as_bytes());
            out.write_arg(group.as_bytes());
        }
    }

    fn num_of_args(&self) -> usize {
        6 + 2 * usize::from(self.key.is_some())
            + 2 * usize::from(self.trace.is_some())
            + 4 * usize::from(self.for_group.is_some())
    }
}

impl JobFields<'_> {
    /// About how many bytes the fields take, names included: room to write them into
    /// without growing.
    pub(crate) fn byte_len(&self) -> usize {
        const NAMES_AND_NUMBERS: usize = 64;
        NAMES_AND_NUMBERS
            + self.id.len()
            + self.payload.len()
            + self.key.map_or(0, str::len)
            + self.trace.map_or(0, |(trace, _)| trace.len())
            + self.for_group.map_or(0, str::len)
    }
}

/// Decodes a job entry, or says why it is not one.
pub(crate) fn decode_job(entry: &StreamEntry) -> Result<Envelope<'_>, Undecodable> {
    use Undecodable::Malformed;
    if entry.fields.is_none() {
        return Err(Malformed(
            "the entry was deleted from the stream while it was pending".into(),
        ));
    }
    if let Some(format) = entry.field(field::FORMAT) {
        match format.parse::<u32>() {
            Ok(format) if format > FORMAT => return Err(Undecodable::Newer(format)),
            Ok(_) => {}
            Err(_) => {
                return Err(Malformed(format!(
                    "malformed entry: `v` is not a number: {format:?}"
                )))
            }
        }
    }
    let id = entry
        .field(field::ID)
        .ok_or_else(|| Malformed("malformed entry: missing field `id`".into()))?;
    let payload = entry
        .field(field::PAYLOAD)
        .ok_or_else(|| Malformed("malformed entry: missing field `payload`".into()))?;
    let enqueued_at_ms = match entry.field(field::ENQUEUED_AT) {
        Some(text) => text.parse().map_err(|_| {
            Malformed(format!(
                "malformed entry: `enqueued_at` is not a number: {text:?}"
            ))
        })?,
        None => {
            return Err(Malformed(
                "malformed entry: missing field `enqueued_at`".into(),
            ))
        }
    };
    Ok(Envelope {
        id: JobId::from_stored(id),
        payload,
        enqueued_at_ms,
        key: entry.field(field::KEY),
        for_group: entry.field(field::GROUP),
        trace: entry
            .field(field::TRACEPARENT)
            .map(|t| (t, false))
            .or_else(|| entry.field(field::TRACELINK).map(|t| (t, true)))
            .map(|(traceparent, link)| crate::trace::Carried {
                traceparent: traceparent.to_string(),
                link,
            }),
    })
}

/// The raw fields of an entry as a JSON object, for dead-lettering what could not be
/// decoded.
pub(crate) fn fields_as_json(entry: &StreamEntry) -> String {
    let map: serde_json::Map<String, serde_json::Value> = entry
        .fields
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// One row of `XPENDING key group - + count [consumer]`.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub id: String,
    pub consumer: String,
    pub deliveries: u64,
}

fn unexpected(what: &str, value: &Value) -> RedisError {
    RedisError::from((
        ErrorKind::Parse,
        "unexpected reply",
        format!("{what}: {value:?}"),
    ))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn items(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// A text reply, taken without copying (the reply is consumed); the value back if it
/// is not text.
fn into_text(value: Value) -> Result<String, Value> {
    match value {
        Value::BulkString(bytes) => Ok(String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
        Value::SimpleString(s) => Ok(s),
        Value::Int(i) => Ok(i.to_string()),
        Value::VerbatimString { text, .. } => Ok(text),
        other => Err(other),
    }
}

fn into_items(value: Value) -> Result<Vec<Value>, Value> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(other),
    }
}

/// `[id, [k, v, ...] | nil]`. Replies are consumed: entries are what a consumer reads
/// most, and their strings move out of the reply instead of being copied.
pub(crate) fn parse_entry(value: Value) -> Result<StreamEntry, RedisError> {
    let parts = into_items(value).map_err(|v| unexpected("stream entry", &v))?;
    let [id, fields] = <[Value; 2]>::try_from(parts)
        .map_err(|parts| unexpected("stream entry", &Value::Array(parts)))?;
    let id = into_text(id).map_err(|id| unexpected("stream entry id", &id))?;
    let fields = match fields {
        Value::Nil => None,
        other => {
            let flat = into_items(other).map_err(|v| unexpected("stream entry fields", &v))?;
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                if let (Ok(k), Ok(v)) = (into_text(k), into_text(v)) {
                    pairs.push((k, v));
                }
            }
            Some(pairs)
        }
    };
    Ok(StreamEntry { id, fields })
}

/// The reply of `XRANGE` / `XREVRANGE`.
pub(crate) fn parse_entries(value: Value) -> Result<Vec<StreamEntry>, RedisError> {
    into_items(value)
        .map_err(|v| unexpected("stream entries", &v))?
        .into_iter()
        .map(parse_entry)
        .collect()
}

/// The reply of `XREADGROUP ... STREAMS k1 k2 ...`: entries per stream key. `nil` (the
/// block timed out) is no entries.
pub(crate) fn parse_read(value: Value) -> Result<Vec<(String, Vec<StreamEntry>)>, RedisError> {
    let streams = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => {
            return pairs
                .into_iter()
                .map(|(k, v)| {
                    let key = into_text(k).map_err(|k| unexpected("stream key", &k))?;
                    Ok((key, parse_entries(v)?))
                })
                .collect()
        }
        other => into_items(other).map_err(|v| unexpected("XREADGROUP reply", &v))?,
    };
    streams
        .into_iter()
        .map(|stream| {
            let parts = into_items(stream).map_err(|v| unexpected("stream", &v))?;
            let [key, entries] = <[Value; 2]>::try_from(parts)
                .map_err(|parts| unexpected("stream", &Value::Array(parts)))?;
            let key = into_text(key).map_err(|k| unexpected("stream key", &k))?;
            Ok((key, parse_entries(entries)?))
        })
        .collect()
}

/// The reply of `XPENDING key group start end count [consumer]`.
pub(crate) fn parse_pending(value: &Value) -> Result<Vec<Pending>, RedisError> {
    items(value)
        .ok_or_else(|| unexpected("XPENDING reply", value))?
        .iter()
        .map(|row| {
            let parse = || {
                let [id, consumer, _idle, deliveries] = items(row)? else {
                    return None;
                };
                Some(Pending {
                    id: text(id)?,
                    consumer: text(consumer)?,
                    deliveries: int(deliveries)? as u64,
                })
            };
            parse().ok_or_else(|| unexpected("XPENDING row", row))
        })
        .collect()
}

/// The reply of the claim script (`store::stream::claim`): the claimed entries, and the
/// ids found deleted.
pub(crate) fn parse_claimed(value: Value) -> Result<(Vec<StreamEntry>, Vec<String>), RedisError> {
    let parts = into_items(value).map_err(|v| unexpected("claim reply", &v))?;
    let [taken, gone] = <[Value; 2]>::try_from(parts)
        .map_err(|parts| unexpected("claim reply", &Value::Array(parts)))?;
    let taken = into_items(taken)
        .map_err(|v| unexpected("claimed entries", &v))?
        .into_iter()
        .map(parse_entry)
        .collect::<Result<_, _>>()?;
    Ok((taken, parse_strings(&gone)?))
}

/// `XPENDING key group` summary: the smallest pending id, if any is pending.
pub(crate) fn parse_pending_summary(value: &Value) -> Result<Option<String>, RedisError> {
    let parts = items(value).ok_or_else(|| unexpected("XPENDING summary", value))?;
    match (parts.first().and_then(int), parts.get(1)) {
        (Some(0), _) | (None, _) | (_, None) => Ok(None),
        (Some(_), Some(min)) => Ok(text(min)),
    }
}

/// `XPENDING key group` summary: pending count per consumer.
pub(crate) fn parse_pending_by_consumer(value: &Value) -> Result<Vec<(String, u64)>, RedisError> {
    let parts = items(value).ok_or_else(|| unexpected("XPENDING summary", value))?;
    let Some(consumers) = parts.get(3).and_then(items) else {
        return Ok(Vec::new()); // nothing pending: the list is nil
    };
    consumers
        .iter()
        .map(|row| match items(row) {
            Some([name, count]) => Ok((
                text(name).ok_or_else(|| unexpected("consumer", row))?,
                int(count).ok_or_else(|| unexpected("count", row))? as u64,
            )),
            _ => Err(unexpected("XPENDING consumer row", row)),
        })
        .collect()
}

/// A reply that is a list of strings (`ZRANGE`, `SMEMBERS`, `XCLAIM ... JUSTID`).
pub(crate) fn parse_strings(value: &Value) -> Result<Vec<String>, RedisError> {
    match value {
        Value::Nil => Ok(Vec::new()),
        other => items(other)
            .ok_or_else(|| unexpected("list of strings", other))?
            .iter()
            .map(|v| text(v).ok_or_else(|| unexpected("string", v)))
            .collect(),
    }
}

/// One row of `XINFO CONSUMERS`.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerRow {
    pub name: String,
    pub pending: u64,
    /// Since the consumer's last attempted interaction, in ms.
    pub idle_ms: u64,
}

/// `XINFO CONSUMERS` rows.
pub(crate) fn parse_consumers(value: &Value) -> Result<Vec<ConsumerRow>, RedisError> {
    items(value)
        .ok_or_else(|| unexpected("XINFO CONSUMERS reply", value))?
        .iter()
        .map(|row| {
            let props = key_values(row).ok_or_else(|| unexpected("consumer", row))?;
            let get = |name: &str| props.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
            match (get("name").and_then(text), get("pending").and_then(int)) {
                (Some(name), Some(pending)) => Ok(ConsumerRow {
                    name,
                    pending: pending as u64,
                    idle_ms: get("idle").and_then(int).unwrap_or(0) as u64,
                }),
                _ => Err(unexpected("consumer", row)),
            }
        })
        .collect()
}

/// One row of `XINFO GROUPS`.
#[derive(Debug, Clone)]
pub(crate) struct GroupRow {
    pub name: String,
    /// Consumers the group has on the stream.
    pub consumers: u64,
    pub pending: u64,
    pub last_delivered: String,
    /// Entries not yet delivered to the group; Redis 7 reports it (nil when unknown).
    pub lag: Option<u64>,
}

/// `XINFO GROUPS` rows.
pub(crate) fn parse_groups(value: &Value) -> Result<Vec<GroupRow>, RedisError> {
    items(value)
        .ok_or_else(|| unexpected("XINFO GROUPS reply", value))?
        .iter()
        .map(|row| {
            let props = key_values(row).ok_or_else(|| unexpected("group", row))?;
            let get = |name: &str| props.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
            let name = get("name").and_then(text);
            let last = get("last-delivered-id").and_then(text);
            match (name, last) {
                (Some(name), Some(last_delivered)) => Ok(GroupRow {
                    name,
                    consumers: get("consumers").and_then(int).unwrap_or(0) as u64,
                    pending: get("pending").and_then(int).unwrap_or(0) as u64,
                    last_delivered,
                    lag: get("lag").and_then(int).map(|l| l as u64),
                }),
                _ => Err(unexpected("group", row)),
            }
        })
        .collect()
}

/// What `XINFO STREAM` says of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StreamInfo {
    pub length: u64,
    /// The ids of its oldest and newest entries.
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    /// Every entry ever added (Redis 7; `None` before).
    pub added: Option<u64>,
}

/// An `XINFO STREAM` reply.
pub(crate) fn parse_stream_info(value: &Value) -> Result<StreamInfo, RedisError> {
    let props = key_values(value).ok_or_else(|| unexpected("XINFO STREAM reply", value))?;
    let get = |name: &str| props.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    let entry_id = |name: &str| {
        get(name)
            .and_then(items)
            .and_then(|entry| entry.first())
            .and_then(text)
    };
    Ok(StreamInfo {
        length: get("length").and_then(int).unwrap_or(0) as u64,
        first_id: entry_id("first-entry"),
        last_id: entry_id("last-entry"),
        added: get("entries-added").and_then(int).map(|n| n as u64),
    })
}

fn key_values(value: &Value) -> Option<Vec<(String, &Value)>> {
    match value {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| Some((text(k)?, v))).collect(),
        other => items(other)?
            .chunks(2)
            .map(|pair| match pair {
                [k, v] => Some((text(k)?, v)),
                _ => None,
            })
            .collect(),
    }
}

/// Stream ids compare as (ms, seq) pairs, not as strings.
pub(crate) fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The id right after `id`, for exclusive ranges on servers without `(`.
pub(crate) fn next_stream_id(id: &str) -> Option<String> {
    let (ms, seq) = parse_stream_id(id)?;
    Some(match seq.checked_add(1) {
        Some(seq) => format!("{ms}-{seq}"),
        None => format!("{}-0", ms + 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_entries_including_deleted_ones() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("redisaq:{t:0}"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![
                        bulk("id"),
                        bulk("j1"),
                        bulk("payload"),
                        bulk("{}"),
                        bulk("enqueued_at"),
                        bulk("5"),
                    ]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let streams = parse_read(reply).unwrap();
        assert_eq!(streams[0].0, "redisaq:{t:0}");
        let envelope = decode_job(&streams[0].1[0]).unwrap();
        assert_eq!(envelope.id.as_str(), "j1");
        assert_eq!(envelope.enqueued_at_ms, 5);
        assert!(matches!(
            decode_job(&streams[0].1[1]),
            Err(Undecodable::Malformed(reason)) if reason.contains("deleted")
        ));
    }

    #[test]
    fn malformed_entries_say_what_is_missing() {
        let entry = StreamEntry {
            id: "1-0".into(),
            fields: Some(vec![("id".into(), "x".into())]),
        };
        assert!(matches!(
            decode_job(&entry),
            Err(Undecodable::Malformed(reason)) if reason.contains("`payload`")
        ));
        assert_eq!(fields_as_json(&entry), r#"{"id":"x"}"#);
    }

    #[test]
    fn stream_info_reads_length_edges_and_added() {
        let bulk = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let entry =
            |id: &str| Value::Array(vec![bulk(id), Value::Array(vec![bulk("id"), bulk("j")])]);
        let reply = Value::Array(vec![
            bulk("length"),
            Value::Int(2),
            bulk("entries-added"),
            Value::Int(5),
            bulk("first-entry"),
            entry("1-0"),
            bulk("last-entry"),
            entry("4-0"),
        ]);
        let info = parse_stream_info(&reply).unwrap();
        assert_eq!(info.length, 2);
        assert_eq!(info.added, Some(5));
        assert_eq!(info.first_id.as_deref(), Some("1-0"));
        assert_eq!(info.last_id.as_deref(), Some("4-0"));
        let empty = Value::Array(vec![
            bulk("length"),
            Value::Int(0),
            bulk("first-entry"),
            Value::Nil,
        ]);
        assert_eq!(parse_stream_info(&empty).unwrap(), StreamInfo::default());
    }

    #[test]
    fn job_fields_decode_back_for_every_group_or_one() {
        use redis::ToRedisArgs;
        for for_group in [None, Some("g")] {
            let fields = JobFields {
                id: "j",
                payload: "{}",
                enqueued_at_ms: 7,
                key: Some("k"),
                for_group,
                trace: Some((
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    true,
                )),
            };
            let args: Vec<String> = fields
                .to_redis_args()
                .into_iter()
                .map(|a| String::from_utf8(a).unwrap())
                .collect();
            assert_eq!(args.len(), fields.num_of_args());
            let entry = StreamEntry {
                id: "1-0".into(),
                fields: Some(
                    args.chunks(2)
                        .map(|kv| (kv[0].clone(), kv[1].clone()))
                        .collect(),
                ),
            };
            let envelope = decode_job(&entry).unwrap();
            assert_eq!(envelope.id.as_str(), "j");
            assert_eq!(envelope.enqueued_at_ms, 7);
            assert_eq!(envelope.key, Some("k"));
            assert_eq!(envelope.for_group, for_group);
            assert!(envelope.trace.is_some_and(|t| t.link));
        }
    }

    #[test]
    fn entries_of_a_newer_format_are_told_apart_from_malformed_ones() {
        let entry = |format: &str| StreamEntry {
            id: "1-0".into(),
            fields: Some(vec![
                ("id".into(), "x".into()),
                ("payload".into(), "{}".into()),
                ("enqueued_at".into(), "1".into()),
                ("v".into(), format.into()),
                ("group".into(), "g".into()),
            ]),
        };
        assert_eq!(decode_job(&entry("3")).unwrap_err(), Undecodable::Newer(3));
        assert_eq!(decode_job(&entry("2")).unwrap().for_group, Some("g"));
        assert!(matches!(
            decode_job(&entry("two")),
            Err(Undecodable::Malformed(_))
        ));
    }

    #[test]
    fn pending_summaries_list_consumers() {
        let none = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert!(parse_pending_by_consumer(&none).unwrap().is_empty());
        assert_eq!(parse_pending_summary(&none).unwrap(), None);
        let some = Value::Array(vec![
            Value::Int(3),
            bulk("1-0"),
            bulk("9-0"),
            Value::Array(vec![Value::Array(vec![bulk("w1"), bulk("3")])]),
        ]);
        assert_eq!(
            parse_pending_by_consumer(&some).unwrap(),
            vec![("w1".to_string(), 3)]
        );
        assert_eq!(
            parse_pending_summary(&some).unwrap().as_deref(),
            Some("1-0")
        );
    }

    #[test]
    fn stream_ids_order_numerically() {
        assert!(parse_stream_id("10-0") > parse_stream_id("9-5"));
        assert_eq!(next_stream_id("5-1").unwrap(), "5-2");
    }
}
