//! Routes: which processed alerts go where, and how fast they must get there.
//!
//! A route takes the alerts of some sources whose signal matches its filter (ticker
//! patterns, actions, strategies, intervals; an empty list matches anything) and delivers
//! each to its destinations. Each pair (route, destination) is one delivery, named
//! `<event id>:<route>:<destination>`, with a deadline: the alert's receipt time plus the
//! route's maximum signal age. The worker matches (`Routing::matches`) and queues the
//! deliveries; pyron-forwarder sends them (`forward`).
//!
//! A destination is one of four protocols: `http` (a POST signed per the Standard
//! Webhooks specification), `telegram` (Bot API `sendMessage`), `discord` and `slack`
//! (incoming webhooks). Its secret (signing key, bot token, webhook URL) is read from a
//! file or a systemd credential by pyron-forwarder alone.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{domain::Secret, signal::Signal};

/// Default maximum age of a signal delivered to an `http` destination: an order sent a
/// minute late is already a different trade.
pub const HTTP_MAX_AGE: Duration = Duration::from_secs(60);
/// Default maximum age for a chat destination: a message read ten minutes late still
/// informs, and chats rate-limit.
pub const CHAT_MAX_AGE: Duration = Duration::from_secs(600);

/// The protocol a destination speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Http,
    Telegram,
    Discord,
    Slack,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Telegram => "telegram",
            Kind::Discord => "discord",
            Kind::Slack => "slack",
        }
    }

    fn default_max_age(self) -> Duration {
        match self {
            Kind::Http => HTTP_MAX_AGE,
            _ => CHAT_MAX_AGE,
        }
    }

    /// Telegram allows about one message a second to a chat, a Slack incoming webhook one
    /// a second; Discord five per two seconds to a webhook but thirty a minute to a
    /// channel, the stricter.
    fn default_rate(self) -> Option<f64> {
        match self {
            Kind::Http => None,
            Kind::Telegram | Kind::Slack => Some(1.0),
            Kind::Discord => Some(0.5),
        }
    }
}

/// `[[sources]]` as written in the TOML file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub name: String,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub allowed_senders: Option<Vec<String>>,
    #[serde(default)]
    pub idempotency_field: Option<String>,
    #[serde(default)]
    pub client_certificate: Option<String>,
    /// The maximum age of this source's deliveries, for routes that set none.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
}

/// `[destinations.<name>]` as written in the TOML file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    pub kind: Kind,
    /// `http`: the endpoint. Discord's and Slack's URLs are secrets: `secret_file`.
    #[serde(default)]
    pub url: Option<String>,
    /// `telegram`: the chat to post to.
    #[serde(default)]
    pub chat_id: Option<String>,
    /// `telegram`: the Bot API's address.
    #[serde(default)]
    pub base_url: Option<String>,
    /// `http`: the signing secret (`whsec_...`); `telegram`: the bot token; `discord`,
    /// `slack`: the webhook URL. Else the systemd credential `destination-<name>`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Most messages a second; `0` for no limit.
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default)]
    pub breaker_failures: Option<u32>,
    /// How long an open breaker waits before it lets one probe through.
    #[serde(default)]
    pub breaker_cooldown_ms: Option<u64>,
    #[serde(default)]
    pub template: Option<String>,
}

/// `[[routes]]` as written in the TOML file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub tickers: Vec<String>,
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub strategies: Vec<String>,
    #[serde(default)]
    pub intervals: Vec<String>,
    pub destinations: Vec<String>,
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    #[serde(default)]
    pub template: Option<String>,
}

/// A destination, validated. `secret` is read only by pyron-forwarder.
#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    pub kind: Kind,
    /// An `http` destination's URL, parsed.
    pub url: Option<reqwest::Url>,
    pub chat_id: Option<String>,
    pub base_url: String,
    pub secret: Option<Secret>,
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Least time between two sends; `None` for no limit.
    pub spacing: Option<Duration>,
    pub max_attempts: u32,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub template: Option<String>,
}

/// A route, validated.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub sources: Vec<String>,
    pub tickers: Vec<String>,
    pub actions: Vec<String>,
    pub strategies: Vec<String>,
    pub intervals: Vec<String>,
    pub destinations: Vec<String>,
    pub max_age: Option<Duration>,
    pub template: Option<String>,
}

