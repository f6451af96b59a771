//! Types that carry meaning through the flow: an alert's `EventId`, a `Secret` that cannot
//! be printed by accident, and the content kinds an alert can arrive as.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// A sortable identifier for one received alert: a UUIDv7, so that ids sort by receive
/// time both as bytes and as their hyphenated text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    pub fn new() -> Self {
        EventId(Uuid::now_v7())
    }

    /// The id as its hyphenated text, written on the stack where `to_string` allocates.
    pub fn text(&self) -> IdText {
        let mut text = [0; 36];
        self.0.hyphenated().encode_lower(&mut text);
        IdText(text)
    }

    /// Milliseconds since the Unix epoch at which the id was made.
    pub fn timestamp_ms(&self) -> Option<i64> {
        let (secs, nanos) = self.0.get_timestamp()?.to_unix();
        Some(secs as i64 * 1000 + i64::from(nanos) / 1_000_000)
    }
}

/// An `EventId` written out: its 36 characters, hyphenated, lower case.
#[derive(Clone, Copy)]
pub struct IdText([u8; 36]);

impl IdText {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a hyphenated UUID is ASCII")
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(EventId)
    }
}

/// A secret string: its `Debug` and `Display` never show the value, and comparison with a
/// candidate takes the same time wherever the two differ.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The value itself, for the few places that must hand it to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison. Both sides are hashed first so that neither the position
    /// of the first difference nor the length of the secret shows in the timing.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let expected = Sha256::digest(self.0.as_bytes());
        let given = Sha256::digest(candidate);
        expected.ct_eq(&given).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How an alert's body is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    Json,
    Text,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Json => "json",
            AlertKind::Text => "text",
        }
    }
}

impl FromStr for AlertKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(AlertKind::Json),
            "text" => Ok(AlertKind::Text),
            _ => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_sort_by_creation_time() {
        let ids: Vec<EventId> = (0..1000).map(|_| EventId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort_by_key(|id| id.to_string());
        assert_eq!(ids, sorted);
        let first = ids[0];
        assert_eq!(first.to_string().parse::<EventId>().unwrap(), first);
        for id in &ids[..10] {
            assert_eq!(id.text().as_str(), id.to_string());
        }
        assert!(first.timestamp_ms().unwrap() > 1_700_000_000_000);
    }

    #[test]
    fn secrets_never_print_and_compare_exactly() {
        let secret = Secret::new("hunter2-hunter2".into());
        assert_eq!(
            format!("{secret} {secret:?}"),
            "[redacted] Secret([redacted])"
        );
        assert!(secret.matches(b"hunter2-hunter2"));
        assert!(!secret.matches(b"hunter2-hunter3"));
        assert!(!secret.matches(b"hunter2"));
        assert!(!secret.matches(b""));
    }
}
