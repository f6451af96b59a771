//! Sources: the senders of alerts, each with a secret of its own, so that one can be
//! rotated or revoked without touching the others.
//!
//! The secret a request carries (in the path, or as the `passphrase` of its JSON) says
//! which source sent it; nothing else the sender writes does. `PYRON_WEBHOOK_TOKEN` is the
//! source `default`. Looking a secret up among many takes the same time whichever source
//! it belongs to, or none: every source's digest is compared with the candidate's, with
//! no early exit, and the match is picked without a branch on the comparison.
//!
//! A source may narrow who can use its secret: the sender addresses it accepts, and the
//! common name of a client certificate that NGINX must have verified (TradingView
//! presents one, CN "TradingView Webhooks", over HTTPS).

use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::domain::Secret;

/// The source of `PYRON_WEBHOOK_TOKEN`, and of every alert when none is required.
pub const DEFAULT: &str = "default";

/// One sender.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    /// `None` only for the unauthenticated `default` source.
    pub secret: Option<Secret>,
    /// When set, only these sender addresses may use this source's secret.
    pub allowed_senders: Option<Vec<IpNet>>,
    /// The JSON field whose value is this source's idempotency key (else the global one).
    pub idempotency_field: Option<String>,
    /// When set, the common name of the client certificate NGINX must have verified.
    pub client_certificate: Option<String>,
    /// The maximum age of its deliveries, for routes that set none.
    pub max_age: Option<std::time::Duration>,
}

/// What a request can show besides its secret.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    pub sender: Option<IpAddr>,
    /// The subject of the client certificate NGINX verified, as it passes it on
    /// (`CN=TradingView Webhooks,O=...`); `None` when there was none, or it did not verify.
    pub client_subject: Option<&'a str>,
}

/// Why a source's secret was not enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    SenderNotAllowed { source: String },
    ClientCertificate { source: String, expected: String },
}

/// Every configured source, searchable by secret.
#[derive(Debug, Clone)]
pub struct Sources {
    sources: Vec<Source>,
    digests: Vec<[u8; 32]>,
}

impl Sources {
    /// `sources` must hold at least one; names are unique (checked by `config`).
    pub fn new(sources: Vec<Source>) -> Self {
        let digests = sources
            .iter()
            .map(|s| {
                s.secret
                    .as_ref()
                    .map(|secret| Sha256::digest(secret.expose().as_bytes()).into())
                    .unwrap_or([0; 32])
            })
            .collect();
        Sources { sources, digests }
    }

    /// Alerts need no secret: one source, `default`, without one.
    pub fn unauthenticated() -> Self {
        Sources::new(vec![Source {
            name: DEFAULT.to_owned(),
            secret: None,
            allowed_senders: None,
            idempotency_field: None,
            client_certificate: None,
            max_age: None,
        }])
    }

    /// Whether alerts are accepted without a secret.
    pub fn open(&self) -> Option<&Source> {
        match self.sources.as_slice() {
            [only] if only.secret.is_none() => Some(only),
            _ => None,
        }
    }

