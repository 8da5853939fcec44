//! The decider boundary: the one place where business logic decides what a command does.
//!
//! A decider gets the instance, the command and its payload, the actor and the parent
//! instance, and returns a [`Decision`]: the next state, data changes, effects and a human
//! reason. Deciders run before the storage transaction, never inside it, and have no access
//! to the store: everything they may change comes back in the decision, which the engine
//! checks against the definition before committing. Deciders here are plain Rust; the Rhai
//! rule engine plugs in behind the same trait.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

use crate::definition::{CommandDef, Definition};
use crate::model::{Actor, Instance, InstanceId, Provenance};

/// Everything a decider may look at.
#[derive(Debug)]
pub struct DecisionContext<'a> {
    /// The definition (at the instance's pinned version).
    pub definition: &'a Definition,
    /// The command being decided.
    pub command: &'a CommandDef,
    /// The instance as it is before the command.
    pub instance: &'a Instance,
    /// The command payload, already checked against the command's schema.
    pub payload: &'a Value,
    /// Who sent it.
    pub actor: &'a Actor,
    /// The parent instance, if the instance has one.
    pub parent: Option<&'a Instance>,
    /// The top of the chain of parents when it is above the parent (an order's lead, whose
    /// quote is the order's parent); `None` when the parent is the top, or there is none.
    pub root: Option<&'a Instance>,
    /// The engine clock's time for this evaluation.
    pub now: DateTime<Utc>,
    /// Counter values the decider may read (those its command declares in
    /// `effects.counters`); what it reads is checked again when the commit is written.
    pub counters: &'a Counters,
    /// Balance values the decider may read (those its command declares in
    /// `effects.balances`); checked again when the commit is written, like counters.
    pub balances: &'a Balances,
}

/// A counter value a decision was made on. The commit is refused (and the command decided
/// again) if the value changed before it was written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterRead {
    /// Counter name.
    pub counter: String,
    /// Key within the counter.
    pub key: String,
    /// The value read.
    pub value: u64,
}

/// A balance value a decision was made on (a customer's exposure…). The commit is refused
/// (and the command decided again) if the value changed before it was written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalanceRead {
    /// Balance name.
    pub balance: String,
    /// Key within the balance.
    pub key: String,
    /// The value read.
    pub value: Decimal,
}

/// Reads one value (name, key) from a live store.
pub(crate) type LedgerLookup<V> =
    Arc<dyn Fn(&str, &str) -> Result<V, crate::store::StoreError> + Send + Sync>;

/// Where values come from: the store (a live decision or a dry run), a rule test's given
/// values, or a past decision's record (a backtest).
#[derive(Clone)]
enum LedgerSource<V> {
    Fixed(BTreeMap<(String, String), V>),
    Live(LedgerLookup<V>),
}

/// Named, keyed values a decider may read — counters (`u64`) or balances (`Decimal`). Every
/// value read is remembered, first read wins, so the engine can check at commit that the
/// decision still stands on it and a backtest can replay it. Clones share what was read.
#[derive(Clone)]
pub struct Ledger<V> {
    source: LedgerSource<V>,
    /// The names that may be read; `None`: any.
    allowed: Option<Vec<String>>,
    reads: Arc<std::sync::Mutex<Vec<(String, String, V)>>>,
    /// The first store failure a read met: it fails the command as that failure (a corrupt
    /// record stays DATA_LOSS), whatever the decider made of the error it was given.
    failed: Arc<std::sync::Mutex<Option<crate::store::StoreError>>>,
}

/// The counters a decider may read.
pub type Counters = Ledger<u64>;

/// The balances a decider may read.
pub type Balances = Ledger<Decimal>;

/// Most distinct counter (or balance) values one decision may read.
pub const COUNTER_READS_MAX: usize = 64;

/// The value types a [`Ledger`] holds.
pub trait LedgerValue: Clone + Default + fmt::Debug + Send + Sync + 'static {
    /// What one is called in messages.
    const KIND: &'static str;
    /// The ledger's type name, for `Debug`.
    const LEDGER: &'static str;
}

impl LedgerValue for u64 {
    const KIND: &'static str = "counter";
    const LEDGER: &'static str = "Counters";
}

impl LedgerValue for Decimal {
    const KIND: &'static str = "balance";
    const LEDGER: &'static str = "Balances";
}

impl<V: LedgerValue> Default for Ledger<V> {
    fn default() -> Self {
        Ledger::fixed(BTreeMap::new())
    }
}

