//! The three `switchyard.v1` services. Each handler reads the actor the authenticator
//! attached, converts the request (refusing bad fields with a BadRequest naming them), calls
//! the engine, and converts the answer or the error. No handler writes anything itself.

use std::collections::BTreeMap;

use switchyard_core::{
    CancelRequest, CommandError, CommandRequest, DryRunInput, Engine, IncidentAction, ListRequest,
    ProviderEvent, StartRequest,
};
use tonic::{Request, Response, Status};

use crate::auth::actor_of;
use crate::convert;
use crate::pb;
use crate::status::{bad_request, not_found, to_status, Wire};

type Answer<T> = Result<Response<T>, Status>;

/// Handlers share the engine.
#[derive(Clone)]
pub(crate) struct Services {
    pub(crate) engine: Engine,
}

impl Services {
    /// A wire page size checked by the engine's one rule for page sizes.
    #[allow(clippy::result_large_err)]
    fn page_size(&self, size: i32) -> Result<usize, Status> {
        let size = convert::page_size(size)?;
        self.engine
            .page_size(size)
            .map_err(|e| to_status(&e, Wire::NONE))
    }
}

#[allow(clippy::result_large_err)]
fn required(field: &str, value: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        Err(bad_request(field, "is required"))
    } else {
        Ok(())
    }
}

/// Most items in one BulkStartInstances call.
const BULK_ITEMS_MAX: usize = 500;

/// StartInstance's work, shared with each item of BulkStartInstances; also whether the
/// answer is a replay of an applied request.
async fn start_one(
    engine: &switchyard_core::Engine,
    actor: switchyard_core::Actor,
    r: pb::StartInstanceRequest,
) -> Result<(pb::CommandResult, bool), Status> {
    required("request_id", &r.request_id)?;
    required("definition", &r.definition)?;
    let data = convert::json_object("data_json", &r.data_json)?;
    let mut start = StartRequest::new(r.definition, actor, r.request_id)
        .business_key(r.business_key)
        .data(data);
    if !r.instance_id.is_empty() {
        start = start.instance_id(convert::instance_id("instance_id", &r.instance_id)?);
    }
    let (outcome, replayed) = engine
        .start_or_replay(start)
        .await
        .map_err(engine_error(Wire::START))?;
    Ok((convert::result(&outcome), replayed))
}

/// A refusal as the `google.rpc.Status` it travels as (`grpc-status-details-bin`), for a
/// bulk item: the same code, message and details a single call would have carried.
fn item_status(status: &Status) -> tonic_types::pb::Status {
    use prost::Message;
    tonic_types::pb::Status::decode(status.details())
        .ok()
        .filter(|s| s.code == status.code() as i32)
        .unwrap_or_else(|| tonic_types::pb::Status {
            code: status.code() as i32,
            message: status.message().to_string(),
            details: Vec::new(),
        })
}

fn engine_error(wire: Wire) -> impl Fn(CommandError) -> Status {
    move |e| to_status(&e, wire)
}

#[tonic::async_trait]
impl pb::instance_service_server::InstanceService for Services {
    async fn start_instance(
        &self,
        request: Request<pb::StartInstanceRequest>,
    ) -> Answer<pb::StartInstanceResponse> {
        let actor = actor_of(&request)?;
        let (result, _) = start_one(&self.engine, actor, request.into_inner()).await?;
        Ok(Response::new(pb::StartInstanceResponse {
            result: Some(result),
        }))
    }

    async fn bulk_start_instances(
        &self,
        request: Request<pb::BulkStartInstancesRequest>,
    ) -> Answer<pb::BulkStartInstancesResponse> {
        let actor = actor_of(&request)?;
        let items = request.into_inner().items;
        if items.is_empty() || items.len() > BULK_ITEMS_MAX {
            return Err(bad_request(
                "items",
                format!(
                    "holds {} items; a call takes 1 to {BULK_ITEMS_MAX}",
                    items.len()
                ),
            ));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, item) in items.into_iter().enumerate() {
            let (engine, actor) = (self.engine.clone(), actor.clone());
            tasks.spawn(async move { (i, start_one(&engine, actor, item).await) });
        }
        let mut results = vec![pb::BulkStartResult::default(); tasks.len()];
        while let Some(done) = tasks.join_next().await {
            let (i, outcome) =
                done.map_err(|e| Status::internal(format!("a bulk item failed: {e}")))?;
            results[i] = match outcome {
                Ok((result, replayed)) => pb::BulkStartResult {
                    status: Some(tonic_types::pb::Status {
                        code: tonic::Code::Ok as i32,
                        ..Default::default()
                    }),
                    result: Some(result),
                    replayed,
                },
                Err(status) => pb::BulkStartResult {
                    status: Some(item_status(&status)),
                    ..Default::default()
                },
            };
        }
        Ok(Response::new(pb::BulkStartInstancesResponse { results }))
    }

