//! One attempt at one delivery: the request each protocol wants, and what its answer
//! means.
//!
//! - `http`: a POST of the body to the URL, with the configured headers and the Standard
//!   Webhooks headers (`sign`).
//! - `telegram`: Bot API `sendMessage` (`{chat_id, text}`) at `<base_url>/bot<token>/`.
//! - `discord`: the webhook URL with `{content}`, mentions disabled so an alert cannot
//!   ping a whole server.
//! - `slack`: the incoming webhook URL with `{text}`.
//!
//! Any 2xx is delivered. A timeout, a connection error, 408, 429 and 5xx are worth
//! another attempt (after `Retry-After`, or Telegram's `retry_after`, when given); any
//! other answer is permanent. Redirects are not followed: a signed order is sent where it
//! was configured to go, or nowhere. Error texts never hold a URL (Telegram's holds the
//! bot token, Discord's and Slack's are secrets themselves).

use std::time::{Duration, Instant};

use reqwest::{
    Client, StatusCode,
    header::{self, HeaderName, HeaderValue},
};
use serde_json::{Value, json};

use super::{render::Rendered, sign::SigningKey};
use crate::route::{Destination, Kind};

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Delivered {
        code: u16,
    },
    /// Worth trying again; `wait` is what the destination asked for.
    Retry {
        code: Option<u16>,
        error: String,
        wait: Option<Duration>,
        /// A 429 says the destination is busy, not down: it does not trip the breaker.
        throttled: bool,
    },
    Permanent {
        code: Option<u16>,
        error: String,
    },
}

/// The Standard Webhooks headers, named once (a name built from a string per request
/// is a copy per request).
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// How much of an error answer's body is kept.
const ANSWER_EXCERPT: usize = 200;

/// The HTTP client every delivery shares: no redirects, no proxy from the environment,
/// and no retries of its own. The lanes retry, on their backoff and within the deadline;
/// reqwest's default retries only HTTP/2 and HTTP/3 refusals, which this HTTP/1.1 client
/// never sees, and its policy copied every request's headers in case it would.
pub fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never().max_retries_per_request(0))
        .no_proxy()
        .user_agent(concat!("pyron/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("the TLS backend is built in")
}

/// Sends one delivery; `(outcome, how long the request took)`.
pub async fn send(
    client: &Client,
    destination: &Destination,
    key: Option<&SigningKey>,
    id: &str,
    rendered: &Rendered,
) -> (Attempt, Duration) {
    let secret = destination
        .secret
        .as_ref()
        .map(|s| s.expose())
        .unwrap_or_default();
    let request = match destination.kind {
        Kind::Http => {
            let Some(url) = destination.url.clone() else {
                let error = "the destination has no url".to_owned();
                return (Attempt::Permanent { code: None, error }, Duration::ZERO);
            };
            let timestamp = chrono::Utc::now().timestamp();
            let mut request = client.post(url).body(rendered.body.clone()).header(
                header::CONTENT_TYPE,
                HeaderValue::from_static(if rendered.json {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                }),
            );
            for (name, value) in &destination.headers {
                request = request.header(name, value);
            }
            request = request
                .header(WEBHOOK_ID, id)
                .header(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
            if let Some(key) = key {
                request = request.header(
                    WEBHOOK_SIGNATURE,
                    key.sign(id, timestamp, rendered.body.as_bytes()),
                );
            }
            request
        }
        Kind::Telegram => client
            .post(format!("{}/bot{secret}/sendMessage", destination.base_url))
            .json(&json!({
                "chat_id": destination.chat_id,
                "text": rendered.body,
                "link_preview_options": {"is_disabled": true},
            })),
        Kind::Discord => client.post(secret).json(&json!({
            "content": rendered.body,
            "allowed_mentions": {"parse": []},
        })),
        Kind::Slack => client.post(secret).json(&json!({ "text": rendered.body })),
    };
    let started = Instant::now();
    let answer = request.timeout(destination.timeout).send().await;
    let attempt = match answer {
        Err(err) => failure(&err, destination.timeout),
        Ok(response) => judge(response).await,
    };
    (attempt, started.elapsed())
}

fn failure(err: &reqwest::Error, timeout: Duration) -> Attempt {
    let error = if err.is_timeout() {
        format!("no answer within {} ms", timeout.as_millis())
    } else if err.is_connect() {
        format!("could not connect: {}", chain(err))
    } else {
        format!("request failed: {}", chain(err))
    };
    Attempt::Retry {
        code: None,
        error,
        wait: None,
        throttled: false,
    }
}

/// The error and its causes, without the URL.
fn chain(err: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = String::new();
    let mut source = err.source();
    while let Some(cause) = source {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.is_empty() {
        text = "connection closed".to_owned();
    }
    text
}

async fn judge(response: reqwest::Response) -> Attempt {
    let status = response.status();
    let code = Some(status.as_u16());
    if status.is_success() {
        return Attempt::Delivered {
            code: status.as_u16(),
        };
    }
    let header_wait = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after);
    let body = response.text().await.unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    // Telegram says it in the body (`parameters.retry_after`, seconds), Discord too
    // (`retry_after`, seconds with a fraction).
    let body_wait = parsed.as_ref().and_then(|v| {
        v.pointer("/parameters/retry_after")
            .or_else(|| v.get("retry_after"))
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
    });
    let excerpt = match parsed
        .as_ref()
        .and_then(|v| v.get("description"))
        .and_then(Value::as_str)
    {
        Some(description) => description.to_owned(),
        None => body.chars().take(ANSWER_EXCERPT).collect::<String>(),
    };
    let error = format!(
        "answered {}{}",
        status.as_u16(),
        if excerpt.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", excerpt.trim())
        }
    );
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        Attempt::Retry {
            code,
            error,
            wait: header_wait.or(body_wait),
            throttled: status == StatusCode::TOO_MANY_REQUESTS,
        }
    } else if status.is_redirection() {
        Attempt::Permanent {
            code,
            error: format!(
                "answered {} (a redirect, not followed): point the destination at the final URL",
                status.as_u16()
            ),
        }
    } else {
        Attempt::Permanent { code, error }
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }
}
