//! The dashboard's HTML, as compile-time templates (maud): every value is escaped by the
//! template engine, so nothing an alert carries can become markup. The page shows the
//! numbers of the moment it is rendered; `assets/app.js` keeps it live.

use maud::{DOCTYPE, Markup, html};

use super::dashboard::{Deliveries, EventsQuery, StatsView};
use crate::{queue::DeadLetter, stats::Counts, store::EventRow};

/// The rows of the counts table: label, and the field of `Counts` (also the name
/// `app.js` updates it by).
const COUNTS: [&str; 7] = [
    "received",
    "queued",
    "processed",
    "retrying",
    "dead",
    "duplicates",
    "rejected",
];

fn count(counts: &Counts, field: &str) -> u64 {
    match field {
        "received" => counts.received,
        "queued" => counts.queued,
        "processed" => counts.processed,
        "retrying" => counts.retrying,
        "dead" => counts.dead,
        "duplicates" => counts.duplicates,
        _ => counts.rejected,
    }
}

/// A value, or a dash when there is none.
fn opt<T: std::fmt::Display>(value: Option<T>) -> Markup {
    match value {
        Some(value) => html! { (value) },
        None => html! { "–" },
    }
}

/// A milliseconds figure rounded to a tenth.
fn tenth(value: Option<f64>) -> Option<f64> {
    value.map(|v| (v * 10.0).round() / 10.0)
}

/// The end of an event id, enough to tell alerts of the same minute apart.
fn short_id(id: &str) -> &str {
    &id[id.len().saturating_sub(12)..]
}

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href="/assets/style.css";
            }
            body { (body) }
        }
    }
}

/// The login form; `enabled` is false while no admin token is set.
pub fn login(enabled: bool, error: Option<&str>) -> Markup {
    layout(
        "Pyron: log in",
        html! {
            section.login {
                h2 { "Pyron dashboard" }
                @if !enabled {
                    p.error { "The dashboard is off: set PYRON_ADMIN_TOKEN on pyron-api to use it." }
                } @else {
                    @if let Some(error) = error {
                        p.error { (error) }
                    }
                    form method="post" action="/login" {
                        p {
                            label {
                                "Admin token" br;
                                input type="password" name="token" id="token"
                                    autocomplete="current-password" required autofocus;
                            }
                        }
                        p { button type="submit" id="login" { "Log in" } }
                    }
                }
            }
        },
    )
}