/// Every route and destination.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    pub routes: Vec<Route>,
    pub destinations: BTreeMap<String, Destination>,
    /// Sources' own maximum ages (`[[sources]] max_age_secs`), for routes without one.
    pub source_max_age: BTreeMap<String, Duration>,
}

/// One delivery a processed alert owes.
#[derive(Debug, Clone)]
pub struct Match<'a> {
    pub route: &'a Route,
    pub destination: &'a Destination,
    pub max_age: Duration,
}

/// Reads a destination's secret: from the credential of this name, or the file given.
pub type SecretReader<'a> =
    &'a dyn Fn(&str, Option<&std::path::Path>) -> Result<Option<Secret>, Invalid>;

/// A routing problem, with the key that caused it (`routes[0].destinations`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Names go into delivery ids (`<event>:<route>:<destination>`), metric labels and
/// credential names: short, lower case, no separators of those.
pub fn check_name(key: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{name:?} is not a name: use 1 to 64 of a-z, 0-9, - and _"),
        ))
    }
}

impl Routing {
    /// Validates the routes and destinations. `sources` are the source names known;
    /// `secret` reads a destination's secret (pyron-forwarder), or is `None`.
    pub fn from_raw(
        routes: &[RawRoute],
        destinations: &BTreeMap<String, RawDestination>,
        sources: &[String],
        secret: Option<SecretReader<'_>>,
    ) -> Result<Routing, Invalid> {
        let mut built = BTreeMap::new();
        for (name, raw) in destinations {
            let key = format!("destinations.{name}");
            check_name(&key, name)?;
            built.insert(name.clone(), destination(&key, name, raw, secret)?);
        }
        let mut names = std::collections::HashSet::new();
        let mut checked = Vec::with_capacity(routes.len());
        for (i, raw) in routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            check_name(&format!("{key}.name"), &raw.name)?;
            if !names.insert(raw.name.clone()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?} is used by two routes", raw.name),
                ));
            }
            for source in &raw.sources {
                if !sources.contains(source) {
                    return Err(invalid(
                        format!("{key}.sources"),
                        format!("no source is named {source:?}"),
                    ));
                }
            }
            if raw.destinations.is_empty() {
                return Err(invalid(
                    format!("{key}.destinations"),
                    "must name at least one destination",
                ));
            }
            for destination in &raw.destinations {
                if !built.contains_key(destination) {
                    return Err(invalid(
                        format!("{key}.destinations"),
                        format!(
                            "no destination is named {destination:?} (define [destinations.{destination}])"
                        ),
                    ));
                }
            }
            if raw.max_age_secs == Some(0) {
                return Err(invalid(format!("{key}.max_age_secs"), "must be at least 1"));
            }
            if let Some(template) = &raw.template {
                crate::forward::render::check(template)
                    .map_err(|e| invalid(format!("{key}.template"), e))?;
            }
            checked.push(Route {
                name: raw.name.clone(),
                sources: raw.sources.clone(),
                tickers: raw.tickers.iter().map(|t| t.to_ascii_uppercase()).collect(),
                actions: raw.actions.iter().map(|a| a.to_ascii_lowercase()).collect(),
                strategies: raw.strategies.clone(),
                intervals: raw.intervals.clone(),
                destinations: raw.destinations.clone(),
                max_age: raw.max_age_secs.map(Duration::from_secs),
                template: raw.template.clone(),
            });
        }
        Ok(Routing {
            routes: checked,
            destinations: built,
            source_max_age: BTreeMap::new(),
        })
    }

    /// The deliveries an alert of `source` with this signal owes, route by route.
    pub fn matches<'a>(&'a self, source: &str, signal: &Signal) -> Vec<Match<'a>> {
        let mut found = Vec::new();
        for route in &self.routes {
            if !route.accepts(source, signal) {
                continue;
            }
            for name in &route.destinations {
                let destination = &self.destinations[name];
                // The route's own, else the source's, else the destination kind's.
                let max_age = route
                    .max_age
                    .or_else(|| self.source_max_age.get(source).copied())
                    .unwrap_or(destination.kind.default_max_age());
                found.push(Match {
                    route,
                    destination,
                    max_age,
                });
            }
        }
        found
    }
}

