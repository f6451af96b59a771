// What every scenario shares: where to post, the secret, and an alert shaped like
// TradingView's strategy order (the secret in the path, as TradingView must send it).
import http from "k6/http";
import { check } from "k6";

/** The base URL of Pyron, e.g. https://alerts.example.com (no trailing slash). */
export const BASE_URL = (__ENV.PYRON_URL || "https://localhost:8443").replace(/\/$/, "");

/** The webhook secret. */
export const TOKEN = __ENV.PYRON_TOKEN || "";

if (!TOKEN) {
  throw new Error("set PYRON_TOKEN to the webhook secret (k6 run -e PYRON_TOKEN=...)");
}

const TICKERS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"];

/**
 * Posts one alert and checks the answer.
 * @returns {import("k6/http").RefinedResponse<"text">}
 */
export function postAlert() {
  const ticker = TICKERS[Math.floor(Math.random() * TICKERS.length)];
  const body = JSON.stringify({
    ticker,
    exchange: "BINANCE",
    interval: "5",
    action: Math.random() < 0.5 ? "buy" : "sell",
    price: Number((60000 + Math.random() * 1000).toFixed(2)),
    quantity: 0.01,
    strategy: "k6",
    time: new Date().toISOString(),
  });
  const response = http.post(`${BASE_URL}/webhook/${TOKEN}`, body, {
    headers: { "Content-Type": "application/json" },
    tags: { name: "POST /webhook" },
  });
  check(response, {
    "answered 202": (r) => r.status === 202,
    "queued": (r) => r.status === 202 && r.json("status") === "queued",
  });
  return response;
}
