//! pyron-api: receives alerts on `POST /webhook` and answers 202 once they are durable.

use std::process::ExitCode;

use pyron::{
    config::{Config, Role},
    startup::{Api, shutdown_signals},
    telemetry,
};

const USAGE: &str = "usage: pyron-api [--check-config]";

/// One thread. On a machine shared with NGINX, Redis and MongoDB, a profile at 3,000
/// alerts/s found a quarter of pyron-api's CPU in handing tasks between the runtime's
/// threads (futex wake-ups, task switches); on one thread the same load costs 16 % less
/// CPU per alert, with a lower p99 (`scripts/bench.py --rate 3000`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check_only = match args.as_slice() {
        [] => false,
        [flag] if flag == "--check-config" => true,
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(Role::Api) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("pyron-api: {err}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        println!("pyron-api: configuration OK");
        return ExitCode::SUCCESS;
    }
    telemetry::init(&config, "pyron-api");
    let stop = shutdown_signals();
    let api = tokio::select! {
        api = Api::build(&config) => api,
        () = stop.cancelled() => return ExitCode::SUCCESS,
    };
    let api = match api {
        Ok(api) => api,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("pyron-api: {err}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(bind = %api.bound, "pyron-api listening");
    if let Err(err) = api.serve(stop).await {
        tracing::error!("{err}");
        eprintln!("pyron-api: {err}");
        return ExitCode::FAILURE;
    }
    tracing::info!("pyron-api stopped");
    ExitCode::SUCCESS
}
