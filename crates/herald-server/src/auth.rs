//! Native connection identity: a JWT, verified with the `[auth]` key, gives
//! a connection a user id (`sub`) and string labels (`labels` claim).
//! Identity never comes from an unsigned claim.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode, header};
use herald_core::Identity;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;

use crate::access::Grants;
use crate::config::{AuthConfig, ConfigError};
use crate::error::ApiError;

/// The identity dimension that holds the token's `sub`.
pub(crate) const USER_DIM: &str = herald_core::identity::USER;

/// Verifies native tokens.
pub(crate) struct Verifier {
    /// The configured key.
    key: DecodingKey,
    /// Algorithm pinned, `exp` required, leeway applied.
    validation: Validation,
}

/// The claims Herald reads from a native token.
#[derive(Deserialize)]
struct Claims {
    /// The user id.
    sub: String,
    /// Extra dimensions; values must be strings.
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Protected channels the holder may read: names or patterns with one
    /// `*` (see [`crate::access`]).
    #[serde(default)]
    channels: Vec<String>,
    /// When it was issued (Unix seconds), which a revocation compares.
    iat: Option<u64>,
}

/// What a valid token says about its holder.
pub(crate) struct Verified {
    /// Who the connection is.
    pub(crate) identity: Identity,
    /// The protected channels it may read.
    pub(crate) grants: Grants,
    /// Its `sub`, by which revocations are kept.
    user: String,
    /// Its `iat`, which a revocation compares; a token without one goes with any revocation.
    pub(crate) issued_at: Option<u64>,
}

impl Verifier {
    /// The verifier `config` describes, or `None` when no key is configured.
    pub(crate) fn from_config(config: &AuthConfig) -> Result<Option<Self>, ConfigError> {
        use jsonwebtoken::AlgorithmFamily as F;
        let alg = config.algorithm;
        let key = match (alg.family(), &config.secret, &config.public_key_path) {
            (_, None, None) => return Ok(None),
            (F::Hmac, Some(secret), _) => DecodingKey::from_secret(secret.as_bytes()),
            (F::Hmac, None, Some(_)) => {
                return Err(ConfigError(format!(
                    "auth.algorithm {alg:?} needs auth.secret, not a public key"
                )));
            }
            (family, _, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError(format!("auth.public_key_path {}: {e}", path.display()))
                })?;
                match family {
                    F::Rsa => DecodingKey::from_rsa_pem(&pem),
                    F::Ec => DecodingKey::from_ec_pem(&pem),
                    _ => DecodingKey::from_ed_pem(&pem),
                }
                .map_err(|e| ConfigError(format!("auth.public_key_path: {e}")))?
            }
            (_, Some(_), None) => {
                return Err(ConfigError(format!(
                    "auth.algorithm {alg:?} needs auth.public_key_path"
                )));
            }
        };
        Ok(Some(Self {
            key,
            validation: validation(alg, config.leeway.as_secs()),
        }))
    }

    /// What `token` says, or why it is refused.
    pub(crate) fn verify(&self, token: &str) -> Result<Verified, ApiError> {
        let claims = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| unauthorized(format!("invalid token: {e}")))?
            .claims;
        if claims.sub.is_empty() || claims.labels.contains_key(USER_DIM) {
            return Err(unauthorized(
                "invalid token: 'sub' must be non-empty and labels must not redefine 'user'",
            ));
        }
        let grants = Grants::new(claims.channels)
            .map_err(|e| unauthorized(format!("invalid token: 'channels': {e}")))?;
        Ok(Verified {
            identity: Identity::new(
                std::iter::once((USER_DIM.to_owned(), claims.sub.clone())).chain(claims.labels),
            ),
            grants,
            user: claims.sub,
            issued_at: claims.iat,
        })
    }
}

/// A validation pinned to `alg`, requiring an unexpired `exp`.
pub(crate) fn validation(alg: Algorithm, leeway_secs: u64) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = leeway_secs;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp"]);
    v
}

/// A 401 with code `unauthorized`.
pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// The token of a native request: `?token=` or `Authorization: Bearer`.
pub(crate) fn request_token<'a>(query: Option<&'a str>, headers: &'a HeaderMap) -> Option<&'a str> {
    query.or_else(|| bearer(headers.get(header::AUTHORIZATION)?.to_str().ok()?))
}

/// The token in an `Authorization: Bearer <token>` header's value.
pub(crate) fn bearer(authorization: &str) -> Option<&str> {
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let (scheme, credentials) = authorization.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

/// The identity a native request's token proves, if it has one; 401 for a
/// bad token, or for any token when no `[auth]` key is configured.
pub(crate) fn verify(
    state: &crate::state::AppState,
    token: Option<&str>,
) -> Result<Option<Verified>, ApiError> {
    let Some(token) = token else {
        return Ok(None);
    };
    let verifier = state
        .auth
        .as_ref()
        .ok_or_else(|| unauthorized("no [auth] key is configured to verify tokens"))?;
    let verified = verifier.verify(token)?;
    if state
        .revocations
        .is_revoked(&verified.user, verified.issued_at)
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_revoked",
            "this token was revoked: get a new one",
        ));
    }
    Ok(Some(verified))
}

/// Compares secrets without an early exit on the first differing byte, so
/// the time taken does not reveal how much of a guess was right.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"key-1", b"key-1"));
        assert!(!same_secret(b"key-1", b"key-2"));
        assert!(!same_secret(b"key-1", b"key-10"));
        assert!(!same_secret(b"", b"k"));
    }
}