    /// The sources' own idempotency fields.
    pub fn idempotency_fields(&self) -> impl Iterator<Item = &str> {
        self.sources
            .iter()
            .filter_map(|s| s.idempotency_field.as_deref())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Source> {
        self.sources.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// The source whose secret `candidate` is, in time that depends on neither.
    pub fn identify(&self, candidate: &[u8]) -> Option<&Source> {
        let given: [u8; 32] = Sha256::digest(candidate).into();
        let mut found = u32::MAX;
        for (index, (digest, source)) in self.digests.iter().zip(&self.sources).enumerate() {
            let equal =
                digest.ct_eq(&given) & subtle::Choice::from(u8::from(source.secret.is_some()));
            found.conditional_assign(&(index as u32), equal);
        }
        self.sources.get(found as usize)
    }
}

impl Source {
    /// Whether what the request shows besides the secret satisfies this source.
    pub fn admits(&self, credentials: Credentials<'_>) -> Result<(), Refusal> {
        if let Some(allowed) = &self.allowed_senders {
            let allowed = credentials
                .sender
                .is_some_and(|addr| allowed.iter().any(|net| net.contains(&addr)));
            if !allowed {
                return Err(Refusal::SenderNotAllowed {
                    source: self.name.clone(),
                });
            }
        }
        if let Some(expected) = &self.client_certificate {
            let shown = credentials.client_subject.and_then(common_name);
            if shown != Some(expected.as_str()) {
                return Err(Refusal::ClientCertificate {
                    source: self.name.clone(),
                    expected: expected.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The common name of a subject as NGINX writes it (`$ssl_client_s_dn`, RFC 2253:
/// `CN=TradingView Webhooks,O=TradingView,C=US`; escaped commas are kept).
pub fn common_name(subject: &str) -> Option<&str> {
    let mut start = 0;
    let bytes = subject.as_bytes();
    let mut i = 0;
    while i <= bytes.len() {
        let end = i == bytes.len() || (bytes[i] == b',' && (i == 0 || bytes[i - 1] != b'\\'));
        if end {
            let part = subject[start..i].trim();
            if let Some(value) = part
                .strip_prefix("CN=")
                .or_else(|| part.strip_prefix("cn="))
            {
                return Some(value);
            }
            start = i + 1;
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str, secret: &str) -> Source {
        Source {
            name: name.into(),
            secret: Some(Secret::new(secret.into())),
            allowed_senders: None,
            idempotency_field: None,
            client_certificate: None,
            max_age: None,
        }
    }

    #[test]
    fn a_secret_names_its_source_and_nothing_else_does() {
        let sources = Sources::new(vec![
            source("default", "first-secret-123"),
            source("tradingview", "second-secret-456"),
            source("bot", "third-secret-789"),
        ]);
        assert_eq!(
            sources.identify(b"second-secret-456").unwrap().name,
            "tradingview"
        );
        assert_eq!(
            sources.identify(b"first-secret-123").unwrap().name,
            "default"
        );
        assert_eq!(sources.identify(b"third-secret-789").unwrap().name, "bot");
        assert!(sources.identify(b"second-secret-45").is_none());
        assert!(sources.identify(b"").is_none());
        assert!(sources.open().is_none());
    }

    #[test]
    fn an_unauthenticated_intake_matches_no_secret_but_is_open() {
        let sources = Sources::unauthenticated();
        assert!(sources.identify(b"").is_none());
        assert!(sources.identify(&[0; 32]).is_none());
        assert_eq!(sources.open().unwrap().name, DEFAULT);
    }

    #[test]
    fn a_source_can_require_a_sender_and_a_verified_certificate() {
        let mut tv = source("tradingview", "second-secret-456");
        tv.allowed_senders = Some(vec!["52.89.214.238/32".parse().unwrap()]);
        tv.client_certificate = Some("TradingView Webhooks".into());
        let good = Credentials {
            sender: Some("52.89.214.238".parse().unwrap()),
            client_subject: Some("CN=TradingView Webhooks,O=TradingView\\, Inc.,C=US"),
        };
        assert_eq!(tv.admits(good), Ok(()));
        let elsewhere = Credentials {
            sender: Some("203.0.113.9".parse().unwrap()),
            ..good
        };
        assert!(matches!(
            tv.admits(elsewhere),
            Err(Refusal::SenderNotAllowed { .. })
        ));
        for subject in [
            None,
            Some("CN=Someone Else"),
            Some("O=TradingView Webhooks"),
        ] {
            let shown = Credentials {
                client_subject: subject,
                ..good
            };
            assert!(matches!(
                tv.admits(shown),
                Err(Refusal::ClientCertificate { .. })
            ));
        }
    }

    #[test]
    fn the_common_name_is_read_from_an_rfc2253_subject() {
        assert_eq!(
            common_name("CN=TradingView Webhooks"),
            Some("TradingView Webhooks")
        );
        assert_eq!(common_name("O=A\\, B,CN=x y,C=US"), Some("x y"));
        assert_eq!(common_name("O=A,C=US"), None);
    }
}
