//! Reads: an instance, lists, history, children. Reads see commits once applied (possibly
//! before their flush); acknowledgements and feed deliveries never precede the flush.

use super::checks::{parse_page_token, require_role};
use super::requests::ListRequest;
use super::{Active, Engine};
use crate::error::CommandError;
use crate::model::{roles, Actor, DefinitionRef, HistoryEntry, Instance, InstanceId};
use crate::store::{ListQuery, Page};

const PAGE_SIZE_DEFAULT: usize = 100;

/// Most instances a filtered list reads from the store for one page (so a caller who may read
/// few of the instances cannot make one call scan the whole store); the page may come back
/// short, with a token to go on.
const LIST_SCAN_PAGES_MAX: usize = 10;

/// The roles that may read instances of `definition` (its version's `read` roles; for a
/// version no longer loaded, the latest version's; for an unknown definition, `admin`).
fn read_roles(rules: &Active, definition: &DefinitionRef) -> Vec<String> {
    rules
        .definitions
        .get(&definition.name, definition.version)
        .or_else(|| rules.definitions.latest(&definition.name))
        .map(|d| d.read_roles.clone())
        .unwrap_or_else(|| vec![roles::ADMIN.to_string()])
}

/// Refuses `actor` unless it may read `instance`.
pub(super) fn require_read(
    rules: &Active,
    actor: &Actor,
    instance: &Instance,
) -> Result<(), CommandError> {
    require_role(actor, &read_roles(rules, &instance.definition), || {
        format!("read instance {} ({})", instance.id, instance.definition)
    })
}

impl Engine {
    /// The instance `id`.
    pub async fn get(&self, id: InstanceId) -> Result<Instance, CommandError> {
        self.inner
            .store
            .instance(id)?
            .ok_or(CommandError::UnknownInstance(id))
    }

    /// The engine clock's time: what timers, deadlines and rule scripts go by.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.inner.config.clock.now()
    }

    /// The value of the balance `balance` at `key` (0 if never moved): e.g. a customer's
    /// `uninvoiced` exposure at `"ACME/EUR"` as the shipped rules keep it.
    pub async fn balance(
        &self,
        balance: &str,
        key: &str,
    ) -> Result<rust_decimal::Decimal, CommandError> {
        Ok(self.inner.store.balance(balance, key)?)
    }

    /// A page of instances, ordered by start time.
    pub async fn list(&self, request: ListRequest) -> Result<Page<Instance>, CommandError> {
        let page_size = self.page_size(request.page_size)?;
        if request.definition.is_none()
            && (request.state.is_some() || request.business_key.is_some())
        {
            return Err(CommandError::InvalidInput {
                field: if request.state.is_some() {
                    "state"
                } else {
                    "business_key"
                }
                .into(),
                message: "filtering by state or business key needs `definition` too".into(),
            });
        }
        let after = parse_page_token(request.page_token.as_deref())?;
        Ok(self.inner.store.list(&ListQuery {
            definition: request.definition,
            state: request.state,
            business_key: request.business_key,
            page_size,
            after,
        })?)
    }

    /// History of `id` after `after_version` (0 for all), at most `page_size` entries
    /// (0 means 100).
    pub async fn history(
        &self,
        id: InstanceId,
        after_version: u64,
        page_size: usize,
    ) -> Result<Vec<HistoryEntry>, CommandError> {
        let page_size = self.page_size(page_size)?;
        self.get(id).await?;
        Ok(self.inner.store.history(id, after_version, page_size)?)
    }

    /// A page of `id`'s history, oldest first; `page_token` is a previous page's
    /// `next_page_token`.
    pub async fn history_page(
        &self,
        id: InstanceId,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page<HistoryEntry>, CommandError> {
        let page_size = self.page_size(page_size)?;
        let after = match page_token {
            None | Some("") => 0,
            Some(token) => token
                .parse::<u64>()
                .map_err(|_| CommandError::InvalidInput {
                    field: "page_token".into(),
                    message: "is not a token this list returned".into(),
                })?,
        };
        self.get(id).await?;
        let mut items = self.inner.store.history(id, after, page_size + 1)?;
        let more = items.len() > page_size;
        items.truncate(page_size);
        Ok(Page {
            next_page_token: if more {
                items.last().map(|e| e.version.to_string())
            } else {
                None
            },
            items,
        })
    }

    /// Instances started by `parent`'s transitions (the other direction is
    /// [`Instance::parent`]).
    pub async fn children(
        &self,
        parent: InstanceId,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page<InstanceId>, CommandError> {
        let page_size = self.page_size(page_size)?;
        let after = parse_page_token(page_token)?;
        let mut items = self.inner.store.children(parent, after, page_size + 1)?;
        let more = items.len() > page_size;
        items.truncate(page_size);
        Ok(Page {
            next_page_token: if more {
                items.last().map(|i| i.to_string())
            } else {
                None
            },
            items,
        })
    }

    /// The instance `id`, read as `actor`: refused unless the actor holds one of the roles its
    /// definition lets read it.
    pub async fn get_as(&self, actor: &Actor, id: InstanceId) -> Result<Instance, CommandError> {
        let instance = self.get(id).await?;
        require_read(&self.rules(), actor, &instance)?;
        Ok(instance)
    }

    /// A page of instances `actor` may read, ordered by start time. Filtering by a definition
    /// the actor may not read is refused; without a filter, unreadable instances are left out
    /// (the page may then come back short, with a token to go on).
    pub async fn list_as(
        &self,
        actor: &Actor,
        request: ListRequest,
    ) -> Result<Page<Instance>, CommandError> {
        let rules = self.rules();
        if let Some(name) = &request.definition {
            if let Some(latest) = rules.definitions.latest(name) {
                require_role(actor, &latest.read_roles, || {
                    format!("list instances of {name}")
                })?;
            }
        }
        let mut request = request;
        let mut items = Vec::new();
        for _ in 0..LIST_SCAN_PAGES_MAX {
            let page = self.list(request.clone()).await?;
            let wanted = self.page_size(request.page_size)?;
            items.extend(
                page.items
                    .into_iter()
                    .filter(|i| actor.has_any_role(&read_roles(&rules, &i.definition))),
            );
            match page.next_page_token {
                Some(token) if items.len() < wanted => request.page_token = Some(token),
                next => {
                    return Ok(Page {
                        items,
                        next_page_token: next,
                    })
                }
            }
        }
        Ok(Page {
            next_page_token: request.page_token.clone(),
            items,
        })
    }

    /// A page of `id`'s history, read as `actor` (see [`Engine::get_as`]).
    pub async fn history_page_as(
        &self,
        actor: &Actor,
        id: InstanceId,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page<HistoryEntry>, CommandError> {
        self.get_as(actor, id).await?;
        self.history_page(id, page_size, page_token).await
    }

    /// The page size a list uses for `requested`: 0 means the default (100); above the
    /// configured `page_size_max` it is lowered to that (as AIP-158 asks: a caller asking for
    /// more gets a full page and a token, not a refusal). Every list of the engine (and of a
    /// server on top of it) applies this one rule.
    pub fn page_size(&self, requested: usize) -> Result<usize, CommandError> {
        let max = self.inner.config.page_size_max;
        Ok(match requested {
            0 => PAGE_SIZE_DEFAULT.min(max),
            n => n.min(max),
        })
    }
}
