//! pyron-api: receives alerts on `POST /webhook` and answers 202 once they are durable.

use std::process::ExitCode;

use pyron::{
    config::{Config, Role},
    startup::{Api, shutdown_signals},
    telemetry,
};

const USAGE: &str = "usage: pyron-api [--check-config]";

#[tokio::main]
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