impl Route {
    fn accepts(&self, source: &str, signal: &Signal) -> bool {
        let one_of = |list: &[String], value: Option<&str>, same: fn(&str, &str) -> bool| {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|item| same(item, v)))
        };
        (self.sources.is_empty() || self.sources.iter().any(|s| s == source))
            && one_of(
                &self.tickers,
                signal.ticker.as_deref(),
                |pattern, ticker| glob(pattern.as_bytes(), ticker.to_ascii_uppercase().as_bytes()),
            )
            && one_of(&self.actions, signal.action.as_deref(), |a, b| {
                a.eq_ignore_ascii_case(b)
            })
            && one_of(&self.strategies, signal.strategy.as_deref(), |a, b| a == b)
            && one_of(&self.intervals, signal.interval.as_deref(), |a, b| a == b)
    }
}

/// `*` matches any run of characters, `?` any one; everything else itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

fn destination(
    key: &str,
    name: &str,
    raw: &RawDestination,
    secret: Option<SecretReader<'_>>,
) -> Result<Destination, Invalid> {
    // Parsed here, once: a URL that does not parse is refused at start, not found out
    // at every attempt. The error never repeats the URL (Discord's and Slack's are
    // secrets).
    let url = |what: &str, url: &str| -> Result<reqwest::Url, Invalid> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(invalid(
                format!("{key}.{what}"),
                "must be an http:// or https:// URL",
            ));
        }
        reqwest::Url::parse(url)
            .map_err(|e| invalid(format!("{key}.{what}"), format!("is not a valid URL: {e}")))
    };
    let mut endpoint = None;
    match raw.kind {
        Kind::Http => {
            let Some(given) = &raw.url else {
                return Err(invalid(
                    format!("{key}.url"),
                    "an http destination needs a url",
                ));
            };
            endpoint = Some(url("url", given)?);
        }
        Kind::Telegram => {
            if raw.chat_id.as_deref().is_none_or(str::is_empty) {
                return Err(invalid(
                    format!("{key}.chat_id"),
                    "a telegram destination needs a chat_id",
                ));
            }
        }
        Kind::Discord | Kind::Slack => {
            if raw.url.is_some() {
                return Err(invalid(
                    format!("{key}.url"),
                    "a discord or slack webhook URL is a secret: put it in secret_file or the credential",
                ));
            }
        }
    }
    if raw.kind != Kind::Telegram && (raw.chat_id.is_some() || raw.base_url.is_some()) {
        return Err(invalid(
            key,
            "chat_id and base_url are for telegram destinations",
        ));
    }
    if raw.kind != Kind::Http && !raw.headers.is_empty() {
        return Err(invalid(
            format!("{key}.headers"),
            "headers are for http destinations",
        ));
    }
    for header in raw.headers.keys() {
        let lower = header.to_ascii_lowercase();
        if lower.starts_with("webhook-") || lower == "content-type" || lower == "content-length" {
            return Err(invalid(
                format!("{key}.headers"),
                format!("{header} is set by Pyron"),
            ));
        }
        if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(invalid(
                format!("{key}.headers"),
                format!("{header:?} is not a header name"),
            ));
        }
    }
    let base_url = raw
        .base_url
        .clone()
        .unwrap_or_else(|| "https://api.telegram.org".into());
    url("base_url", &base_url)?;
    let timeout_ms = raw.timeout_ms.unwrap_or(5_000);
    if !(100..=60_000).contains(&timeout_ms) {
        return Err(invalid(
            format!("{key}.timeout_ms"),
            "must be between 100 and 60000",
        ));
    }
    let rate = raw
        .rate_per_second
        .or(raw.kind.default_rate())
        .filter(|r| *r != 0.0);
    if rate.is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 10_000.0)) {
        return Err(invalid(
            format!("{key}.rate_per_second"),
            "must be between 0 (no limit) and 10000",
        ));
    }
    let max_attempts = raw.max_attempts.unwrap_or(10);
    if !(1..=100).contains(&max_attempts) {
        return Err(invalid(
            format!("{key}.max_attempts"),
            "must be between 1 and 100",
        ));
    }
    let breaker_failures = raw.breaker_failures.unwrap_or(5);
    if breaker_failures == 0 {
        return Err(invalid(
            format!("{key}.breaker_failures"),
            "must be at least 1",
        ));
    }
    let breaker_cooldown = raw.breaker_cooldown_ms.unwrap_or(10_000);
    if breaker_cooldown < 100 {
        return Err(invalid(
            format!("{key}.breaker_cooldown_ms"),
            "must be at least 100",
        ));
    }
    if let Some(template) = &raw.template {
        crate::forward::render::check(template)
            .map_err(|e| invalid(format!("{key}.template"), e))?;
    }
    let secret = match secret {
        None => None,
        Some(read) => {
            let value = read(&format!("destination-{name}"), raw.secret_file.as_deref())
                .map_err(|e| invalid(format!("{key}.secret_file"), e.message))?;
            let Some(value) = value else {
                return Err(invalid(
                    format!("{key}.secret_file"),
                    format!(
                        "not set, and no credential destination-{name}: a {} destination needs its {}",
                        raw.kind.as_str(),
                        match raw.kind {
                            Kind::Http => "signing secret",
                            Kind::Telegram => "bot token",
                            Kind::Discord | Kind::Slack => "webhook URL",
                        }
                    ),
                ));
            };
            match raw.kind {
                Kind::Http => {
                    crate::forward::sign::SigningKey::parse(value.expose())
                        .map_err(|e| invalid(format!("{key}.secret_file"), e))?;
                }
                Kind::Discord | Kind::Slack => {
                    url("secret_file", value.expose())?;
                }
                Kind::Telegram => {}
            }
            Some(value)
        }
    };
    Ok(Destination {
        name: name.to_owned(),
        kind: raw.kind,
        url: endpoint,
        chat_id: raw.chat_id.clone(),
        base_url: base_url.trim_end_matches('/').to_owned(),
        secret,
        headers: raw.headers.clone(),
        timeout: Duration::from_millis(timeout_ms),
        spacing: rate.map(|r| Duration::from_secs_f64(1.0 / r)),
        max_attempts,
        breaker_failures,
        breaker_cooldown: Duration::from_millis(breaker_cooldown),
        template: raw.template.clone(),
    })
}

