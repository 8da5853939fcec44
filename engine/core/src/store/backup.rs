//! Backups of a key-value store: a consistent copy of the whole store as JSON lines, and its
//! restore into an empty store (format: `docs/backup.md`).
//!
//! A line holds one primary record by kind and identity, with the record's stored JSON
//! (`store/records.rs`) copied byte for byte; derived keys (indexes, due timers, the purge
//! index) are not exported but rebuilt on import, so the format does not depend on the key
//! layout.
//!
//! **Consistency while the store is written.** An export first starts a [`WriteTap`], which
//! from then on appends every primary-key write to a spill file, in write order; then scans
//! the store (a key may be read before or after a later write to it); then, under the writer
//! lock, stops the tap and appends what it caught. Import applies lines in order, the last
//! write to a key winning, so the restored store is exactly the store as it was when the tap
//! stopped — one feed offset, recorded in the end line — whatever was written meanwhile.
//! Commits never wait for the export: the tap costs one buffered file append per write while
//! an export runs and nothing otherwise.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

use super::keys::{self, prefix, printable};
use super::kv::{feed_bounds, KvWrite, Staged, Writes};
use super::records::{self, decode, BalanceRecord, CounterRecord};
use super::{
    RequestRecord, RuleSetActivation, RuleSetRecord, RuleSetRequestRecord, SledConfig, SledStore,
    Store, StoreError,
};
use crate::credential::Credential;
use crate::feed::FeedEvent;
use crate::job::{Job, JobId};
use crate::model::{HistoryEntry, Instance, InstanceId};

/// The backup format this build writes and reads.
pub const BACKUP_FORMAT: u32 = 1;

/// Entries an export reads per scan, and lines an import writes per batch.
const PAGE: usize = 512;

/// The longest line an import reads (a rule-set version with every file is the largest
/// record; the engine bounds each record well below this).
const LINE_MAX: u64 = 64 * 1024 * 1024;

/// Meta key set while an import runs and removed by its last write: a store holding it is
/// a partial import, and opening it is refused.
pub(crate) const IMPORT_MARKER_KEY: &[u8] = b"mimport_unfinished";

/// What an export wrote or an import restored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// Record lines (puts and deletes), between the header and the end line.
    pub lines: u64,
    /// The feed's last assigned offset in the copy: the moment the backup shows.
    pub feed_head: u64,
}

/// The first line of a backup.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    switchyard_backup: u32,
    created_at: DateTime<Utc>,
}

/// A record line, or the end line.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<u8>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    record: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<BackupSummary>,
}

/// The kinds of primary records, with their key prefix and record tag.
const KINDS: &[(&str, u8, u8)] = &[
    ("instance", prefix::INSTANCE, b'I'),
    ("history", prefix::HISTORY, b'H'),
    ("request", prefix::REQUEST, b'R'),
    ("counter", prefix::COUNTER, b'C'),
    ("balance", prefix::BALANCE, b'B'),
    ("feed", prefix::FEED, b'F'),
    ("job", prefix::JOB, b'J'),
    ("rule_set", prefix::RULE_SET, b'V'),
    ("activation", prefix::ACTIVATION, b'W'),
    ("admin_request", prefix::RULE_SET_REQUEST, b'G'),
    ("credential", prefix::CREDENTIAL, b'U'),
    ("meta", b'm', b'C'),
];

/// Key prefixes a backup leaves out because import derives them from the records.
fn derived(key: &[u8]) -> bool {
    matches!(
        key.first(),
        Some(
            &prefix::REQUEST_EXPIRY
                | &prefix::BY_DEFINITION
                | &prefix::BY_STATE
                | &prefix::BY_BUSINESS_KEY
                | &prefix::CHILDREN
                | &prefix::TIMER
                | &prefix::ACTIVATABLE
                | &prefix::JOBS_OF
        )
    ) || key == IMPORT_MARKER_KEY
}

fn corrupt(key: &[u8], message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: printable(key),
        message: message.into(),
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn utf8(key: &[u8], bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| corrupt(key, "key is not UTF-8"))
}

fn be_u64(key: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(key, "key does not end in an 8-byte number"))
}

