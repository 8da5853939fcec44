//! The figures a projection keeps per calendar day, and how days add up.
//!
//! Everything here is a plain value: a day's figures are stored as one JSON record, and a date
//! range, an ISO week or a month is the [`DayFigures::merge`] of its days. Money is
//! [`Decimal`] per ISO currency code, never converted and never `f64`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Amounts per ISO currency code.
pub type Amounts = BTreeMap<String, Decimal>;

/// Documents created (or, for orders and refunds, completed) on a day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    /// Leads started.
    pub leads: u64,
    /// Quotes started.
    pub quotes: u64,
    /// Sales orders confirmed (numbered).
    pub orders: u64,
    /// Returns requested.
    pub returns: u64,
    /// Returns refunded.
    pub refunds: u64,
    /// Chargebacks (disputes) opened.
    pub chargebacks: u64,
}

impl Counts {
    fn merge(&mut self, other: &Counts) {
        self.leads += other.leads;
        self.quotes += other.quotes;
        self.orders += other.orders;
        self.returns += other.returns;
        self.refunds += other.refunds;
        self.chargebacks += other.chargebacks;
    }
}

/// Money moved on a day in one currency, tax included.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Revenue {
    /// Totals of the orders confirmed.
    pub ordered: Decimal,
    /// Totals of the invoices issued.
    pub invoiced: Decimal,
    /// Payments recorded against orders.
    pub paid: Decimal,
    /// Refunds paid for returns.
    pub refunded: Decimal,
    /// What stayed withdrawn when a chargeback was lost.
    pub chargebacks_lost: Decimal,
    /// Funds the payment provider withdrew for disputes.
    pub withdrawn: Decimal,
    /// Funds it gave back for disputes won.
    pub reinstated: Decimal,
}

impl Revenue {
    /// Paid, less refunds and lost chargebacks: what the business keeps.
    pub fn net(&self) -> Decimal {
        self.paid - self.refunded - self.chargebacks_lost
    }

    fn merge(&mut self, other: &Revenue) {
        self.ordered += other.ordered;
        self.invoiced += other.invoiced;
        self.paid += other.paid;
        self.refunded += other.refunded;
        self.chargebacks_lost += other.chargebacks_lost;
        self.withdrawn += other.withdrawn;
        self.reinstated += other.reinstated;
    }
}

/// The funnel of the leads and quotes created on a day: how many of them went on, whenever
/// that happened (a cohort, so a day's conversion can still rise later).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cohort {
    /// Leads of the day that got at least one quote.
    pub leads_quoted: u64,
    /// Leads of the day with at least one confirmed order from one of their quotes.
    pub leads_ordered: u64,
    /// Quotes of the day whose order was confirmed.
    pub quotes_ordered: u64,
}

impl Cohort {
    fn merge(&mut self, other: &Cohort) {
        self.leads_quoted += other.leads_quoted;
        self.leads_ordered += other.leads_ordered;
        self.quotes_ordered += other.quotes_ordered;
    }
}

/// Orders confirmed for a sales rep or a customer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Performance {
    /// Orders confirmed.
    pub orders: u64,
    /// Their totals, tax included.
    pub ordered: Amounts,
}

impl Performance {
    fn merge(&mut self, other: &Performance) {
        self.orders += other.orders;
        add_amounts(&mut self.ordered, &other.ordered);
    }
}

/// Demand for one product: confirmed order lines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Demand {
    /// Confirmed orders with the product.
    pub orders: u64,
    /// Quantity ordered.
    pub quantity: Decimal,
    /// Line totals, tax included.
    pub ordered: Amounts,
}

impl Demand {
    fn merge(&mut self, other: &Demand) {
        self.orders += other.orders;
        self.quantity += other.quantity;
        add_amounts(&mut self.ordered, &other.ordered);
    }
}

/// Instances of one workflow definition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Workflow {
    /// Started.
    pub started: u64,
    /// Reached a terminal state.
    pub completed: u64,
    /// Cancelled by an operator.
    pub cancelled: u64,
}

impl Workflow {
    fn merge(&mut self, other: &Workflow) {
        self.started += other.started;
        self.completed += other.completed;
        self.cancelled += other.cancelled;
    }
}

/// Everything counted on one calendar day (in the projection's time zone).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DayFigures {
    /// Documents.
    pub counts: Counts,
    /// Money per currency.
    pub revenue: BTreeMap<String, Revenue>,
    /// The funnel of the leads and quotes created this day.
    pub cohort: Cohort,
    /// Orders confirmed per sales rep (the order's owner).
    pub reps: BTreeMap<String, Performance>,
    /// Orders confirmed per customer.
    pub customers: BTreeMap<String, Performance>,
    /// Demand per product (SKU).
    pub products: BTreeMap<String, Demand>,
    /// Instances per workflow definition.
    pub workflows: BTreeMap<String, Workflow>,
    /// Approval decisions made this day per step: how long each step waited, in milliseconds.
    pub approvals: BTreeMap<String, Vec<u64>>,
}

impl DayFigures {
    /// Adds `other` to these figures.
    pub fn merge(&mut self, other: &DayFigures) {
        self.counts.merge(&other.counts);
        merge_map(&mut self.revenue, &other.revenue, Revenue::merge);
        self.cohort.merge(&other.cohort);
        merge_map(&mut self.reps, &other.reps, Performance::merge);
        merge_map(&mut self.customers, &other.customers, Performance::merge);
        merge_map(&mut self.products, &other.products, Demand::merge);
        merge_map(&mut self.workflows, &other.workflows, Workflow::merge);
        for (step, waits) in &other.approvals {
            self.approvals
                .entry(step.clone())
                .or_default()
                .extend(waits);
        }
    }
}

fn merge_map<T: Default>(
    into: &mut BTreeMap<String, T>,
    from: &BTreeMap<String, T>,
    merge: fn(&mut T, &T),
) {
    for (key, value) in from {
        merge(into.entry(key.clone()).or_default(), value);
    }
}

/// Adds `from` to `into`, currency by currency.
pub(crate) fn add_amounts(into: &mut Amounts, from: &Amounts) {
    for (currency, amount) in from {
        *into.entry(currency.clone()).or_default() += amount;
    }
}