#[cfg(test)]
impl RawDestination {
    /// A destination of this kind with what it needs and nothing else, for tests.
    pub(crate) fn example(kind: Kind) -> RawDestination {
        RawDestination {
            kind,
            url: (kind == Kind::Http).then(|| "https://bridge.example/hook".into()),
            chat_id: (kind == Kind::Telegram).then(|| "-1001".into()),
            base_url: None,
            secret_file: None,
            headers: BTreeMap::new(),
            timeout_ms: None,
            rate_per_second: None,
            max_attempts: None,
            breaker_failures: None,
            breaker_cooldown_ms: None,
            template: None,
        }
    }
}

#[cfg(test)]
impl RawRoute {
    /// A route of every alert to these destinations, for tests.
    pub(crate) fn example(name: &str, destinations: &[&str]) -> RawRoute {
        RawRoute {
            name: name.into(),
            sources: vec![],
            tickers: vec![],
            actions: vec![],
            strategies: vec![],
            intervals: vec![],
            destinations: destinations.iter().map(|d| (*d).into()).collect(),
            max_age_secs: None,
            template: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_destination(kind: Kind) -> RawDestination {
        RawDestination::example(kind)
    }

    fn route(name: &str, destinations: &[&str]) -> RawRoute {
        RawRoute::example(name, destinations)
    }

    fn signal(ticker: &str, action: &str) -> Signal {
        Signal {
            ticker: Some(ticker.into()),
            action: Some(action.into()),
            ..Signal::default()
        }
    }

    #[test]
    fn a_route_matches_by_source_ticker_pattern_and_action() {
        let destinations = BTreeMap::from([
            ("bridge".to_owned(), raw_destination(Kind::Http)),
            ("chat".to_owned(), raw_destination(Kind::Telegram)),
        ]);
        let mut btc = route("btc", &["bridge", "chat"]);
        btc.sources = vec!["tradingview".into()];
        btc.tickers = vec!["btc*".into(), "ETH?USDT".into()];
        btc.actions = vec!["BUY".into(), "sell".into()];
        let everything = route("all", &["chat"]);
        let sources = vec!["default".to_owned(), "tradingview".to_owned()];
        let routing = Routing::from_raw(&[btc, everything], &destinations, &sources, None).unwrap();

        let names = |m: Vec<Match<'_>>| {
            m.iter()
                .map(|m| {
                    format!(
                        "{}:{}:{}",
                        m.route.name,
                        m.destination.name,
                        m.max_age.as_secs()
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(routing.matches("tradingview", &signal("BTCUSDT", "buy"))),
            ["btc:bridge:60", "btc:chat:600", "all:chat:600"]
        );
        assert_eq!(
            names(routing.matches("tradingview", &signal("ETH2USDT", "Sell"))).len(),
            3
        );
        assert_eq!(
            names(routing.matches("default", &signal("BTCUSDT", "buy"))),
            ["all:chat:600"]
        );
        assert_eq!(
            names(routing.matches("tradingview", &signal("BTCUSDT", "close"))),
            ["all:chat:600"]
        );
        assert_eq!(
            names(routing.matches("tradingview", &signal("XBTUSDT", "buy"))),
            ["all:chat:600"]
        );
        assert_eq!(
            names(routing.matches("tradingview", &Signal::default())),
            ["all:chat:600"]
        );
    }

    #[test]
    fn a_route_s_max_age_wins_over_its_source_s_which_wins_over_the_default() {
        let destinations = BTreeMap::from([("chat".to_owned(), raw_destination(Kind::Telegram))]);
        let mut timed = route("timed", &["chat"]);
        timed.max_age_secs = Some(5);
        let untimed = route("untimed", &["chat"]);
        let sources = vec!["default".to_owned(), "tradingview".to_owned()];
        let mut routing =
            Routing::from_raw(&[timed, untimed], &destinations, &sources, None).unwrap();
        routing
            .source_max_age
            .insert("tradingview".into(), Duration::from_secs(30));
        let ages = |source: &str| {
            routing
                .matches(source, &signal("BTCUSDT", "buy"))
                .iter()
                .map(|m| m.max_age.as_secs())
                .collect::<Vec<_>>()
        };
        assert_eq!(ages("tradingview"), [5, 30]);
        assert_eq!(ages("default"), [5, 600]);
    }

    #[test]
    fn routes_and_destinations_are_refused_with_the_key_at_fault() {
        let destinations = BTreeMap::from([("bridge".to_owned(), raw_destination(Kind::Http))]);
        let sources = vec!["default".to_owned()];
        let refused = |routes: &[RawRoute], destinations: &BTreeMap<String, RawDestination>| {
            Routing::from_raw(routes, destinations, &sources, None).unwrap_err()
        };
        assert_eq!(
            refused(&[route("a", &["nowhere"])], &destinations).key,
            "routes[0].destinations"
        );
        assert_eq!(
            refused(&[route("a", &[])], &destinations).key,
            "routes[0].destinations"
        );
        assert_eq!(
            refused(&[route("A:b", &["bridge"])], &destinations).key,
            "routes[0].name"
        );
        let mut unknown = route("a", &["bridge"]);
        unknown.sources = vec!["ghost".into()];
        assert_eq!(refused(&[unknown], &destinations).key, "routes[0].sources");
        let twice = [route("a", &["bridge"]), route("a", &["bridge"])];
        assert_eq!(refused(&twice, &destinations).key, "routes[1].name");
        let mut bad_template = route("a", &["bridge"]);
        bad_template.template = Some("{{ signal.ticker ".into());
        assert_eq!(
            refused(&[bad_template], &destinations).key,
            "routes[0].template"
        );

        let mut discord = raw_destination(Kind::Discord);
        discord.url = Some("https://discord.com/api/webhooks/1/x".into());
        let bad = BTreeMap::from([("d".to_owned(), discord)]);
        assert_eq!(refused(&[], &bad).key, "destinations.d.url");
        let mut no_url = raw_destination(Kind::Http);
        no_url.url = None;
        assert_eq!(
            refused(&[], &BTreeMap::from([("h".to_owned(), no_url)])).key,
            "destinations.h.url"
        );
        let mut unparsable = raw_destination(Kind::Http);
        unparsable.url = Some("https://bridge example/hook".into());
        let refusal = refused(&[], &BTreeMap::from([("h".to_owned(), unparsable)]));
        assert_eq!(refusal.key, "destinations.h.url");
        assert!(
            refusal.message.starts_with("is not a valid URL"),
            "{}",
            refusal.message
        );
        let mut signed_by_us = raw_destination(Kind::Http);
        signed_by_us
            .headers
            .insert("Webhook-Signature".into(), "x".into());
        assert_eq!(
            refused(&[], &BTreeMap::from([("h".to_owned(), signed_by_us)])).key,
            "destinations.h.headers"
        );
    }

    #[test]
    fn patterns_match_like_shell_globs() {
        assert!(glob(b"BTC*", b"BTCUSDT"));
        assert!(glob(b"*USDT", b"BTCUSDT"));
        assert!(glob(b"B?C*T", b"BTCUSDT"));
        assert!(glob(b"*", b""));
        assert!(!glob(b"BTC", b"BTCUSDT"));
        assert!(!glob(b"*USD", b"BTCUSDT"));
    }
}