impl<V: LedgerValue> fmt::Debug for Ledger<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            LedgerSource::Fixed(values) => f
                .debug_tuple(&format!("{}::Fixed", V::LEDGER))
                .field(values)
                .finish(),
            LedgerSource::Live(_) => write!(f, "{}::Live", V::LEDGER),
        }
    }
}

impl<V: LedgerValue> Ledger<V> {
    /// Given values, keyed by (name, key); any other reads as zero (never drawn or moved).
    pub fn fixed(values: BTreeMap<(String, String), V>) -> Self {
        Ledger {
            source: LedgerSource::Fixed(values),
            allowed: None,
            reads: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// Given values as `{ name: { key: value } }` (a rule test's `counters` or `balances`,
    /// the `rules eval` input's).
    pub fn given(values: BTreeMap<String, BTreeMap<String, V>>) -> Self {
        Ledger::fixed(
            values
                .into_iter()
                .flat_map(|(name, keys)| {
                    keys.into_iter()
                        .map(move |(key, value)| ((name.clone(), key), value))
                })
                .collect(),
        )
    }

    /// Values read by `read`, of the `allowed` names only (`None`: any).
    pub(crate) fn live(read: LedgerLookup<V>, allowed: Option<Vec<String>>) -> Self {
        Ledger {
            source: LedgerSource::Live(read),
            allowed,
            reads: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// The value of `name` at `key` (zero if never drawn or moved). Refused for a name the
    /// command does not declare, and past [`COUNTER_READS_MAX`] distinct values.
    pub fn read(&self, name: &str, key: &str) -> Result<V, String> {
        let kind = V::KIND;
        if let Some(allowed) = &self.allowed {
            if !allowed.iter().any(|c| c == name) {
                return Err(format!(
                    "{kind} `{}` may not be read here; the command declares: {}",
                    crate::error::clip(name, 64),
                    if allowed.is_empty() {
                        "(nothing)".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ));
            }
        }
        let mut reads = self.reads.lock().expect("ledger reads lock poisoned");
        if let Some((_, _, value)) = reads.iter().find(|(n, k, _)| n == name && k == key) {
            return Ok(value.clone());
        }
        if reads.len() >= COUNTER_READS_MAX {
            return Err(format!(
                "at most {COUNTER_READS_MAX} {kind} values may be read in one decision"
            ));
        }
        let value = match &self.source {
            LedgerSource::Fixed(values) => values
                .get(&(name.to_string(), key.to_string()))
                .cloned()
                .unwrap_or_default(),
            LedgerSource::Live(read) => match read(name, key) {
                Ok(value) => value,
                Err(e) => {
                    let message = format!("reading {kind} `{name}` failed: {e}");
                    self.failed
                        .lock()
                        .expect("ledger failure lock poisoned")
                        .get_or_insert(e);
                    return Err(message);
                }
            },
        };
        reads.push((name.to_string(), key.to_string(), value.clone()));
        Ok(value)
    }

    /// The store failure a read met, if one did.
    pub(crate) fn store_failure(&self) -> Option<crate::store::StoreError> {
        self.failed
            .lock()
            .expect("ledger failure lock poisoned")
            .clone()
    }

    /// Every (name, key, value) read so far, in the order first read.
    fn values_read(&self) -> Vec<(String, String, V)> {
        self.reads
            .lock()
            .expect("ledger reads lock poisoned")
            .clone()
    }
}

impl Ledger<u64> {
    /// The values a past decision read.
    pub fn replaying(reads: &[CounterRead]) -> Self {
        Ledger::fixed(
            reads
                .iter()
                .map(|r| ((r.counter.clone(), r.key.clone()), r.value))
                .collect(),
        )
    }

    /// Every value read so far, in the order first read.
    pub fn reads(&self) -> Vec<CounterRead> {
        self.values_read()
            .into_iter()
            .map(|(counter, key, value)| CounterRead {
                counter,
                key,
                value,
            })
            .collect()
    }
}

impl Ledger<Decimal> {
    /// The values a past decision read.
    pub fn replaying(reads: &[BalanceRead]) -> Self {
        Ledger::fixed(
            reads
                .iter()
                .map(|r| ((r.balance.clone(), r.key.clone()), r.value))
                .collect(),
        )
    }

    /// Every value read so far, in the order first read.
    pub fn reads(&self) -> Vec<BalanceRead> {
        self.values_read()
            .into_iter()
            .map(|(balance, key, value)| BalanceRead {
                balance,
                key,
                value,
            })
            .collect()
    }
}

/// What a command does, as decided.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Decision {
    /// The state to move to; must be one of the command's `to` states.
    pub next_state: String,
    /// Data changes as a JSON merge patch (RFC 7386): an object, or `Null` for none.
    pub changes: Value,
    /// Effects; each must be declared in the command's `effects`.
    pub effects: Vec<Effect>,
    /// A human reason, e.g. "discount 18% > 10% → manager". Recorded in history.
    pub reason: String,
    /// Which rule decided and from what (rule-set version, script, function, inputs,
    /// outputs); recorded in history. Rule-script deciders always fill it.
    pub provenance: Option<Provenance>,
}

impl Decision {
    /// Move to `next_state`, changing nothing else.
    pub fn goto(next_state: impl Into<String>, reason: impl Into<String>) -> Self {
        Decision {
            next_state: next_state.into(),
            changes: Value::Null,
            effects: Vec::new(),
            reason: reason.into(),
            provenance: None,
        }
    }

    /// Adds data changes (a JSON merge patch object).
    pub fn with_changes(mut self, changes: Value) -> Self {
        self.changes = changes;
        self
    }

    /// Adds an effect.
    pub fn with_effect(mut self, effect: Effect) -> Self {
        self.effects.push(effect);
        self
    }
}

/// Something a decision does besides moving its own instance. All effects commit in the same
/// atomic write as the transition, or not at all.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Effect {
    /// Start a new instance of `definition` (its latest version), linked as a child.
    StartLinked {
        /// Definition name; must be in the command's `effects.start`.
        definition: String,
        /// Business key of the new instance.
        business_key: String,
        /// Its initial data, checked against that definition's start schema.
        data: Value,
        /// The state it begins in: the definition's `initial` when `None`, else one of its
        /// `[start] states`.
        state: Option<String>,
    },
    /// Change a linked instance's data (the parent, or a child), version-checked: if it
    /// changed since the decider saw it, the command is re-evaluated.
    UpdateLinked {
        /// The linked instance; its definition must be in the command's `effects.update`.
        instance: InstanceId,
        /// The version the decider saw; `None` takes the version read by the engine just before
        /// the commit.
        expected_version: Option<u64>,
        /// Data changes as a JSON merge patch object.
        changes: Value,
        /// Why; recorded in the linked instance's history.
        reason: String,
    },
    /// Create a job for a worker; it commits with the transition and completes through the
    /// job type's completion command.
    CreateJob {
        /// Job type; must be in the command's `effects.jobs`.
        job_type: String,
        /// Input for the worker.
        payload: Value,
    },
    /// Draw the next number from a named counter (gap-free; refused past `limit`).
    DrawCounter {
        /// Counter name; must be in the command's `effects.counters`.
        counter: String,
        /// Key within the counter (e.g. `"2026"`, a coupon code).
        key: String,
        /// Highest value allowed; drawing past it refuses the command.
        limit: Option<u64>,
        /// Where to write the drawn value into this instance's data, if anywhere.
        assign: Option<CounterAssign>,
    },
    /// Give one drawn value back to a usage counter (a coupon's uses): its value for `key`
    /// goes down by one, never below zero, in the same commit. Not for numbering counters,
    /// whose values must stay gap-free.
    ReturnCounter {
        /// Counter name; must be in the command's `effects.counters`.
        counter: String,
        /// Key within the counter.
        key: String,
    },
    /// Move a named balance (a customer's exposure…) at `key` by `amount` (negative: down),
    /// in the same commit. Balances are exact decimals and start at zero.
    AdjustBalance {
        /// Balance name; must be in the command's `effects.balances`.
        balance: String,
        /// Key within the balance (e.g. `"ACME/EUR"`).
        key: String,
        /// By how much.
        amount: Decimal,
    },
    /// Send a command, as `system`, to a linked instance: it is checked and decided like any
    /// command, and its transition commits with this one, or the whole command is refused.
    SendLinked {
        /// Which linked instance.
        to: LinkedTarget,
        /// The command; `<definition>.<command>` must be in the command's `effects.send`.
        command: String,
        /// Its payload, checked against that command's schema.
        payload: Value,
    },
}

/// The instance a [`Effect::SendLinked`] goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkedTarget {
    /// The instance's parent.
    Parent,
    /// The top of the instance's chain of parents (its parent's parent, …).
    Root,
    /// A given instance, which must be the parent, the root or a child of the sender.
    Instance(InstanceId),
}

impl fmt::Display for LinkedTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkedTarget::Parent => f.write_str("parent"),
            LinkedTarget::Root => f.write_str("root"),
            LinkedTarget::Instance(id) => write!(f, "instance {id}"),
        }
    }
}

