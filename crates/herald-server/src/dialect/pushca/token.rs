//! Pushca connection tokens: HS256 JWTs signed with `pushca.secret_key`,
//! carrying the client and expiring after `pushca.token_ttl` (30 min).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};

use super::PClient;
use crate::config::PushcaConfig;
use crate::error::ApiError;

/// The audience of Pushca tokens, so other HS256 tokens signed with the
/// same secret are not mistaken for them.
const AUDIENCE: &str = "pushca";

/// Issues and verifies connection tokens.
pub(crate) struct Tokens {
    /// Signs new tokens.
    encoding: EncodingKey,
    /// Checks presented tokens.
    decoding: DecodingKey,
    /// HS256 only, `exp` and audience required.
    validation: Validation,
    /// Lifetime of a new token, in seconds.
    ttl_secs: u64,
}

/// What a token says.
#[derive(Serialize, Deserialize)]
struct Claims {
    /// Always [`AUDIENCE`].
    aud: String,
    /// Issued at (seconds since the epoch).
    iat: u64,
    /// Expires at (seconds since the epoch).
    exp: u64,
    /// Random, so that two tokens for one client differ.
    jti: String,
    /// The client the connection is.
    client: PClient,
}

impl Tokens {
    pub(crate) fn from_config(config: &PushcaConfig) -> Self {
        let secret = config
            .secret_key
            .clone()
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        let mut validation = crate::auth::validation(Algorithm::HS256, 0);
        validation.validate_aud = true;
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            ttl_secs: config.token_ttl.as_secs().max(1),
        }
    }

    /// A fresh token for `client`.
    pub(crate) fn issue(&self, client: &PClient) -> String {
        let now = herald_core::message::now_ms() / 1000;
        let claims = Claims {
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + self.ttl_secs,
            jti: uuid::Uuid::now_v7().simple().to_string(),
            client: client.clone(),
        };
        // HMAC signing of a serializable struct cannot fail.
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).unwrap_or_default()
    }

    /// The client in `token`; 401 when forged, expired or malformed.
    pub(crate) fn verify(&self, token: &str) -> Result<PClient, ApiError> {
        decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims.client)
            .map_err(|e| crate::auth::unauthorized(format!("invalid connection token: {e}")))
    }
}

/// Whether `s` has a JWT's shape (three base64url parts), to tell a token
/// path from an unknown route.
pub(crate) fn looks_like_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(secret: &str) -> Tokens {
        Tokens::from_config(&PushcaConfig {
            secret_key: Some(secret.into()),
            ..PushcaConfig::default()
        })
    }

    #[test]
    fn round_trip_and_forgery() {
        let client = PClient {
            account_id: Some("a".into()),
            ..PClient::default()
        };
        let t = tokens("s1").issue(&client);
        assert!(looks_like_jwt(&t));
        assert_eq!(tokens("s1").verify(&t).unwrap(), client);
        assert_eq!(tokens("s2").verify(&t).unwrap_err().status, 401);
        assert!(!looks_like_jwt("metrics"));
        assert!(!looks_like_jwt("a.b"));
    }
}
