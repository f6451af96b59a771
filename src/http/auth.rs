//! Who may see the dashboard, its JSON API, the metrics and the dead letters: whoever
//! holds the admin secret (`PYRON_ADMIN_TOKEN`), either as `Authorization: Bearer` (for
//! scripts and Prometheus) or through a login that sets a session cookie (for a browser).
//!
//! The session cookie is `<expiry>.<HMAC-SHA256(expiry)>`, keyed by a hash of the admin
//! secret: nothing is stored server-side, every pyron-api accepts it, and changing the
//! secret ends every session. It is `HttpOnly`, `Secure` and `SameSite=Strict`; a state-
//! changing request with a cookie must also come from this origin.

use axum::http::{HeaderMap, Method, StatusCode, header};
use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::domain::Secret;

pub const COOKIE: &str = "pyron_session";
const SESSION_SECS: i64 = 12 * 60 * 60;

/// How a request proved it may see the admin side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    Bearer,
    Session,
}

fn key(token: &Secret) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"pyron-session-v1\0");
    hasher.update(token.expose().as_bytes());
    hasher.finalize().into()
}

fn mac(token: &Secret, expiry: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key(token)).expect("any key length");
    mac.update(expiry.to_string().as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `Set-Cookie` value of a fresh session.
pub fn session_cookie(token: &Secret) -> String {
    let expiry = Utc::now().timestamp() + SESSION_SECS;
    format!(
        "{COOKIE}={expiry}.{}; Path=/; Max-Age={SESSION_SECS}; HttpOnly; Secure; SameSite=Strict",
        mac(token, expiry)
    )
}

/// The `Set-Cookie` value that ends a session.
pub fn expired_cookie() -> String {
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

fn valid_session(token: &Secret, value: &str) -> bool {
    let Some((expiry, given)) = value.split_once('.') else {
        return false;
    };
    let Ok(expiry) = expiry.parse::<i64>() else {
        return false;
    };
    let expected = mac(token, expiry);
    expiry > Utc::now().timestamp() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Checks the request's credentials against the admin secret.
pub fn check(
    token: Option<&Secret>,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Admin, ApiError> {
    let unauthorized =
        |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message.to_owned());
    let Some(token) = token else {
        return Err(unauthorized(
            "the admin side is off: set PYRON_ADMIN_TOKEN to use it",
        ));
    };
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let given = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("send Authorization: Bearer <admin token>"))?;
        return if token.matches(given.trim().as_bytes()) {
            Ok(Admin::Bearer)
        } else {
            Err(unauthorized("wrong admin token"))
        };
    }
    match cookie(headers, COOKIE) {
        Some(value) if valid_session(token, value) => {
            if method != Method::GET && method != Method::HEAD && !same_origin(headers) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "cross_origin",
                    "a request that changes something must come from the dashboard's own origin",
                ));
            }
            Ok(Admin::Session)
        }
        Some(_) => Err(unauthorized("the session has ended; log in again")),
        None => Err(unauthorized(
            "log in at /login, or send Authorization: Bearer <admin token>",
        )),
    }
}

/// True when `Origin` names the host the request was sent to. Host names only: a proxy
/// in front (NGINX's `Host $host`) drops the port.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match (host, origin) {
        (Some(host), Some(origin)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| hostname(authority).eq_ignore_ascii_case(hostname(host))),
        _ => false,
    }
}

/// `host` of `host:port` (and of `[v6]:port`).
fn hostname(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_session_cookie_opens_the_admin_side_until_the_secret_changes() {
        let token = Secret::new("admin-secret-0123456789".into());
        let set = session_cookie(&token);
        assert!(
            set.contains("HttpOnly") && set.contains("Secure") && set.contains("SameSite=Strict")
        );
        let value = set.split(';').next().unwrap();
        let get = headers(&[("cookie", value)]);
        assert_eq!(
            check(Some(&token), &Method::GET, &get).unwrap(),
            Admin::Session
        );
        let other = Secret::new("another-secret-0123456789".into());
        assert!(check(Some(&other), &Method::GET, &get).is_err());
        let forged = headers(&[("cookie", "pyron_session=99999999999.00")]);
        assert!(check(Some(&token), &Method::GET, &forged).is_err());
        let expired = format!("pyron_session=1.{}", mac(&token, 1));
        assert!(
            check(
                Some(&token),
                &Method::GET,
                &headers(&[("cookie", &expired)])
            )
            .is_err()
        );
    }

    #[test]
    fn a_post_with_a_cookie_must_come_from_the_same_origin() {
        let token = Secret::new("admin-secret-0123456789".into());
        let value = session_cookie(&token).split(';').next().unwrap().to_owned();
        let same = headers(&[
            ("cookie", &value),
            ("host", "alerts.example.com"),
            ("origin", "https://alerts.example.com"),
        ]);
        assert!(check(Some(&token), &Method::POST, &same).is_ok());
        let other = headers(&[
            ("cookie", &value),
            ("host", "alerts.example.com"),
            ("origin", "https://evil.example"),
        ]);
        assert_eq!(
            check(Some(&token), &Method::POST, &other)
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
        let proxied = headers(&[
            ("cookie", &value),
            ("host", "localhost"),
            ("origin", "https://localhost:8443"),
        ]);
        assert!(check(Some(&token), &Method::POST, &proxied).is_ok());
        let port_trick = headers(&[
            ("cookie", &value),
            ("host", "alerts.example.com"),
            ("origin", "https://alerts.example.com.evil:443"),
        ]);
        assert!(check(Some(&token), &Method::POST, &port_trick).is_err());
        let none = headers(&[("cookie", &value), ("host", "alerts.example.com")]);
        assert!(check(Some(&token), &Method::POST, &none).is_err());
    }

    #[test]
    fn bearer_tokens_are_checked_and_the_side_is_off_without_a_secret() {
        let token = Secret::new("admin-secret-0123456789".into());
        let good = headers(&[("authorization", "Bearer admin-secret-0123456789")]);
        assert_eq!(
            check(Some(&token), &Method::POST, &good).unwrap(),
            Admin::Bearer
        );
        let bad = headers(&[("authorization", "Bearer nope")]);
        assert!(check(Some(&token), &Method::GET, &bad).is_err());
        assert!(check(None, &Method::GET, &good).is_err());
    }
}
