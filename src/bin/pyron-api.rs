//! pyron-api: receives alerts on `POST /webhook` and answers 202 once they are durable.

use std::process::ExitCode;

use pyron::{
    config::{Config, Role},
    startup::{Api, shutdown_signal},
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
    telemetry::init(&config);
    let api = match Api::build(&config).await {
        Ok(api) => api,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("pyron-api: {err}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(bind = %config.bind, "pyron-api listening");
    if let Err(err) = api.serve(shutdown_signal()).await {
        eprintln!("pyron-api: {err}");
        return ExitCode::FAILURE;
    }
    tracing::info!("pyron-api stopped");
    ExitCode::SUCCESS
}
