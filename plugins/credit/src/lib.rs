//! The credit adapter for the shipped lead-to-cash rules.
//!
//! With `credit_source = "adapter"` in `rules/data/orders.json`, a submitted sales order asks
//! the host's credit system for the customer's account: a `check_credit` job
//! (`{ order, customer, currency }`, the currency being the base currency the answer must be
//! in). [`register`] answers it in-process with a [`CreditSystem`]; the answer
//! (`{ credit_limit, opening_balance }`, decimal strings) becomes the order's `credit_account`
//! command, which runs the credit rule with those figures and the exposure the engine keeps.
//! Without it the same figures come from `rules/data/customers.json`.
//!
//! [`MemoryCreditSystem`] is the reference implementation (accounts set by the caller,
//! failures on demand); an ERP implements [`CreditSystem`] over its receivables ledger.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rust_decimal::Decimal;
use serde_json::json;
use switchyard_core::{ActivatedJob, Engine};

/// The job type the shipped `sales_order` definition creates.
pub const CHECK_CREDIT: &str = "check_credit";

/// A customer's credit account, in the base currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    /// The credit limit.
    pub credit_limit: Decimal,
    /// What the customer owes outside what the engine keeps (invoices from before, or from
    /// other systems).
    pub opening_balance: Decimal,
}

/// A credit system. Errors are messages: the job fails with it and is retried after its
/// backoff, then raised as an incident. Looking up an account changes nothing, so a retried
/// job may simply ask again.
pub trait CreditSystem: Send + Sync + 'static {
    /// The account of `customer`, in `currency` (the rules' base currency).
    fn account(&self, customer: &str, currency: &str) -> Result<Account, String>;
}

/// Answers the shipped `check_credit` jobs of `engine` with `system`, in-process.
pub fn register(engine: &Engine, system: Arc<dyn CreditSystem>) {
    engine.register_job_handler(CHECK_CREDIT, move |job: ActivatedJob| {
        let system = system.clone();
        async move { answer(&*system, &job.payload) }
    });
}

/// The answer to a `check_credit` job with `payload`: what `register` completes it with, and
/// what a worker in another process sends back with `CompleteJob`.
pub fn answer(
    system: &dyn CreditSystem,
    payload: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let text = |field: &str| {
        payload[field]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("payload.{field}: expected a string"))
    };
    let account = system.account(&text("customer")?, &text("currency")?)?;
    Ok(json!({
        "credit_limit": account.credit_limit.to_string(),
        "opening_balance": account.opening_balance.to_string(),
    }))
}

#[derive(Default)]
struct Accounts {
    accounts: BTreeMap<String, Account>,
    failures_left: u32,
    failure: String,
}

/// The reference credit system: accounts in memory; an unknown customer is an error naming it.
#[derive(Default)]
pub struct MemoryCreditSystem {
    accounts: Mutex<Accounts>,
}

impl MemoryCreditSystem {
    /// Sets the account of `customer`.
    pub fn set(&self, customer: &str, account: Account) {
        self.lock().accounts.insert(customer.to_string(), account);
    }

    /// The next `times` look-ups fail with `message`.
    pub fn fail_next(&self, times: u32, message: &str) {
        let mut accounts = self.lock();
        accounts.failures_left = times;
        accounts.failure = message.to_string();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Accounts> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CreditSystem for MemoryCreditSystem {
    fn account(&self, customer: &str, _currency: &str) -> Result<Account, String> {
        let mut accounts = self.lock();
        if accounts.failures_left > 0 {
            accounts.failures_left -= 1;
            return Err(accounts.failure.clone());
        }
        accounts
            .accounts
            .get(customer)
            .copied()
            .ok_or_else(|| format!("no credit account for customer {customer:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_unknown_customers_and_failures() {
        let system = MemoryCreditSystem::default();
        let account = Account {
            credit_limit: Decimal::from(10_000),
            opening_balance: Decimal::from(9_500),
        };
        system.set("ACME", account);
        assert_eq!(system.account("ACME", "EUR"), Ok(account));
        assert_eq!(
            system.account("NOPE", "EUR").unwrap_err(),
            "no credit account for customer \"NOPE\""
        );
        system.fail_next(1, "credit bureau down");
        assert_eq!(
            system.account("ACME", "EUR").unwrap_err(),
            "credit bureau down"
        );
        assert_eq!(system.account("ACME", "EUR"), Ok(account));
    }
}