/// Writes a drawn counter value into the instance data as `prefix` + zero-padded value,
/// e.g. `SO-2026-` + `000123`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterAssign {
    /// Data field to set: a top-level key, or a dotted path through maps and list indices
    /// (`invoices.2.number`) whose containers the decision's changes already hold.
    pub field: String,
    /// Text before the number.
    pub prefix: String,
    /// Minimum digits (zero-padded).
    pub width: usize,
}

impl CounterAssign {
    /// The text written for `value`.
    pub fn render(&self, value: u64) -> String {
        format!("{}{:0width$}", self.prefix, value, width = self.width)
    }

    /// Whether `field` is a well-formed path: identifiers and list indices separated by dots,
    /// starting with an identifier, at most 8 steps.
    pub fn path_is_valid(&self) -> bool {
        let steps: Vec<&str> = self.field.split('.').collect();
        steps.len() <= 8
            && crate::definition::schema::is_identifier(steps[0])
            && steps[1..].iter().all(|s| {
                crate::definition::schema::is_identifier(s)
                    || (!s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()))
            })
    }

    /// The top-level key the path starts at.
    pub fn top(&self) -> &str {
        self.field.split('.').next().unwrap_or_default()
    }

    /// Writes the rendered `value` at the path in `data`; false (and nothing written) when a
    /// container on the way is missing.
    pub fn write(&self, data: &mut Value, value: u64) -> bool {
        let mut steps = self.field.split('.').peekable();
        let mut at = data;
        while let Some(step) = steps.next() {
            let last = steps.peek().is_none();
            let next = match at {
                Value::Object(map) if last => {
                    map.insert(step.to_string(), Value::String(self.render(value)));
                    return true;
                }
                Value::Object(map) => map.get_mut(step),
                Value::Array(items) => match step.parse::<usize>().ok() {
                    Some(i) if last && i < items.len() => {
                        items[i] = Value::String(self.render(value));
                        return true;
                    }
                    Some(i) => items.get_mut(i),
                    None => None,
                },
                _ => None,
            };
            match next {
                Some(n) => at = n,
                None => return false,
            }
        }
        false
    }
}

