//! Intake: turns one HTTP request into an accepted `Alert`, or a precise rejection.
//!
//! Everything here is pure: it checks the encoding and content type, authenticates the
//! sender, parses the body, strips the secret from what will be stored, and works out the
//! deduplication key. Persisting the result is the job of `queue` and `store`; mapping a
//! rejection to an HTTP answer is the job of `http`.
//!
//! TradingView sends a message as `text/plain` whenever it does not take it for JSON, and
//! a trailing newline or a word around the JSON is enough for that. So a text body that is,
//! or holds, a JSON object is read as that object too (`embedded_json`): its passphrase
//! authenticates, its fields make the signal, and the text is kept as received. Only a
//! passphrase field of such an object counts: the word "passphrase" anywhere else in a
//! text proves nothing.
//!
//! The parsed JSON is always the one read from the stored (redacted) body, minus the
//! passphrase field (`stored_json`): the worker reads it. pyron-api checks the body as
//! strictly (`check_json`) but builds only the top-level fields it needs (the passphrase,
//! the idempotency field), not the whole tree.

use std::{cell::Cell, fmt::Write, net::IpAddr};

use chrono::{DateTime, Utc};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::{
    domain::{AlertKind, EventId},
    source::{self, Credentials, Refusal, Source, Sources},
};

/// Deepest nesting accepted in a JSON alert. Real alerts are a level or two deep; MongoDB
/// refuses documents nested past 100 levels, and parsing stays cheap well below that.
pub const MAX_JSON_DEPTH: usize = 32;

/// Longest accepted `Idempotency-Key` header.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// What replaces a secret in anything stored or logged.
pub const REDACTED: &str = "[redacted]";

/// How many `{` of a text body are tried as the start of a JSON object. Text around the
/// JSON rarely holds a brace; the bound keeps a body full of them cheap to read.
const MAX_JSON_STARTS: usize = 8;

/// An address as the records keep it, written in one allocation (`to_string` grows its
/// string as it writes).
fn address_text(address: IpAddr) -> String {
    // The longest an address reads (INET6_ADDRSTRLEN, less its NUL).
    let mut text = String::with_capacity(45);
    write!(text, "{address}").expect("writing to a String does not fail");
    text
}

/// Why an alert was refused. Each maps to one HTTP status and one stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("Content-Encoding {0:?} is not supported; send the body uncompressed")]
    UnsupportedEncoding(String),
    #[error("Content-Type is missing; send application/json or text/plain")]
    MissingContentType,
    #[error("Content-Type {0:?} is not supported; send application/json or text/plain")]
    UnsupportedContentType(String),
    #[error("charset {0:?} is not supported; send UTF-8")]
    UnsupportedCharset(String),
    #[error("the body is empty")]
    EmptyBody,
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body is not valid UTF-8")]
    InvalidUtf8,
    #[error("the body contains a NUL byte")]
    NulByte,
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the JSON body repeats the key {0:?}")]
    DuplicateKey(String),
    #[error("the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
    #[error("the JSON body has a key containing a NUL character")]
    NulInKey,
    #[error("no secret: post to /webhook/{{token}} or put the secret in the JSON field {0:?}")]
    MissingSecret(String),
    #[error("the secret is wrong")]
    InvalidSecret,
    #[error("the source {0:?} does not accept alerts from this sender")]
    SenderNotAllowed(String),
    #[error("the source {0:?} requires a verified client certificate with the common name {1:?}")]
    ClientCertificateRequired(String, String),
    #[error(
        "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
    )]
    InvalidIdempotencyKey,
}

impl Rejection {
    /// The stable code that clients and tests match on.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::UnsupportedEncoding(_) => "unsupported_encoding",
            Rejection::MissingContentType
            | Rejection::UnsupportedContentType(_)
            | Rejection::UnsupportedCharset(_) => "unsupported_media_type",
            Rejection::EmptyBody => "empty_body",
            Rejection::TooLarge { .. } => "payload_too_large",
            Rejection::InvalidUtf8 => "invalid_utf8",
            Rejection::NulByte => "nul_byte",
            Rejection::MalformedJson(_) => "malformed_json",
            Rejection::DuplicateKey(_) => "duplicate_key",
            Rejection::TooDeep => "json_too_deep",
            Rejection::NulInKey => "nul_in_key",
            Rejection::MissingSecret(_) => "missing_secret",
            Rejection::InvalidSecret => "invalid_secret",
            Rejection::SenderNotAllowed(_) => "sender_not_allowed",
            Rejection::ClientCertificateRequired(..) => "client_certificate_required",
            Rejection::InvalidIdempotencyKey => "invalid_idempotency_key",
        }
    }
}

/// The rules an alert is checked against, from configuration.
#[derive(Debug, Clone)]
pub struct Intake {
    /// Who may send, each with a secret; a single source without one when alerts need no
    /// secret.
    pub sources: Sources,
    pub passphrase_field: String,
    pub idempotency_field: Option<String>,
    pub body_limit: usize,
}

