//! Key layout and record codec shared by the key-value stores (sled and memory).
//!
//! Every value is `[kind tag][format version]` followed by JSON. A record is checked right
//! before it is written (a failed check is a bug: assertion) and right after it is read (a
//! failed check is corruption: an error naming the key). When a record's shape changes, bump
//! its format version and keep a decoder for the old one.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{RequestRecord, StoreError};
use crate::model::{HistoryEntry, Instance, InstanceId};

pub(crate) const FORMAT_VERSION: u8 = 1;

/// Byte prefixes of the key spaces.
pub(crate) mod prefix {
    pub const INSTANCE: u8 = b'i';
    pub const HISTORY: u8 = b'h';
    pub const REQUEST: u8 = b'r';
    pub const REQUEST_EXPIRY: u8 = b'x';
    pub const COUNTER: u8 = b'c';
    pub const BY_DEFINITION: u8 = b'd';
    pub const BY_STATE: u8 = b's';
    pub const BY_BUSINESS_KEY: u8 = b'k';
    pub const CHILDREN: u8 = b'p';
    pub const FEED: u8 = b'f';
    pub const TIMER: u8 = b't';
    pub const JOB: u8 = b'j';
    pub const ACTIVATABLE: u8 = b'a';
    pub const JOBS_OF: u8 = b'q';
    pub const RULE_SET: u8 = b'v';
    pub const ACTIVATION: u8 = b'w';
    pub const RULE_SET_REQUEST: u8 = b'g';
}

pub(crate) trait Record: Serialize + DeserializeOwned {
    const TAG: u8;
    /// Checks the record's invariants; `Err` says which one fails.
    fn check(&self) -> Result<(), String>;
}

impl Record for Instance {
    const TAG: u8 = b'I';
    fn check(&self) -> Result<(), String> {
        if self.version == 0 {
            return Err("instance version is 0".into());
        }
        if self.state.is_empty() || self.definition.name.is_empty() {
            return Err("instance has an empty state or definition name".into());
        }
        if !self.data.is_object() {
            return Err("instance data is not a JSON object".into());
        }
        if self.updated_at < self.created_at {
            return Err("instance updated before it was created".into());
        }
        if self.parent == Some(self.id) {
            return Err("instance is its own parent".into());
        }
        Ok(())
    }
}

impl Record for HistoryEntry {
    const TAG: u8 = b'H';
    fn check(&self) -> Result<(), String> {
        if self.version == 0 || self.to_state.is_empty() {
            return Err("history entry has version 0 or an empty state".into());
        }
        Ok(())
    }
}

impl Record for RequestRecord {
    const TAG: u8 = b'R';
    fn check(&self) -> Result<(), String> {
        if self.request_id.is_empty() || self.payload_digest.len() != 64 {
            return Err("request record has an empty id or a malformed digest".into());
        }
        if self.expires_at < self.recorded_at {
            return Err("request record expires before it was recorded".into());
        }
        if self.outcome.version == 0 {
            return Err("request record outcome has version 0".into());
        }
        Ok(())
    }
}

impl Record for crate::feed::FeedEvent {
    const TAG: u8 = b'F';
    fn check(&self) -> Result<(), String> {
        if self.offset == 0 || self.kind.is_empty() {
            return Err("feed event has offset 0 or no type".into());
        }
        Ok(())
    }
}

impl Record for crate::model::DueTimer {
    const TAG: u8 = b'T';
    fn check(&self) -> Result<(), String> {
        if self.timer.name.is_empty() || self.timer.command.is_empty() {
            return Err("timer without a name or command".into());
        }
        Ok(())
    }
}

impl Record for crate::job::Job {
    const TAG: u8 = b'J';
    fn check(&self) -> Result<(), String> {
        if self.version == 0 || self.job_type.is_empty() || self.complete_command.is_empty() {
            return Err("job with version 0, no type or no completion command".into());
        }
        if (self.status == crate::job::JobStatus::Leased) != self.lease.is_some() {
            return Err("job lease does not match its status".into());
        }
        Ok(())
    }
}

impl Record for super::RuleSetRecord {
    const TAG: u8 = b'V';
    fn check(&self) -> Result<(), String> {
        if self.number == 0 || self.files.is_empty() {
            return Err("rule set with number 0 or no files".into());
        }
        Ok(())
    }
}

impl Record for super::RuleSetActivation {
    const TAG: u8 = b'W';
    fn check(&self) -> Result<(), String> {
        if self.seq == 0 || self.number == 0 || self.by.is_empty() {
            return Err("rule-set activation with seq or number 0, or no actor".into());
        }
        Ok(())
    }
}

