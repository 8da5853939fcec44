//! The requests a caller sends: start, command, cancel, list. Each is built with a
//! constructor taking what is required and builder methods for the rest, so new optional
//! fields do not break callers.

use serde_json::{json, Value};

use crate::model::{Actor, InstanceId};

/// Start a new instance.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StartRequest {
    /// Definition name; the version in the active rule set (or the latest loaded) is used and
    /// pinned.
    pub definition: String,
    /// The host's key for the instance.
    pub business_key: String,
    /// Initial data, checked against the definition's `[start.payload]`.
    pub data: Value,
    /// Who starts it.
    pub actor: Actor,
    /// Idempotency key (global).
    pub request_id: String,
    /// The new instance's id, when the caller chooses it (default: a new UUIDv7). A start
    /// naming an id an instance already has is refused (`INSTANCE_EXISTS`), so a re-import
    /// stays idempotent after its request ids have expired.
    pub instance_id: Option<InstanceId>,
}

impl StartRequest {
    /// Starts a `definition` as `actor`, with empty data and no business key.
    pub fn new(definition: impl Into<String>, actor: Actor, request_id: impl Into<String>) -> Self {
        StartRequest {
            definition: definition.into(),
            business_key: String::new(),
            data: json!({}),
            actor,
            request_id: request_id.into(),
            instance_id: None,
        }
    }

    /// With this instance id (chosen by the caller; see [`StartRequest::instance_id`]).
    pub fn instance_id(mut self, id: InstanceId) -> Self {
        self.instance_id = Some(id);
        self
    }

    /// With this business key.
    pub fn business_key(mut self, business_key: impl Into<String>) -> Self {
        self.business_key = business_key.into();
        self
    }

    /// With this initial data.
    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}

/// Send a command to an instance.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CommandRequest {
    /// The instance.
    pub instance: InstanceId,
    /// Command name.
    pub command: String,
    /// Payload, checked against the command's schema.
    pub payload: Value,
    /// Who sends it.
    pub actor: Actor,
    /// Idempotency key (global).
    pub request_id: String,
    /// Refuse unless the instance is at exactly this version.
    pub expected_version: Option<u64>,
}

impl CommandRequest {
    /// Sends `command` to `instance` as `actor`, with an empty payload.
    pub fn new(
        instance: InstanceId,
        command: impl Into<String>,
        actor: Actor,
        request_id: impl Into<String>,
    ) -> Self {
        CommandRequest {
            instance,
            command: command.into(),
            payload: json!({}),
            actor,
            request_id: request_id.into(),
            expected_version: None,
        }
    }

    /// With this payload.
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = payload;
        self
    }

    /// Refused unless the instance is at `version` (`None`: re-evaluated on a conflict).
    pub fn expected_version(mut self, version: Option<u64>) -> Self {
        self.expected_version = version;
        self
    }
}

/// Cancel an instance.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CancelRequest {
    /// The instance.
    pub instance: InstanceId,
    /// Why; recorded in history. Optional: an empty reason is recorded as "cancelled".
    pub reason: String,
    /// Who cancels it; needs one of the definition's cancel roles.
    pub actor: Actor,
    /// Idempotency key (global).
    pub request_id: String,
    /// Refuse unless the instance is at exactly this version.
    pub expected_version: Option<u64>,
}

impl CancelRequest {
    /// Cancels `instance` as `actor`, without a reason.
    pub fn new(instance: InstanceId, actor: Actor, request_id: impl Into<String>) -> Self {
        CancelRequest {
            instance,
            reason: String::new(),
            actor,
            request_id: request_id.into(),
            expected_version: None,
        }
    }

    /// With this reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Refused unless the instance is at `version`.
    pub fn expected_version(mut self, version: Option<u64>) -> Self {
        self.expected_version = version;
        self
    }
}

/// List instances.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ListRequest {
    /// Only this definition.
    pub definition: Option<String>,
    /// Only this state (needs `definition`); cancelled instances are not listed by state.
    pub state: Option<String>,
    /// Only this business key (needs `definition`).
    pub business_key: Option<String>,
    /// Page size; 0 means 100. At most the configured `page_size_max`.
    pub page_size: usize,
    /// A previous page's `next_page_token`.
    pub page_token: Option<String>,
}

impl ListRequest {
    /// Every instance, first page, default size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only instances of `definition`.
    pub fn definition(mut self, definition: impl Into<String>) -> Self {
        self.definition = Some(definition.into());
        self
    }

    /// Only instances in `state` (needs a definition).
    pub fn state(mut self, state: impl Into<String>) -> Self {
        self.state = Some(state.into());
        self
    }

    /// Only instances with `business_key` (needs a definition).
    pub fn business_key(mut self, business_key: impl Into<String>) -> Self {
        self.business_key = Some(business_key.into());
        self
    }

    /// Pages of `page_size` (0: the default).
    pub fn page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size;
        self
    }

    /// The page after the one that returned `token`.
    pub fn page_token(mut self, token: impl Into<String>) -> Self {
        self.page_token = Some(token.into());
        self
    }
}