/// One request as the HTTP layer saw it.
#[derive(Debug)]
pub struct Request<'a> {
    pub content_type: Option<&'a [u8]>,
    pub content_encoding: Option<&'a [u8]>,
    /// The token of `/webhook/{token}`, percent-decoded.
    pub path_token: Option<&'a [u8]>,
    pub idempotency_key: Option<&'a [u8]>,
    pub body: &'a [u8],
    /// The sender's address, as the HTTP layer found it (`SenderRules::client`).
    pub sender: Option<IpAddr>,
    /// The subject of the client certificate the trusted proxy verified, if any.
    pub client_subject: Option<&'a str>,
}

/// An alert that passed every check, ready to be stored and queued.
///
/// Serialized (as JSON) it is the job a stream entry carries, in its one field `job`: a
/// field added here travels to the worker with nothing else to change. The parsed `json`
/// is not part of it; the worker reads it again from the body (`stored_json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Alert {
    pub id: EventId,
    /// The source whose secret the alert carried (`default` for jobs queued before
    /// sources existed).
    #[serde(default = "default_source")]
    pub source: String,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub received_at: DateTime<Utc>,
    pub kind: AlertKind,
    /// The Content-Type header as sent.
    pub content_type: String,
    /// The body as received, with every occurrence of the secret replaced by `[redacted]`.
    /// For a JSON alert it is still valid JSON, and a text alert's JSON object still
    /// parses.
    pub body: String,
    /// The JSON object of the body (a JSON alert's, or the one a text alert holds),
    /// without the passphrase field: `stored_json` of `body`, which the worker reads
    /// (`None` from `Intake::accept`: pyron-api checks the JSON but keeps no parsed copy).
    #[serde(skip)]
    pub json: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
}

