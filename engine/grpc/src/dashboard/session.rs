//! Dashboard sessions: a signed cookie, so a session outlives a server restart (the page's
//! live stream reconnects by itself) without the server keeping the credential.
//!
//! The cookie is `<payload>.<mac>`, both base64url: the payload is JSON — a random session id,
//! the expiry, and either the SHA-256 of the opaque token that logged in (looked up again on
//! every request, so a revoked or expired token ends its sessions at once) or, for a JWT, the
//! actor, roles and the JWT's own expiry (the session never outlives it). The MAC is
//! HMAC-SHA256 under a 256-bit key kept in a file beside the store (created on first use,
//! mode 0600), compared in constant time. The credential itself is never stored, logged or
//! put in the cookie. A logged-out session id is refused until its expiry (kept in memory,
//! at most [`LOGGED_OUT_MAX`] ids; a restart forgets them, and the cookie is cleared in the
//! browser at logout either way).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use switchyard_core::Actor;

use crate::auth::{hex, hex32, Authenticator, Proof};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "switchyard_session";
/// Most logged-out session ids remembered until they expire.
const LOGGED_OUT_MAX: usize = 10_000;
/// Longest cookie value accepted (a JWT session's roles make it the longest).
const COOKIE_BYTES_MAX: usize = 3072;

type HmacSha256 = Hmac<Sha256>;

/// Issues and checks session cookies.
pub(crate) struct Sessions {
    key: [u8; 32],
    lifetime_seconds: i64,
    /// Logged-out session ids → their expiry.
    logged_out: Mutex<HashMap<String, i64>>,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    /// Random session id.
    sid: String,
    /// Expiry, Unix seconds.
    exp: i64,
    /// The opaque token's SHA-256, hex (token sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tok: Option<String>,
    /// The actor (JWT sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    act: Option<String>,
    /// Its roles (JWT sessions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rol: Vec<String>,
}

/// Why a request's session is not accepted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No cookie, a cookie not signed by this server, an expired or logged-out session, or a
    /// token that is no longer valid: log in again.
    Unauthenticated(&'static str),
    /// The credentials cannot be checked now (the store).
    Unavailable(String),
}

