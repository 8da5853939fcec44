//! The inventory adapter for the shipped lead-to-cash rules.
//!
//! A sales order that passes its credit check creates a `reserve_stock` job
//! (`{ order, customer, lines: [{ sku, quantity }] }`); a cancelled one a `release_stock` job
//! (`{ order, lines: [{ sku, quantity }] }`); an inspected return a `restock_returned` job
//! (`{ return, lines: [{ sku, quantity }] }`: the units that go back on the shelf).
//! [`register`] answers all three in-process for any [`Inventory`]: the reservation's answer (`{ lines: [{ sku, reserved }] }`, line by line)
//! becomes the order's `stock_reserved` command in the same commit as the job's completion.
//!
//! The job id is the idempotency key: an [`Inventory`] must answer a reservation it has seen
//! before with the same result (a worker may crash after reserving and before completing, and
//! the job then runs again). [`MemoryInventory`] is the reference implementation, with stock
//! levels and failures set by the caller; an ERP implements [`Inventory`] over its own stock
//! ledger (or answers the jobs from another process — see `plugins/README.md`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rust_decimal::Decimal;
use serde_json::{json, Value};
use switchyard_core::{ActivatedJob, Engine};

/// The job types the shipped `sales_order` definition creates.
pub const RESERVE_STOCK: &str = "reserve_stock";
/// See [`RESERVE_STOCK`].
pub const RELEASE_STOCK: &str = "release_stock";
/// The job type the shipped `return` definition creates for restocked units.
pub const RESTOCK_RETURNED: &str = "restock_returned";

/// One line of a reservation or a release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The product.
    pub sku: String,
    /// How many.
    pub quantity: Decimal,
}

/// A stock ledger that can reserve and release. Errors are messages: the job fails with it and
/// is retried after its backoff, then raised as an incident.
pub trait Inventory: Send + Sync + 'static {
    /// Reserves what is on hand of each line, up to its quantity; returns the reserved
    /// quantity per line, in order. Called again with the same `key`, returns the first
    /// answer and reserves nothing more.
    fn reserve(&self, key: &str, lines: &[Line]) -> Result<Vec<Decimal>, String>;
    /// Gives reserved quantity back to stock. Called again with the same `key`, does nothing.
    fn release(&self, key: &str, lines: &[Line]) -> Result<(), String>;
    /// Puts returned units back in stock (available). Called again with the same `key`, does
    /// nothing.
    fn put_back(&self, key: &str, lines: &[Line]) -> Result<(), String>;
}

/// Answers the shipped `reserve_stock` and `release_stock` jobs of `engine` with `inventory`,
/// in-process (`Engine::register_job_handler`: bounded by the engine's job handler timeout;
/// a failure is retried, then an incident).
pub fn register(engine: &Engine, inventory: Arc<dyn Inventory>) {
    for job_type in [RESERVE_STOCK, RELEASE_STOCK, RESTOCK_RETURNED] {
        let inventory = inventory.clone();
        engine.register_job_handler(job_type, move |job: ActivatedJob| {
            let inventory = inventory.clone();
            async move {
                answer(
                    &*inventory,
                    &job.job_type,
                    &job.id.to_string(),
                    &job.payload,
                )
            }
        });
    }
}

/// The answer to one job of `job_type` (`reserve_stock`, `release_stock` or
/// `restock_returned`) with id `key` and
/// `payload`: what `register` completes it with, and what a worker in another process sends
/// back with `CompleteJob`. `Err` fails the job.
pub fn answer(
    inventory: &dyn Inventory,
    job_type: &str,
    key: &str,
    payload: &Value,
) -> Result<Value, String> {
    let lines = lines_of(payload)?;
    match job_type {
        RESERVE_STOCK => {
            let reserved = inventory.reserve(key, &lines)?;
            if reserved.len() != lines.len() {
                return Err(format!(
                    "the inventory answered {} lines for {} asked",
                    reserved.len(),
                    lines.len()
                ));
            }
            let answer: Vec<Value> = lines
                .iter()
                .zip(reserved)
                .map(|(l, r)| json!({ "sku": l.sku, "reserved": r.to_string() }))
                .collect();
            Ok(json!({ "lines": answer }))
        }
        RELEASE_STOCK => {
            inventory.release(key, &lines)?;
            Ok(json!({}))
        }
        RESTOCK_RETURNED => {
            inventory.put_back(key, &lines)?;
            Ok(json!({}))
        }
        other => Err(format!(
            "the inventory adapter does not answer {other} jobs"
        )),
    }
}