impl Intake {
    /// Checks a request and builds the alert it carries.
    pub fn accept(&self, req: Request<'_>) -> Result<Alert, Rejection> {
        if let Some(encoding) = req.content_encoding {
            let encoding = String::from_utf8_lossy(encoding)
                .trim()
                .to_ascii_lowercase();
            if encoding != "identity" && !encoding.is_empty() {
                return Err(Rejection::UnsupportedEncoding(encoding));
            }
        }
        let content_type = req.content_type.ok_or(Rejection::MissingContentType)?;
        let kind = parse_content_type(content_type)?;
        if req.body.len() > self.body_limit {
            return Err(Rejection::TooLarge {
                limit: self.body_limit,
            });
        }
        if req.body.iter().all(u8::is_ascii_whitespace) {
            return Err(Rejection::EmptyBody);
        }
        // Unauthenticated mode: a token in the path is meaningless but harmless.
        let by_path: Option<&Source> = match (self.sources.open(), req.path_token) {
            (Some(open), _) => Some(open),
            (None, Some(given)) => Some(
                self.sources
                    .identify(given)
                    .ok_or(Rejection::InvalidSecret)?,
            ),
            (None, None) => None,
        };
        let header_key = req
            .idempotency_key
            .map(parse_idempotency_header)
            .transpose()?;

        let text = std::str::from_utf8(req.body).map_err(|_| Rejection::InvalidUtf8)?;
        if text.contains('\0') {
            return Err(Rejection::NulByte);
        }

        // Checked strictly, keeping only the top-level fields read here: the passphrase
        // and the idempotency fields.
        let wanted = |key: &str| {
            key == self.passphrase_field
                || self.idempotency_field.as_deref() == Some(key)
                || self.sources.idempotency_fields().any(|field| field == key)
        };
        let (mut top, span) = match kind {
            AlertKind::Json => (Some(check_json(req.body, &wanted)?), None),
            AlertKind::Text => match find_object(text, |json| check_json(json, &wanted))? {
                Some((span, top)) => (Some(top), Some(span)),
                None => (None, None),
            },
        };
        let passphrase = top
            .as_mut()
            .and_then(|top| top.take(&self.passphrase_field));

        let source = match by_path {
            Some(source) => source,
            None => match &passphrase {
                None => return Err(Rejection::MissingSecret(self.passphrase_field.clone())),
                Some(Value::String(given)) => self
                    .sources
                    .identify(given.as_bytes())
                    .ok_or(Rejection::InvalidSecret)?,
                Some(_) => return Err(Rejection::InvalidSecret),
            },
        };
        let credentials = Credentials {
            sender: req.sender,
            client_subject: req.client_subject,
        };
        source
            .admits(credentials)
            .map_err(|refusal| match refusal {
                Refusal::SenderNotAllowed { source } => Rejection::SenderNotAllowed(source),
                Refusal::ClientCertificate { source, expected } => {
                    Rejection::ClientCertificateRequired(source, expected)
                }
            })?;

        let dedup_key = header_key.or_else(|| {
            let field = source
                .idempotency_field
                .as_deref()
                .or(self.idempotency_field.as_deref())?;
            match top.as_ref()?.get(field)? {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        });

        let body = self.redact(source, text, span, top.is_some(), passphrase.as_ref());
        Ok(Alert {
            id: EventId::new(),
            source: source.name.clone(),
            received_at: Utc::now(),
            kind,
            content_type: String::from_utf8_lossy(content_type).into_owned(),
            body,
            json: None,
            dedup_key,
            sender: req.sender.map(address_text),
        })
    }

    /// The body to store: every literal occurrence of the secret (and of a passphrase sent
    /// beside a path token) replaced. The JSON the body holds (all of it, or the `span` of
    /// a text body, when `has_json`) must still read as the same object without its
    /// passphrase; should the replacement break it (the secret also stood outside a
    /// string), or leave the passphrase readable (it was written with escapes), that JSON
    /// is written out again from the object without its passphrase instead.
    fn redact(
        &self,
        source: &Source,
        text: &str,
        span: Option<std::ops::Range<usize>>,
        has_json: bool,
        passphrase: Option<&Value>,
    ) -> String {
        let mut secrets: Vec<&str> = Vec::with_capacity(2);
        if let Some(secret) = &source.secret {
            secrets.push(secret.expose());
        }
        if let Some(Value::String(p)) = passphrase
            && !p.is_empty()
        {
            secrets.push(p);
        }
        let redact = |part: &str| {
            let mut part = part.to_owned();
            for secret in &secrets {
                if part.contains(secret) {
                    part = part.replace(secret, REDACTED);
                }
            }
            part
        };
        if !has_json {
            return redact(text);
        }
        let span = span.unwrap_or(0..text.len());
        let (before, object, after) = (&text[..span.start], &text[span.clone()], &text[span.end..]);
        // Whether the candidate reads as JSON whose passphrase, if any, is not the secret:
        // a passphrase written with escapes escapes the literal replacement too.
        let reads_safely = |candidate: &str| {
            let Ok(mut value) = serde_json::from_str::<Value>(candidate) else {
                return false;
            };
            !matches!(
                take_passphrase(&mut value, &self.passphrase_field),
                Some(Value::String(p)) if secrets.contains(&p.as_str())
            )
        };
        let redacted = redact(object);
        let object = if passphrase.is_none() && redacted == object {
            // Nothing replaced, no passphrase: the object as it arrived.
            redacted
        } else if reads_safely(&redacted) {
            redacted
        } else {
            // Written out again from the object as it arrived (checked already), without
            // its passphrase.
            let mut value: Value =
                serde_json::from_str(object).expect("the object was checked as JSON");
            take_passphrase(&mut value, &self.passphrase_field);
            let rewritten = redact(&value.to_string());
            if reads_safely(&rewritten) {
                rewritten
            } else {
                value.to_string()
            }
        };
        if span.start == 0 && span.end == text.len() {
            object
        } else {
            format!("{}{object}{}", redact(before), redact(after))
        }
    }
}

pub fn default_source() -> String {
    source::DEFAULT.to_owned()
}

/// The parsed JSON a stored body gives: a JSON alert's body, or the JSON object a text
/// alert holds, without the passphrase field. `None` for text without one. The body was
/// checked on arrival, so what does not read here (an old job's, say) is simply not JSON.
pub fn stored_json(kind: AlertKind, body: &str, passphrase_field: &str) -> Option<Value> {
    let mut value = match kind {
        AlertKind::Json => serde_json::from_str(body).ok()?,
        AlertKind::Text => embedded_json(body).ok().flatten()?.1,
    };
    take_passphrase(&mut value, passphrase_field);
    Some(value)
}

/// The JSON object a text body is or holds, with where it stands: the first `{` (of the
/// first few) from which a whole JSON object reads, text before and after it allowed,
/// unless the whole text is a JSON array.
/// Such an object is held to the rules of a JSON body: one that repeats a key, nests too
/// deep or has a NUL in a key is refused, not read around.
pub fn embedded_json(text: &str) -> Result<Option<(std::ops::Range<usize>, Value)>, Rejection> {
    find_object(text, parse_json)
}

/// `embedded_json` with the JSON read by `read`: parsed, or only checked.
fn find_object<T>(
    text: &str,
    read: impl Fn(&[u8]) -> Result<T, Rejection>,
) -> Result<Option<(std::ops::Range<usize>, T)>, Rejection> {
    // A text that is a JSON array is JSON whose top level has no fields, as it would be
    // sent as application/json: an object inside it is not the alert's.
    if text.trim_start().starts_with('[') {
        match read(text.as_bytes()) {
            Ok(_) => return Ok(None),
            Err(Rejection::MalformedJson(_)) => {}
            Err(strictness) => return Err(strictness),
        }
    }
    let starts = text
        .match_indices('{')
        .map(|(i, _)| i)
        .take(MAX_JSON_STARTS);
    for start in starts {
        let Some(end) = object_end(&text.as_bytes()[start..]).map(|len| start + len) else {
            continue;
        };
        match read(&text.as_bytes()[start..end]) {
            Ok(value) => return Ok(Some((start..end, value))),
            Err(Rejection::MalformedJson(_)) => continue,
            Err(strictness) => return Err(strictness),
        }
    }
    Ok(None)
}

/// The length of the bracketed run that starts at `bytes[0]` (a `{`), minding strings
/// and their escapes; `None` if it never closes. Whether it is JSON is `parse_json`'s call.
fn object_end(bytes: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// Removes the passphrase field from a JSON alert's top level, returning it. The parsed
/// JSON that is stored never holds it, whether pyron-api parsed the body or a worker
/// parsed the stored (redacted) one again.
pub fn take_passphrase(value: &mut Value, field: &str) -> Option<Value> {
    match value {
        Value::Object(map) => map.shift_remove(field),
        _ => None,
    }
}

/// Accepts `application/json` and `text/plain`, with an optional UTF-8 charset.
pub fn parse_content_type(header: &[u8]) -> Result<AlertKind, Rejection> {
    let header = std::str::from_utf8(header)
        .map_err(|_| Rejection::UnsupportedContentType(String::from_utf8_lossy(header).into()))?;
    let mut parts = header.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let kind = match essence.as_str() {
        "application/json" => AlertKind::Json,
        "text/plain" => AlertKind::Text,
        "" => return Err(Rejection::MissingContentType),
        _ => return Err(Rejection::UnsupportedContentType(essence)),
    };
    for param in parts {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let value = value.trim().trim_matches('"').to_ascii_lowercase();
            if value != "utf-8" && value != "utf8" && value != "us-ascii" {
                return Err(Rejection::UnsupportedCharset(value));
            }
        }
    }
    Ok(kind)
}

fn parse_idempotency_header(raw: &[u8]) -> Result<String, Rejection> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && raw.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
    let key = std::str::from_utf8(raw)
        .map_err(|_| Rejection::InvalidIdempotencyKey)?
        .trim();
    if ok && !key.is_empty() {
        Ok(key.to_owned())
    } else {
        Err(Rejection::InvalidIdempotencyKey)
    }
}