    async fn send_command(
        &self,
        request: Request<pb::SendCommandRequest>,
    ) -> Answer<pb::SendCommandResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        required("request_id", &r.request_id)?;
        let instance = convert::instance_id("instance_id", &r.instance_id)?;
        required("command", &r.command)?;
        let payload = convert::json_object("payload_json", &r.payload_json)?;
        let outcome = self
            .engine
            .send(
                CommandRequest::new(instance, r.command, actor, r.request_id)
                    .payload(payload)
                    .expected_version(r.expected_version),
            )
            .await
            .map_err(engine_error(Wire::COMMAND))?;
        Ok(Response::new(pb::SendCommandResponse {
            result: Some(convert::result(&outcome)),
        }))
    }

    async fn ingest_provider_event(
        &self,
        request: Request<pb::IngestProviderEventRequest>,
    ) -> Answer<pb::IngestProviderEventResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        let event = ProviderEvent {
            provider: r.provider,
            event_id: r.event_id,
            event_type: r.event_type,
            event: convert::json_object("event_json", &r.event_json)?,
        };
        let outcome = self
            .engine
            .ingest_provider_event(&actor, event)
            .await
            .map_err(engine_error(Wire::NONE))?;
        Ok(Response::new(pb::IngestProviderEventResponse {
            instance_id: outcome.instance.to_string(),
            duplicate: outcome.duplicate,
            state: outcome.state,
            reason: outcome.reason,
        }))
    }

    async fn get_instance(
        &self,
        request: Request<pb::GetInstanceRequest>,
    ) -> Answer<pb::GetInstanceResponse> {
        let actor = actor_of(&request)?;
        let id = convert::instance_id("instance_id", &request.get_ref().instance_id)?;
        let instance = self
            .engine
            .get_as(&actor, id)
            .await
            .map_err(engine_error(Wire::NONE))?;
        Ok(Response::new(pb::GetInstanceResponse {
            instance: Some(convert::instance(&instance)),
        }))
    }

    async fn list_instances(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Answer<pb::ListInstancesResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        let filters = [
            r.definition.as_str(),
            r.state.as_str(),
            r.business_key.as_str(),
        ];
        let position = convert::open_token("instances", &filters, &r.page_token)?;
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let page = self
            .engine
            .list_as(&actor, {
                let mut list = ListRequest::new().page_size(convert::page_size(r.page_size)?);
                list.definition = some(&r.definition);
                list.state = some(&r.state);
                list.business_key = some(&r.business_key);
                list.page_token = position;
                list
            })
            .await
            .map_err(engine_error(Wire::NONE))?;
        Ok(Response::new(pb::ListInstancesResponse {
            instances: page.items.iter().map(convert::instance).collect(),
            next_page_token: convert::seal_token("instances", &filters, page.next_page_token),
        }))
    }

    async fn list_instance_history(
        &self,
        request: Request<pb::ListInstanceHistoryRequest>,
    ) -> Answer<pb::ListInstanceHistoryResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        let id = convert::instance_id("instance_id", &r.instance_id)?;
        let filters = [r.instance_id.as_str()];
        let position = convert::open_token("history", &filters, &r.page_token)?;
        let page = self
            .engine
            .history_page_as(
                &actor,
                id,
                convert::page_size(r.page_size)?,
                position.as_deref(),
            )
            .await
            .map_err(engine_error(Wire::NONE))?;
        Ok(Response::new(pb::ListInstanceHistoryResponse {
            entries: page.items.iter().map(convert::history_entry).collect(),
            next_page_token: convert::seal_token("history", &filters, page.next_page_token),
        }))
    }

    async fn cancel_instance(
        &self,
        request: Request<pb::CancelInstanceRequest>,
    ) -> Answer<pb::CancelInstanceResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        required("request_id", &r.request_id)?;
        let instance = convert::instance_id("instance_id", &r.instance_id)?;
        let outcome = self
            .engine
            .cancel(
                CancelRequest::new(instance, actor, r.request_id)
                    .reason(r.reason)
                    .expected_version(r.expected_version),
            )
            .await
            .map_err(engine_error(Wire::NONE))?;
        Ok(Response::new(pb::CancelInstanceResponse {
            result: Some(convert::result(&outcome)),
        }))
    }

    async fn resolve_timer_incident(
        &self,
        request: Request<pb::ResolveTimerIncidentRequest>,
    ) -> Answer<pb::ResolveTimerIncidentResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        let instance = convert::instance_id("instance_id", &r.instance_id)?;
        required("timer", &r.timer)?;
        let action = match pb::IncidentAction::try_from(r.action) {
            Ok(pb::IncidentAction::Retry) => IncidentAction::Retry { retries: 1 },
            Ok(pb::IncidentAction::Cancel) => IncidentAction::Cancel,
            _ => {
                return Err(bad_request(
                    "action",
                    "is required: INCIDENT_ACTION_RETRY or INCIDENT_ACTION_CANCEL",
                ))
            }
        };
        let outcome = self
            .engine
            .resolve_timer_incident(instance, &r.timer, action, &actor)
            .await
            .map_err(engine_error(Wire::NONE))?;
        Ok(Response::new(pb::ResolveTimerIncidentResponse {
            result: Some(convert::result(&outcome)),
        }))
    }
}

