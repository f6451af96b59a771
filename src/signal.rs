//! Normalization: reads the trading signal out of an alert, whatever shape its sender gave it.
//!
//! TradingView alerts are free-form: a strategy template says `ticker`, `action`,
//! `contracts`, `price`; an indicator says `ticker`, `close`; hand-written ones nest a
//! `symbol` object or say `side` and `qty`. The signal takes whatever is present, looking
//! first at the top level and then level by level into nested objects, so the shallowest
//! match wins. A text alert keeps its text.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};

/// The normalized content of an alert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signal {
    pub ticker: Option<String>,
    pub exchange: Option<String>,
    pub interval: Option<String>,
    pub action: Option<String>,
    pub price: Option<f64>,
    pub quantity: Option<f64>,
    pub strategy: Option<String>,
    pub alert_time: Option<DateTime<Utc>>,
    pub text: Option<String>,
}

/// An alert that can never be processed, however often it is retried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignalError {
    #[error("{field} is not a number: {value}")]
    NotANumber { field: &'static str, value: String },
}

const TICKER: &[&str] = &["ticker", "symbol"];
const EXCHANGE: &[&str] = &["exchange"];
const INTERVAL: &[&str] = &["interval", "timeframe", "resolution"];
const ACTION: &[&str] = &["action", "side", "order_action"];
const PRICE: &[&str] = &["price", "close"];
const QUANTITY: &[&str] = &["quantity", "contracts", "qty", "size"];
const STRATEGY: &[&str] = &["strategy"];
const TIME: &[&str] = &["time", "timenow", "timestamp"];

impl Signal {
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
        let mut ticker = find_string(root, TICKER);
        let mut exchange = find_string(root, EXCHANGE);
        // "NASDAQ:AAPL" names the exchange too.
        if let Some((prefix, symbol)) = ticker.as_deref().and_then(|t| t.split_once(':'))
            && !prefix.is_empty()
            && !symbol.is_empty()
        {
            exchange.get_or_insert_with(|| prefix.to_owned());
            ticker = Some(symbol.to_owned());
        }
        Ok(Signal {
            ticker,
            exchange,
            interval: find_string(root, INTERVAL),
            action: find_string(root, ACTION).map(|a| a.to_ascii_lowercase()),
            price: find_number(root, "price", PRICE)?,
            quantity: find_number(root, "quantity", QUANTITY)?,
            strategy: find_string(root, STRATEGY),
            alert_time: find(root, TIME).and_then(parse_time),
            text: None,
        })
    }
}

/// The first scalar under any of `keys`, breadth first: all of one level before the next,
/// and within a level, keys in the order given.
fn find<'a>(root: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    let mut level: Vec<&Map<String, Value>> = vec![root];
    while !level.is_empty() {
        for key in keys {
            for object in &level {
                match object.get(*key) {
                    Some(Value::Object(_) | Value::Array(_) | Value::Null) | None => {}
                    Some(scalar) => return Some(scalar),
                }
            }
        }
        level = level
            .iter()
            .flat_map(|o| o.values())
            .filter_map(Value::as_object)
            .collect();
    }
    None
}

fn find_string(root: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    match find(root, keys)? {
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => Some(s.trim().to_owned()),
        other => Some(other.to_string()),
    }
}

fn find_number(
    root: &Map<String, Value>,
    field: &'static str,
    keys: &[&str],
) -> Result<Option<f64>, SignalError> {
    let not_a_number = |value: String| SignalError::NotANumber { field, value };
    match find(root, keys) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| not_a_number(n.to_string())),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(Some(n)),
            _ => Err(not_a_number(s.clone())),
        },
        Some(other) => Err(not_a_number(other.to_string())),
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
}