/// Parses JSON strictly: duplicate keys, nesting past `MAX_JSON_DEPTH` and keys holding
/// NUL are refused, because each would be read differently by different consumers (or
/// not stored at all).
pub fn parse_json(body: &[u8]) -> Result<Value, Rejection> {
    let problem = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = StrictValue {
        depth: 0,
        problem: &problem,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    parsed.map_err(|err| rejection(&problem, err))
}

/// Why a strict read failed: the rule it broke, else the JSON's own error.
fn rejection(problem: &Cell<Option<Rejection>>, err: serde_json::Error) -> Rejection {
    problem
        .take()
        .unwrap_or_else(|| Rejection::MalformedJson(err.to_string()))
}

/// Notes the rule a strict read broke, as the error that stops it.
fn broke<E: de::Error>(problem: &Cell<Option<Rejection>>, rejection: Rejection) -> E {
    let message = rejection.to_string();
    problem.set(Some(rejection));
    E::custom(message)
}

/// The top-level fields a strict check kept (none when the top level is not an object).
#[derive(Debug, Default)]
pub struct TopLevel {
    fields: Vec<(String, Value)>,
}

impl TopLevel {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn take(&mut self, name: &str) -> Option<Value> {
        let at = self.fields.iter().position(|(k, _)| k == name)?;
        Some(self.fields.swap_remove(at).1)
    }
}

/// Checks JSON as strictly as `parse_json` does, without building it: only the values of
/// the top-level fields `wanted` names are kept.
pub fn check_json(body: &[u8], wanted: &dyn Fn(&str) -> bool) -> Result<TopLevel, Rejection> {
    let problem = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut top = TopLevel::default();
    let checked = StrictCheck {
        depth: 0,
        problem: &problem,
        keep: Some((wanted, &mut top)),
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    checked
        .map(|()| top)
        .map_err(|err| rejection(&problem, err))
}

/// Which top-level fields to keep, and where.
type Keep<'k> = (&'k dyn Fn(&str) -> bool, &'k mut TopLevel);

/// `StrictValue`'s rules, building nothing but the top-level fields asked for.
struct StrictCheck<'p, 'k> {
    depth: usize,
    problem: &'p Cell<Option<Rejection>>,
    /// At the top level: which fields to keep, and where.
    keep: Option<Keep<'k>>,
}

impl<'p> StrictCheck<'p, '_> {
    fn nested(&self) -> StrictCheck<'p, 'static> {
        StrictCheck {
            depth: self.depth + 1,
            problem: self.problem,
            keep: None,
        }
    }

    fn value(&self) -> StrictValue<'p> {
        StrictValue {
            depth: self.depth + 1,
            problem: self.problem,
        }
    }

    fn fail<E: de::Error>(&self, rejection: Rejection) -> E {
        broke(self.problem, rejection)
    }
}

