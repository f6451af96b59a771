//! Normalization: reads the trading signal out of an alert, whatever shape its sender gave it.
//!
//! TradingView alerts are free-form: a strategy template says `ticker`, `action`,
//! `contracts`, `price`; an indicator says `ticker`, `close`; hand-written ones nest a
//! `symbol` object or say `side` and `qty`. The signal takes whatever is present, looking
//! first at the top level and then level by level into nested objects, so the shallowest
//! match wins. A text alert keeps its text.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};

/// The normalized content of an alert. As JSON (`to_json`) it is what deliveries carry:
/// the fields present, `extra` only when it holds something.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Signal {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_time: Option<DateTime<Utc>>,
    /// A strategy's position after the order (`{{strategy.market_position}}`: `long`,
    /// `short`, `flat`) and its size, and the same before the order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub market_position: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub market_position_size: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_market_position: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_market_position_size: Option<f64>,
    /// `{{strategy.position_size}}`: signed, negative when short.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position_size: Option<f64>,
    /// `{{strategy.order.id}}` and `{{strategy.order.comment}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Every top-level field of the alert that none of the fields above took (the
    /// passphrase excepted), as it came: `{{plot_0}}` values, `timenow`, names of a
    /// sender's own.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// An alert that can never be processed, however often it is retried. A number is never
/// guessed: a form that reads two ways is refused with the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignalError {
    #[error("{field} is not a number: {value}")]
    NotANumber { field: &'static str, value: String },
    #[error(
        "{field} is ambiguous: {value} could be read with a thousands separator or a decimal comma; send it without separators, with a decimal point"
    )]
    Ambiguous { field: &'static str, value: String },
    #[error(
        "{field} uses a decimal comma: {value}; Pyron reads only a decimal point (and commas only as thousands separators before one)"
    )]
    DecimalComma { field: &'static str, value: String },
}

const TICKER: &[&str] = &["ticker", "symbol"];
const EXCHANGE: &[&str] = &["exchange"];
const INTERVAL: &[&str] = &["interval", "timeframe", "resolution"];
const ACTION: &[&str] = &["action", "side", "order_action"];
const PRICE: &[&str] = &["price", "close"];
const QUANTITY: &[&str] = &["quantity", "contracts", "qty", "size"];
const STRATEGY: &[&str] = &["strategy"];
const TIME: &[&str] = &["time", "timenow", "timestamp"];
const MARKET_POSITION: &[&str] = &["market_position"];
const MARKET_POSITION_SIZE: &[&str] = &["market_position_size"];
const PREV_MARKET_POSITION: &[&str] = &["prev_market_position"];
const PREV_MARKET_POSITION_SIZE: &[&str] = &["prev_market_position_size"];
const POSITION_SIZE: &[&str] = &["position_size"];
const ORDER_ID: &[&str] = &["order_id"];
const COMMENT: &[&str] = &["comment", "order_comment"];

impl Signal {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a signal always serializes")
    }

    pub fn from_text(text: &str) -> Signal {
        Signal {
            text: Some(text.to_owned()),
            ..Signal::default()
        }
    }

    pub fn from_json(value: &Value) -> Result<Signal, SignalError> {
        let Value::Object(root) = value else {
            // A JSON scalar or array carries no named fields; keep it readable as text.
            return Ok(Signal::from_text(&value.to_string()));
        };
        let mut reader = Reader::new(root);
        let mut ticker = reader.string(TICKER);
        let mut exchange = reader.string(EXCHANGE);
        // "NASDAQ:AAPL" names the exchange too.
        if let Some((prefix, symbol)) = ticker.as_deref().and_then(|t| t.split_once(':'))
            && !prefix.is_empty()
            && !symbol.is_empty()
        {
            exchange.get_or_insert_with(|| prefix.to_owned());
            ticker = Some(symbol.to_owned());
        }
        let lower = |s: String| s.to_ascii_lowercase();
        let mut signal = Signal {
            ticker,
            exchange,
            interval: reader.string(INTERVAL),
            action: reader.string(ACTION).map(lower),
            price: reader.number("price", PRICE)?,
            quantity: reader.number("quantity", QUANTITY)?,
            strategy: reader.string(STRATEGY),
            alert_time: reader.find(TIME).and_then(parse_time),
            market_position: reader.string(MARKET_POSITION).map(lower),
            market_position_size: reader.number("market_position_size", MARKET_POSITION_SIZE)?,
            prev_market_position: reader.string(PREV_MARKET_POSITION).map(lower),
            prev_market_position_size: reader
                .number("prev_market_position_size", PREV_MARKET_POSITION_SIZE)?,
            position_size: reader.number("position_size", POSITION_SIZE)?,
            order_id: reader.string(ORDER_ID),
            comment: reader.string(COMMENT),
            extra: Map::new(),
            text: None,
        };
        signal.extra = root
            .iter()
            .filter(|(key, _)| !reader.took(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Ok(signal)
    }
}

/// Looks fields up in an alert, noting which top-level keys it took.
struct Reader<'a> {
    /// The alert's objects by depth: the alert itself, the objects in its fields, the
    /// objects in theirs, and so on.
    levels: Vec<Vec<&'a Map<String, Value>>>,
    /// The alert's own keys that a field was read from (the rest go to `extra`).
    taken: Vec<&'a String>,
}

