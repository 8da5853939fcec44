//! Bearer tokens managed at runtime: an admin creates, lists, rotates and revokes them through
//! the engine (and so over gRPC and from the `switchyard` binary). The store keeps only each
//! token's SHA-256; the token itself is shown once, when it is made. A revoked or expired token
//! is refused on its next call, on every node reading the store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A token's record: who it acts as, with which roles, until when, and its history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Credential {
    /// Its id: the first 8 bytes of the token's SHA-256, in hex. Safe to show and log.
    pub id: String,
    /// The token's SHA-256, hex (the token itself is never kept).
    pub token_sha256: String,
    /// The actor id its calls act as.
    pub actor: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was made, and by whom.
    pub created_at: DateTime<Utc>,
    /// The admin who made it.
    pub created_by: String,
    /// When it was revoked (a rotation revokes the token it replaces).
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// The credential that replaced it in a rotation.
    pub replaced_by: Option<String>,
}

impl Credential {
    /// The live record of `token`, made by `created_by` at `created_at`.
    pub fn new(
        token: &str,
        actor: &str,
        roles: &[String],
        expires_at: Option<DateTime<Utc>>,
        created_at: DateTime<Utc>,
        created_by: &str,
    ) -> Self {
        let sha256 = token_sha256(token);
        Credential {
            id: id_of(&sha256),
            token_sha256: hex(&sha256),
            actor: actor.to_string(),
            roles: roles.to_vec(),
            expires_at,
            created_at,
            created_by: created_by.to_string(),
            revoked_at: None,
            revoked_by: None,
            replaced_by: None,
        }
    }

    /// Whether it lets a call through at `now`.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }
}

/// The SHA-256 of `token`.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A credential id from a token hash.
fn id_of(sha256: &[u8; 32]) -> String {
    hex(&sha256[..8])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh token: `sy_` and two random v4 UUIDs in hex (244 random bits from the OS).
pub fn new_token() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    format!("sy_{}{}", a.simple(), b.simple())
}