/// The `lines` of a job payload; a malformed one is the job's failure, naming the field.
pub fn lines_of(payload: &Value) -> Result<Vec<Line>, String> {
    let lines = payload["lines"]
        .as_array()
        .ok_or("payload.lines: expected a list")?;
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let sku = l["sku"]
                .as_str()
                .ok_or_else(|| format!("payload.lines[{i}].sku: expected a string"))?;
            let quantity = match &l["quantity"] {
                Value::String(s) => s.parse::<Decimal>().ok(),
                Value::Number(n) => n.as_u64().map(Decimal::from),
                _ => None,
            }
            .filter(|q| !q.is_sign_negative())
            .ok_or_else(|| format!("payload.lines[{i}].quantity: expected a quantity"))?;
            Ok(Line {
                sku: sku.to_string(),
                quantity,
            })
        })
        .collect()
}

/// Stock of one SKU in a [`MemoryInventory`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stock {
    /// On hand, not reserved.
    pub available: Decimal,
    /// Reserved for orders.
    pub reserved: Decimal,
}

#[derive(Default)]
struct Ledger {
    stock: BTreeMap<String, Stock>,
    reservations: BTreeMap<String, Vec<Decimal>>,
    releases: Vec<String>,
    put_back: std::collections::BTreeSet<String>,
    failures_left: u32,
    failure: String,
}

/// The reference inventory: stock levels in memory, set by the caller, and failures on demand.
/// An unknown SKU has nothing available.
#[derive(Default)]
pub struct MemoryInventory {
    ledger: Mutex<Ledger>,
}