/// Why a decider gave no decision: the command is refused and nothing is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecideError {
    /// The rule decided to refuse the command for a business reason (`code`, e.g.
    /// `CREDIT_LIMIT`): a decision, not a fault.
    #[error("refused ({code}): {message}")]
    Refused {
        /// A stable reason code, upper snake case.
        code: String,
        /// The explanation for people.
        message: String,
    },
    /// The decider failed: a script error or a limit hit, with the script location when there
    /// is one.
    #[error("{message}")]
    Failed {
        /// What went wrong (starting with the place, when there is one).
        message: String,
        /// Where in the rule set it went wrong, when known.
        location: Option<SourceLocation>,
    },
}

/// A place in a rule-set file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLocation {
    /// The file, relative to the rule set's root.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

impl DecideError {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        DecideError::Failed {
            message: message.into(),
            location: None,
        }
    }

    /// A business refusal with a reason code and an explanation.
    pub fn refuse(code: impl Into<String>, message: impl Into<String>) -> Self {
        DecideError::Refused {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The explanation, whichever kind.
    pub fn message(&self) -> &str {
        match self {
            DecideError::Refused { message, .. } | DecideError::Failed { message, .. } => message,
        }
    }
}

/// Decides the outcome of a command.
pub trait Decider: Send + Sync + 'static {
    /// Decides. Must not block for long: unless [`Decider::on_rule_pool`], it runs on the
    /// caller's task.
    fn decide(&self, ctx: &DecisionContext<'_>) -> Result<Decision, DecideError>;

    /// Whether its evaluations run on the engine's bounded rule pool instead of inline on
    /// the caller's task. Rule scripts do (analysts write them, and one may loop until its
    /// limits stop it); compiled Rust deciders, trusted to be quick, do not by default — the
    /// hop to another thread costs more than they take.
    fn on_rule_pool(&self) -> bool {
        false
    }
}

impl<F> Decider for F
where
    F: Fn(&DecisionContext<'_>) -> Result<Decision, DecideError> + Send + Sync + 'static,
{
    fn decide(&self, ctx: &DecisionContext<'_>) -> Result<Decision, DecideError> {
        self(ctx)
    }
}

/// The name of the built-in decider that moves to the command's only `to` state and merges
/// the payload into the instance data.
pub const MERGE_PAYLOAD: &str = "builtin.merge_payload";

/// Deciders by the name definitions use for them.
#[derive(Clone)]
pub struct DeciderRegistry {
    deciders: BTreeMap<String, Arc<dyn Decider>>,
    /// Names that exist but cannot decide, with the reason (e.g. a script function with the
    /// wrong number of parameters), so definitions naming them get a precise error.
    rejected: BTreeMap<String, String>,
}

impl fmt::Debug for DeciderRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.deciders.keys()).finish()
    }
}

