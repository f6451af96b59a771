//! The edge: hostile requests, sent as raw bytes over real TLS through real NGINX and
//! directly to pyron-api serving HTTPS itself. Every case must end in its status and JSON
//! error code (or, where NGINX drops a slow sender, a closed connection), write nothing to
//! Redis or MongoDB, and leave the service answering.

use std::{net::IpAddr, time::Duration};

use crate::helpers::{App, Reply, TOKEN, raw_request};
use bson::doc;

/// Requests come from 127.0.0.1 (allowed) unless a case says otherwise; 127.0.0.2 is a
/// loopback address outside the allowlist and not a trusted proxy.
const ALLOWED: &str = "127.0.0.1";
const OUTSIDER: &str = "127.0.0.2";
const LIMIT: usize = 65536;
const SLOW: Duration = Duration::from_millis(3500);

#[derive(Clone, Copy, PartialEq)]
enum Via {
    Both,
    NginxOnly,
}

/// A status (or `None`: the connection closes) and the JSON error code.
type Expected = (Option<u16>, &'static str);

struct Case {
    name: &'static str,
    via: Via,
    from: &'static str,
    /// Plain TCP to the TLS port instead of a TLS connection.
    plain: bool,
    steps: Vec<(Vec<u8>, Duration)>,
    /// Expected through NGINX, then directly; `None` status means the connection closes.
    nginx: Expected,
    direct: Expected,
}

fn request(
    method: &str,
    target: &str,
    version: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut out =
        format!("{method} {target} {version}\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    bytes
}

/// A POST with Content-Length set from the body.
fn post(
    target: &str,
    content_type: Option<&str>,
    extra: &[(&str, String)],
    body: &[u8],
) -> Vec<(Vec<u8>, Duration)> {
    let mut headers: Vec<(&str, String)> = Vec::new();
    if let Some(ct) = content_type {
        headers.push(("Content-Type", ct.to_owned()));
    }
    headers.extend(extra.iter().cloned());
    headers.push(("Content-Length", body.len().to_string()));
    vec![(
        request("POST", target, "HTTP/1.1", &headers, body),
        Duration::ZERO,
    )]
}

fn chunked(target: &str, version: &str, body: &[u8]) -> Vec<(Vec<u8>, Duration)> {
    let headers = [
        ("Content-Type", "text/plain".to_owned()),
        ("Transfer-Encoding", "chunked".to_owned()),
    ];
    let mut bytes = request("POST", target, version, &headers, b"");
    for chunk in body.chunks(8192) {
        bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        bytes.extend_from_slice(chunk);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    vec![(bytes, Duration::ZERO)]
}

fn case(
    name: &'static str,
    steps: Vec<(Vec<u8>, Duration)>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        via: Via::Both,
        from: ALLOWED,
        plain: false,
        steps,
        nginx: (Some(status), code),
        direct: (Some(status), code),
    }
}

fn cases() -> Vec<Case> {
    let with_token = format!("/webhook/{TOKEN}");
    let json = Some("application/json");
    let text = Some("text/plain");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let one_mb = format!(
        "{{\"passphrase\":\"{TOKEN}\",\"note\":\"{}\"}}",
        "x".repeat(1 << 20)
    );
    let big_header = "h".repeat(9000);

    let mut slow_body = post(&with_token, text, &[], b"0123456789");
    let (head, _) = slow_body.remove(0);
    let split = head.len() - 8;
    let slow_steps = vec![
        (head[..split].to_vec(), SLOW),
        (head[split..].to_vec(), Duration::ZERO),
    ];

    let mut table = vec![
        case(
            "missing secret, JSON",
            post("/webhook", json, &[], br#"{"ticker":"BTCUSDT"}"#),
            401,
            "missing_secret",
        ),
        case(
            "missing secret, text",
            post("/webhook", text, &[], b"BTCUSDT up"),
            401,
            "missing_secret",
        ),
        case(
            "wrong secret in the path",
            post("/webhook/not-the-secret", text, &[], b"BTCUSDT up"),
            401,
            "invalid_secret",
        ),
        case(
            "wrong secret in the JSON field",
            post(
                "/webhook",
                json,
                &[],
                br#"{"passphrase":"not-the-secret","ticker":"X"}"#,
            ),
            401,
            "invalid_secret",
        ),
        case(
            "secret misplaced in the query",
            post(&format!("/webhook?token={TOKEN}"), text, &[], b"x"),
            401,
            "missing_secret",
        ),
        case(
            "secret misplaced in a header",
            post(
                "/webhook",
                text,
                &[("Authorization", format!("Bearer {TOKEN}"))],
                b"x",
            ),
            401,
            "missing_secret",
        ),
        case(
            "secret misplaced in a nested field",
            post(
                "/webhook",
                json,
                &[],
                format!(r#"{{"alert":{{"passphrase":"{TOKEN}"}}}}"#).as_bytes(),
            ),
            401,
            "missing_secret",
        ),
        case(
            "empty body",
            post(&with_token, text, &[], b""),
            400,
            "empty_body",
        ),
        case(
            "body one byte over the limit",
            post(&with_token, text, &[], &vec![b'x'; LIMIT + 1]),
            413,
            "payload_too_large",
        ),
        case(
            "chunked body one byte over the limit",
            chunked(&with_token, "HTTP/1.1", &vec![b'x'; LIMIT + 1]),
            413,
            "payload_too_large",
        ),
        case(
            "invalid UTF-8 in text/plain",
            post(&with_token, text, &[], b"BTC \xff\xfe up"),
            400,
            "invalid_utf8",
        ),
        case(
            "JSON nested 10,000 deep",
            post(&with_token, json, &[], deep.as_bytes()),
            400,
            "json_too_deep",
        ),
        case(
            "a 1 MB string field",
            post("/webhook", json, &[], one_mb.as_bytes()),
            413,
            "payload_too_large",
        ),
        case(
            "duplicate JSON keys",
            post(&with_token, json, &[], br#"{"side":"buy","side":"sell"}"#),
            400,
            "duplicate_key",
        ),
        case(
            "duplicate passphrase keys",
            post(
                "/webhook",
                json,
                &[],
                format!(r#"{{"passphrase":"x","passphrase":"{TOKEN}"}}"#).as_bytes(),
            ),
            400,
            "duplicate_key",
        ),
        case(
            "NUL byte in a text body",
            post(&with_token, text, &[], b"BTC\0USDT"),
            400,
            "nul_byte",
        ),
        case(
            "NUL in a JSON key",
            post(&with_token, json, &[], br#"{"a\u0000b":1}"#),
            400,
            "nul_in_key",
        ),
        case(
            "malformed JSON",
            post(&with_token, json, &[], b"{\"ticker\": "),
            400,
            "malformed_json",
        ),
        case(
            "unsupported content type",
            post(&with_token, Some("application/xml"), &[], b"<a/>"),
            415,
            "unsupported_media_type",
        ),
        case(
            "missing content type",
            post(&with_token, None, &[], b"BTCUSDT up"),
            415,
            "unsupported_media_type",
        ),
        case(
            "charset other than UTF-8",
            post(&with_token, Some("text/plain; charset=latin1"), &[], b"x"),
            415,
            "unsupported_media_type",
        ),
        case(
            "Content-Encoding: gzip",
            post(
                &with_token,
                json,
                &[("Content-Encoding", "gzip".into())],
                b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
            ),
            415,
            "unsupported_encoding",
        ),
        case(
            "invalid Idempotency-Key",
            post(
                &with_token,
                text,
                &[("Idempotency-Key", "k".repeat(300))],
                b"x",
            ),
            400,
            "invalid_idempotency_key",
        ),
        case(
            "wrong method",
            vec![(
                request("GET", &with_token, "HTTP/1.1", &[], b""),
                Duration::ZERO,
            )],
            405,
            "method_not_allowed",
        ),
        case(
            "unknown path",
            post("/hook", text, &[], b"x"),
            404,
            "not_found",
        ),
        case(
            "oversized headers",
            post(&with_token, text, &[("X-Padding", big_header)], b"x"),
            431,
            "headers_too_large",
        ),
        {
            let body = b"BTCUSDT up";
            let headers = [
                ("Content-Type", "text/plain".to_owned()),
                ("Content-Length", body.len().to_string()),
            ];
            let steps = vec![(
                request(
                    "POST",
                    "/webhook/not-the-secret",
                    "HTTP/1.0",
                    &headers,
                    body,
                ),
                Duration::ZERO,
            )];
            case("HTTP/1.0 with a wrong secret", steps, 401, "invalid_secret")
        },
        Case {
            via: Via::NginxOnly,
            ..case(
                "HTTP/1.0 with a chunked body (smuggling)",
                chunked(&with_token, "HTTP/1.0", b"BTCUSDT up"),
                400,
                "bad_request",
            )
        },
        Case {
            // NGINX drops a sender that stalls without answering; pyron-api answers 408.
            nginx: (None, "closed"),
            ..case(
                "a body that arrives too slowly",
                slow_steps,
                408,
                "request_timeout",
            )
        },
        Case {
            plain: true,
            ..case(
                "plain HTTP to the TLS port",
                post(&with_token, text, &[], b"x"),
                400,
                "plain_http_to_tls_port",
            )
        },
        Case {
            from: OUTSIDER,
            ..case(
                "a sender outside the allowlist",
                post(&with_token, text, &[], b"x"),
                403,
                "sender_not_allowed",
            )
        },
        Case {
            from: OUTSIDER,
            ..case(
                "a forged X-Forwarded-For from an untrusted peer",
                post(
                    &with_token,
                    text,
                    &[
                        ("X-Forwarded-For", ALLOWED.into()),
                        ("X-Real-IP", ALLOWED.into()),
                    ],
                    b"x",
                ),
                403,
                "sender_not_allowed",
            )
        },
    ];
    table.sort_by_key(|c| c.name);
    table
}

async fn assert_still_answers(port: u16, cert: &std::path::Path, what: &str) {
    let reply = raw_request(
        ALLOWED.parse().unwrap(),
        port,
        Some(cert),
        &[(
            request("GET", "/healthz", "HTTP/1.1", &[], b""),
            Duration::ZERO,
        )],
    )
    .await;
    assert!(
        matches!(reply, Reply::Answer { status: 200, .. }),
        "{what}: service stopped answering: {reply:?}"
    );
}

fn code_of(reply: &Reply) -> (Option<u16>, String) {
    match reply {
        Reply::Closed => (None, "closed".into()),
        Reply::Answer { status, body } => {
            let code = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("<not JSON: {body:?}>"));
            (Some(*status), code)
        }
    }
}

#[tokio::test]
async fn hostile_requests_are_refused_through_nginx_and_directly_and_write_nothing() {
    let _load = crate::helpers::beside_others().await;
    let limit = LIMIT.to_string();
    let settings = [
        ("PYRON_BODY_LIMIT", limit.as_str()),
        ("PYRON_BODY_TIMEOUT_MS", "2000"),
        ("PYRON_ALLOWED_SENDERS", ALLOWED),
        ("PYRON_TRUSTED_PROXIES", "127.0.0.1"),
    ];
    let app = App::start_with(&settings).await;
    let nginx = app.behind_nginx(&[("BODY_LIMIT", &limit), ("CLIENT_TIMEOUT", "2")]);
    let (cert, key) = (nginx.cert.clone(), nginx.key.clone());
    let cert_path = cert.display().to_string();
    let key_path = key.display().to_string();
    let (tls_api, tls_port) = app.spawn_api(
        "pyron-api-tls",
        &[
            ("USE_SSL", "true"),
            ("PYRON_TLS_CERT", &cert_path),
            ("PYRON_TLS_KEY", &key_path),
        ],
    );

    let mut report = Vec::new();
    let table = cases();
    assert!(table.len() >= 25, "the table has {} cases", table.len());
    for case in &table {
        let targets: Vec<(&str, u16, Expected)> = match case.via {
            Via::Both => vec![
                ("nginx", nginx.https_port, case.nginx),
                ("direct", tls_port, case.direct),
            ],
            Via::NginxOnly => vec![("nginx", nginx.https_port, case.nginx)],
        };
        for (target, port, (status, code)) in targets {
            let what = format!("{} ({target})", case.name);
            let tls = (!case.plain).then_some(cert.as_path());
            let reply =
                raw_request(case.from.parse::<IpAddr>().unwrap(), port, tls, &case.steps).await;
            let got = code_of(&reply);
            assert_eq!(got, (status, code.to_owned()), "{what}: {reply:?}");
            app.assert_nothing_written(&what).await;
            assert_still_answers(port, &cert, &what).await;
            report.push(format!(
                "{what}: {}",
                got.0.map_or("closed".into(), |s| format!("{s} {}", got.1))
            ));
        }
    }
    println!("{}", report.join("\n"));

    // After all that, real alerts still go through both ways.
    for port in [nginx.https_port, tls_port] {
        let steps = post(
            &format!("/webhook/{TOKEN}"),
            Some("text/plain"),
            &[],
            b"BTCUSDT still fine",
        );
        let reply = raw_request(ALLOWED.parse().unwrap(), port, Some(&cert), &steps).await;
        assert_eq!(code_of(&reply).0, Some(202), "{reply:?}");
    }
    let jobs = app.wait_for_docs("jobs", doc! {}, 2).await;
    assert_eq!(jobs.len(), 2);

    // The secret appears in no log line, NGINX's included.
    let logs = format!("{}{}{}", nginx.logs(), app.api_log(), tls_api.log());
    assert!(!logs.contains(TOKEN), "a log holds the secret");
    assert!(nginx.logs().contains("/webhook/[redacted]"));
}

#[tokio::test]
async fn alerts_arrive_over_https_through_nginx_http_redirects_and_floods_are_rate_limited() {
    let _load = crate::helpers::beside_others().await;
    let app = App::start().await;
    let nginx = app.behind_nginx(&[("RATE", "5"), ("BURST", "5")]);
    let root = reqwest::Certificate::from_pem(&std::fs::read(&nginx.cert).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(root)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // A real client posts a sample over HTTPS; the sender recorded is the client's address.
    let body = std::fs::read("samples/strategy-order.json").unwrap();
    let url = format!("https://localhost:{}/webhook", nginx.https_port);
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert!(response.headers().contains_key("strict-transport-security"));
    let ack: serde_json::Value = response.json().await.unwrap();
    let audit = app
        .wait_for_docs("audit", doc! { "_id": ack["id"].as_str().unwrap() }, 1)
        .await;
    assert_eq!(audit[0].get_str("sender").unwrap(), "127.0.0.1");
    let jobs = app
        .wait_for_docs("jobs", doc! { "_id": ack["id"].as_str().unwrap() }, 1)
        .await;
    assert_eq!(jobs[0].get_str("status").unwrap(), "processed");

    // Plain HTTP is sent to HTTPS.
    let http = format!("http://localhost:{}/webhook/{TOKEN}", nginx.http_port);
    let response = client
        .post(&http)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 301);
    let location = response.headers()["location"].to_str().unwrap();
    assert_eq!(
        location,
        format!("https://localhost:{}/webhook/{TOKEN}", nginx.https_port)
    );

    // Past the burst, one address is refused with 429 and Retry-After, in JSON.
    let mut limited = None;
    for _ in 0..30 {
        let response = client
            .post(format!("{url}/not-the-secret"))
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), 401);
    }
    let limited = limited.expect("30 rapid requests were never rate limited");
    assert_eq!(limited.headers()["retry-after"], "1");
    let error: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(error["error"], "rate_limited");
}