/// Up to this many keys, an object is searched by comparing keys rather than hashing:
/// an alert has a few dozen at most, and a signal asks for some 30 names.
const LINEAR: usize = 32;

/// `object`'s entry under `key`.
fn entry<'a>(object: &'a Map<String, Value>, key: &str) -> Option<(&'a String, &'a Value)> {
    if object.len() <= LINEAR {
        object.iter().find(|(name, _)| name.as_str() == key)
    } else {
        object.get_key_value(key)
    }
}

impl<'a> Reader<'a> {
    fn new(root: &'a Map<String, Value>) -> Reader<'a> {
        let mut levels = vec![vec![root]];
        loop {
            let next: Vec<&'a Map<String, Value>> = levels[levels.len() - 1]
                .iter()
                .flat_map(|o| o.values())
                .filter_map(Value::as_object)
                .collect();
            if next.is_empty() {
                break;
            }
            levels.push(next);
        }
        Reader {
            levels,
            taken: Vec::new(),
        }
    }

    /// The first scalar under any of `keys`, breadth first: all of one level before the
    /// next, and within a level, keys in the order given.
    fn find(&mut self, keys: &[&str]) -> Option<&'a Value> {
        for (depth, level) in self.levels.iter().enumerate() {
            for key in keys {
                for object in level {
                    match entry(object, key) {
                        Some((_, Value::Object(_) | Value::Array(_) | Value::Null)) | None => {}
                        Some((name, scalar)) => {
                            if depth == 0 {
                                self.taken.push(name);
                            }
                            return Some(scalar);
                        }
                    }
                }
            }
        }
        None
    }

    /// Whether a field was read from this key of the alert's own.
    fn took(&self, key: &String) -> bool {
        self.taken.iter().any(|taken| std::ptr::eq(*taken, key))
    }

    fn string(&mut self, keys: &[&str]) -> Option<String> {
        match self.find(keys)? {
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.trim().to_owned()),
            other => Some(other.to_string()),
        }
    }

    fn number(&mut self, field: &'static str, keys: &[&str]) -> Result<Option<f64>, SignalError> {
        match self.find(keys) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| SignalError::NotANumber {
                field,
                value: n.to_string(),
            }),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => parse_number(field, s).map(Some),
            Some(other) => Err(SignalError::NotANumber {
                field,
                value: other.to_string(),
            }),
        }
    }
}