impl MemoryInventory {
    /// An inventory holding `available` of each SKU.
    pub fn with_stock<'a>(available: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let inventory = MemoryInventory::default();
        for (sku, quantity) in available {
            inventory.restock(sku, Decimal::from(quantity));
        }
        inventory
    }

    /// Adds `quantity` of `sku` to what is available.
    pub fn restock(&self, sku: &str, quantity: Decimal) {
        let mut ledger = self.lock();
        ledger.stock.entry(sku.to_string()).or_default().available += quantity;
    }

    /// The next `times` calls fail with `message` (a warehouse system that is down).
    pub fn fail_next(&self, times: u32, message: &str) {
        let mut ledger = self.lock();
        ledger.failures_left = times;
        ledger.failure = message.to_string();
    }

    /// What there is of `sku`.
    pub fn stock(&self, sku: &str) -> Stock {
        self.lock().stock.get(sku).copied().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic elsewhere cannot leave the ledger half-changed: every change is one step.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Ledger {
    fn failing(&mut self) -> Result<(), String> {
        if self.failures_left > 0 {
            self.failures_left -= 1;
            return Err(self.failure.clone());
        }
        Ok(())
    }
}

impl Inventory for MemoryInventory {
    fn reserve(&self, key: &str, lines: &[Line]) -> Result<Vec<Decimal>, String> {
        let mut ledger = self.lock();
        ledger.failing()?;
        if let Some(done) = ledger.reservations.get(key) {
            return Ok(done.clone());
        }
        let mut reserved = Vec::with_capacity(lines.len());
        for line in lines {
            let stock = ledger.stock.entry(line.sku.clone()).or_default();
            let take = line.quantity.min(stock.available);
            stock.available -= take;
            stock.reserved += take;
            reserved.push(take);
        }
        ledger
            .reservations
            .insert(key.to_string(), reserved.clone());
        Ok(reserved)
    }

    fn release(&self, key: &str, lines: &[Line]) -> Result<(), String> {
        let mut ledger = self.lock();
        ledger.failing()?;
        if ledger.releases.iter().any(|k| k == key) {
            return Ok(());
        }
        for line in lines {
            let stock = ledger.stock.entry(line.sku.clone()).or_default();
            let back = line.quantity.min(stock.reserved);
            stock.reserved -= back;
            stock.available += back;
        }
        ledger.releases.push(key.to_string());
        Ok(())
    }

    fn put_back(&self, key: &str, lines: &[Line]) -> Result<(), String> {
        let mut ledger = self.lock();
        ledger.failing()?;
        if !ledger.put_back.insert(key.to_string()) {
            return Ok(());
        }
        for line in lines {
            ledger.stock.entry(line.sku.clone()).or_default().available += line.quantity;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: u32) -> Line {
        Line {
            sku: sku.into(),
            quantity: Decimal::from(quantity),
        }
    }

    #[test]
    fn reserves_what_is_on_hand_once_per_key_and_releases_once() {
        let inventory = MemoryInventory::with_stock([("SEAL-KIT", 60)]);
        let lines = [line("SEAL-KIT", 100), line("NOPE", 1)];
        assert_eq!(
            inventory.reserve("job-1", &lines).unwrap(),
            vec![Decimal::from(60), Decimal::ZERO]
        );
        assert_eq!(
            inventory.reserve("job-1", &lines).unwrap(),
            vec![Decimal::from(60), Decimal::ZERO],
            "a retried job gets the same answer"
        );
        let stock = inventory.stock("SEAL-KIT");
        assert_eq!(
            (stock.available, stock.reserved),
            (Decimal::ZERO, Decimal::from(60))
        );
        inventory.release("rel-1", &[line("SEAL-KIT", 60)]).unwrap();
        inventory.release("rel-1", &[line("SEAL-KIT", 60)]).unwrap();
        assert_eq!(
            inventory.stock("SEAL-KIT").available,
            Decimal::from(60),
            "released once"
        );
    }

    #[test]
    fn returned_units_go_back_on_the_shelf_once_per_key() {
        let inventory = MemoryInventory::with_stock([("A", 1)]);
        let payload = json!({ "return": "r-1", "lines": [{ "sku": "A", "quantity": "2" }] });
        for _ in 0..2 {
            answer(&inventory, RESTOCK_RETURNED, "job-1", &payload).unwrap();
        }
        assert_eq!(inventory.stock("A").available, Decimal::from(3));
        answer(&inventory, RESTOCK_RETURNED, "job-2", &payload).unwrap();
        assert_eq!(inventory.stock("A").available, Decimal::from(5));
    }

    #[test]
    fn failures_on_demand_then_recovery() {
        let inventory = MemoryInventory::with_stock([("A", 1)]);
        inventory.fail_next(2, "warehouse system down");
        assert_eq!(
            inventory.reserve("k", &[line("A", 1)]).unwrap_err(),
            "warehouse system down"
        );
        assert!(inventory.reserve("k", &[line("A", 1)]).is_err());
        assert_eq!(
            inventory.reserve("k", &[line("A", 1)]).unwrap(),
            vec![Decimal::ONE]
        );
    }

    #[test]
    fn a_malformed_payload_names_the_field() {
        assert_eq!(
            lines_of(&json!({})).unwrap_err(),
            "payload.lines: expected a list"
        );
        assert_eq!(
            lines_of(&json!({ "lines": [{ "sku": "A", "quantity": "-1" }] })).unwrap_err(),
            "payload.lines[0].quantity: expected a quantity"
        );
        assert_eq!(
            lines_of(&json!({ "lines": [{ "quantity": 1 }] })).unwrap_err(),
            "payload.lines[0].sku: expected a string"
        );
        assert_eq!(
            lines_of(&json!({ "lines": [{ "sku": "A", "quantity": "2.5" }, { "sku": "B", "quantity": 3 }] })).unwrap(),
            vec![
                Line { sku: "A".into(), quantity: "2.5".parse().unwrap() },
                line("B", 3)
            ]
        );
    }
}
