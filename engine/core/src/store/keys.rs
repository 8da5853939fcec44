//! The key layout of the key-value stores (sled and memory): one ordered key space, each
//! kind of record under its own one-byte prefix (see `docs/storage.md`).

use super::StoreError;
use crate::model::{InstanceId, OpenTimer};
use crate::store::records::InstanceHead;

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
    pub const CREDENTIAL: u8 = b'u';
    pub const BALANCE: u8 = b'b';
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

pub(crate) fn request_expiry_key(record: &super::RequestRecord) -> Vec<u8> {
    let mut k = vec![prefix::REQUEST_EXPIRY];
    let millis = record.expires_at.timestamp_millis().max(0) as u64;
    k.extend_from_slice(&millis.to_be_bytes());
    k.extend_from_slice(record.request_id.as_bytes());
    k
}

pub(crate) fn timer_key(instance: InstanceId, timer: &OpenTimer) -> Vec<u8> {
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

pub(crate) fn credential_key(sha256: &[u8; 32]) -> Vec<u8> {
    let mut k = vec![prefix::CREDENTIAL];
    k.extend_from_slice(sha256);
    k
}

/// The keys of credentials whose id (the hash's first 8 bytes, hex) is `id`; `None` if `id`
/// is not 16 hex digits.
pub(crate) fn credential_id_prefix(id: &str) -> Option<Vec<u8>> {
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut k = vec![prefix::CREDENTIAL];
    for i in 0..8 {
        k.push(u8::from_str_radix(&id[2 * i..2 * i + 2], 16).ok()?);
    }
    Some(k)
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

pub(crate) fn balance_key(balance: &str, key: &str) -> Vec<u8> {
    let mut k = vec![prefix::BALANCE];
    k.extend_from_slice(balance.as_bytes());
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

/// The index keys under which an instance is listed. A cancelled instance keeps its state
/// but is not listed by it: it is no longer "in" that state.
pub(crate) fn index_keys(head: &InstanceHead) -> Vec<Vec<u8>> {
    let def = head.definition.name.as_str();
    let id = head.id.0.as_bytes();
    let with_id = |mut k: Vec<u8>| {
        k.extend_from_slice(id);
        k
    };
    let mut keys = vec![
        with_id(index_prefix(def, None, None)),
        with_id(index_prefix(def, None, Some(&head.business_key))),
    ];
    if head.status != crate::model::InstanceStatus::Cancelled {
        keys.push(with_id(index_prefix(def, Some(&head.state), None)));
    }
    keys
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