fn uuid(key: &[u8], bytes: &[u8]) -> Result<Uuid, StoreError> {
    Uuid::from_slice(bytes).map_err(|_| corrupt(key, "key does not hold a 16-byte id"))
}

/// A name and a key separated by a NUL byte.
fn pair(key: &[u8], bytes: &[u8]) -> Result<Value, StoreError> {
    let at = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| corrupt(key, "key has no separator"))?;
    Ok(Value::from(vec![
        utf8(key, &bytes[..at])?,
        utf8(key, &bytes[at + 1..])?,
    ]))
}

/// The kind and identity of a primary key.
fn identity(key: &[u8]) -> Result<(&'static str, Value), StoreError> {
    let (&first, rest) = key.split_first().ok_or_else(|| corrupt(key, "empty key"))?;
    let kind = KINDS
        .iter()
        .find(|(_, p, _)| *p == first)
        .map(|(name, _, _)| *name)
        .ok_or_else(|| corrupt(key, "a key of no known kind"))?;
    let id = match kind {
        "instance" | "job" => Value::from(uuid(key, rest)?.to_string()),
        "history" if rest.len() == 24 => Value::from(vec![
            Value::from(uuid(key, &rest[..16])?.to_string()),
            Value::from(be_u64(key, &rest[16..])?),
        ]),
        "history" => return Err(corrupt(key, "history key is not an id and a version")),
        "request" | "admin_request" | "meta" => Value::from(utf8(key, rest)?),
        "counter" | "balance" => pair(key, rest)?,
        "feed" | "activation" => Value::from(be_u64(key, rest)?),
        "rule_set" => Value::from(u64::from(u32::from_be_bytes(
            <[u8; 4]>::try_from(rest).map_err(|_| corrupt(key, "rule-set key is not a u32"))?,
        ))),
        "credential" => Value::from(rest.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        _ => unreachable!("every kind is matched"),
    };
    Ok((kind, id))
}

/// Why a line cannot be restored.
fn bad(line: u64, message: impl Into<String>) -> StoreError {
    StoreError::BadBackup {
        line,
        message: message.into(),
    }
}

/// The primary key of `kind` with identity `id` (the inverse of [`identity`]).
fn key_of(line: u64, kind: &str, id: &Value) -> Result<Vec<u8>, StoreError> {
    let wrong = || {
        bad(
            line,
            format!("`key` {id} is not the identity of a {kind} record"),
        )
    };
    let text = || id.as_str().ok_or_else(wrong);
    let number = || id.as_u64().ok_or_else(wrong);
    let uuid_of = |v: &Value| {
        v.as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(wrong)
    };
    let two = || match id.as_array().map(Vec::as_slice) {
        Some([a, b]) => Ok((a, b)),
        _ => Err(wrong()),
    };
    let with_name = |p: u8| -> Result<Vec<u8>, StoreError> {
        let (a, b) = two()?;
        let (a, b) = (a.as_str().ok_or_else(wrong)?, b.as_str().ok_or_else(wrong)?);
        if a.contains('\0') {
            return Err(wrong());
        }
        let mut k = vec![p];
        k.extend_from_slice(a.as_bytes());
        k.push(0);
        k.extend_from_slice(b.as_bytes());
        Ok(k)
    };
    Ok(match kind {
        "instance" => keys::instance_key(InstanceId(uuid_of(id)?)),
        "job" => keys::job_key(JobId(uuid_of(id)?)),
        "history" => {
            let (a, b) = two()?;
            keys::history_key(InstanceId(uuid_of(a)?), b.as_u64().ok_or_else(wrong)?)
        }
        "request" => keys::request_key(text()?),
        "admin_request" => keys::rule_set_request_key(text()?),
        "meta" => {
            let name = text()?;
            if name.is_empty() || format!("m{name}").as_bytes() == IMPORT_MARKER_KEY {
                return Err(wrong());
            }
            format!("m{name}").into_bytes()
        }
        "counter" => with_name(prefix::COUNTER)?,
        "balance" => with_name(prefix::BALANCE)?,
        "feed" => keys::feed_key(number()?),
        "activation" => keys::activation_key(number()?),
        "rule_set" => keys::rule_set_key(u32::try_from(number()?).map_err(|_| wrong())?),
        "credential" => {
            let hex = text()?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(wrong());
            }
            let mut k = vec![prefix::CREDENTIAL];
            for i in 0..32 {
                k.push(u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| wrong())?);
            }
            k
        }
        other => {
            let known: Vec<_> = KINDS.iter().map(|(name, _, _)| *name).collect();
            return Err(bad(
                line,
                format!("`kind` \"{other}\" is not one of {}", known.join(", ")),
            ));
        }
    })
}

