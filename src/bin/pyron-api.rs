//! pyron-api: receives alerts on `POST /webhook` and answers 202 once they are durable.

use std::process::ExitCode;

use pyron::{
    config::{Config, Role},
    startup::{Api, shutdown_signals},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::load(Role::Api) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("pyron-api: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config, "pyron-api");
    let mut stop = shutdown_signals();
    let api = tokio::select! {
        api = Api::build(&config) => api,
        _ = stop.changed() => return ExitCode::SUCCESS,
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