/// Reads a number written as text, the one way it can be read or not at all:
///
/// - `96412.50`, `-0.015`, `1e-7`: as they stand;
/// - `96,412.50`, `1,234,567`: commas as thousands separators, when they group the
///   integer part by threes and either a decimal point follows or there are two or more
///   of them (so they cannot be a decimal comma);
/// - `96,412` (one comma, three digits after it: 96412 or 96.412?) is ambiguous;
///   `96.412,50` and `96412,5` use a decimal comma; both are refused, never guessed.
pub fn parse_number(field: &'static str, text: &str) -> Result<f64, SignalError> {
    let value = text.trim();
    let fail = |kind: fn(&'static str, String) -> SignalError| Err(kind(field, text.to_owned()));
    let not_a_number = |field, value| SignalError::NotANumber { field, value };
    let unsigned = value.strip_prefix(['-', '+']).unwrap_or(value);
    let plain = unsigned
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if plain {
        return match value.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(n),
            _ => fail(not_a_number),
        };
    }
    if !unsigned.contains(',')
        || !unsigned
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b',' || b == b'.')
    {
        return fail(not_a_number);
    }
    let (integer, fraction) = match unsigned.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (unsigned, None),
    };
    if fraction.is_some_and(|f| f.contains(',')) {
        return fail(|field, value| SignalError::DecimalComma { field, value });
    }
    let groups: Vec<&str> = integer.split(',').collect();
    let grouped = (1..=3).contains(&groups[0].len())
        && groups[0].bytes().all(|b| b.is_ascii_digit())
        && groups[1..]
            .iter()
            .all(|g| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()));
    match (grouped, fraction) {
        (true, Some(fraction)) if !fraction.is_empty() && !fraction.contains('.') => {}
        (true, None) if groups.len() > 2 => {}
        (true, None) => return fail(|field, value| SignalError::Ambiguous { field, value }),
        (false, None) if groups.len() == 2 => {
            return fail(|field, value| SignalError::DecimalComma { field, value });
        }
        _ => return fail(not_a_number),
    }
    let sign = if value.starts_with('-') { "-" } else { "" };
    let digits: String = unsigned.chars().filter(|c| *c != ',').collect();
    match format!("{sign}{digits}").parse::<f64>() {
        Ok(n) if n.is_finite() => Ok(n),
        _ => fail(not_a_number),
    }
}

