//! The feed as one actor may read it: only events about instances of definitions whose read
//! roles the actor holds, optionally narrowed to some definitions and event types. A server
//! streams this to its callers.

use std::collections::{BTreeSet, HashMap};

use super::checks::require_role;
use super::Engine;
use crate::error::{clip, CommandError};
use crate::feed::{EventType, FeedEvent, Subscription};
use crate::model::{roles, Actor, InstanceId};

/// Most definitions or event types one filter names.
pub const FEED_FILTER_ITEMS_MAX: usize = 32;

/// Subjects whose definition a stream remembers (job events name only their instance).
const DEFINITION_CACHE_MAX: usize = 4096;

/// What a feed reader wants: events after `after_offset`, of these definitions and event
/// types (empty: all it may read).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct FeedRequest {
    /// Deliver events with a greater offset.
    pub after_offset: u64,
    /// Definition names; empty for every readable one.
    pub definitions: Vec<String>,
    /// Event type names (e.g. `switchyard.instance.transitioned`); empty for all.
    pub event_types: Vec<String>,
}

impl FeedRequest {
    /// Events after `after_offset`, unfiltered.
    pub fn after(after_offset: u64) -> Self {
        FeedRequest {
            after_offset,
            ..FeedRequest::default()
        }
    }
}

/// A subscription filtered for one actor: [`FeedReader::next`] returns the next event the
/// actor may read and asked for; [`FeedReader::position`] says how far it has looked.
pub struct FeedReader {
    engine: Engine,
    actor: Actor,
    subscription: Subscription,
    definitions: BTreeSet<String>,
    types: BTreeSet<EventType>,
    definition_of: HashMap<String, Option<String>>,
}

impl Engine {
    /// The feed after `request.after_offset` as `actor` may read it. Refused: a filter naming
    /// an unknown definition or event type, or more than [`FEED_FILTER_ITEMS_MAX`]
    /// (`INVALID_INPUT`), a definition the actor may not read (`ROLE_NOT_ALLOWED`), an offset
    /// outside the retained feed (`FEED_HORIZON`, `FEED_BEYOND_HEAD`).
    pub fn feed_as(&self, actor: &Actor, request: FeedRequest) -> Result<FeedReader, CommandError> {
        if actor.roles.is_empty() {
            return Err(CommandError::RoleNotAllowed {
                actor: actor.id.clone(),
                action: "read the feed".into(),
                held: "none".into(),
                required: "a role that may read some definition".into(),
            });
        }
        let too_many = |field: &str, n: usize| CommandError::InvalidInput {
            field: field.into(),
            message: format!("{n} given; at most {FEED_FILTER_ITEMS_MAX}"),
        };
        if request.definitions.len() > FEED_FILTER_ITEMS_MAX {
            return Err(too_many("definitions", request.definitions.len()));
        }
        if request.event_types.len() > FEED_FILTER_ITEMS_MAX {
            return Err(too_many("event_types", request.event_types.len()));
        }
        let rules = self.rules();
        for (i, name) in request.definitions.iter().enumerate() {
            let definition =
                rules
                    .definitions
                    .latest(name)
                    .ok_or_else(|| CommandError::InvalidInput {
                        field: format!("definitions[{i}]"),
                        message: format!(
                            "no definition `{}`; loaded: {}",
                            clip(name, 128),
                            rules.definitions.names().join(", ")
                        ),
                    })?;
            require_role(actor, &definition.read_roles, || {
                format!("read the feed of {name}")
            })?;
        }
        let mut types = BTreeSet::new();
        for (i, name) in request.event_types.iter().enumerate() {
            let kind = EventType::from_name(name).ok_or_else(|| CommandError::InvalidInput {
                field: format!("event_types[{i}]"),
                message: format!(
                    "no event type `{}`; known: {}",
                    clip(name, 128),
                    EventType::ALL
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
            types.insert(kind);
        }
        Ok(FeedReader {
            engine: self.clone(),
            actor: actor.clone(),
            subscription: self.subscribe(request.after_offset)?,
            definitions: request.definitions.into_iter().collect(),
            types,
            definition_of: HashMap::new(),
        })
    }
}

impl FeedReader {
    /// The next event this reader admits, waiting for one to be committed and flushed if
    /// needed. Cancel-safe: an event is returned as soon as it is taken.
    pub async fn next(&mut self) -> Result<FeedEvent, CommandError> {
        loop {
            let event = self.subscription.next().await?;
            if self.admits(&event)? {
                return Ok(event);
            }
        }
    }

    /// The offset of the last event examined, delivered or left out: a consumer resumes
    /// after it.
    pub fn position(&self) -> u64 {
        self.subscription.offset()
    }

    /// The latest durable offset.
    pub fn head(&self) -> u64 {
        self.subscription.durable_head()
    }

    fn admits(&mut self, event: &FeedEvent) -> Result<bool, CommandError> {
        if !self.types.is_empty() && !self.types.contains(&event.kind) {
            return Ok(false);
        }
        let Some(definition) = self.definition(event)? else {
            // About no instance the store still knows: only an admin sees it.
            return Ok(self.actor.roles.iter().any(|r| r == roles::ADMIN));
        };
        if !self.definitions.is_empty() && !self.definitions.contains(&definition) {
            return Ok(false);
        }
        let rules = self.engine.rules();
        let readers = rules
            .definitions
            .latest(&definition)
            .map(|d| d.read_roles.clone())
            .unwrap_or_else(|| vec![roles::ADMIN.to_string()]);
        Ok(self.actor.has_any_role(&readers))
    }

    /// The definition the event is about: named in its data, or (job events) its instance's.
    fn definition(&mut self, event: &FeedEvent) -> Result<Option<String>, CommandError> {
        #[derive(serde::Deserialize)]
        struct Named {
            definition: Option<DefinitionName>,
        }
        #[derive(serde::Deserialize)]
        struct DefinitionName {
            name: String,
        }
        if let Ok(Named {
            definition: Some(d),
        }) = serde_json::from_str::<Named>(event.data_json.get())
        {
            return Ok(Some(d.name));
        }
        if let Some(known) = self.definition_of.get(&event.subject) {
            return Ok(known.clone());
        }
        let found = match event.subject.parse::<InstanceId>() {
            Ok(id) => self
                .engine
                .inner
                .store
                .instance(id)?
                .map(|i| i.definition.name),
            Err(_) => None,
        };
        if self.definition_of.len() >= DEFINITION_CACHE_MAX {
            self.definition_of.clear();
        }
        self.definition_of
            .insert(event.subject.clone(), found.clone());
        Ok(found)
    }
}