#[tonic::async_trait]
impl pb::definition_service_server::DefinitionService for Services {
    async fn list_definitions(
        &self,
        request: Request<pb::ListDefinitionsRequest>,
    ) -> Answer<pb::ListDefinitionsResponse> {
        actor_of(&request)?;
        let r = request.into_inner();
        let all: Vec<_> = self.engine.definitions().iter().cloned().collect();
        let (page, next) = convert::offset_page(
            "definitions",
            &all,
            self.page_size(r.page_size)?,
            &r.page_token,
        )?;
        Ok(Response::new(pb::ListDefinitionsResponse {
            definitions: page.iter().map(|d| convert::definition(d)).collect(),
            next_page_token: next,
        }))
    }

    async fn get_definition(
        &self,
        request: Request<pb::GetDefinitionRequest>,
    ) -> Answer<pb::GetDefinitionResponse> {
        actor_of(&request)?;
        let r = request.into_inner();
        required("name", &r.name)?;
        let definitions = self.engine.definitions();
        let found = if r.version == 0 {
            definitions.latest(&r.name)
        } else {
            definitions.get(&r.name, r.version)
        };
        let definition = match found {
            Some(d) => d,
            None if definitions.latest(&r.name).is_some() => {
                return Err(not_found(
                    "UNKNOWN_DEFINITION_VERSION",
                    format!("definition `{}` has no version {}", r.name, r.version),
                    &[
                        ("definition", r.name.clone()),
                        ("version", r.version.to_string()),
                    ],
                ))
            }
            None => {
                return Err(to_status(
                    &CommandError::UnknownDefinition {
                        name: r.name.clone(),
                        loaded: definitions.names().join(", "),
                    },
                    Wire::NONE,
                ))
            }
        };
        Ok(Response::new(pb::GetDefinitionResponse {
            definition: Some(convert::definition(definition)),
        }))
    }
}