/// RFC 3339 text, or Unix time in milliseconds (TradingView's `{{time}}` is the former,
/// some bots send the latter).
fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| {
                s.trim()
                    .parse::<i64>()
                    .ok()
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            }),
        Value::Number(n) => n
            .as_i64()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_strategy_order_gives_every_field() {
        let signal = Signal::from_json(&json!({
            "strategy": "EMA Cross 9/21", "ticker": "BTCUSDT", "exchange": "BINANCE",
            "interval": "15", "action": "BUY", "contracts": "0.015", "price": "67234.5",
            "time": "2026-11-28T14:15:00Z", "timenow": "2026-11-28T14:15:02Z"
        }))
        .unwrap();
        assert_eq!(signal.ticker.as_deref(), Some("BTCUSDT"));
        assert_eq!(signal.exchange.as_deref(), Some("BINANCE"));
        assert_eq!(signal.interval.as_deref(), Some("15"));
        assert_eq!(signal.action.as_deref(), Some("buy"));
        assert_eq!(signal.quantity, Some(0.015));
        assert_eq!(signal.price, Some(67234.5));
        assert_eq!(signal.strategy.as_deref(), Some("EMA Cross 9/21"));
        assert_eq!(
            signal.alert_time.unwrap().to_rfc3339(),
            "2026-11-28T14:15:00+00:00"
        );
    }

    #[test]
    fn an_exchange_prefix_on_the_ticker_becomes_the_exchange() {
        let signal = Signal::from_json(&json!({"ticker": "NASDAQ:AAPL", "close": 231.47})).unwrap();
        assert_eq!(signal.ticker.as_deref(), Some("AAPL"));
        assert_eq!(signal.exchange.as_deref(), Some("NASDAQ"));
        assert_eq!(signal.price, Some(231.47));
    }

    #[test]
    fn nested_fields_are_found_shallowest_first() {
        let signal = Signal::from_json(&json!({
            "alert": {"name": "Breakout", "symbol": {"ticker": "EURUSD", "exchange": "OANDA"}},
            "side": "sell", "qty": 10000, "deeper": {"a": {"b": {"side": "buy"}}}
        }))
        .unwrap();
        assert_eq!(signal.ticker.as_deref(), Some("EURUSD"));
        assert_eq!(signal.exchange.as_deref(), Some("OANDA"));
        assert_eq!(signal.action.as_deref(), Some("sell"));
        assert_eq!(signal.quantity, Some(10000.0));
    }

    #[test]
    fn a_price_that_is_not_a_number_is_a_permanent_failure() {
        let err = Signal::from_json(&json!({"ticker": "X", "price": "{{close}}"})).unwrap_err();
        assert_eq!(
            err,
            SignalError::NotANumber {
                field: "price",
                value: "{{close}}".into()
            }
        );
        assert!(Signal::from_json(&json!({"contracts": true})).is_err());
    }

    #[test]
    fn text_and_scalar_alerts_keep_their_text() {
        assert_eq!(
            Signal::from_text("BTCUSDT Crossing").text.as_deref(),
            Some("BTCUSDT Crossing")
        );
        assert_eq!(
            Signal::from_json(&json!([1, 2])).unwrap().text.as_deref(),
            Some("[1,2]")
        );
    }

    #[test]
    fn times_parse_as_rfc3339_or_epoch_milliseconds() {
        let t = Signal::from_json(&json!({"time": 1764339300000_i64}))
            .unwrap()
            .alert_time;
        assert_eq!(t.unwrap().timestamp_millis(), 1764339300000);
        assert!(
            Signal::from_json(&json!({"time": "yesterday"}))
                .unwrap()
                .alert_time
                .is_none()
        );
    }

    #[test]
    fn a_strategy_alert_keeps_its_position_fields_typed_and_the_rest_as_they_came() {
        let signal = Signal::from_json(&json!({
            "ticker": "BTCUSDT", "action": "sell", "contracts": "0.5", "price": "96,412.50",
            "market_position": "Short", "market_position_size": "0.5",
            "prev_market_position": "long", "prev_market_position_size": 1,
            "position_size": "-0.5", "order_id": "Short Entry", "comment": "reverse",
            "plot_0": 96100.25, "rsi": "71.2", "timenow": "2026-11-28T14:15:02Z",
            "meta": {"bar": 7}
        }))
        .unwrap();
        assert_eq!(signal.price, Some(96412.5));
        assert_eq!(signal.market_position.as_deref(), Some("short"));
        assert_eq!(signal.market_position_size, Some(0.5));
        assert_eq!(signal.prev_market_position.as_deref(), Some("long"));
        assert_eq!(signal.prev_market_position_size, Some(1.0));
        assert_eq!(signal.position_size, Some(-0.5));
        assert_eq!(signal.order_id.as_deref(), Some("Short Entry"));
        assert_eq!(signal.comment.as_deref(), Some("reverse"));
        assert_eq!(
            Value::Object(signal.extra),
            json!({"plot_0": 96100.25, "rsi": "71.2", "meta": {"bar": 7}}),
            "every field no typed one took, as it came; timenow is the alert's time"
        );
    }

    #[test]
    fn a_field_taken_from_a_nested_object_leaves_its_parent_in_extra() {
        let signal = Signal::from_json(&json!({
            "symbol": {"ticker": "EURUSD"}, "time": "2026-11-28T14:15:00Z", "timenow": "x"
        }))
        .unwrap();
        assert_eq!(signal.ticker.as_deref(), Some("EURUSD"));
        assert_eq!(
            Value::Object(signal.extra),
            json!({"symbol": {"ticker": "EURUSD"}, "timenow": "x"})
        );
    }

    #[test]
    fn numbers_are_read_one_way_or_refused_with_the_reason() {
        let ok = |text: &str| parse_number("price", text).unwrap();
        assert_eq!(ok("96412.50"), 96412.5);
        assert_eq!(ok(" 96,412.50 "), 96412.5);
        assert_eq!(ok("1,234,567"), 1234567.0);
        assert_eq!(ok("-1,234.5"), -1234.5);
        assert_eq!(ok("+0.015"), 0.015);
        assert_eq!(ok("1e-7"), 1e-7);
        assert_eq!(ok(".5"), 0.5);
        let err = |text: &str| parse_number("price", text).unwrap_err();
        assert_eq!(
            err("96,412"),
            SignalError::Ambiguous {
                field: "price",
                value: "96,412".into()
            }
        );
        for comma in ["96.412,50", "96412,5", "96,41", "1.234.567,89"] {
            assert!(
                matches!(err(comma), SignalError::DecimalComma { .. }),
                "{comma}"
            );
        }
        for junk in [
            "{{close}}",
            "$96,412.50",
            "96 412.50",
            "1,2,3",
            "12,34.5",
            "inf",
            "NaN",
            "1.234.567",
            "--5",
            "9,999.",
            "",
        ] {
            assert!(
                matches!(err(junk), SignalError::NotANumber { .. }),
                "{junk}"
            );
        }
        assert_eq!(
            err("96,412").to_string(),
            "price is ambiguous: 96,412 could be read with a thousands separator or a decimal comma; send it without separators, with a decimal point"
        );
    }
}
