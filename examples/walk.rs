//! What both walkthroughs share: sending a command as `"id:role"` with a fresh request id, and
//! printing who sent what and where it led.

use anyhow::{Context, Result};
use serde_json::Value;
use switchyard_core::{Actor, CommandOutcome, CommandRequest, Engine, InstanceId};

pub struct Walk {
    pub engine: Engine,
    pub run: InstanceId,
    n: u32,
}

impl Walk {
    pub fn new(engine: Engine) -> Self {
        Walk {
            engine,
            run: InstanceId::new(),
            n: 0,
        }
    }

    /// Sends `command` to `id` as `who` ("ana:sales_rep") and prints the outcome.
    pub async fn send(
        &mut self,
        id: InstanceId,
        who: &str,
        command: &str,
        payload: Value,
    ) -> Result<CommandOutcome> {
        self.n += 1;
        let (name, role) = who.split_once(':').context("id:role")?;
        let request = CommandRequest::new(
            id,
            command,
            Actor::new(name, &[role]),
            format!("walk-{}-{}", self.run, self.n),
        )
        .payload(payload);
        let out = self.engine.send(request).await?;
        println!(
            "  {who:<22} {command:<15} → {:<15} {}",
            out.state, out.reason
        );
        // Give the channels a moment, so a delivered message prints after the step causing it.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        Ok(out)
    }
}