/// Writes one record line for the raw entry `key` = `value` (`None`: deleted).
fn write_entry(out: &mut dyn Write, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
    let (kind, id) = identity(key)?;
    let line = match value {
        Some(bytes) => {
            let tag = KINDS
                .iter()
                .find(|(k, _, _)| *k == kind)
                .map(|(_, _, t)| *t);
            let (format, body) = match bytes {
                [t, format, body @ ..] if Some(*t) == tag => (*format, body),
                _ => return Err(corrupt(key, format!("not a {kind} record"))),
            };
            let body =
                std::str::from_utf8(body).map_err(|_| corrupt(key, "record is not UTF-8"))?;
            let record = RawValue::from_string(body.to_string())
                .map_err(|e| corrupt(key, format!("record is not JSON: {e}")))?;
            serde_json::to_vec(&Line {
                kind: Some(kind),
                key: Some(id),
                format: Some(format),
                record: Some(&record),
                deleted: false,
                end: None,
            })
        }
        None => serde_json::to_vec(&Line {
            kind: Some(kind),
            key: Some(id),
            format: None,
            record: None,
            deleted: true,
            end: None,
        }),
    }
    .map_err(io)?;
    out.write_all(&line).map_err(io)?;
    out.write_all(b"\n").map_err(io)
}

/// Most bytes an export's spill file may hold: the writes made while one export runs. Past
/// it the export fails (and the tap stops costing commits anything), so a store written
/// faster than a slow reader takes the backup never fills the disk.
const SPILL_BYTES_MAX: u64 = 1 << 30;

/// Catches the primary-key writes of a store while an export runs (see the module docs).
pub(crate) struct WriteTap {
    active: AtomicBool,
    spill: Mutex<Option<Spill>>,
    /// [`SPILL_BYTES_MAX`], lowered by tests.
    limit: u64,
}

impl Default for WriteTap {
    fn default() -> Self {
        WriteTap {
            active: AtomicBool::new(false),
            spill: Mutex::new(None),
            limit: SPILL_BYTES_MAX,
        }
    }
}

/// Writes caught so far: `[key length u32][key][1 + value length u32 | 0][value]`, in order.
struct Spill {
    path: PathBuf,
    file: BufWriter<File>,
    bytes: u64,
    failed: Option<String>,
}