impl Sessions {
    /// Sessions signed with the key in `key_file` (made if missing), lasting `lifetime`.
    pub(crate) fn open(key_file: &Path, lifetime_seconds: i64) -> Result<Sessions, String> {
        let key = match std::fs::read(key_file) {
            Ok(bytes) => bytes.try_into().map_err(|_| {
                format!(
                    "{}: a session key file holds 32 bytes; delete it to make a new one (every session ends)",
                    key_file.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = new_key();
                write_private(key_file, &key)
                    .map_err(|e| format!("{}: cannot write: {e}", key_file.display()))?;
                key
            }
            Err(e) => return Err(format!("{}: cannot read: {e}", key_file.display())),
        };
        Ok(Sessions {
            key,
            lifetime_seconds,
            logged_out: Mutex::new(HashMap::new()),
        })
    }

    /// A cookie value for a login verified by `proof`, and its lifetime in seconds.
    pub(crate) fn issue(&self, actor: &Actor, proof: Proof, now: i64) -> (String, i64) {
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let payload = match proof {
            Proof::Token(digest) => Payload {
                sid,
                exp: now + self.lifetime_seconds,
                tok: Some(hex(&digest)),
                act: None,
                rol: Vec::new(),
            },
            Proof::Jwt { expires } => Payload {
                sid,
                exp: (now + self.lifetime_seconds).min(expires),
                tok: None,
                act: Some(actor.id.clone()),
                rol: actor.roles.clone(),
            },
        };
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap_or_default());
        let mac = URL_SAFE_NO_PAD.encode(self.mac(body.as_bytes()).finalize().into_bytes());
        (format!("{body}.{mac}"), payload.exp - now)
    }

    /// The actor of a cookie value, checked now.
    pub(crate) fn check(
        &self,
        cookie: &str,
        auth: &Authenticator,
        now: i64,
    ) -> Result<(Actor, String), Refused> {
        let payload = self.open_cookie(cookie)?;
        if payload.exp <= now {
            return Err(Refused::Unauthenticated("the session has expired"));
        }
        if self.lock().contains_key(&payload.sid) {
            return Err(Refused::Unauthenticated("the session was logged out"));
        }
        let actor = match (&payload.tok, &payload.act) {
            (Some(tok), None) => {
                let digest =
                    hex32(tok).ok_or(Refused::Unauthenticated("the session is malformed"))?;
                auth.by_token_hash(&digest)
                    .map_err(|s| Refused::Unavailable(s.message().to_string()))?
                    .ok_or(Refused::Unauthenticated(
                        "the token of this session was revoked or has expired",
                    ))?
            }
            (None, Some(actor)) => Actor {
                id: actor.clone(),
                roles: payload.rol.clone(),
            },
            _ => return Err(Refused::Unauthenticated("the session is malformed")),
        };
        Ok((actor, payload.sid))
    }

    /// Ends the session of `cookie` (if it is one of ours).
    pub(crate) fn log_out(&self, cookie: &str, now: i64) {
        let Ok(payload) = self.open_cookie(cookie) else {
            return;
        };
        let mut logged_out = self.lock();
        logged_out.retain(|_, exp| *exp > now);
        if logged_out.len() >= LOGGED_OUT_MAX {
            // Full of live sessions: forget the one that ends first.
            if let Some(first) = logged_out
                .iter()
                .min_by_key(|(_, exp)| **exp)
                .map(|(sid, _)| sid.clone())
            {
                logged_out.remove(&first);
            }
        }
        logged_out.insert(payload.sid, payload.exp);
    }

    fn open_cookie(&self, cookie: &str) -> Result<Payload, Refused> {
        const FORGED: Refused = Refused::Unauthenticated("the session cookie is not valid");
        if cookie.len() > COOKIE_BYTES_MAX {
            return Err(FORGED);
        }
        let (body, mac) = cookie.split_once('.').ok_or(FORGED)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| FORGED)?;
        self.mac(body.as_bytes())
            .verify_slice(&mac)
            .map_err(|_| FORGED)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| FORGED)?;
        serde_json::from_slice(&bytes).map_err(|_| FORGED)
    }

    fn mac(&self, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(body);
        mac
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.logged_out.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// 256 random bits (two v4 UUIDs carry 244; the key is hashed by HMAC either way).
fn new_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The value of cookie `name` in a `Cookie` header.
pub(crate) fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthConfig, TokenConfig};

    fn auth() -> Authenticator {
        let config = AuthConfig {
            tokens: vec![TokenConfig {
                sha256: crate::auth::token_hash("secret-token"),
                actor: "ann".into(),
                roles: vec!["sales_manager".into()],
            }],
            ..Default::default()
        };
        Authenticator::new(&config, |_| None).unwrap()
    }

    #[test]
    fn a_cookie_is_accepted_until_it_expires_or_logs_out_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("session.key");
        let auth = auth();
        let sessions = Sessions::open(&key, 3600).unwrap();
        let (actor, proof) = auth.verify("secret-token").unwrap();
        let (cookie, lifetime) = sessions.issue(&actor, proof, 1000);
        assert_eq!(lifetime, 3600);
        assert!(!cookie.contains("secret-token"));
        assert_eq!(sessions.check(&cookie, &auth, 1001).unwrap().0.id, "ann");
        // The same key file after a restart accepts it.
        let again = Sessions::open(&key, 3600).unwrap();
        assert_eq!(again.check(&cookie, &auth, 2000).unwrap().0.id, "ann");
        assert_eq!(
            again.check(&cookie, &auth, 4600),
            Err(Refused::Unauthenticated("the session has expired"))
        );
        again.log_out(&cookie, 2000);
        assert_eq!(
            again.check(&cookie, &auth, 2001),
            Err(Refused::Unauthenticated("the session was logged out"))
        );
    }

    #[test]
    fn a_changed_or_foreign_cookie_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth();
        let ours = Sessions::open(&dir.path().join("a.key"), 3600).unwrap();
        let theirs = Sessions::open(&dir.path().join("b.key"), 3600).unwrap();
        let (actor, proof) = auth.verify("secret-token").unwrap();
        let (cookie, _) = theirs.issue(&actor, proof, 1000);
        let forged = Err(Refused::Unauthenticated("the session cookie is not valid"));
        assert_eq!(ours.check(&cookie, &auth, 1001), forged);
        // A payload naming another actor, with the MAC of the original.
        let (body, mac) = cookie.split_once('.').unwrap();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        payload["exp"] = serde_json::json!(i64::MAX);
        let changed = format!(
            "{}.{mac}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap())
        );
        assert_eq!(theirs.check(&changed, &auth, 1001), forged);
        assert_eq!(ours.check("", &auth, 1001), forged);
        assert_eq!(ours.check("a.b.c", &auth, 1001), forged);
    }

    #[test]
    fn a_bad_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("short.key");
        std::fs::write(&key, b"short").unwrap();
        let e = Sessions::open(&key, 60).err().unwrap();
        assert!(e.contains("short.key") && e.contains("32 bytes"), "{e}");
    }

    #[test]
    fn cookie_values_are_found_by_name() {
        let header = "a=1; switchyard_session=xyz.abc; b=2";
        assert_eq!(cookie_value(header, COOKIE), Some("xyz.abc"));
        assert_eq!(cookie_value(header, "c"), None);
    }
}
