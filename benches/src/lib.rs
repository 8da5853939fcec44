//! What the load generators share: the workflow they drive, so the embedded and the gRPC
//! benchmarks measure the same commands.

/// A quote whose `review` command is an approval-threshold decision by `decider`, moving
/// between `pending_approval` and `approved`; each submitter drives one instance.
pub fn review_definition(decider: &str) -> String {
    format!(
        r#"
name = "quote"
version = 1
initial = "draft"
[start]
roles = ["sales_rep"]
[start.payload]
net = {{ type = "money" }}
discount_pct = {{ type = "decimal" }}
[states]
draft = {{}}
pending_approval = {{}}
approved = {{}}
won = {{ terminal = true }}
[commands.review]
from = ["draft", "pending_approval", "approved"]
to = ["pending_approval", "approved"]
roles = ["sales_rep"]
decider = "{decider}"
payload = {{ net = {{ type = "money" }}, discount_pct = {{ type = "decimal" }} }}
[commands.win]
from = ["approved"]
to = ["won"]
roles = ["sales_rep"]
"#
    )
}