impl WriteTap {
    /// Records `writes` (about to be applied, under the writer lock) if an export runs.
    pub fn record(&self, writes: &Writes) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let mut spill = self.spill.lock().expect("tap lock poisoned");
        let Some(spill) = spill.as_mut() else { return };
        if spill.failed.is_some() {
            return;
        }
        for (k, v) in writes.iter().filter(|(k, _)| !derived(k)) {
            let mut entry = Vec::with_capacity(k.len() + v.as_ref().map_or(0, Vec::len) + 8);
            entry.extend_from_slice(&(k.len() as u32).to_be_bytes());
            entry.extend_from_slice(k);
            match v {
                Some(v) => {
                    entry.extend_from_slice(&(v.len() as u32 + 1).to_be_bytes());
                    entry.extend_from_slice(v);
                }
                None => entry.extend_from_slice(&0u32.to_be_bytes()),
            }
            spill.bytes += entry.len() as u64;
            if spill.bytes > self.limit {
                spill.failed = Some(format!(
                    "the store changed by more than {} MiB while the export ran; export again at a quieter time, or export the stopped store",
                    self.limit >> 20
                ));
                self.active.store(false, Ordering::Release);
                return;
            }
            if let Err(e) = spill.file.write_all(&entry) {
                spill.failed = Some(format!("cannot write {}: {e}", spill.path.display()));
                self.active.store(false, Ordering::Release);
                return;
            }
        }
    }

    /// Marks the writes just recorded as not applied: the export that sees it fails.
    pub fn write_failed(&self, error: &StoreError) {
        if let Some(spill) = self.spill.lock().expect("tap lock poisoned").as_mut() {
            spill.failed = Some(format!("a write failed while the export ran: {error}"));
        }
    }

    fn start(&self) -> Result<(), StoreError> {
        let mut spill = self.spill.lock().expect("tap lock poisoned");
        if spill.is_some() {
            return Err(StoreError::Io(
                "another export of this store is running; try again when it ends".into(),
            ));
        }
        let path = std::env::temp_dir().join(format!("switchyard-export-{}.spill", Uuid::now_v7()));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io(format!("cannot create {}: {e}", path.display())))?;
        *spill = Some(Spill {
            path,
            file: BufWriter::with_capacity(1 << 20, file),
            bytes: 0,
            failed: None,
        });
        self.active.store(true, Ordering::Release);
        Ok(())
    }

    /// Stops catching writes; returns the spill file, rewound, unless a write failed.
    fn stop(&self) -> Result<Option<(PathBuf, File)>, StoreError> {
        self.active.store(false, Ordering::Release);
        let Some(spill) = self.spill.lock().expect("tap lock poisoned").take() else {
            return Ok(None);
        };
        let path = spill.path.clone();
        let result = (|| {
            if let Some(failed) = spill.failed {
                return Err(StoreError::Io(failed));
            }
            let mut file = spill.file.into_inner().map_err(|e| io(e.error()))?;
            std::io::Seek::rewind(&mut file).map_err(io)?;
            Ok(file)
        })();
        match result {
            Ok(file) => Ok(Some((path, file))),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }
}

/// Stops a started tap however the export ends, and removes its spill file.
struct TapGuard<'a>(&'a WriteTap);

impl Drop for TapGuard<'_> {
    fn drop(&mut self) {
        if let Ok(Some((path, _))) = self.0.stop() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// [`super::Store::export`] for a key-value store.
pub(crate) fn export(
    kv: &dyn KvWrite,
    out: &mut dyn Write,
    now: DateTime<Utc>,
) -> Result<BackupSummary, StoreError> {
    let header = Header {
        switchyard_backup: BACKUP_FORMAT,
        created_at: now,
    };
    serde_json::to_writer(&mut *out, &header).map_err(io)?;
    out.write_all(b"\n").map_err(io)?;
    {
        let _writer = kv.writer().lock().expect("store writer lock poisoned");
        if kv.get(IMPORT_MARKER_KEY)?.is_some() {
            return Err(StoreError::Io(
                "this store holds an unfinished import; it cannot be exported".into(),
            ));
        }
        kv.tap().start()?;
    }
    let guard = TapGuard(kv.tap());
    let mut lines = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = kv.scan(&[], after.as_deref(), PAGE)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (k, v) in page.iter().filter(|(k, _)| !derived(k)) {
            write_entry(out, k, Some(v))?;
            lines += 1;
        }
    }
    let (spilled, feed_head) = {
        let _writer = kv.writer().lock().expect("store writer lock poisoned");
        let spilled = kv.tap().stop()?;
        (spilled, feed_bounds(kv)?.1)
    };
    drop(guard);
    if let Some((path, file)) = spilled {
        let replayed = replay(&mut BufReader::new(file), out);
        let _ = std::fs::remove_file(&path);
        lines += replayed?;
    }
    let end = Line {
        kind: None,
        key: None,
        format: None,
        record: None,
        deleted: false,
        end: Some(BackupSummary { lines, feed_head }),
    };
    serde_json::to_writer(&mut *out, &end).map_err(io)?;
    out.write_all(b"\n").map_err(io)?;
    out.flush().map_err(io)?;
    Ok(BackupSummary { lines, feed_head })
}