/// Whether `path` is a file a rules folder holds beside its rule files and a client may send
/// with them: documentation, or a hidden or editor file. Left out and named, never read.
fn skippable(path: &str) -> bool {
    if path.starts_with('/') || path.split('/').any(|part| part == ".." || part.is_empty()) {
        return false;
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    let upper = name.to_ascii_uppercase();
    ["README", "LICENSE", "CHANGELOG"]
        .iter()
        .any(|doc| upper.starts_with(doc))
        || upper.ends_with(".MD")
        || upper.ends_with(".TXT")
        || name.starts_with('.')
        || name.ends_with('~')
}

/// A rule set's files from the wire, refusing empty, duplicate or oversized entries; the
/// documentation and editor files among them are left out and returned by path.
#[allow(clippy::result_large_err)]
fn rule_files(files: Vec<pb::RuleFile>) -> Result<(BTreeMap<String, String>, Vec<String>), Status> {
    if files.is_empty() {
        return Err(bad_request(
            "files",
            "is required: the rule set's files (definitions/*.toml, scripts/*.rhai, …)",
        ));
    }
    let mut out = BTreeMap::new();
    let mut skipped = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        if f.path.is_empty() {
            return Err(bad_request(&format!("files[{i}].path"), "is required"));
        }
        let rule_file = switchyard_core::rules::is_rule_file_path(&f.path);
        if !rule_file && skippable(&f.path) {
            skipped.push(f.path);
            continue;
        }
        if !rule_file {
            return Err(bad_request(
                &format!("files[{i}].path"),
                format!(
                    "`{}` is not a rule-set file; accepted: {}",
                    f.path,
                    switchyard_core::rules::RULE_FILE_KINDS
                ),
            ));
        }
        let path = f.path.clone();
        if out.insert(f.path, f.content).is_some() {
            return Err(bad_request(
                &format!("files[{i}].path"),
                format!("`{path}` is given twice"),
            ));
        }
    }
    if out.is_empty() {
        return Err(bad_request(
            "files",
            "holds no rule-set file (definitions/*.toml, scripts/*.rhai, …)",
        ));
    }
    Ok((out, skipped))
}

#[tonic::async_trait]
impl pb::rule_set_service_server::RuleSetService for Services {
    async fn validate_rule_set(
        &self,
        request: Request<pb::ValidateRuleSetRequest>,
    ) -> Answer<pb::ValidateRuleSetResponse> {
        let actor = actor_of(&request)?;
        let (files, skipped_paths) = rule_files(request.into_inner().files)?;
        match self.engine.validate_rule_files(files, &actor).await {
            Ok(version) => Ok(Response::new(pb::ValidateRuleSetResponse {
                valid: true,
                version,
                problems: Vec::new(),
                skipped_paths,
            })),
            Err(CommandError::RuleSetRefused { problems }) => {
                Ok(Response::new(pb::ValidateRuleSetResponse {
                    valid: false,
                    version: String::new(),
                    problems: problems
                        .iter()
                        .map(|p| pb::RuleSetProblem {
                            file: p.file.clone(),
                            line: u32::try_from(p.line).unwrap_or(u32::MAX),
                            column: u32::try_from(p.column).unwrap_or(u32::MAX),
                            message: p.message.clone(),
                        })
                        .collect(),
                    skipped_paths,
                }))
            }
            Err(e) => Err(to_status(&e, Wire::NONE)),
        }
    }

    async fn deploy_rule_set(
        &self,
        request: Request<pb::DeployRuleSetRequest>,
    ) -> Answer<pb::DeployRuleSetResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        required("request_id", &r.request_id)?;
        let (files, skipped_paths) = rule_files(r.files)?;
        let info = self
            .engine
            .deploy_rule_files(files, &actor, &r.request_id)
            .await
            .map_err(engine_error(Wire::NONE))?;
        tracing::info!(number = info.number, actor = %actor.id, request_id = %r.request_id, "rule set deployed over gRPC");
        Ok(Response::new(pb::DeployRuleSetResponse {
            rule_set: Some(convert::rule_set(&info)),
            skipped_paths,
        }))
    }

    async fn list_rule_sets(
        &self,
        request: Request<pb::ListRuleSetsRequest>,
    ) -> Answer<pb::ListRuleSetsResponse> {
        actor_of(&request)?;
        let r = request.into_inner();
        let all = self.engine.rule_sets().map_err(engine_error(Wire::NONE))?;
        let (page, next) = convert::offset_page(
            "rule_sets",
            &all,
            self.page_size(r.page_size)?,
            &r.page_token,
        )?;
        Ok(Response::new(pb::ListRuleSetsResponse {
            rule_sets: page.iter().map(convert::rule_set).collect(),
            next_page_token: next,
        }))
    }

    async fn activate_rule_set(
        &self,
        request: Request<pb::ActivateRuleSetRequest>,
    ) -> Answer<pb::ActivateRuleSetResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        required("request_id", &r.request_id)?;
        if r.number == 0 {
            return Err(bad_request(
                "number",
                "is required: a deployed version (1, 2, …)",
            ));
        }
        let info = self
            .engine
            .activate_rules_once(r.number, &actor, &r.request_id)
            .await
            .map_err(engine_error(Wire::NONE))?;
        tracing::info!(number = info.number, actor = %actor.id, request_id = %r.request_id, "rule set activated over gRPC");
        Ok(Response::new(pb::ActivateRuleSetResponse {
            rule_set: Some(convert::rule_set(&info)),
        }))
    }

    async fn evaluate_rule(
        &self,
        request: Request<pb::EvaluateRuleRequest>,
    ) -> Answer<pb::EvaluateRuleResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        required("decider", &r.decider)?;
        if !r.decider.contains("::") {
            return Err(bad_request(
                "decider",
                format!(
                    "`{}` is not a script function; write script::function",
                    r.decider
                ),
            ));
        }
        let input = if r.instance_id.is_empty() {
            DryRunInput::Sample(convert::json_object("instance_json", &r.instance_json)?)
        } else {
            DryRunInput::Instance(convert::instance_id("instance_id", &r.instance_id)?)
        };
        let payload = convert::json_object("payload_json", &r.payload_json)?;
        let now = match &r.now {
            Some(t) => Some(convert::from_timestamp("now", t)?),
            None => None,
        };
        let number = (r.rule_set != 0).then_some(r.rule_set);
        let started = std::time::Instant::now();
        let run = self
            .engine
            .dry_run(number, &r.decider, input, payload, &actor, now)
            .await
            .map_err(|e| match e {
                CommandError::UnknownRuleSet(n) => not_found(
                    "UNKNOWN_RULE_SET",
                    format!("there is no rule set #{n}"),
                    &[("rule_set", n.to_string())],
                ),
                other => to_status(&other, Wire::COMMAND),
            })?;
        let elapsed = started.elapsed();
        Ok(Response::new(pb::EvaluateRuleResponse {
            next_state: run.decision.next_state,
            reason: run.decision.reason,
            changes_json: serde_json::to_string(&run.decision.changes).expect("JSON serializes"),
            outputs_json: serde_json::to_string(&run.outputs).expect("JSON serializes"),
            rule_set: run.rule_set,
            elapsed_micros: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        }))
    }
}

