//! Who is calling: maps a bearer credential to an [`Actor`] before any `switchyard.v1` RPC
//! runs. Opaque tokens are looked up by their SHA-256 (the configuration keeps only hashes);
//! JWTs (three dot-separated parts, when a JWT key is configured) are verified for signature,
//! issuer, audience and expiry, with roles from a claim.
//!
//! The core decides what an actor may do; this module only says who it is. Credentials never
//! reach a log line: failures are logged with the kind of credential and the reason only.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use switchyard_core::Actor;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::{AuthConfig, JwtConfig};
use crate::status::ERROR_DOMAIN;

/// Checks credentials; cheap to clone (one shared table).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    /// Calls refused for a missing or unknown credential (a metric).
    refusals: Arc<std::sync::atomic::AtomicU64>,
    /// SHA-256 of a token → its actor.
    tokens: HashMap<[u8; 32], Actor>,
    jwt: Option<Jwt>,
    /// The engine whose store keeps the tokens made at runtime (set once it is open).
    engine: std::sync::OnceLock<switchyard_core::Engine>,
}

struct Jwt {
    key: DecodingKey,
    validation: Validation,
    roles_claim: String,
    actor_claim: String,
}

/// Why the authenticator could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct AuthConfigError {
    /// The configuration key at fault.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// The hex SHA-256 of a token, as the configuration keeps it.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 32 bytes a 64-digit hex text stands for.