/// Writes the caught writes as lines; returns how many.
fn replay(spill: &mut dyn Read, out: &mut dyn Write) -> Result<u64, StoreError> {
    let mut lines = 0;
    let mut len = [0u8; 4];
    loop {
        match spill.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(lines),
            Err(e) => return Err(io(e)),
        }
        let mut key = vec![0; u32::from_be_bytes(len) as usize];
        spill.read_exact(&mut key).map_err(io)?;
        spill.read_exact(&mut len).map_err(io)?;
        let value = match u32::from_be_bytes(len) {
            0 => None,
            n => {
                let mut value = vec![0; n as usize - 1];
                spill.read_exact(&mut value).map_err(io)?;
                Some(value)
            }
        };
        write_entry(out, &key, value.as_deref())?;
        lines += 1;
    }
}

/// [`super::Store::import`] for a key-value store.
pub(crate) fn import(
    kv: &dyn KvWrite,
    input: &mut dyn BufRead,
) -> Result<BackupSummary, StoreError> {
    let _writer = kv.writer().lock().expect("store writer lock poisoned");
    if let Some((key, _)) = kv.scan(&[], None, 1)?.pop() {
        return Err(StoreError::NotEmpty(format!(
            "the target store is not empty (it holds {}…); a backup is restored only into an empty store",
            printable(&key[..key.len().min(24)])
        )));
    }
    let mut text = String::new();
    let mut next = |text: &mut String, number: u64| -> Result<bool, StoreError> {
        text.clear();
        let read = (&mut *input)
            .take(LINE_MAX + 1)
            .read_line(text)
            .map_err(|e| bad(number, e.to_string()))?;
        if read as u64 > LINE_MAX {
            return Err(bad(number, format!("line longer than {LINE_MAX} bytes")));
        }
        Ok(read > 0)
    };
    if !next(&mut text, 1)? {
        return Err(bad(1, "the file is empty: it is not a Switchyard backup"));
    }
    let header: Header = serde_json::from_str(&text)
        .map_err(|e| bad(1, format!("not a Switchyard backup header: {e}")))?;
    if header.switchyard_backup != BACKUP_FORMAT {
        return Err(bad(
            1,
            format!(
                "backup format {} (this build reads format {BACKUP_FORMAT})",
                header.switchyard_backup
            ),
        ));
    }
    let mut staged = Staged::new(kv);
    staged.put(IMPORT_MARKER_KEY.to_vec(), Vec::new());
    let mut pending = 0;
    let mut lines = 0u64;
    loop {
        let line_no = lines + 2;
        if !next(&mut text, line_no)? {
            return Err(bad(
                line_no,
                "the backup ends without its end line: it is incomplete (the store now holds a partial import; delete it before importing again)",
            ));
        }
        let line: Line = serde_json::from_str(&text).map_err(|e| bad(line_no, e.to_string()))?;
        if let Some(end) = line.end {
            check_end(&staged, line_no, lines, &end)?;
            staged.delete(IMPORT_MARKER_KEY.to_vec());
            kv.write(std::mem::take(&mut staged.writes))?;
            return Ok(end);
        }
        restore_line(&mut staged, line_no, &line)?;
        lines += 1;
        pending += 1;
        if pending == PAGE {
            kv.write(std::mem::take(&mut staged.writes))?;
            staged = Staged::new(kv);
            pending = 0;
        }
    }
}

/// Checks the end line against what was read.
fn check_end(
    staged: &Staged,
    line: u64,
    lines: u64,
    end: &BackupSummary,
) -> Result<(), StoreError> {
    if end.lines != lines {
        return Err(bad(
            line,
            format!(
                "the end line counts {} record lines, the file has {lines}",
                end.lines
            ),
        ));
    }
    let head = match staged.get(keys::FEED_HEAD_KEY)? {
        Some(bytes) => decode::<CounterRecord>(keys::FEED_HEAD_KEY, &bytes)?.value,
        None => 0,
    };
    if head != end.feed_head {
        return Err(bad(
            line,
            format!(
                "the end line gives feed head {}, the records give {head}",
                end.feed_head
            ),
        ));
    }
    Ok(())
}