fn credential(c: &switchyard_core::Credential) -> pb::Credential {
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| t.and_then(convert::timestamp);
    pb::Credential {
        id: c.id.clone(),
        actor: c.actor.clone(),
        roles: c.roles.clone(),
        expires_at: time(c.expires_at),
        created_at: convert::timestamp(c.created_at),
        created_by: c.created_by.clone(),
        revoked_at: time(c.revoked_at),
        revoked_by: c.revoked_by.clone().unwrap_or_default(),
        replaced_by: c.replaced_by.clone().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl pb::access_service_server::AccessService for Services {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Answer<pb::CreateTokenResponse> {
        let by = actor_of(&request)?;
        let r = request.into_inner();
        required("request_id", &r.request_id)?;
        let expires_at = match &r.expires_at {
            Some(t) => Some(convert::from_timestamp("expires_at", t)?),
            None => None,
        };
        let made = self
            .engine
            .create_credential(&by, &r.request_id, &r.actor, &r.roles, expires_at)
            .await
            .map_err(engine_error(Wire::NONE))?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: made.token,
            credential: Some(credential(&made.credential)),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Answer<pb::ListTokensResponse> {
        let by = actor_of(&request)?;
        let r = request.into_inner();
        let position = convert::open_token("tokens", &[], &r.page_token)?;
        let page = self
            .engine
            .credentials_page(&by, convert::page_size(r.page_size)?, position.as_deref())
            .await
            .map_err(engine_error(Wire::NONE))?;
        Ok(Response::new(pb::ListTokensResponse {
            credentials: page.items.iter().map(credential).collect(),
            next_page_token: convert::seal_token("tokens", &[], page.next_page_token),
        }))
    }

    async fn rotate_token(
        &self,
        request: Request<pb::RotateTokenRequest>,
    ) -> Answer<pb::RotateTokenResponse> {
        let by = actor_of(&request)?;
        let r = request.into_inner();
        required("request_id", &r.request_id)?;
        required("id", &r.id)?;
        let made = self
            .engine
            .rotate_credential(&by, &r.request_id, &r.id)
            .await
            .map_err(engine_error(Wire::NONE))?;
        Ok(Response::new(pb::RotateTokenResponse {
            token: made.token,
            credential: Some(credential(&made.credential)),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Answer<pb::RevokeTokenResponse> {
        let by = actor_of(&request)?;
        let r = request.into_inner();
        required("request_id", &r.request_id)?;
        required("id", &r.id)?;
        let revoked = self
            .engine
            .revoke_credential(&by, &r.request_id, &r.id)
            .await
            .map_err(engine_error(Wire::NONE))?;
        Ok(Response::new(pb::RevokeTokenResponse {
            credential: Some(credential(&revoked)),
        }))
    }
}

#[cfg(test)]
mod fuzz {
    //! Fuzz target: bytes decoded as each RPC's request (the first byte picks the RPC), then
    //! handled by the services against an engine on the shipped rules. Decoding may fail, the
    //! handlers may refuse; nothing may panic. Seeds: `tests/fuzz-corpus/requests/`.

    use std::path::Path;

    use prost::Message;
    use switchyard_core::{DeciderRegistry, EngineConfig, RuleLimits};

    use super::*;
    use pb::definition_service_server::DefinitionService;
    use pb::instance_service_server::InstanceService;
    use pb::rule_set_service_server::RuleSetService;

    /// The RPCs the first byte of an input picks, in order.
    const RPCS: usize = 13;

    fn request<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(switchyard_core::Actor::new(
            "fuzzer",
            &[
                "admin",
                "analyst",
                "sales_rep",
                "sales_manager",
                "finance",
                "system",
            ],
        ));
        request
    }

    /// Decodes `body` as the request of RPC `rpc` and calls it; `false` if it did not decode.
    async fn call(services: &Services, rpc: usize, body: &[u8]) -> bool {
        macro_rules! handle {
            ($message:ty, $service:ident, $method:ident) => {
                match <$message>::decode(body) {
                    Ok(m) => {
                        let _ = $service::$method(services, request(m)).await;
                        true
                    }
                    Err(_) => false,
                }
            };
        }
        match rpc {
            0 => handle!(pb::StartInstanceRequest, InstanceService, start_instance),
            1 => handle!(pb::SendCommandRequest, InstanceService, send_command),
            2 => handle!(pb::GetInstanceRequest, InstanceService, get_instance),
            3 => handle!(pb::ListInstancesRequest, InstanceService, list_instances),
            4 => handle!(
                pb::ListInstanceHistoryRequest,
                InstanceService,
                list_instance_history
            ),
            5 => handle!(pb::CancelInstanceRequest, InstanceService, cancel_instance),
            6 => handle!(
                pb::ResolveTimerIncidentRequest,
                InstanceService,
                resolve_timer_incident
            ),
            7 => handle!(
                pb::ListDefinitionsRequest,
                DefinitionService,
                list_definitions
            ),
            8 => handle!(pb::GetDefinitionRequest, DefinitionService, get_definition),
            9 => handle!(pb::ListRuleSetsRequest, RuleSetService, list_rule_sets),
            10 => handle!(
                pb::ActivateRuleSetRequest,
                RuleSetService,
                activate_rule_set
            ),
            11 => handle!(pb::EvaluateRuleRequest, RuleSetService, evaluate_rule),
            _ => handle!(
                pb::ValidateRuleSetRequest,
                RuleSetService,
                validate_rule_set
            ),
        }
    }

    #[test]
    fn fuzz_request_decoding_and_handling() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
        let engine = runtime
            .block_on(Engine::open_with_rules(
                EngineConfig::in_memory(),
                &rules,
                DeciderRegistry::new(),
                RuleLimits::default(),
            ))
            .unwrap();
        let services = Services {
            engine: engine.clone(),
        };
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus/requests");
        switchyard_core::fuzz::run("requests", &corpus, |input| {
            let Some((rpc, body)) = input.split_first() else {
                return;
            };
            runtime.block_on(call(&services, *rpc as usize % RPCS, body));
        });
        runtime.block_on(engine.shutdown());
    }

    /// The committed seeds decode as the requests they stand for.
    #[test]
    fn every_seed_decodes() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let engine = runtime
            .block_on(Engine::open(
                EngineConfig::in_memory(),
                switchyard_core::DefinitionSet::default(),
                DeciderRegistry::new(),
            ))
            .unwrap();
        let services = Services { engine };
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus/requests");
        for (path, bytes) in switchyard_core::fuzz::corpus(&corpus) {
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("crash-"))
            {
                continue;
            }
            let (rpc, body) = bytes.split_first().unwrap();
            assert!(
                runtime.block_on(call(&services, *rpc as usize % RPCS, body)),
                "{} does not decode",
                path.display()
            );
        }
    }
}
