//! Credentials managed at runtime (see `crate::credential`): create, list, rotate, revoke —
//! admin only, each change recorded with its actor, each request idempotent by its id — and
//! the lookup an authenticator makes on every call.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::checks::{check_request_id, require_role};
use super::Engine;
use crate::credential::{hex, new_token, token_sha256, Credential};
use crate::definition::schema::is_identifier;
use crate::error::CommandError;
use crate::model::{roles, Actor};
use crate::store::{Page, RuleSetRequestRecord};

/// A credential just made, with its token — shown this once.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NewToken {
    /// The bearer token. It is kept nowhere: a lost token is revoked and replaced.
    pub token: String,
    /// Its record.
    pub credential: Credential,
}

/// Most roles one credential holds.
const ROLES_MAX: usize = 32;

fn invalid(field: &str, message: impl Into<String>) -> CommandError {
    CommandError::InvalidInput {
        field: field.into(),
        message: message.into(),
    }
}

fn require_admin(by: &Actor, action: &str) -> Result<(), CommandError> {
    require_role(by, &[roles::ADMIN.to_string()], || action.to_string())
}

impl Engine {
    /// Makes a token acting as `actor` with `roles` until `expires_at` (never when `None`).
    /// Needs `admin`. A retry with the same `request_id` is refused naming the credential it
    /// made, because the token is shown only once.
    pub async fn create_credential(
        &self,
        by: &Actor,
        request_id: &str,
        actor: &str,
        roles: &[String],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<NewToken, CommandError> {
        require_admin(by, "create a credential")?;
        check_request_id(request_id)?;
        let now = self.inner.config.clock.now();
        check_grant(actor, roles, expires_at, now)?;
        let digest = format!("{actor}\0{}\0{expires_at:?}", roles.join(","));
        let _admin = self.inner.rules_admin.lock().await;
        self.access_replay(request_id, "create_token", &digest)?;
        let made = self.mint(by, actor, roles, expires_at, now);
        self.inner
            .store
            .put_credentials(std::slice::from_ref(&made.credential))?;
        self.access_remember(request_id, "create_token", &digest, &made.credential.id)?;
        tracing::info!(credential = %made.credential.id, actor, by = %by.id, "credential created");
        Ok(made)
    }

    /// Replaces credential `id` with a new token for the same actor, roles and expiry; the old
    /// one is revoked in the same write. Needs `admin`.
    pub async fn rotate_credential(
        &self,
        by: &Actor,
        request_id: &str,
        id: &str,
    ) -> Result<NewToken, CommandError> {
        require_admin(by, "rotate a credential")?;
        check_request_id(request_id)?;
        let _admin = self.inner.rules_admin.lock().await;
        self.access_replay(request_id, "rotate_token", id)?;
        let mut old = self.live_credential(id)?;
        let now = self.inner.config.clock.now();
        let made = self.mint(by, &old.actor, &old.roles, old.expires_at, now);
        old.revoked_at = Some(now);
        old.revoked_by = Some(by.id.clone());
        old.replaced_by = Some(made.credential.id.clone());
        self.inner
            .store
            .put_credentials(&[old, made.credential.clone()])?;
        self.access_remember(request_id, "rotate_token", id, &made.credential.id)?;
        tracing::info!(old = %id, new = %made.credential.id, by = %by.id, "credential rotated");
        Ok(made)
    }

    /// Revokes credential `id`: its token is refused from its next call. Needs `admin`;
    /// revoking a revoked credential changes nothing.
    pub async fn revoke_credential(
        &self,
        by: &Actor,
        request_id: &str,
        id: &str,
    ) -> Result<Credential, CommandError> {
        require_admin(by, "revoke a credential")?;
        check_request_id(request_id)?;
        let _admin = self.inner.rules_admin.lock().await;
        let mut credential = self
            .inner
            .store
            .credential_by_id(id)?
            .ok_or_else(|| unknown(id))?;
        if credential.revoked_at.is_some() {
            return Ok(credential);
        }
        credential.revoked_at = Some(self.inner.config.clock.now());
        credential.revoked_by = Some(by.id.clone());
        self.inner
            .store
            .put_credentials(std::slice::from_ref(&credential))?;
        tracing::info!(credential = %id, by = %by.id, "credential revoked");
        Ok(credential)
    }

    /// A page of credentials (revoked and expired ones included), in id order. Needs `admin`.
    pub async fn credentials_page(
        &self,
        by: &Actor,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page<Credential>, CommandError> {
        require_admin(by, "list credentials")?;
        let page_size = self.page_size(page_size)?;
        let after = page_token.filter(|t| !t.is_empty());
        let mut items = self.inner.store.credentials(after, page_size + 1)?;
        let more = items.len() > page_size;
        items.truncate(page_size);
        Ok(Page {
            next_page_token: if more {
                items.last().map(|c| c.id.clone())
            } else {
                None
            },
            items,
        })
    }

    /// The actor a stored token acts as, if it is known, not revoked and not expired (by the
    /// engine clock). One store read: a revocation takes effect on the next call.
    pub fn authenticate_token(&self, token: &str) -> Result<Option<Actor>, CommandError> {
        self.authenticate_token_hash(&token_sha256(token))
    }

    /// The actor of the valid token whose SHA-256 is `sha256` (what a session keeps instead of
    /// the token itself), or `None`.
    pub fn authenticate_token_hash(
        &self,
        sha256: &[u8; 32],
    ) -> Result<Option<Actor>, CommandError> {
        let found = self.inner.store.credential(sha256)?;
        let now = self.inner.config.clock.now();
        Ok(found.filter(|c| c.is_valid_at(now)).map(|c| Actor {
            id: c.actor,
            roles: c.roles,
        }))
    }

    fn mint(
        &self,
        by: &Actor,
        actor: &str,
        roles: &[String],
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> NewToken {
        let token = new_token();
        NewToken {
            credential: Credential::new(&token, actor, roles, expires_at, now, &by.id),
            token,
        }
    }

    fn live_credential(&self, id: &str) -> Result<Credential, CommandError> {
        let credential = self
            .inner
            .store
            .credential_by_id(id)?
            .ok_or_else(|| unknown(id))?;
        if credential.revoked_at.is_some() {
            return Err(invalid("id", format!("credential {id} is revoked")));
        }
        Ok(credential)
    }

    /// Refuses a request id already used: by another request, or by this one (whose token
    /// was shown once and cannot be shown again).
    fn access_replay(
        &self,
        request_id: &str,
        operation: &str,
        asked: &str,
    ) -> Result<(), CommandError> {
        let now = self.inner.config.clock.now();
        if let Some(other) = self.inner.store.request(request_id)? {
            if other.expires_at > now {
                return Err(CommandError::RequestIdReused {
                    request_id: crate::error::clip(request_id, 256),
                    original: other.target.to_string(),
                });
            }
        }
        let Some(record) = self.inner.store.rule_set_request(request_id)? else {
            return Ok(());
        };
        if record.expires_at <= now {
            return Ok(());
        }
        if record.operation == operation && record.digest == digest(asked) {
            return Err(CommandError::SecretShownOnce {
                credential: record.subject,
            });
        }
        Err(CommandError::RequestIdReused {
            request_id: crate::error::clip(request_id, 256),
            original: format!("`{}` of {}", record.operation, record.subject),
        })
    }

    fn access_remember(
        &self,
        request_id: &str,
        operation: &str,
        asked: &str,
        credential: &str,
    ) -> Result<(), CommandError> {
        let now = self.inner.config.clock.now();
        self.inner
            .store
            .put_rule_set_request(&RuleSetRequestRecord {
                request_id: request_id.to_string(),
                operation: operation.to_string(),
                digest: digest(asked),
                number: 0,
                subject: format!("credential {credential}"),
                recorded_at: now,
                expires_at: now + self.inner.config.request_retention,
            })?;
        Ok(())
    }
}

fn digest(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

fn unknown(id: &str) -> CommandError {
    CommandError::UnknownCredential(crate::error::clip(id, 64))
}

fn check_grant(
    actor: &str,
    roles: &[String],
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), CommandError> {
    if actor.trim().is_empty() || actor.len() > 128 || actor.chars().any(char::is_control) {
        return Err(invalid(
            "actor",
            "must be an id of 1 to 128 bytes without control characters",
        ));
    }
    if roles.is_empty() || roles.len() > ROLES_MAX {
        return Err(invalid(
            "roles",
            format!("must name 1 to {ROLES_MAX} roles"),
        ));
    }
    if let Some(bad) = roles.iter().find(|r| !is_identifier(r)) {
        return Err(invalid(
            "roles",
            format!(
                "`{}` is not a role name (lower-case letters, digits, `_`)",
                crate::error::clip(bad, 64)
            ),
        ));
    }
    if expires_at.is_some_and(|at| at <= now) {
        return Err(invalid("expires_at", "must be in the future"));
    }
    Ok(())
}