/// The dashboard with the numbers of this moment.
pub fn dashboard(
    stats: &StatsView,
    events: &[EventRow],
    dead: &[DeadLetter],
    deliveries: &Deliveries,
    query: &EventsQuery,
) -> Markup {
    let a = &stats.activity;
    let max = a.per_minute.iter().copied().max().unwrap_or(0).max(1);
    layout(
        "Pyron",
        html! {
            header {
                h1 { "Pyron" }
                span #live .live { "loaded now" }
                form method="post" action="/logout" { button { "Log out" } }
            }
            main {
                section {
                    h2 { "Alerts" }
                    table #counts {
                        tr { th {} th { "last hour" } th { "last day" } }
                        @for field in COUNTS {
                            tr {
                                th scope="row" { (field) }
                                td.n data-count=(format!("hour.{field}")) { (count(&a.hour, field)) }
                                td.n data-count=(format!("day.{field}")) { (count(&a.day, field)) }
                            }
                        }
                    }
                }
                section {
                    h2 { "Latency and queue" }
                    table {
                        tr {
                            th scope="row" { "acknowledgement p50 / p99 (ms)" }
                            td.n {
                                span data-stat="ack_p50_ms" { (opt(tenth(stats.ack_p50_ms))) }
                                " / "
                                span data-stat="ack_p99_ms" { (opt(tenth(stats.ack_p99_ms))) }
                            }
                        }
                        tr {
                            th scope="row" { "end-to-end lag p50 / p99 (ms)" }
                            td.n {
                                span data-stat="lag_p50_ms" { (opt(a.lag_p50_ms)) }
                                " / "
                                span data-stat="lag_p99_ms" { (opt(a.lag_p99_ms)) }
                            }
                        }
                        tr { th scope="row" { "queue depth" } td.n data-stat="queue_depth" { (a.queue_depth) } }
                        tr { th scope="row" { "pending" } td.n data-stat="pending" { (a.pending) } }
                        tr { th scope="row" { "dead letters" } td.n data-stat="dead_letters" { (a.dead_letters) } }
                    }
                }
                section {
                    h2 { "Alerts per minute, last hour" }
                    svg.chart viewBox="0 0 600 80" preserveAspectRatio="none" {
                        @for (i, n) in a.per_minute.iter().enumerate() {
                            @let height = *n as f64 / max as f64 * 78.0;
                            rect x=(i * 10) y=(format!("{:.1}", 80.0 - height)) width="8"
                                height=(format!("{height:.1}")) {
                                title { (n) " alerts, " (a.per_minute.len() - i - 1) " min ago" }
                            }
                        }
                    }
                }
                section {
                    h2 { "Workers" }
                    table #workers {
                        thead { tr { th { "consumer" } th { "pending" } th { "last heartbeat" } } }
                        tbody {
                            @for w in &a.workers {
                                tr {
                                    td { (w.name) }
                                    td.n { (w.pending) }
                                    td.n {
                                        @match w.heartbeat_ms_ago {
                                            Some(ms) => { (format!("{:.1} s ago", ms as f64 / 1000.0)) }
                                            None => { "never" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                section.wide {
                    h2 { "Deliveries per destination" }
                    div.scroll {
                        table #destinations {
                            thead { tr { th { "destination" } th { "delivered" } th { "expired" } th { "dead" } th { "attempts" } th { "breaker" } } }
                            tbody { @for d in &deliveries.stats.destinations { (destination_row(d)) } }
                        }
                    }
                    p.muted {
                        span data-delivery="queued" { (deliveries.stats.queued) } " queued, "
                        span data-delivery="dead_letters" { (deliveries.stats.dead_letters) } " dead or expired"
                    }
                }
                section.wide {
                    h2 { "Deliveries that did not go through" }
                    p #delivery-replay-result .muted {}
                    div.scroll {
                        table #failing {
                            thead { tr { th { "time" } th { "route → destination" } th { "ticker" } th { "status" } th { "attempts" } th {} } }
                            tbody { @for d in &deliveries.failing { (failing_row(d)) } }
                        }
                    }
                }
                section.wide {
                    h2 { "Recent alerts" }
                    form method="get" action="/" {
                        input #filter name="ticker" placeholder="filter: ticker, action, status"
                            value=(query.ticker.as_deref().unwrap_or(""));
                        " "
                        noscript { button { "Filter" } }
                    }
                    div.scroll {
                        table #events {
                            thead {
                                tr { th { "time" } th { "source" } th { "ticker" } th { "action" } th { "price" } th { "status" } th { "lag" } }
                            }
                            tbody { @for e in events { (event_row(e)) } }
                        }
                    }
                    div #detail hidden {
                        h2 { "Alert " span #detail-id {} }
                        p.muted { "audit" }
                        pre #detail-audit {}
                        p.muted { "jobs" }
                        pre #detail-job {}
                    }
                }
                section.wide {
                    h2 { "Dead letters" }
                    p #replay-result .muted {}
                    div.scroll {
                        table #dead {
                            thead { tr { th { "alert" } th { "reason" } th {} } }
                            tbody {
                                @for d in dead {
                                    @let id = d.id.as_deref().unwrap_or("");
                                    tr {
                                        td { (id) }
                                        td { (d.reason) }
                                        td { button data-replay=(id) { "Replay" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            noscript {
                p.muted style="padding:0 20px" { "JavaScript is off: reload for current numbers." }
            }
            script src="/assets/app.js" defer {}
        },
    )
}

/// One alert of the recent list: a text alert shows its message where the fields would
/// be; the status says what a duplicate repeats and why a job is dead or retrying.
fn event_row(e: &EventRow) -> Markup {
    html! {
        tr.event data-id=(e.id) {
            td {
                a href=(format!("/api/events/{}", e.id)) {
                    (opt(e.received_at.map(|t| t.format("%H:%M:%S").to_string())))
                }
            }
            td.muted { (opt(e.source.as_deref())) }
            @if let (Some(text), None) = (&e.text, &e.ticker) {
                td colspan="3" class="message" { (text) }
            } @else {
                td { (opt(e.ticker.as_deref())) }
                td { (opt(e.action.as_deref())) }
                td.n { (opt(e.price)) }
            }
            td class=(format!("status-{}", e.status)) {
                (e.status)
                @if let Some(first) = &e.duplicate_of {
                    " of "
                    a.first data-open=(first) href=(format!("/api/events/{first}")) { (short_id(first)) }
                }
                @if let Some(error) = &e.error {
                    div.why { (error) }
                }
                @for d in &e.deliveries {
                    div.fate {
                        "→ " (d.destination) ": "
                        span class=(format!("status-{}", d.status)) { (d.status) }
                    }
                }
            }
            td.n { (opt(e.lag_ms.map(|l| format!("{l} ms")))) }
        }
    }
}

/// One destination: its counts and its breaker (open in red, with the last error).
fn destination_row(d: &crate::stats::DestinationStats) -> Markup {
    html! {
        tr {
            td { (d.name) }
            td.n { (d.delivered) }
            td.n { (d.expired) }
            td.n { (d.dead) }
            td.n { (d.attempts) }
            td class=(format!("breaker-{}", d.breaker.as_deref().unwrap_or("closed"))) {
                (d.breaker.as_deref().unwrap_or("closed"))
                @if let (Some(error), Some("open" | "half-open")) = (&d.last_error, d.breaker.as_deref()) {
                    div.why { (error) }
                }
            }
        }
    }
}

/// A delivery that did not go through, with its reason and, once it is dead or expired,
/// the two ways to send it again.
fn failing_row(d: &crate::store::DeliveryRow) -> Markup {
    html! {
        tr {
            td { (opt(d.received_at.map(|t| t.format("%H:%M:%S").to_string()))) }
            td { (d.route) " → " (d.destination) }
            td { (opt(d.ticker.as_deref())) }
            td class=(format!("status-{}", d.status)) {
                (d.status)
                @if let Some(error) = &d.last_error {
                    div.why { (error) }
                }
            }
            td.n { (d.attempts) }
            td {
                @if d.status == "dead" || d.status == "expired" {
                    button data-redeliver=(d.id) data-mode="as-it-was" { "Send as it was" }
                    " "
                    button data-redeliver=(d.id) data-mode="now" { "Send now, re-checked" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whatever_an_alert_carries_is_shown_as_text() {
        let row = EventRow {
            id: "01a2\"><script>x</script>".into(),
            received_at: None,
            kind: "text".into(),
            status: "duplicate".into(),
            ticker: None,
            action: None,
            price: None,
            lag_ms: None,
            error: Some("<img src=x onerror=alert(1)>".into()),
            text: Some("<b>BTC</b> & 'ETH'".into()),
            duplicate_of: Some("\" onclick=\"x".into()),
            source: Some("<i>tv</i>".into()),
            deliveries: vec![],
        };
        let html = event_row(&row).into_string();
        assert!(!html.contains("<script>") && !html.contains("<img") && !html.contains("<b>"));
        assert!(
            html.contains("&lt;b&gt;BTC&lt;/b&gt; &amp; 'ETH'"),
            "{html}"
        );
        assert!(
            html.contains("data-open=\"&quot; onclick=&quot;x\""),
            "{html}"
        );
        assert!(
            html.contains("<td colspan=\"3\" class=\"message\">"),
            "{html}"
        );
    }
}
