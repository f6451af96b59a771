//! The benchmark's floor for pyron-forwarder: an HTTP client that sends what the
//! forwarder sends, the way it sends it, and does nothing else. `scripts/bench.py --route`
//! points it at the same sink the route delivers to, at the same rate, so the CPU it uses
//! per request is what one delivery's HTTP exchange costs a client on this machine, beside
//! what pyron-forwarder costs.
//!
//! Like the forwarder in that run it uses the same HTTP client (`send::client()`), on a
//! single-threaded runtime, with one lane: one request at a time, each sent when the one
//! before it is answered. Requests come in bursts, as the worker's batch window hands the
//! forwarder its deliveries: `rate / 20` every 50 ms. Each carries a body the size of the
//! forwarder's default one and the Standard Webhooks headers (fixed values: signing is the
//! forwarder's work, not the exchange's).
//!
//! usage: cargo run --release --example null_sender -- URL RATE SECONDS
//! It prints the requests answered 2xx and the others, and exits non-zero if any failed.

use std::time::{Duration, Instant};

use pyron::forward::send::{WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};
use reqwest::header::{CONTENT_TYPE, HeaderValue};

const BURST_EVERY: Duration = Duration::from_millis(50);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, rate, seconds] = args.as_slice() else {
        eprintln!("usage: null_sender URL RATE SECONDS");
        std::process::exit(2);
    };
    let url: reqwest::Url = url.parse().expect("URL");
    let rate: f64 = rate.parse().expect("RATE, requests a second");
    let seconds: f64 = seconds.parse().expect("SECONDS");
    let client = pyron::forward::send::client();
    let body = r#"{"id":"019ad1c5-7e3a-7c41-9b6e-3f2a1d0c8b7a:all:sink","event_id":"019ad1c5-7e3a-7c41-9b6e-3f2a1d0c8b7a","source":"tradingview","route":"all","received_at":"2026-11-29T23:59:59.123Z","signal":{"ticker":"BTCUSDT","action":"buy","price":67234.5,"quantity":0.01,"interval":"5","exchange":"BINANCE","strategy":"bench","extra":{}}}"#;
    let per_burst = rate * BURST_EVERY.as_secs_f64();
    let bursts = (seconds / BURST_EVERY.as_secs_f64()).round() as u64;
    let started = Instant::now();
    let (mut ok, mut failed, mut owed) = (0u64, 0u64, 0.0f64);
    for burst in 0..bursts {
        tokio::time::sleep_until((started + BURST_EVERY * burst as u32).into()).await;
        owed += per_burst;
        while owed >= 1.0 {
            owed -= 1.0;
            // The headers made as pyron-forwarder makes them (names and the content
            // type without parsing; the id, timestamp and signature as values).
            let answer = client
                .post(url.clone())
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .header(WEBHOOK_ID, "019ad1c5-7e3a-7c41-9b6e-3f2a1d0c8b7a:all:sink")
                .header(WEBHOOK_TIMESTAMP, HeaderValue::from(1_764_460_799_i64))
                .header(
                    WEBHOOK_SIGNATURE,
                    String::from("v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="),
                )
                .body(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match answer {
                Ok(response) if response.status().is_success() => ok += 1,
                _ => failed += 1,
            }
        }
    }
    println!("{ok} answered 2xx, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