pub(crate) fn hex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Authenticator {
    /// Builds the authenticator; `env` reads the JWT secret's variable when configured so.
    pub fn new(
        config: &AuthConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Authenticator, AuthConfigError> {
        let mut tokens = HashMap::new();
        for (i, t) in config.tokens.iter().enumerate() {
            let hash = hex32(&t.sha256.to_ascii_lowercase()).ok_or_else(|| AuthConfigError {
                key: format!("auth.tokens[{i}].sha256"),
                message: "must be 64 hex digits".into(),
            })?;
            let actor = Actor {
                id: t.actor.clone(),
                roles: t.roles.clone(),
            };
            if tokens.insert(hash, actor).is_some() {
                return Err(AuthConfigError {
                    key: format!("auth.tokens[{i}].sha256"),
                    message: "the same token is configured twice".into(),
                });
            }
        }
        let jwt = config.jwt.as_ref().map(|j| jwt(j, &env)).transpose()?;
        Ok(Authenticator {
            inner: Arc::new(Inner {
                refusals: Arc::default(),
                tokens,
                jwt,
                engine: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The count of refused calls, shared with the metrics endpoint.
    pub fn refusals(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.inner.refusals.clone()
    }

    /// Also accepts the tokens `engine` keeps (made at runtime through `AccessService`).
    pub fn use_engine(&self, engine: switchyard_core::Engine) {
        let _ = self.inner.engine.set(engine);
    }

    /// Whether a credential from the configuration can be accepted (tokens made at runtime
    /// come on top).
    pub fn accepts_anything(&self) -> bool {
        !self.inner.tokens.is_empty() || self.inner.jwt.is_some()
    }

    /// The actor behind the request's `authorization: Bearer …` header.
    #[allow(clippy::result_large_err)] // tonic's Status is what interceptors return
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Actor, Status> {
        let header = metadata.get("authorization").ok_or_else(|| {
            unauthenticated(
                "MISSING_CREDENTIALS",
                "no `authorization` header; send `authorization: Bearer <token>`",
            )
        })?;
        let header = header.to_str().map_err(|_| {
            unauthenticated(
                "MALFORMED_CREDENTIALS",
                "the `authorization` header is not text",
            )
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthenticated(
                    "MALFORMED_CREDENTIALS",
                    "the `authorization` header must be `Bearer <token>`",
                )
            })?;
        Ok(self.verify(token)?.0)
    }

    /// The actor behind a bearer `token` (the dashboard's login form), and what proves it
    /// later: a token's hash (looked up again on every use, so a revoked token stops at once)
    /// or a JWT's expiry.
    #[allow(clippy::result_large_err)]
    pub fn verify(&self, token: &str) -> Result<(Actor, Proof), Status> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(actor) = self.inner.tokens.get(&digest) {
            return Ok((actor.clone(), Proof::Token(digest)));
        }
        if let Some(jwt) = &self.inner.jwt {
            if token.split('.').count() == 3 {
                let (actor, expires) = jwt.verify(token)?;
                return Ok((actor, Proof::Jwt { expires }));
            }
        }
        if let Some(actor) = self.by_token_hash(&digest)? {
            return Ok((actor, Proof::Token(digest)));
        }
        tracing::info!(credential = "bearer token", "refused an unknown credential");
        Err(unauthenticated(
            "UNKNOWN_CREDENTIALS",
            "the bearer token is not known (or it was revoked or has expired)",
        ))
    }

    /// The actor of the opaque token whose SHA-256 is `digest`, if it is (still) valid.
    #[allow(clippy::result_large_err)]
    pub fn by_token_hash(&self, digest: &[u8; 32]) -> Result<Option<Actor>, Status> {
        if let Some(actor) = self.inner.tokens.get(digest) {
            return Ok(Some(actor.clone()));
        }
        let Some(engine) = self.inner.engine.get() else {
            return Ok(None);
        };
        engine.authenticate_token_hash(digest).map_err(|e| {
            Status::unavailable(format!(
                "credentials cannot be checked now: {}",
                switchyard_core::clip(&e.to_string(), 200)
            ))
        })
    }
}

/// What keeps a verified credential valid (see [`Authenticator::verify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// An opaque token, by its SHA-256.
    Token([u8; 32]),
    /// A JWT, valid until `expires` (Unix seconds).
    Jwt {
        /// Its `exp` claim.
        expires: i64,
    },
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let actor = self.authenticate(request.metadata()).inspect_err(|_| {
            self.inner
                .refusals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })?;
        // A credential without any role may do nothing here (health and reflection are not
        // behind this interceptor).
        if actor.roles.is_empty() {
            let mut details = ErrorDetails::new();
            details.set_error_info(
                "NO_ROLES",
                ERROR_DOMAIN,
                HashMap::from([("actor".to_string(), switchyard_core::clip(&actor.id, 128))]),
            );
            return Err(Status::with_error_details(
                tonic::Code::PermissionDenied,
                "the credential holds no role, so it may not call anything but health and reflection",
                details,
            ));
        }
        // The call's log line (src/call_log.rs) names who called.
        tracing::Span::current().record("actor", tracing::field::display(&actor.id));
        request.extensions_mut().insert(actor);
        Ok(request)
    }
}

fn unauthenticated(reason: &str, message: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(tonic::Code::Unauthenticated, message, details)
}

fn jwt(config: &JwtConfig, env: &impl Fn(&str) -> Option<String>) -> Result<Jwt, AuthConfigError> {
    let bad = |key: &str, message: String| AuthConfigError {
        key: format!("auth.jwt.{key}"),
        message,
    };
    let algorithm: Algorithm = config.algorithm.parse().map_err(|_| {
        bad(
            "algorithm",
            format!("`{}` is not supported; use HS256, HS384, HS512, RS256, RS384, RS512, ES256 or ES384", config.algorithm),
        )
    })?;
    let key = match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let secret = match (&config.secret, &config.secret_env) {
                (Some(s), None) => s.clone(),
                (None, Some(var)) => env(var).ok_or_else(|| {
                    bad(
                        "secret_env",
                        format!("the environment variable `{var}` is not set"),
                    )
                })?,
                _ => {
                    return Err(bad(
                        "secret",
                        "set exactly one of `secret` and `secret_env`".into(),
                    ))
                }
            };
            if secret.len() < 32 {
                return Err(bad("secret", "must be at least 32 bytes".into()));
            }
            DecodingKey::from_secret(secret.as_bytes())
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::ES256
        | Algorithm::ES384 => {
            let path = config.public_key_file.as_ref().ok_or_else(|| {
                bad(
                    "public_key_file",
                    format!("{algorithm:?} needs a PEM public key file"),
                )
            })?;
            let pem = std::fs::read(path).map_err(|e| {
                bad(
                    "public_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let key = if matches!(algorithm, Algorithm::ES256 | Algorithm::ES384) {
                DecodingKey::from_ec_pem(&pem)
            } else {
                DecodingKey::from_rsa_pem(&pem)
            };
            key.map_err(|e| {
                bad(
                    "public_key_file",
                    format!("{}: not a PEM public key: {e}", path.display()),
                )
            })?
        }
        other => return Err(bad("algorithm", format!("{other:?} is not supported"))),
    };
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&[&config.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.leeway = config.leeway_seconds;
    validation.validate_nbf = true;
    Ok(Jwt {
        key,
        validation,
        roles_claim: config.roles_claim.clone(),
        actor_claim: config.actor_claim.clone(),
    })
}

impl Jwt {
    #[allow(clippy::result_large_err)]
    fn verify(&self, token: &str) -> Result<(Actor, i64), Status> {
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| {
            tracing::info!(credential = "jwt", reason = %e, "refused a JWT");
            unauthenticated("INVALID_JWT", &format!("the JWT was refused: {e}"))
        })?
        .claims;
        let actor = claims
            .get(&self.actor_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                unauthenticated(
                    "INVALID_JWT",
                    &format!(
                        "the JWT has no `{}` claim naming the actor",
                        self.actor_claim
                    ),
                )
            })?;
        let roles = match claims.get(&self.roles_claim) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|r| r.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>(),
            Some(serde_json::Value::String(s)) => {
                Some(s.split_whitespace().map(str::to_string).collect())
            }
            None => Some(Vec::new()),
            _ => None,
        }
        .ok_or_else(|| {
            unauthenticated(
                "INVALID_JWT",
                &format!(
                    "the JWT claim `{}` must be an array of strings or a space-separated string",
                    self.roles_claim
                ),
            )
        })?;
        // `exp` is required by the validation, so it is there and a number.
        let expires = claims
            .get("exp")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        Ok((
            Actor {
                id: actor.to_string(),
                roles,
            },
            expires,
        ))
    }
}

/// The actor the interceptor attached to a request.
#[allow(clippy::result_large_err)]
pub(crate) fn actor_of<T>(request: &Request<T>) -> Result<Actor, Status> {
    request
        .extensions()
        .get::<Actor>()
        .cloned()
        .ok_or_else(|| unauthenticated("MISSING_CREDENTIALS", "the request was not authenticated"))
}

/// Refuses (PERMISSION_DENIED, ROLE_NOT_ALLOWED) an actor without `role`, naming `action`.
#[allow(clippy::result_large_err)]
pub(crate) fn require_role(actor: &Actor, role: &str, action: &str) -> Result<(), Status> {
    if actor.roles.iter().any(|r| r == role) {
        return Ok(());
    }
    let refused = switchyard_core::CommandError::RoleNotAllowed {
        actor: actor.id.clone(),
        action: action.to_string(),
        held: if actor.roles.is_empty() {
            "none".into()
        } else {
            actor.roles.join(", ")
        },
        required: role.to_string(),
    };
    Err(crate::status::to_status(
        &refused,
        crate::status::Wire::NONE,
    ))
}
