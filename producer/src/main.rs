//! `contactmirror-producer`: runs a sync (on the embedded default or over RabbitMQ), the demo, and the operator
//! commands. Thin wiring: parse, run, exit status; everything else lives in the `producer` library.

use std::process::ExitCode;

use clap::Parser;
use producer::{cli, run, EXIT_FAILURES};

/// The jobs of the embedded default run in this process: the worker's allocator.
#[global_allocator]
static ALLOCATOR: worker::heap::Allocator = worker::heap::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    shared::telemetry::init_with_writer(cli.log_format, producer::progress::LogWriter);
    match run::dispatch(cli).await {
        Ok(code) => code,
        Err(error) => {
            // Each cause once: a broker error's text repeats its source's, which `{:#}` would print twice.
            eprintln!("error: {}", shared::telemetry::with_causes(error.as_ref()));
            ExitCode::from(EXIT_FAILURES)
        }
    }
}
