//! What a delivery says: the body of an `http` delivery, the message of a chat one.
//!
//! By default an `http` destination gets the signal as JSON with the delivery's names,
//! and a chat gets a short readable message. A route's (or, else, a destination's)
//! `template` replaces either: a MiniJinja template, which can read the delivery and
//! print, nothing else (no files, no environment, no network), and which runs on a
//! budget of work so that no template can stall a forwarder.
//!
//! The context: `id`, `event_id`, `source`, `route`, `destination`, `received_at`
//! (RFC 3339), `signal` (the normalized fields) and `alert` (the JSON the alert carried,
//! without its passphrase, or its text).

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Value, json};

use super::{Job, RawJson};
use crate::route::{Kind, Routing};

/// The instructions a template may run per rendering.
const FUEL: u64 = 50_000;

/// The longest body or message a template may make.
const MAX_RENDERED: usize = 64 * 1024;

/// Telegram refuses a message over 4,096 characters, Discord content over 2,000; Slack
/// truncates text past 40,000 and advises 4,000.
fn chat_limit(kind: Kind) -> usize {
    match kind {
        Kind::Telegram | Kind::Slack => 4000,
        Kind::Discord => 2000,
        Kind::Http => MAX_RENDERED,
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

/// Whether a template compiles; the error says where it does not.
pub fn check(template: &str) -> Result<(), String> {
    let mut env = environment();
    env.add_template_owned("template", template.to_owned())
        .map_err(|e| e.to_string())
}

/// Every template of the routing, compiled once.
pub struct Renderer {
    env: Environment<'static>,
}

/// A rendered delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub body: String,
    /// For `http`: whether the body is JSON (else it goes as text).
    pub json: bool,
}

impl Renderer {
    pub fn new(routing: &Routing) -> Result<Renderer, String> {
        let mut env = environment();
        let routes = routing
            .routes
            .iter()
            .map(|r| (format!("route:{}", r.name), &r.template));
        let destinations = routing
            .destinations
            .values()
            .map(|d| (format!("destination:{}", d.name), &d.template));
        for (name, template) in routes.chain(destinations) {
            if let Some(template) = template {
                env.add_template_owned(name, template.clone())
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(Renderer { env })
    }

    /// The route's template, else the destination's, if either has one; without a
    /// template in the routing (the common case) nothing is looked up.
    fn template(&self, job: &Job) -> Option<minijinja::Template<'_, '_>> {
        self.env.templates().next()?;
        self.env
            .get_template(&format!("route:{}", job.route))
            .or_else(|_| {
                self.env
                    .get_template(&format!("destination:{}", job.destination))
            })
            .ok()
    }

    /// The body or message of `job` for a destination of `kind`.
    pub fn render(&self, job: &Job, kind: Kind) -> Result<Rendered, String> {
        let template = self.template(job);
        let text = match template {
            Some(template) => {
                let text = template
                    .render(minijinja::value::Serde(context(job)?))
                    .map_err(|e| format!("template: {e}"))?;
                if text.len() > MAX_RENDERED {
                    return Err(format!(
                        "template: the rendering is {} bytes, over the limit of {MAX_RENDERED}",
                        text.len()
                    ));
                }
                text
            }
            None if kind == Kind::Http => {
                return Ok(Rendered {
                    body: default_body(job),
                    json: true,
                });
            }
            None => default_message(job),
        };
        Ok(match kind {
            Kind::Http => Rendered {
                json: serde_json::from_str::<Value>(&text).is_ok(),
                body: text,
            },
            chat => Rendered {
                body: shorten(text.trim(), chat_limit(chat)),
                json: false,
            },
        })
    }
}

/// What a template reads: the names, and the signal and the alert as values.
fn context(job: &Job) -> Result<Value, String> {
    let read = |json: &RawJson| json.value().map_err(|e| format!("template: {e}"));
    Ok(json!({
        "id": job.id,
        "event_id": job.event,
        "source": job.source,
        "route": job.route,
        "destination": job.destination,
        "received_at": received_at(job),
        "signal": read(&job.signal)?,
        "alert": read(&job.alert)?,
    }))
}

fn received_at(job: &Job) -> String {
    chrono::DateTime::from_timestamp_millis(job.received_at)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The JSON an `http` destination gets without a template: the signal goes in as the
/// text the worker wrote.
fn default_body(job: &Job) -> String {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        id: &'a str,
        event_id: &'a str,
        source: &'a str,
        route: &'a str,
        received_at: String,
        signal: &'a RawJson,
    }
    serde_json::to_string(&Body {
        id: &job.id,
        event_id: &job.event,
        source: &job.source,
        route: &job.route,
        received_at: received_at(job),
        signal: &job.signal,
    })
    .expect("JSON values always serialize")
}

/// `BUY BTCUSDT @ 96412.5`, then quantity, interval, strategy and position, then the
/// order comment; a text alert is its text.
fn default_message(job: &Job) -> String {
    let s = job.signal.value().unwrap_or_default();
    let field = |name: &str| -> Option<String> {
        match s.get(name)? {
            Value::String(v) if !v.is_empty() => Some(v.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let headline: Vec<String> = [
        field("action").map(|a| a.to_uppercase()),
        field("ticker"),
        field("price").map(|p| format!("@ {p}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut lines = Vec::new();
    if !headline.is_empty() {
        lines.push(headline.join(" "));
    }
    let details: Vec<String> = [
        field("quantity").map(|q| format!("qty {q}")),
        field("interval"),
        field("strategy").map(|st| format!("strategy {st}")),
        field("market_position").map(|p| format!("position {p}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !details.is_empty() {
        lines.push(details.join(" · "));
    }
    if let Some(comment) = field("comment") {
        lines.push(comment);
    }
    if let Some(text) = field("text") {
        lines.push(text);
    }
    if lines.is_empty() {
        lines.push(match job.alert.value() {
            Ok(Value::String(text)) => text,
            _ => job.alert.get().to_owned(),
        });
    }
    lines.push(format!("{} · {}", job.source, job.route));
    lines.join("\n")
}

/// At most `limit` characters, cut with an ellipsis.
fn shorten(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((_, _)) => {
            let cut = text
                .char_indices()
                .nth(limit - 1)
                .map(|(i, _)| i)
                .unwrap_or(0);
            format!("{}…", &text[..cut])
        }
        None => text.to_owned(),
    }
}

/// The first TradingView placeholder left unexpanded in what the alert carried
/// (`{{close}}`), with where it stands: such a value was never a value, and is not sent
/// on as one. Every delivery is checked and few hold one: JSON without `{{` in its text
/// (nor an escape that could write one) is not read into a value.
pub fn placeholder(job: &Job) -> Option<String> {
    /// A step from a value to one inside it.
    enum Step<'a> {
        Key(&'a str),
        Index(usize),
    }
    /// The placeholder, and the steps to it from the innermost out: the path is written
    /// only once one is found (every delivery is checked, few hold one).
    fn find(value: &Value) -> Option<(&str, Vec<Step<'_>>)> {
        match value {
            Value::String(s) => {
                let start = s.find("{{")?;
                let end = s[start..].find("}}")? + start + 2;
                let inner = s[start + 2..end - 2].trim();
                let plausible = !inner.is_empty()
                    && inner.len() <= 64
                    && inner
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._".contains(&b));
                plausible.then(|| (&s[start..end], Vec::new()))
            }
            Value::Object(map) => map.iter().find_map(|(k, v)| {
                let (found, mut steps) = find(v)?;
                steps.push(Step::Key(k));
                Some((found, steps))
            }),
            Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
                let (found, mut steps) = find(v)?;
                steps.push(Step::Index(i));
                Some((found, steps))
            }),
            _ => None,
        }
    }
    fn read(json: &RawJson) -> Option<Value> {
        let text = json.get();
        (text.contains("{{") || text.contains("\\u"))
            .then(|| json.value().ok())
            .flatten()
    }
    let signal = read(&job.signal);
    let alert;
    let (found, steps, mut path) = match signal.as_ref().and_then(find) {
        Some((found, steps)) => (found, steps, String::new()),
        None => {
            alert = read(&job.alert)?;
            let (found, steps) = find(&alert)?;
            (found, steps, "alert".to_owned())
        }
    };
    for step in steps.iter().rev() {
        match step {
            Step::Key(key) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Step::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    Some(format!("{found} in {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{RawDestination, RawRoute};
    use std::collections::BTreeMap;

    fn job(signal: Value) -> Job {
        Job {
            id: "0193a8d2-7c1e-7000-8000-000000000001:btc:chat".into(),
            event: "0193a8d2-7c1e-7000-8000-000000000001".into(),
            route: "btc".into(),
            destination: "chat".into(),
            source: "tradingview".into(),
            ticker: signal
                .get("ticker")
                .and_then(Value::as_str)
                .map(str::to_owned),
            received_at: 1_764_400_000_000,
            deadline: Some(1_764_400_060_000),
            signal: RawJson::from(&signal),
            alert: signal.into(),
            replay: None,
        }
    }

    fn routing(route_template: Option<&str>) -> Routing {
        let mut route = RawRoute::example("btc", &["chat"]);
        route.template = route_template.map(str::to_owned);
        Routing::from_raw(
            &[route],
            &BTreeMap::from([("chat".to_owned(), RawDestination::example(Kind::Telegram))]),
            &["default".to_owned()],
            None,
        )
        .unwrap()
    }

    #[test]
    fn a_chat_message_reads_as_a_sentence_by_default() {
        let renderer = Renderer::new(&routing(None)).unwrap();
        let signal = json!({"ticker": "BTCUSDT", "action": "buy", "price": 96412.5,
            "quantity": 0.5, "interval": "1h", "strategy": "Breakout"});
        let message = renderer.render(&job(signal), Kind::Telegram).unwrap();
        assert_eq!(
            message.body,
            "BUY BTCUSDT @ 96412.5\nqty 0.5 · 1h · strategy Breakout\ntradingview · btc"
        );
    }

    #[test]
    fn a_template_sees_the_signal_and_the_alert() {
        let renderer = Renderer::new(&routing(Some(
            r#"{"pair": {{ signal.ticker | tojson }}, "side": "{{ signal.action | upper }}", "note": {{ alert.note | tojson }}}"#,
        )))
        .unwrap();
        let mut job = job(json!({"ticker": "ETH\"USDT", "action": "sell"}));
        job.alert = json!({"note": "from \"tv\""}).into();
        let rendered = renderer.render(&job, Kind::Http).unwrap();
        assert!(rendered.json, "{}", rendered.body);
        let value: Value = serde_json::from_str(&rendered.body).unwrap();
        assert_eq!(
            value,
            json!({"pair": "ETH\"USDT", "side": "SELL", "note": "from \"tv\""})
        );
    }

    #[test]
    fn an_http_destination_gets_the_signal_with_the_names_by_default() {
        let renderer = Renderer::new(&routing(None)).unwrap();
        let job = job(
            json!({"ticker": "BTCUSDT", "action": "buy", "price": 96412.5,
            "extra": {"note": "a \"quoted\" word"}}),
        );
        let rendered = renderer.render(&job, Kind::Http).unwrap();
        assert!(rendered.json);
        assert_eq!(
            rendered.body,
            concat!(
                r#"{"id":"0193a8d2-7c1e-7000-8000-000000000001:btc:chat","#,
                r#""event_id":"0193a8d2-7c1e-7000-8000-000000000001","source":"tradingview","#,
                r#""route":"btc","received_at":"2025-11-29T07:06:40.000Z","#,
                r#""signal":{"ticker":"BTCUSDT","action":"buy","price":96412.5,"#,
                r#""extra":{"note":"a \"quoted\" word"}}}"#
            )
        );
    }

    #[test]
    fn a_runaway_template_is_stopped() {
        let renderer = Renderer::new(&routing(Some(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        )))
        .unwrap();
        let err = renderer.render(&job(json!({})), Kind::Http).unwrap_err();
        assert!(err.starts_with("template:"), "{err}");
    }

    #[test]
    fn unexpanded_placeholders_are_found_where_they_stand() {
        let found = placeholder(&job(
            json!({"ticker": "BTCUSDT", "extra": {"plot": "{{plot_0}}"}}),
        ));
        assert_eq!(found.as_deref(), Some("{{plot_0}} in extra.plot"));
        assert_eq!(
            placeholder(&job(json!({"text": "close={{close}} now"}))).as_deref(),
            Some("{{close}} in text")
        );
        assert_eq!(
            placeholder(&job(json!({"ticker": "BTCUSDT", "comment": "a {{ b c }}"}))),
            None
        );
        assert_eq!(
            placeholder(&job(json!({"levels": [1, {"tp": "{{plot_1}}"}]}))).as_deref(),
            Some("{{plot_1}} in levels[1].tp")
        );
        // Found in what the alert carried when the signal has none.
        let mut text = job(json!({"ticker": "BTCUSDT"}));
        text.alert = json!("BTCUSDT {{close}}").into();
        assert_eq!(placeholder(&text).as_deref(), Some("{{close}} in alert"));
        text.alert = json!({"notes": ["ok", "{{volume}}"]}).into();
        assert_eq!(
            placeholder(&text).as_deref(),
            Some("{{volume}} in alert.notes[1]")
        );
        // Braces written as JSON escapes are braces all the same.
        text.alert = serde_json::from_str(r#"{"note":"\u007b\u007bclose}}"}"#).unwrap();
        assert_eq!(
            placeholder(&text).as_deref(),
            Some("{{close}} in alert.note")
        );
        text.alert = json!({"note": "{ {close} }"}).into();
        assert_eq!(placeholder(&text), None);
    }

    #[test]
    fn long_chat_messages_are_cut_to_the_platform_limit() {
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abcd", 4), "abcd");
        assert_eq!(shorten("ééééé", 3).chars().count(), 3);
    }
}
