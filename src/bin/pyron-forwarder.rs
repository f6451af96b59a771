//! pyron-forwarder: sends the deliveries in `webhook-deliveries` to their destinations and
//! records each in `deliveries`. The only Pyron process that talks to the internet.
//!
//! `pyron-forwarder` runs it; `pyron-forwarder dead-letters` lists dead and expired
//! deliveries; `pyron-forwarder replay (--as-it-was | --now) <delivery-id>...` sends them
//! again: as they were (whatever their age), or re-checked against the routes with a new
//! deadline.

use std::{process::ExitCode, time::Duration};

use pyron::{
    config::{Config, Role},
    forward::{Forwarder, Replay, outbox},
    startup::{STATUS_EVERY, shutdown_signals},
    systemd, telemetry,
};

const USAGE: &str = "usage: pyron-forwarder [--check-config | dead-letters [--limit N] | replay (--as-it-was | --now) DELIVERY_ID...]";

/// How long a stopping forwarder lets deliveries in hand finish.
const DRAIN: Duration = Duration::from_secs(5);

enum Command {
    Run,
    CheckConfig,
    List(usize),
    Replay(Replay, Vec<String>),
}

fn parse(args: &[String]) -> Result<Command, String> {
    match args {
        [] => Ok(Command::Run),
        [flag] if flag == "--check-config" => Ok(Command::CheckConfig),
        [cmd] if cmd == "dead-letters" => Ok(Command::List(100)),
        [cmd, flag, n] if cmd == "dead-letters" && flag == "--limit" => n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .map(Command::List)
            .ok_or_else(|| format!("--limit takes a positive number, not {n:?}")),
        [cmd, how, ids @ ..] if cmd == "replay" && !ids.is_empty() => {
            let how = match how.as_str() {
                "--as-it-was" => Replay::AsItWas,
                "--now" => Replay::Now,
                other => return Err(format!("replay takes --as-it-was or --now, not {other:?}")),
            };
            Ok(Command::Replay(how, ids.to_vec()))
        }
        [cmd, ..] if cmd == "replay" => {
            Err("replay needs --as-it-was or --now, then delivery ids".into())
        }
        [flag] if flag == "--help" || flag == "-h" => Err(String::new()),
        other => Err(format!("unknown arguments: {}", other.join(" "))),
    }
}

/// One thread, like pyron-api and pyron-worker: its lanes wait on the network, not the CPU.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(command) => command,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("pyron-forwarder: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let role = match command {
        Command::Run | Command::CheckConfig => Role::Forwarder,
        // Listing and replaying need no destination secrets.
        Command::List(_) | Command::Replay(..) => Role::Worker,
    };
    let config = match Config::load(role) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("pyron-forwarder: {err}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Run => run(config).await,
        Command::CheckConfig => {
            println!(
                "pyron-forwarder: configuration OK ({} routes, {} destinations)",
                config.routing.routes.len(),
                config.routing.destinations.len()
            );
            ExitCode::SUCCESS
        }
        Command::List(limit) => dead_letters(&config, limit).await,
        Command::Replay(how, ids) => replay(&config, how, &ids).await,
    }
}

async fn run(config: Config) -> ExitCode {
    telemetry::init(&config, "pyron-forwarder");
    let stop = shutdown_signals();
    let forwarder = tokio::select! {
        forwarder = Forwarder::connect(&config) => match forwarder {
            Ok(forwarder) => forwarder,
            Err(err) => {
                tracing::error!(error = %err, "cannot start");
                return ExitCode::from(2);
            }
        },
        () = stop.cancelled() => return ExitCode::SUCCESS,
    };
    tracing::info!(consumer = %forwarder.consumer(), routes = config.routing.routes.len(), destinations = config.routing.destinations.len(), "pyron-forwarder forwarding");
    systemd::ready(&forwarder.status_line().await);
    let heartbeat = forwarder.heartbeat.clone();
    systemd::spawn_watchdog(move |interval| heartbeat.age() < interval);
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let forwarder = forwarder.clone();
        let stopped = stop.child_token();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(STATUS_EVERY) => systemd::status(&forwarder.status_line().await),
                    () = stopped.cancelled() => return,
                }
            }
        });
    }
    forwarder.run(stop).await;
    tracing::info!("shutting down: letting deliveries in hand finish");
    forwarder.drain(DRAIN).await;
    ExitCode::SUCCESS
}

async fn connection(config: &Config) -> Result<redis::aio::ConnectionManager, ExitCode> {
    pyron::queue::manager(config.redis.url.expose(), Duration::from_secs(2))
        .await
        .map_err(|err| {
            eprintln!("pyron-forwarder: cannot reach Redis: {err}");
            ExitCode::FAILURE
        })
}

async fn dead_letters(config: &Config, limit: usize) -> ExitCode {
    let mut conn = match connection(config).await {
        Ok(conn) => conn,
        Err(code) => return code,
    };
    match outbox::dead_letters(&mut conn, limit, Duration::from_secs(5)).await {
        Ok(letters) => {
            for letter in &letters {
                println!("{}", serde_json::to_string(letter).unwrap_or_default());
            }
            eprintln!("{} dead or expired deliveries", letters.len());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("pyron-forwarder: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn replay(config: &Config, how: Replay, ids: &[String]) -> ExitCode {
    let mut conn = match connection(config).await {
        Ok(conn) => conn,
        Err(code) => return code,
    };
    match outbox::replay(&mut conn, ids, how, Duration::from_secs(5)).await {
        Ok(n) => {
            println!("replayed {n} deliveries ({})", how.as_str());
            if n < ids.len() {
                eprintln!(
                    "pyron-forwarder: {} of the {} delivery ids had no dead letter",
                    ids.len() - n,
                    ids.len()
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("pyron-forwarder: {err}");
            ExitCode::FAILURE
        }
    }
}