/// Stages one record line: the record with the keys derived from it.
fn restore_line(staged: &mut Staged, line: u64, l: &Line) -> Result<(), StoreError> {
    let kind = l.kind.ok_or_else(|| bad(line, "missing `kind`"))?;
    let id = l.key.as_ref().ok_or_else(|| bad(line, "missing `key`"))?;
    let key = key_of(line, kind, id)?;
    let record = match (l.record, l.deleted) {
        (Some(record), false) => record,
        (None, true) => return restore_delete(staged, line, kind, key),
        _ => {
            return Err(bad(
                line,
                "a line has either `record` or `\"deleted\": true`",
            ))
        }
    };
    let format = l.format.ok_or_else(|| bad(line, "missing `format`"))?;
    let tag = KINDS
        .iter()
        .find(|(k, _, _)| *k == kind)
        .map(|(_, _, t)| *t)
        .expect("key_of accepted the kind");
    let mut value = vec![tag, format];
    value.extend_from_slice(record.get().as_bytes());
    let wrong = |e: StoreError| bad(line, e.to_string());
    match kind {
        "instance" => {
            let instance: Instance = decode(&key, &value).map_err(wrong)?;
            same(line, "id", keys::instance_key(instance.id) == key)?;
            let old = staged
                .get(&key)?
                .map(|b| records::decode_head(&key, &b))
                .transpose()?;
            staged.stage_instance(&instance, old.as_ref());
        }
        "job" => {
            let job: Job = decode(&key, &value).map_err(wrong)?;
            same(line, "id", keys::job_key(job.id) == key)?;
            let old: Option<Job> = staged.get(&key)?.map(|b| decode(&key, &b)).transpose()?;
            staged.stage_job(&job, old.as_ref());
        }
        "request" => {
            let request: RequestRecord = decode(&key, &value).map_err(wrong)?;
            same(
                line,
                "request_id",
                keys::request_key(&request.request_id) == key,
            )?;
            if let Some(bytes) = staged.get(&key)? {
                let old: RequestRecord = decode(&key, &bytes)?;
                staged.delete(keys::request_expiry_key(&old));
            }
            staged.put(keys::request_expiry_key(&request), Vec::new());
        }
        _ => check_plain(line, kind, id, &key, &value)?,
    }
    // Staging an instance or job encodes it again; keep the backup's exact bytes.
    staged.put(key, value);
    Ok(())
}

/// Refuses a record whose identity is not its line's `key`.
fn same(line: u64, what: &str, matches: bool) -> Result<(), StoreError> {
    if matches {
        Ok(())
    } else {
        Err(bad(
            line,
            format!("`key` does not match the record's {what}"),
        ))
    }
}

/// Checks a record that has no derived keys: it decodes, and its identity is the line's key.
fn check_plain(
    line: u64,
    kind: &str,
    id: &Value,
    key: &[u8],
    value: &[u8],
) -> Result<(), StoreError> {
    let wrong = |e: StoreError| bad(line, e.to_string());
    match kind {
        "history" => {
            let entry: HistoryEntry = decode(key, value).map_err(wrong)?;
            same(
                line,
                "instance and version",
                keys::history_key(entry.instance, entry.version) == key,
            )
        }
        "feed" => {
            let event: FeedEvent = decode(key, value).map_err(wrong)?;
            same(line, "offset", keys::feed_key(event.offset) == key)
        }
        "rule_set" => {
            let set: RuleSetRecord = decode(key, value).map_err(wrong)?;
            same(line, "number", keys::rule_set_key(set.number) == key)
        }
        "activation" => {
            let activation: RuleSetActivation = decode(key, value).map_err(wrong)?;
            same(line, "seq", keys::activation_key(activation.seq) == key)
        }
        "admin_request" => {
            let request: RuleSetRequestRecord = decode(key, value).map_err(wrong)?;
            same(
                line,
                "request_id",
                keys::rule_set_request_key(&request.request_id) == key,
            )
        }
        "credential" => {
            let credential: Credential = decode(key, value).map_err(wrong)?;
            same(
                line,
                "token_sha256",
                id.as_str() == Some(credential.token_sha256.as_str()),
            )
        }
        "balance" => decode::<BalanceRecord>(key, value).map(drop).map_err(wrong),
        _ => decode::<CounterRecord>(key, value).map(drop).map_err(wrong),
    }
}