impl Record for super::RuleSetRequestRecord {
    const TAG: u8 = b'G';
    fn check(&self) -> Result<(), String> {
        if self.request_id.is_empty() || self.number == 0 || self.expires_at < self.recorded_at {
            return Err(
                "rule-set request without an id or a version, or expiring before it was recorded"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A counter's value.
#[derive(Serialize, serde::Deserialize)]
pub(crate) struct CounterRecord {
    pub value: u64,
}

impl Record for CounterRecord {
    const TAG: u8 = b'C';
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

pub(crate) fn encode<R: Record>(record: &R) -> Vec<u8> {
    if let Err(e) = record.check() {
        panic!("refusing to write an invalid record: {e}");
    }
    let mut out = vec![R::TAG, FORMAT_VERSION];
    serde_json::to_writer(&mut out, record).expect("records serialize to JSON");
    out
}

pub(crate) fn decode<R: Record>(key: &[u8], bytes: &[u8]) -> Result<R, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: printable(key),
        message,
    };
    match bytes {
        [tag, version, body @ ..] if *tag == R::TAG && *version == FORMAT_VERSION => {
            let record: R = serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))?;
            record.check().map_err(corrupt)?;
            Ok(record)
        }
        [tag, version, ..] => Err(corrupt(format!(
            "expected record tag {} format {FORMAT_VERSION}, found tag {} format {version}",
            R::TAG as char,
            *tag as char
        ))),
        _ => Err(corrupt("record shorter than its header".into())),
    }
}

/// A key rendered for error messages.
pub(crate) fn printable(key: &[u8]) -> String {
    key.iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

pub(crate) fn instance_key(id: InstanceId) -> Vec<u8> {
    let mut k = vec![prefix::INSTANCE];
    k.extend_from_slice(id.0.as_bytes());
    k
}

pub(crate) fn history_key(id: InstanceId, version: u64) -> Vec<u8> {
    let mut k = vec![prefix::HISTORY];
    k.extend_from_slice(id.0.as_bytes());
    k.extend_from_slice(&version.to_be_bytes());
    k
}

pub(crate) fn history_prefix(id: InstanceId) -> Vec<u8> {
    let mut k = vec![prefix::HISTORY];
    k.extend_from_slice(id.0.as_bytes());
    k
}

pub(crate) fn request_key(request_id: &str) -> Vec<u8> {
    let mut k = vec![prefix::REQUEST];
    k.extend_from_slice(request_id.as_bytes());
    k
}

pub(crate) fn request_expiry_key(record: &RequestRecord) -> Vec<u8> {
    let mut k = vec![prefix::REQUEST_EXPIRY];
    let millis = record.expires_at.timestamp_millis().max(0) as u64;
    k.extend_from_slice(&millis.to_be_bytes());
    k.extend_from_slice(record.request_id.as_bytes());
    k
}

pub(crate) fn timer_key(instance: InstanceId, timer: &crate::model::OpenTimer) -> Vec<u8> {
    let mut k = vec![prefix::TIMER];
    k.extend_from_slice(&(timer.due.timestamp_millis().max(0) as u64).to_be_bytes());
    k.extend_from_slice(instance.0.as_bytes());
    k.extend_from_slice(timer.name.as_bytes());
    k
}

pub(crate) fn job_key(id: crate::job::JobId) -> Vec<u8> {
    let mut k = vec![prefix::JOB];
    k.extend_from_slice(id.0.as_bytes());
    k
}

/// The whole activation index: every job that is waiting or leased.
pub(crate) fn activation_index_prefix() -> Vec<u8> {
    vec![prefix::ACTIVATABLE]
}

pub(crate) fn activatable_prefix(job_type: &str) -> Vec<u8> {
    let mut k = vec![prefix::ACTIVATABLE];
    push_terminated(&mut k, job_type);
    k
}

/// The activation index key of `job`, if it can ever be activated in its status.
pub(crate) fn activatable_key(job: &crate::job::Job) -> Option<Vec<u8>> {
    use crate::job::JobStatus;
    if !matches!(job.status, JobStatus::Activatable | JobStatus::Leased) {
        return None;
    }
    let mut k = activatable_prefix(&job.job_type);
    k.extend_from_slice(&(job.available_at.timestamp_millis().max(0) as u64).to_be_bytes());
    k.extend_from_slice(job.id.0.as_bytes());
    Some(k)
}

pub(crate) fn jobs_of_prefix(instance: InstanceId) -> Vec<u8> {
    let mut k = vec![prefix::JOBS_OF];
    k.extend_from_slice(instance.0.as_bytes());
    k
}

pub(crate) fn feed_key(offset: u64) -> Vec<u8> {
    let mut k = vec![prefix::FEED];
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

pub(crate) fn rule_set_key(number: u32) -> Vec<u8> {
    let mut k = vec![prefix::RULE_SET];
    k.extend_from_slice(&number.to_be_bytes());
    k
}

pub(crate) fn rule_set_request_key(request_id: &str) -> Vec<u8> {
    let mut k = vec![prefix::RULE_SET_REQUEST];
    k.extend_from_slice(request_id.as_bytes());
    k
}

pub(crate) fn activation_key(seq: u64) -> Vec<u8> {
    let mut k = vec![prefix::ACTIVATION];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The number of the active rule-set version.
pub(crate) const ACTIVE_RULE_SET_KEY: &[u8] = b"mactive_rule_set";

/// Offset of the last event assigned (meta keys start with `m`).
pub(crate) const FEED_HEAD_KEY: &[u8] = b"mfeed_head";
/// Offset of the earliest event retained.
pub(crate) const FEED_TAIL_KEY: &[u8] = b"mfeed_tail";

pub(crate) fn counter_key(counter: &str, key: &str) -> Vec<u8> {
    let mut k = vec![prefix::COUNTER];
    k.extend_from_slice(counter.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(crate) fn children_prefix(parent: InstanceId) -> Vec<u8> {
    let mut k = vec![prefix::CHILDREN];
    k.extend_from_slice(parent.0.as_bytes());
    k
}

pub(crate) fn child_key(parent: InstanceId, child: InstanceId) -> Vec<u8> {
    let mut k = children_prefix(parent);
    k.extend_from_slice(child.0.as_bytes());
    k
}

/// The prefix of an index scan for a list query; the instance id (16 bytes) follows it.
pub(crate) fn index_prefix(
    definition: &str,
    state: Option<&str>,
    business_key: Option<&str>,
) -> Vec<u8> {
    match (state, business_key) {
        (_, Some(bk)) => {
            let mut k = vec![prefix::BY_BUSINESS_KEY];
            push_terminated(&mut k, definition);
            push_terminated(&mut k, bk);
            k
        }
        (Some(state), None) => {
            let mut k = vec![prefix::BY_STATE];
            push_terminated(&mut k, definition);
            push_terminated(&mut k, state);
            k
        }
        (None, None) => {
            let mut k = vec![prefix::BY_DEFINITION];
            push_terminated(&mut k, definition);
            k
        }
    }
}

fn push_terminated(k: &mut Vec<u8>, s: &str) {
    k.extend_from_slice(s.as_bytes());
    k.push(0);
}

/// The fields of a stored instance the commit path needs: decoding only these skips building
/// the instance's data.
#[derive(serde::Deserialize)]
pub(crate) struct InstanceHead {
    pub id: InstanceId,
    pub definition: crate::model::DefinitionRef,
    pub business_key: String,
    pub state: String,
    pub version: u64,
    #[serde(default)]
    pub timers: Vec<crate::model::OpenTimer>,
}

impl InstanceHead {
    pub fn of(instance: &Instance) -> Self {
        InstanceHead {
            id: instance.id,
            definition: instance.definition.clone(),
            business_key: instance.business_key.clone(),
            state: instance.state.clone(),
            version: instance.version,
            timers: instance.timers.clone(),
        }
    }
}

/// Decodes the head of an instance record (tag and format checked, data skipped).
pub(crate) fn decode_head(key: &[u8], bytes: &[u8]) -> Result<InstanceHead, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: printable(key),
        message,
    };
    match bytes {
        [tag, version, body @ ..] if *tag == Instance::TAG && *version == FORMAT_VERSION => {
            let head: InstanceHead =
                serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))?;
            if head.version == 0 {
                return Err(corrupt("instance version is 0".into()));
            }
            Ok(head)
        }
        _ => Err(corrupt("not an instance record of a known format".into())),
    }
}

/// The index keys under which an instance is listed.
pub(crate) fn index_keys(head: &InstanceHead) -> [Vec<u8>; 3] {
    let def = head.definition.name.as_str();
    let id = head.id.0.as_bytes();
    let with_id = |mut k: Vec<u8>| {
        k.extend_from_slice(id);
        k
    };
    [
        with_id(index_prefix(def, None, None)),
        with_id(index_prefix(def, Some(&head.state), None)),
        with_id(index_prefix(def, None, Some(&head.business_key))),
    ]
}

/// The instance id at the end of an index key.
pub(crate) fn id_suffix(key: &[u8]) -> Result<InstanceId, StoreError> {
    key.len()
        .checked_sub(16)
        .and_then(|start| uuid::Uuid::from_slice(&key[start..]).ok())
        .map(InstanceId)
        .ok_or_else(|| StoreError::Corrupt {
            key: printable(key),
            message: "index key does not end in an instance id".into(),
        })
}
