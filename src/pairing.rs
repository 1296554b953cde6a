//! The pairing string that `agent init` prints and `coordinator pair` reads: where an agent
//! listens, its token, and the certificate of its CA, on one copy-pasteable line.
//!
//! Form: `mtpair1.<url>.<token>.<ca>.<check>`. The URL and the CA certificate (DER) are
//! base64url without padding; the token is hex already; the check is the first 8 bytes of
//! SHA-256 over everything before it, hex. Parts are separated by `.`, which base64url and
//! hex never contain, so a cut string shows as missing parts and a changed one as a check
//! that does not match, each named.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::auth::{BearerToken, TokenError};

/// The first part of every pairing string: the form and its version.
pub const PREFIX: &str = "mtpair1";

/// Hex digits of the check.
const CHECK_HEX: usize = 16;

/// What a coordinator needs to reach one agent and trust it.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode {
    /// `https://host:port` of the agent.
    pub url: String,
    /// The agent's bearer token.
    pub token: BearerToken,
    /// DER of the CA that signed the agent's server certificate.
    pub ca_der: Vec<u8>,
}

/// Why a pairing string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PairingError {
    /// Not all five parts are there.
    #[error("the pairing string has {found} of its 5 parts (mtpair1.URL.TOKEN.CA.CHECK, separated by '.'): it was cut; copy the whole line again (`agent pairing` on the node prints it)")]
    Cut {
        /// Parts found.
        found: usize,
    },
    /// It does not start with [`PREFIX`].
    #[error("the pairing string starts with {found:?}, not {PREFIX:?}: it is not one that `agent init` prints")]
    Prefix {
        /// The first part found.
        found: String,
    },
    /// The URL part does not decode to an https address.
    #[error("part 2 of the pairing string (the agent's URL) {0}")]
    Url(String),
    /// The token part is not an acceptable token.
    #[error("part 3 of the pairing string (the agent's token): {0}")]
    Token(TokenError),
    /// The CA part does not decode to a certificate.
    #[error("part 4 of the pairing string (the agent's CA certificate) {0}")]
    Ca(String),
    /// The check does not match the other parts.
    #[error("part 5 of the pairing string (its check) does not match parts 1–4: the string was changed or mistyped; copy it again (`agent pairing` on the node prints it)")]
    Check,
}

impl PairingCode {
    /// The CA certificate as PEM text, as TLS settings take it.
    pub fn ca_pem(&self) -> String {
        pem_of_der("CERTIFICATE", &self.ca_der)
    }

    fn body(&self) -> String {
        format!(
            "{PREFIX}.{}.{}.{}",
            URL_SAFE_NO_PAD.encode(&self.url),
            self.token.expose(),
            URL_SAFE_NO_PAD.encode(&self.ca_der)
        )
    }
}

/// The check of a pairing string's first four parts.
fn check_of(body: &str) -> String {
    hex::encode(&Sha256::digest(body.as_bytes())[..CHECK_HEX / 2])
}

impl fmt::Display for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = self.body();
        write!(f, "{body}.{}", check_of(&body))
    }
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingCode")
            .field("url", &self.url)
            .field("ca_der_bytes", &self.ca_der.len())
            .finish_non_exhaustive()
    }
}

impl FromStr for PairingCode {
    type Err = PairingError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let parts: Vec<&str> = text.split('.').collect();
        if parts.first().is_some_and(|p| *p != PREFIX) {
            return Err(PairingError::Prefix {
                found: parts[0].chars().take(16).collect(),
            });
        }
        let [_, url, token, ca, check] = parts[..] else {
            return Err(PairingError::Cut {
                found: parts.iter().filter(|p| !p.is_empty()).count(),
            });
        };
        let url = URL_SAFE_NO_PAD
            .decode(url)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| PairingError::Url("is not base64url text".into()))?;
        if !url.starts_with("https://") || url.len() <= "https://".len() {
            return Err(PairingError::Url(format!(
                "is {url:?}, not an https:// address"
            )));
        }
        let token = BearerToken::new(token).map_err(PairingError::Token)?;
        let ca_der = URL_SAFE_NO_PAD
            .decode(ca)
            .map_err(|e| PairingError::Ca(format!("is not base64url: {e}")))?;
        // A certificate is a DER SEQUENCE; anything else was damaged on the way.
        if ca_der.first() != Some(&0x30) || ca_der.len() < 64 {
            return Err(PairingError::Ca("is not a DER certificate".into()));
        }
        let code = Self { url, token, ca_der };
        if check != check_of(&code.body()) {
            return Err(PairingError::Check);
        }
        Ok(code)
    }
}

/// PEM text of one DER object (`label` e.g. `CERTIFICATE`).
pub fn pem_of_der(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// DER of the first PEM object in `pem`, whatever its label; `None` if there is none.
pub fn der_of_pem(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN "))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END "))
        .map(str::trim)
        .collect();
    STANDARD.decode(body).ok().filter(|der| !der.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> PairingCode {
        PairingCode {
            url: "https://203.0.113.7:7777".into(),
            token: BearerToken::from_random_bytes([7; 32]),
            // A DER SEQUENCE of the right shape, long enough to stand for a certificate.
            ca_der: [0x30].into_iter().chain(0..=200u8).collect(),
        }
    }

    #[test]
    fn a_pairing_string_reads_back_as_what_was_written() {
        let text = code().to_string();
        assert!(text.starts_with("mtpair1."), "{text}");
        assert_eq!(text.split('.').count(), 5);
        assert_eq!(text.parse::<PairingCode>(), Ok(code()));
        assert_eq!(format!("  {text}\n").parse::<PairingCode>(), Ok(code()));
    }

    #[test]
    fn a_cut_string_says_how_many_parts_it_has() {
        let text = code().to_string();
        let cut = &text[..text.rfind('.').expect("dot")];
        assert_eq!(
            cut.parse::<PairingCode>(),
            Err(PairingError::Cut { found: 4 })
        );
        let cut_in_a_part = &text[..text.len() - 3];
        assert_eq!(
            cut_in_a_part.parse::<PairingCode>(),
            Err(PairingError::Check)
        );
    }

    #[test]
    fn each_damaged_part_is_named() {
        let text = code().to_string();
        let parts: Vec<&str> = text.split('.').collect();
        let with = |i: usize, new: &str| {
            let mut p = parts.clone();
            p[i] = new;
            p.join(".").parse::<PairingCode>().expect_err("refused")
        };
        assert!(matches!(with(0, "mtpair9"), PairingError::Prefix { .. }));
        assert!(matches!(with(1, "!!"), PairingError::Url(_)));
        let http = URL_SAFE_NO_PAD.encode("http://x:1");
        assert!(with(1, &http)
            .to_string()
            .contains("not an https:// address"));
        assert!(matches!(with(2, "short"), PairingError::Token(_)));
        assert!(matches!(with(3, "AAAA"), PairingError::Ca(_)));
        // One character of the token changed: every part still decodes, the check does not.
        let mut token = parts[2].to_owned();
        token.replace_range(0..1, if token.starts_with('0') { "1" } else { "0" });
        assert_eq!(with(2, &token), PairingError::Check);
        assert!(PairingError::Check.to_string().contains("part 5"));
    }

    #[test]
    fn pem_and_der_convert_both_ways() {
        let der: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        let pem = pem_of_der("CERTIFICATE", &der);
        assert!(pem.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
        assert_eq!(der_of_pem(&pem), Some(der));
        assert_eq!(der_of_pem("no pem here"), None);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let code = code();
        assert!(!format!("{code:?}").contains(code.token.expose()));
    }
}
