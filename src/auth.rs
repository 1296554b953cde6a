//! The shared secret that guards every agent call: how it is made, carried and checked.
//!
//! The agent refuses any call whose `authorization` metadata is not exactly `Bearer <token>`.
//! The comparison takes the same time wherever the first difference is, so the token cannot be
//! guessed byte by byte from response times.

use std::fmt;

use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

/// Environment variable through which an agent (and a coordinator's static launcher) reads the
/// token; a flag would show the secret in `ps`.
pub const TOKEN_ENV: &str = "MULTITENANT_AGENT_TOKEN";

/// Shortest token accepted; shorter secrets are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a token was not accepted as a configured secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The token is too short to be a secret.
    #[error("the agent token has {len} characters; at least {MIN_TOKEN_LEN} are required")]
    TooShort {
        /// Length of the token given.
        len: usize,
    },
    /// The token cannot be sent as an HTTP header value.
    #[error("the agent token must be visible ASCII without spaces")]
    NotAscii,
}

/// A bearer token. Its `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// Accepts `secret` (surrounding whitespace trimmed) if it is long enough and header-safe.
    pub fn new(secret: &str) -> Result<Self, TokenError> {
        let secret = secret.trim();
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotAscii);
        }
        if secret.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort { len: secret.len() });
        }
        Ok(Self(secret.to_owned()))
    }

    /// Makes a fresh random token from 32 bytes of the caller's randomness, as lowercase hex.
    pub fn from_random_bytes(bytes: [u8; 32]) -> Self {
        Self(hex::encode(bytes))
    }

    /// The secret itself, for handing to a child process's environment.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Attaches `authorization: Bearer <token>` to an outgoing request.
    pub fn attach<T>(&self, mut request: Request<T>) -> Result<Request<T>, Status> {
        let value = MetadataValue::try_from(format!("Bearer {}", self.0))
            .map_err(|_| Status::internal("agent token is not a valid header value"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    /// Lets `request` through only if it carries exactly this token.
    pub fn check<T>(&self, request: Request<T>) -> Result<Request<T>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(token) if constant_time_eq(token.as_bytes(), self.0.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong agent token")),
            None => Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            )),
        }
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> BearerToken {
        BearerToken::new("0123456789abcdef0123").expect("valid token")
    }

    #[test]
    fn accepts_only_the_exact_token() {
        let ok = token().attach(Request::new(())).expect("attach");
        assert!(token().check(ok).is_ok());

        let other = BearerToken::new("0123456789abcdef0124").expect("valid token");
        let wrong = other.attach(Request::new(())).expect("attach");
        let err = token().check(wrong).expect_err("wrong token must fail");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);

        let missing = token()
            .check(Request::new(()))
            .expect_err("missing must fail");
        assert!(missing.message().contains("missing"));
    }

    #[test]
    fn refuses_short_or_unprintable_secrets_and_hides_them() {
        assert!(matches!(
            BearerToken::new("short"),
            Err(TokenError::TooShort { len: 5 })
        ));
        assert!(matches!(
            BearerToken::new("with space 0123456789"),
            Err(TokenError::NotAscii)
        ));
        assert_eq!(format!("{:?}", token()), "BearerToken(<redacted>)");
    }
}