impl<'de> DeserializeSeed<'de> for StrictCheck<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictCheck<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_JSON_DEPTH {
            return Err(self.fail(Rejection::TooDeep));
        }
        while seq.next_element_seed(self.nested())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        if self.depth >= MAX_JSON_DEPTH {
            return Err(self.fail(Rejection::TooDeep));
        }
        let mut keys = Keys::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if key.contains('\0') {
                return Err(self.fail(Rejection::NulInKey));
            }
            let (kept, nested) = (self.value(), self.nested());
            match &mut self.keep {
                Some((wanted, top)) if wanted(&key) => {
                    let value = map.next_value_seed(kept)?;
                    top.fields.push((key.to_string(), value));
                }
                _ => map.next_value_seed(nested)?,
            }
            if !keys.insert(key) {
                let key = keys.repeated.take().unwrap_or_default();
                return Err(self.fail(Rejection::DuplicateKey(key)));
            }
        }
        Ok(())
    }
}

/// The keys of one object so far: a short list, then a set.
#[derive(Default)]
struct Keys<'de> {
    few: Vec<std::borrow::Cow<'de, str>>,
    many: std::collections::HashSet<std::borrow::Cow<'de, str>>,
    repeated: Option<String>,
}

impl<'de> Keys<'de> {
    /// Past this many keys, an object's keys go in a set.
    const FEW: usize = 16;

    /// False (and `repeated` set) when the key was there already.
    fn insert(&mut self, key: std::borrow::Cow<'de, str>) -> bool {
        let seen = if self.many.is_empty() {
            self.few.contains(&key)
        } else {
            self.many.contains(&key)
        };
        if seen {
            self.repeated = Some(key.into_owned());
            return false;
        }
        if self.many.is_empty() && self.few.len() < Self::FEW {
            self.few.push(key);
        } else {
            self.many.extend(self.few.drain(..));
            self.many.insert(key);
        }
        true
    }
}

/// A key, borrowed from the body unless it had escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v))
    }
}

#[derive(Clone, Copy)]
struct StrictValue<'p> {
    depth: usize,
    problem: &'p Cell<Option<Rejection>>,
}

