//! `switchyard.v1.ClockService`: the engine's time, and on a test server started with
//! `--clock manual` a way to move it forward and fire the timers due meanwhile.

use std::sync::Arc;

use switchyard_core::{roles, Clock, Engine, ManualClock};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::{actor_of, require_role};
use crate::convert::timestamp;
use crate::pb;
use crate::status::{bad_request, to_status, Wire};

/// The longest one advance may skip.
const ADVANCE_MAX_DAYS: i64 = 366;
/// Most pages of due timers one advance fires; the background poller fires any left.
const FIRE_ROUNDS_MAX: usize = 100;

/// The clock service: the engine, and its manual clock on a test server.
#[derive(Clone)]
pub(crate) struct ClockService {
    pub(crate) engine: Engine,
    pub(crate) manual: Option<Arc<ManualClock>>,
}

#[tonic::async_trait]
impl pb::clock_service_server::ClockService for ClockService {
    async fn get_clock(
        &self,
        request: Request<pb::GetClockRequest>,
    ) -> Result<Response<pb::GetClockResponse>, Status> {
        actor_of(&request)?;
        Ok(Response::new(pb::GetClockResponse {
            now: timestamp(self.engine.now()),
            manual: self.manual.is_some(),
        }))
    }

    async fn advance_clock(
        &self,
        request: Request<pb::AdvanceClockRequest>,
    ) -> Result<Response<pb::AdvanceClockResponse>, Status> {
        let actor = actor_of(&request)?;
        require_role(&actor, roles::ADMIN, "advance the clock")?;
        let Some(clock) = &self.manual else {
            let mut details = ErrorDetails::new();
            details.set_error_info(
                "CLOCK_NOT_MANUAL",
                crate::status::ERROR_DOMAIN,
                std::collections::HashMap::new(),
            );
            return Err(Status::with_error_details(
                Code::FailedPrecondition,
                "this server runs on the system clock; only a server started with --clock manual can be advanced",
                details,
            ));
        };
        let by = request.into_inner().by.unwrap_or_default();
        if by.seconds < 0 || by.nanos < 0 || (by.seconds == 0 && by.nanos == 0) {
            return Err(bad_request("by", "must be more than 0"));
        }
        if by.seconds > ADVANCE_MAX_DAYS * 86_400 {
            return Err(bad_request("by", "is more than 366 days"));
        }
        let step = chrono::Duration::seconds(by.seconds)
            + chrono::Duration::nanoseconds(i64::from(by.nanos));
        clock.advance(step);
        tracing::info!(actor = %actor.id, now = %clock.now(), "manual clock advanced");
        let mut fired = 0u64;
        // Every timer due by the new time, in due order, page by page (bounded: a timer whose
        // command sets another one due at once cannot keep the call going).
        for _ in 0..FIRE_ROUNDS_MAX {
            let n = self
                .engine
                .fire_due_timers()
                .await
                .map_err(|e| to_status(&e, Wire::NONE))?;
            fired += n as u64;
            if n == 0 {
                break;
            }
        }
        Ok(Response::new(pb::AdvanceClockResponse {
            now: timestamp(clock.now()),
            timers_fired: fired,
        }))
    }
}