impl Default for DeciderRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl DeciderRegistry {
    /// A registry holding only the built-in [`MERGE_PAYLOAD`] decider.
    pub fn new() -> Self {
        let mut r = DeciderRegistry {
            deciders: BTreeMap::new(),
            rejected: BTreeMap::new(),
        };
        r.register(MERGE_PAYLOAD, |ctx: &DecisionContext<'_>| {
            let [to] = ctx.command.to.as_slice() else {
                return Err(DecideError::new(format!(
                    "{MERGE_PAYLOAD} needs exactly one `to` state; command `{}` has {}",
                    ctx.command.name,
                    ctx.command.to.len()
                )));
            };
            Ok(
                Decision::goto(to.clone(), format!("{} → {to}", ctx.command.name))
                    .with_changes(ctx.payload.clone()),
            )
        });
        r
    }

    /// Registers (or replaces) the decider `name`.
    pub fn register(&mut self, name: impl Into<String>, decider: impl Decider) -> &mut Self {
        self.deciders.insert(name.into(), Arc::new(decider));
        self
    }

    /// Records that `name` exists but cannot be a decider, and why.
    pub fn reject(&mut self, name: impl Into<String>, reason: impl Into<String>) -> &mut Self {
        self.rejected.insert(name.into(), reason.into());
        self
    }

    /// Why `name` cannot be a decider, if it was rejected.
    pub fn rejection(&self, name: &str) -> Option<&str> {
        self.rejected.get(name).map(String::as_str)
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.deciders.contains_key(name)
    }

    /// The decider `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Decider>> {
        self.deciders.get(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.deciders.keys()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use serde_json::json;

    use super::{CounterAssign, CounterRead, Counters, COUNTER_READS_MAX};
    use crate::store::StoreError;

    fn assign(field: &str) -> CounterAssign {
        CounterAssign {
            field: field.into(),
            prefix: "INV-".into(),
            width: 3,
        }
    }

    #[test]
    fn a_counter_is_assigned_at_a_top_level_key_or_a_path_that_exists() {
        let mut data = json!({ "invoices": [{ "number": "" }, { "number": "", "lines": [] }] });
        assert!(assign("number").write(&mut data, 7));
        assert_eq!(data["number"], "INV-007");
        assert!(assign("invoices.1.number").write(&mut data, 8));
        assert_eq!(data["invoices"][1]["number"], "INV-008");
        assert_eq!(data["invoices"][0]["number"], "");
        let before = data.clone();
        for missing in [
            "invoices.2.number",
            "invoices.x.number",
            "orders.0.number",
            "number.x",
        ] {
            assert!(!assign(missing).write(&mut data, 9), "{missing}");
        }
        assert_eq!(data, before, "a failed write changes nothing");
        assert!(assign("invoices.1").write(&mut data, 10));
        assert_eq!(data["invoices"][1], "INV-010");
        assert_eq!(assign("invoices.1.number").top(), "invoices");
    }

    #[test]
    fn an_assignment_path_is_identifiers_and_indices() {
        for good in ["number", "invoices.0.number", "a.b.c.d.e.f.g.h"] {
            assert!(assign(good).path_is_valid(), "{good}");
        }
        for bad in [
            "",
            "0.number",
            "invoices..number",
            "a.b.c.d.e.f.g.h.i",
            "Number",
            "a.123456",
        ] {
            assert!(!assign(bad).path_is_valid(), "{bad}");
        }
    }

    fn read(counter: &str, key: &str, value: u64) -> CounterRead {
        CounterRead {
            counter: counter.into(),
            key: key.into(),
            value,
        }
    }

    #[test]
    fn the_first_read_of_a_value_wins_and_each_value_is_recorded_once() {
        // A live source whose value moves on every read.
        let next = Arc::new(AtomicU64::new(5));
        let source = next.clone();
        let counters = Counters::live(
            Arc::new(move |_: &str, _: &str| Ok(source.fetch_add(1, Ordering::SeqCst))),
            Some(vec!["uses".into()]),
        );
        assert_eq!(counters.read("uses", "a"), Ok(5));
        assert_eq!(counters.read("uses", "a"), Ok(5), "the value decided on");
        assert_eq!(counters.read("uses", "b"), Ok(6));
        assert_eq!(
            counters.reads(),
            vec![read("uses", "a", 5), read("uses", "b", 6)]
        );
        let undeclared = counters.read("other", "a").unwrap_err();
        assert_eq!(
            undeclared,
            "counter `other` may not be read here; the command declares: uses"
        );
        assert_eq!(counters.reads().len(), 2, "a refused read records nothing");
    }

    #[test]
    fn given_values_replay_and_reads_are_bounded() {
        let mut given = BTreeMap::new();
        given.insert("uses".to_string(), BTreeMap::from([("a".to_string(), 3)]));
        let counters = Counters::given(given);
        assert_eq!(counters.read("uses", "a"), Ok(3));
        assert_eq!(
            counters.read("uses", "never"),
            Ok(0),
            "a counter never drawn"
        );
        assert_eq!(
            format!("{counters:?}"),
            r#"Counters::Fixed({("uses", "a"): 3})"#
        );
        let replay = Counters::replaying(&counters.reads());
        assert_eq!(replay.read("uses", "a"), Ok(3));
        let many = Counters::default();
        for i in 0..COUNTER_READS_MAX {
            many.read("n", &i.to_string()).unwrap();
        }
        assert!(many
            .read("n", "one more")
            .unwrap_err()
            .contains("at most 64"));
        assert_eq!(
            many.read("n", "0"),
            Ok(0),
            "a value already read is still there"
        );
    }

    #[test]
    fn balances_are_read_like_counters_exactly_and_replay() {
        let d = |s: &str| s.parse::<rust_decimal::Decimal>().unwrap();
        let balances = super::Balances::given(BTreeMap::from([(
            "uninvoiced".to_string(),
            BTreeMap::from([("ACME/EUR".to_string(), d("7000.10"))]),
        )]));
        assert_eq!(balances.read("uninvoiced", "ACME/EUR"), Ok(d("7000.10")));
        assert_eq!(balances.read("uninvoiced", "BETA/EUR"), Ok(d("0")));
        assert_eq!(
            format!("{balances:?}"),
            r#"Balances::Fixed({("uninvoiced", "ACME/EUR"): 7000.10})"#
        );
        let reads = balances.reads();
        assert_eq!(reads.len(), 2);
        assert_eq!(reads[0].value.to_string(), "7000.10", "exact, scale kept");
        let replay = super::Balances::replaying(&reads);
        assert_eq!(replay.read("uninvoiced", "ACME/EUR"), Ok(d("7000.10")));
        let live = super::Balances::live(
            Arc::new(|_: &str, _: &str| Ok(rust_decimal::Decimal::ONE)),
            Some(vec!["receivable".into()]),
        );
        assert_eq!(
            live.read("uninvoiced", "ACME/EUR").unwrap_err(),
            "balance `uninvoiced` may not be read here; the command declares: receivable"
        );
        assert_eq!(
            live.read("receivable", "ACME/EUR"),
            Ok(rust_decimal::Decimal::ONE)
        );
    }

    #[test]
    fn a_store_failure_is_kept_as_it_was_for_the_engine() {
        let counters = Counters::live(
            Arc::new(|_: &str, _: &str| Err(StoreError::Io("disk on fire".into()))),
            None,
        );
        assert_eq!(format!("{counters:?}"), "Counters::Live");
        let message = counters.read("uses", "a").unwrap_err();
        assert!(message.contains("disk on fire"), "{message}");
        assert!(matches!(
            counters.store_failure(),
            Some(StoreError::Io(m)) if m == "disk on fire"
        ));
        assert!(counters.reads().is_empty());
    }
}