impl StrictValue<'_> {
    fn nested(self) -> Self {
        StrictValue {
            depth: self.depth + 1,
            problem: self.problem,
        }
    }

    fn fail<E: de::Error>(self, rejection: Rejection) -> E {
        broke(self.problem, rejection)
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth >= MAX_JSON_DEPTH {
            return Err(self.fail(Rejection::TooDeep));
        }
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(self.nested())? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth >= MAX_JSON_DEPTH {
            return Err(self.fail(Rejection::TooDeep));
        }
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.contains('\0') {
                return Err(self.fail(Rejection::NulInKey));
            }
            let value = map.next_value_seed(self.nested())?;
            match object.entry(key) {
                serde_json::map::Entry::Vacant(vacant) => {
                    vacant.insert(value);
                }
                serde_json::map::Entry::Occupied(occupied) => {
                    return Err(self.fail(Rejection::DuplicateKey(occupied.key().clone())));
                }
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cret-token-123";

    fn sources(secrets: &[(&str, &str)]) -> Sources {
        Sources::new(
            secrets
                .iter()
                .map(|(name, secret)| Source {
                    name: (*name).into(),
                    secret: Some(crate::domain::Secret::new((*secret).into())),
                    allowed_senders: None,
                    idempotency_field: None,
                    client_certificate: None,
                    max_age: None,
                })
                .collect(),
        )
    }

    fn intake() -> Intake {
        Intake {
            sources: sources(&[("default", TOKEN)]),
            passphrase_field: "passphrase".into(),
            idempotency_field: Some("order_id".into()),
            body_limit: 1024,
        }
    }

    /// What a worker reads of the alert's stored body.
    fn read(alert: &Alert) -> Option<Value> {
        stored_json(alert.kind, &alert.body, "passphrase")
    }

    fn request<'a>(content_type: &'a str, body: &'a str) -> Request<'a> {
        Request {
            content_type: Some(content_type.as_bytes()),
            content_encoding: None,
            path_token: None,
            idempotency_key: None,
            body: body.as_bytes(),
            sender: None,
            client_subject: None,
        }
    }

    #[test]
    fn a_json_passphrase_authenticates_and_is_stripped_everywhere() {
        let body = r#"{"passphrase":"s3cret-token-123","ticker":"BTCUSDT"}"#;
        let alert = intake().accept(request("application/json", body)).unwrap();
        assert_eq!(alert.kind, AlertKind::Json);
        assert_eq!(
            read(&alert).unwrap(),
            serde_json::json!({"ticker": "BTCUSDT"})
        );
        assert!(!alert.body.contains(TOKEN));
        assert_eq!(
            alert.body,
            r#"{"passphrase":"[redacted]","ticker":"BTCUSDT"}"#
        );
    }

    #[test]
    fn an_escaped_passphrase_is_still_kept_out_of_the_stored_body() {
        let body = r#"{"passphrase":"\u0073\u0033cret-token-123","ticker":"X"}"#;
        let alert = intake().accept(request("application/json", body)).unwrap();
        assert_eq!(alert.body, r#"{"ticker":"X"}"#);
    }

    #[test]
    fn a_secret_standing_outside_a_string_leaves_valid_json() {
        let mut rules = intake();
        rules.sources = sources(&[("default", "12345678")]);
        let body = r#"{"passphrase":"12345678","qty":12345678}"#;
        let alert = rules.accept(request("application/json", body)).unwrap();
        assert_eq!(alert.body, r#"{"qty":12345678}"#);
    }

    #[test]
    fn a_path_token_authenticates_text_alerts() {
        let mut req = request("text/plain; charset=UTF-8", "BTCUSDT Crossing 67,000.00");
        req.path_token = Some(TOKEN.as_bytes());
        let alert = intake().accept(req).unwrap();
        assert_eq!(alert.kind, AlertKind::Text);
        assert_eq!(alert.body, "BTCUSDT Crossing 67,000.00");
        assert!(alert.json.is_none());
        assert!(read(&alert).is_none());
    }

    #[test]
    fn wrong_missing_and_misplaced_secrets_are_refused() {
        let rules = intake();
        let mut req = request("text/plain", "hello");
        req.path_token = Some(b"wrong-token-0000");
        assert_eq!(rules.accept(req).unwrap_err(), Rejection::InvalidSecret);
        let req = request("text/plain", "hello s3cret-token-123");
        assert_eq!(rules.accept(req).unwrap_err().code(), "missing_secret");
        let req = request("application/json", r#"{"passphrase":"nope-nope-nope"}"#);
        assert_eq!(rules.accept(req).unwrap_err(), Rejection::InvalidSecret);
        let req = request("application/json", r#"{"passphrase":12345678}"#);
        assert_eq!(rules.accept(req).unwrap_err(), Rejection::InvalidSecret);
        let req = request(
            "application/json",
            r#"{"nested":{"passphrase":"s3cret-token-123"}}"#,
        );
        assert_eq!(rules.accept(req).unwrap_err().code(), "missing_secret");
    }

    #[test]
    fn content_types_are_checked() {
        assert_eq!(
            parse_content_type(b"application/json").unwrap(),
            AlertKind::Json
        );
        assert_eq!(
            parse_content_type(b"Application/JSON; charset=utf-8").unwrap(),
            AlertKind::Json
        );
        assert_eq!(
            parse_content_type(b"text/plain;charset=\"UTF-8\"").unwrap(),
            AlertKind::Text
        );
        assert_eq!(
            parse_content_type(b"text/plain; charset=latin1").unwrap_err(),
            Rejection::UnsupportedCharset("latin1".into())
        );
        assert_eq!(
            parse_content_type(b"application/xml").unwrap_err().code(),
            "unsupported_media_type"
        );
        let mut req = request("text/plain", "x");
        req.content_type = None;
        assert_eq!(
            intake().accept(req).unwrap_err(),
            Rejection::MissingContentType
        );
        let mut req = request("text/plain", "x");
        req.content_encoding = Some(b"gzip");
        assert_eq!(
            intake().accept(req).unwrap_err().code(),
            "unsupported_encoding"
        );
    }

    #[test]
    fn bodies_are_checked() {
        let rules = intake();
        let with_token = |ct: &str, body: &str| {
            let mut req = request(ct, body);
            req.path_token = Some(TOKEN.as_bytes());
            rules.accept(req).map(|_| ()).map_err(|e| e.code())
        };
        assert_eq!(with_token("text/plain", ""), Err("empty_body"));
        assert_eq!(with_token("text/plain", " \n"), Err("empty_body"));
        assert_eq!(
            with_token("text/plain", &"x".repeat(1025)),
            Err("payload_too_large")
        );
        assert_eq!(with_token("text/plain", &"x".repeat(1024)), Ok(()));
        assert_eq!(with_token("text/plain", "a\0b"), Err("nul_byte"));
        assert_eq!(with_token("application/json", "{"), Err("malformed_json"));
        assert_eq!(
            with_token("application/json", "{} {}"),
            Err("malformed_json")
        );
        assert_eq!(
            with_token("application/json", r#"{"a":1,"a":2}"#),
            Err("duplicate_key")
        );
        assert_eq!(
            with_token("application/json", r#"{"x":{"a":1,"a":2}}"#),
            Err("duplicate_key")
        );
        assert_eq!(
            with_token("application/json", r#"{"a\u0000":1}"#),
            Err("nul_in_key")
        );
        let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
        assert_eq!(with_token("application/json", &deep), Err("json_too_deep"));
        let ok = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert_eq!(with_token("application/json", &ok), Ok(()));
        let mut req = request("text/plain", "x");
        req.path_token = Some(TOKEN.as_bytes());
        req.body = b"\xff\xfe";
        assert_eq!(rules.accept(req).unwrap_err(), Rejection::InvalidUtf8);
    }

    #[test]
    fn dedup_keys_come_from_the_header_or_the_configured_field() {
        let rules = intake();
        let body = r#"{"passphrase":"s3cret-token-123","order_id":"Long Entry 7"}"#;
        let alert = rules.accept(request("application/json", body)).unwrap();
        assert_eq!(alert.dedup_key.as_deref(), Some("Long Entry 7"));
        let mut req = request("application/json", body);
        req.idempotency_key = Some(b"abc-1");
        assert_eq!(
            rules.accept(req).unwrap().dedup_key.as_deref(),
            Some("abc-1")
        );
        let mut req = request("application/json", body);
        req.idempotency_key = Some(b"");
        assert_eq!(
            rules.accept(req).unwrap_err(),
            Rejection::InvalidIdempotencyKey
        );
        let long = "k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1);
        let mut req = request("application/json", body);
        req.idempotency_key = Some(long.as_bytes());
        assert_eq!(
            rules.accept(req).unwrap_err(),
            Rejection::InvalidIdempotencyKey
        );
    }

    #[test]
    fn a_json_alert_sent_as_text_authenticates_with_its_passphrase_and_keeps_its_text() {
        let body = "{\"passphrase\":\"s3cret-token-123\",\"ticker\":\"ETHUSDT\",\"action\":\"buy\",\"price\":3601.2}\n";
        let alert = intake()
            .accept(request("text/plain; charset=utf-8", body))
            .unwrap();
        assert_eq!(alert.kind, AlertKind::Text);
        assert_eq!(
            alert.body,
            "{\"passphrase\":\"[redacted]\",\"ticker\":\"ETHUSDT\",\"action\":\"buy\",\"price\":3601.2}\n",
            "the text as received, newline included, without the secret"
        );
        assert_eq!(
            read(&alert).unwrap(),
            serde_json::json!({"ticker": "ETHUSDT", "action": "buy", "price": 3601.2})
        );
    }

    #[test]
    fn json_with_text_around_it_is_found_after_braces_that_are_not_json() {
        let body = "Long {RSI 14} fired: {\"passphrase\":\"s3cret-token-123\",\"ticker\":\"BTC\",\"note\":\"}{\"} sent by TV";
        let alert = intake().accept(request("text/plain", body)).unwrap();
        assert_eq!(
            alert.body,
            "Long {RSI 14} fired: {\"passphrase\":\"[redacted]\",\"ticker\":\"BTC\",\"note\":\"}{\"} sent by TV"
        );
        assert_eq!(
            read(&alert).unwrap(),
            serde_json::json!({"ticker": "BTC", "note": "}{"})
        );
        assert_eq!(
            stored_json(AlertKind::Text, &alert.body, "passphrase"),
            read(&alert),
            "a worker reads the same JSON from the stored body"
        );
    }

    #[test]
    fn a_text_that_only_mentions_the_passphrase_authenticates_nothing() {
        let rules = intake();
        for body in [
            "passphrase: s3cret-token-123 ticker BTCUSDT",
            "passphrase=\"s3cret-token-123\"",
            "{passphrase: \"s3cret-token-123\"}",
            "[{\"passphrase\":\"s3cret-token-123\"}]",
            "{\"alert\":{\"passphrase\":\"s3cret-token-123\"}}",
        ] {
            let err = rules.accept(request("text/plain", body)).unwrap_err();
            assert_eq!(err.code(), "missing_secret", "{body}");
        }
        let wrong = "{\"passphrase\":\"guess-guess-guess\"}\n";
        assert_eq!(
            rules.accept(request("text/plain", wrong)).unwrap_err(),
            Rejection::InvalidSecret
        );
    }

    /// The check pyron-api runs accepts and refuses exactly what the parser does, for the
    /// same reason, and keeps the top-level fields asked for as the parser reads them.
    #[test]
    fn the_strict_check_agrees_with_the_strict_parser() {
        let many: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        let cases = [
            r#"{"ticker":"BTCUSDT","price":96412.5,"qty":-3,"big":18446744073709551615}"#
                .to_owned(),
            r#"{"passphrase":"p","order_id":42,"nested":{"order_id":"inner"}}"#.to_owned(),
            r#"{"a":[1,{"b":null,"c":[true,false]}],"s":"esc \"q\" \u00e9"}"#.to_owned(),
            r#"{"a":1,"a":2}"#.to_owned(),
            r#"{"a":1,"\u0061":2}"#.to_owned(),
            r#"{"x":{"a":{},"a":[]}}"#.to_owned(),
            r#"[{"a":1,"a":1}]"#.to_owned(),
            format!("{{{many}\"k39\":0}}"),
            format!("{{{many}\"end\":0}}"),
            "{\"a\\u0000\":1}".to_owned(),
            format!("{}{}", "[".repeat(33), "]".repeat(33)),
            format!("{}{}", "[".repeat(32), "]".repeat(32)),
            r#"{"a":1} {"b":2}"#.to_owned(),
            r#"{"a":1"#.to_owned(),
            r#""just a string""#.to_owned(),
            "12.5".to_owned(),
        ];
        let wanted = |key: &str| key == "passphrase" || key == "order_id" || key == "a";
        for case in &cases {
            let parsed = parse_json(case.as_bytes());
            let checked = check_json(case.as_bytes(), &wanted);
            match (&parsed, &checked) {
                (Ok(value), Ok(top)) => {
                    for key in ["passphrase", "order_id", "a", "ticker"] {
                        let expected = if wanted(key) { value.get(key) } else { None };
                        assert_eq!(top.get(key), expected, "{case}: {key}");
                    }
                }
                (Err(Rejection::MalformedJson(_)), Err(Rejection::MalformedJson(_))) => {}
                (Err(a), Err(b)) => assert_eq!(a, b, "{case}"),
                _ => panic!("{case}: parsed {parsed:?}, checked {checked:?}"),
            }
        }
        assert_eq!(
            check_json(format!("{{{many}\"k7\":0}}").as_bytes(), &wanted).unwrap_err(),
            Rejection::DuplicateKey("k7".into()),
            "a repeat found among many keys"
        );
    }

    #[test]
    fn json_in_a_text_body_is_held_to_the_rules_of_a_json_body() {
        let rules = intake();
        let refused = |body: &str| rules.accept(request("text/plain", body)).unwrap_err();
        assert_eq!(
            refused("{\"passphrase\":\"x\",\"passphrase\":\"s3cret-token-123\"}\n"),
            Rejection::DuplicateKey("passphrase".into())
        );
        let deep = format!("alert {}{}", "{\"a\":".repeat(33), "}".repeat(33));
        assert_eq!(refused(&deep), Rejection::TooDeep);
        assert_eq!(refused("{\"a\\u0000\":1}"), Rejection::NulInKey);
        assert_eq!(refused("{\"a\":\"\0\"}"), Rejection::NulByte);
    }

    #[test]
    fn an_escaped_passphrase_in_a_text_body_is_written_out_again_without_it() {
        let body = "TV: {\"passphrase\":\"\\u0073\\u0033cret-token-123\",\"ticker\":\"X\"} end";
        let alert = intake().accept(request("text/plain", body)).unwrap();
        assert_eq!(alert.body, "TV: {\"ticker\":\"X\"} end");
    }

    #[test]
    fn a_path_token_in_another_field_is_kept_out_of_the_parsed_json_too() {
        let mut req = request(
            "application/json",
            r#"{"ticker":"X","note":"posted to /webhook/s3cret-token-123"}"#,
        );
        req.path_token = Some(TOKEN.as_bytes());
        let alert = intake().accept(req).unwrap();
        assert_eq!(
            read(&alert).unwrap(),
            serde_json::json!({"ticker": "X", "note": "posted to /webhook/[redacted]"})
        );
    }

    #[test]
    fn neither_the_stored_body_nor_what_a_worker_reads_of_it_holds_the_secret() {
        let rules = intake();
        let cases: [(&str, Option<&str>, &str); 6] = [
            (
                "application/json",
                None,
                r#"{"passphrase":"s3cret-token-123","ticker":"X"}"#,
            ),
            (
                "application/json",
                None,
                r#"{"passphrase":"\u0073\u0033cret-token-123","a":1}"#,
            ),
            (
                "application/json",
                Some(TOKEN),
                r#"{"ticker":"X","note":"s3cret-token-123"}"#,
            ),
            (
                "application/json",
                Some(TOKEN),
                r#"{"ticker":"X","price":1.5}"#,
            ),
            (
                "text/plain",
                None,
                "x {\"passphrase\":\"s3cret-token-123\",\"t\":2} y",
            ),
            ("text/plain", Some(TOKEN), "plain s3cret-token-123 text"),
        ];
        for (content_type, path_token, body) in cases {
            let mut req = request(content_type, body);
            req.path_token = path_token.map(str::as_bytes);
            let alert = rules.accept(req).unwrap();
            assert!(alert.json.is_none(), "pyron-api keeps no parsed copy");
            if let Some(read) = read(&alert) {
                assert!(!read.to_string().contains(TOKEN), "{body}: {read}");
                assert!(read.get("passphrase").is_none(), "{body}: {read}");
            }
            assert!(!alert.body.contains(TOKEN), "{body}");
        }
    }
}
