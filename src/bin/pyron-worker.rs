//! pyron-worker: consumes `webhook-jobs` and records each alert's outcome in `jobs`.

use std::process::ExitCode;

use pyron::{
    config::{Config, Role},
    startup::shutdown_signal,
    telemetry,
    worker::Worker,
};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::load(Role::Worker) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("pyron-worker: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config);
    let worker = match Worker::connect(&config).await {
        Ok(worker) => worker,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("pyron-worker: {err}");
            return ExitCode::FAILURE;
        }
    };
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    tracing::info!(consumer = %config.worker.consumer, "pyron-worker consuming");
    worker.run(stopped).await;
    ExitCode::SUCCESS
}