/// Stages a deleted record (an export catches request and feed purges).
fn restore_delete(
    staged: &mut Staged,
    line: u64,
    kind: &str,
    key: Vec<u8>,
) -> Result<(), StoreError> {
    match kind {
        "instance" | "history" | "job" | "rule_set" | "activation" => {
            return Err(bad(
                line,
                format!("a {kind} record is never deleted; this is not a backup Switchyard wrote"),
            ))
        }
        "request" => {
            if let Some(bytes) = staged.get(&key)? {
                let old: RequestRecord = decode(&key, &bytes)?;
                staged.delete(keys::request_expiry_key(&old));
            }
        }
        _ => {}
    }
    staged.delete(key);
    Ok(())
}

/// Exports the sled store at `config.path`, which no process may have open (an offline
/// backup; a running server exports over gRPC).
pub fn export_stopped(
    config: &SledConfig,
    out: &mut dyn Write,
    now: DateTime<Utc>,
) -> Result<BackupSummary, StoreError> {
    if !config.path.join("db").is_file() {
        return Err(StoreError::Io(format!(
            "there is no store at {}",
            config.path.display()
        )));
    }
    SledStore::open(config)?.export(out, now)
}

/// Restores a backup into a new sled store at `config.path` (created; refused unless empty).
pub fn import_into(
    config: &SledConfig,
    input: &mut dyn BufRead,
) -> Result<BackupSummary, StoreError> {
    SledStore::open(config)?.import(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_prefix_and_its_identity_maps_back_to_its_key() {
        let samples: Vec<Vec<u8>> = vec![
            keys::instance_key(InstanceId(Uuid::now_v7())),
            keys::history_key(InstanceId(Uuid::now_v7()), 7),
            keys::request_key("req-1"),
            keys::counter_key("quote_number", "2026"),
            keys::balance_key("exposure", "ACME"),
            keys::feed_key(42),
            keys::job_key(JobId(Uuid::now_v7())),
            keys::rule_set_key(3),
            keys::activation_key(9),
            keys::rule_set_request_key("deploy-1"),
            keys::credential_key(&[0xab; 32]),
            keys::FEED_HEAD_KEY.to_vec(),
            keys::ACTIVE_RULE_SET_KEY.to_vec(),
        ];
        for key in samples {
            assert!(!derived(&key), "{}", printable(&key));
            let (kind, id) = identity(&key).unwrap();
            assert_eq!(key_of(1, kind, &id).unwrap(), key, "{kind} {id}");
        }
        let mut prefixes: Vec<u8> = KINDS.iter().map(|(_, p, _)| *p).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        assert_eq!(prefixes.len(), KINDS.len());
    }

    #[test]
    fn a_spill_past_its_limit_fails_the_export_and_stops_catching_writes() {
        let tap = WriteTap {
            limit: 64,
            ..WriteTap::default()
        };
        tap.start().unwrap();
        let write = |n: u8| Writes::from([(keys::feed_key(u64::from(n)), Some(vec![n; 20]))]);
        tap.record(&write(1));
        assert!(tap.active.load(Ordering::Acquire));
        tap.record(&write(2));
        tap.record(&write(3));
        assert!(
            !tap.active.load(Ordering::Acquire),
            "past 64 bytes the tap stops"
        );
        let e = tap.stop().unwrap_err().to_string();
        assert!(e.contains("changed by more than 0 MiB"), "{e}");
        // The next export starts afresh.
        tap.start().unwrap();
        assert!(tap.stop().unwrap().is_some());
    }

    #[test]
    fn a_wrong_identity_or_kind_names_the_line() {
        let e = key_of(7, "instance", &Value::from("not-a-uuid")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "backup line 7: `key` \"not-a-uuid\" is not the identity of a instance record"
        );
        let e = key_of(3, "gadget", &Value::from(1)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("backup line 3: `kind` \"gadget\" is not one of instance, history"),
            "{e}"
        );
        assert!(key_of(2, "meta", &Value::from("import_unfinished")).is_err());
    }
}
