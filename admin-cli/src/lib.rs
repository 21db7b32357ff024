//! The e2ee-ca admin CLI as a library: `run` parses the command line, resolves the connection,
//! makes the call and renders the answer; `main.rs` only hands it the process's arguments,
//! environment and streams. Modules: `cli` (clap), `ceremony` (the recovery-key ceremony's files),
//! `settings` (flags, environment, env file), `calls` (gRPC), `render` (tables and JSON, no gRPC),
//! `exit` (exit codes).

#![forbid(unsafe_code)]

pub mod calls;
pub mod ceremony;
pub mod cli;
pub mod exit;
pub mod render;
pub mod settings;

use std::ffi::OsString;
use std::io::Write;

use clap::Parser;

use crate::cli::Cli;
use crate::exit::{Exit, Failure};
use crate::render::Format;

/// Runs the CLI on `arguments` (program name first), reading variables through `environment`,
/// writing the answer to `stdout` and a one-line error to `stderr`; returns the exit code.
pub fn run<I, T>(
    arguments: I,
    environment: &dyn Fn(&str) -> Option<String>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(arguments) {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version go to stdout with status 0; usage errors to stderr with 2.
            let text = error.render().to_string();
            let _ = if error.use_stderr() {
                stderr.write_all(text.as_bytes())
            } else {
                stdout.write_all(text.as_bytes())
            };
            return u8::try_from(error.exit_code()).unwrap_or(Exit::Usage.code());
        }
    };
    match execute(&cli, environment) {
        Ok(output) => match stdout.write_all(output.as_bytes()).and_then(|()| stdout.flush()) {
            Ok(()) => Exit::Ok.code(),
            Err(_) => Exit::Other.code(),
        },
        Err(failure) => {
            let _ = writeln!(stderr, "error: {}", failure.message);
            failure.exit.code()
        }
    }
}

fn execute(cli: &Cli, environment: &dyn Fn(&str) -> Option<String>) -> Result<String, Failure> {
    let format = if cli.json { Format::Json } else { Format::Table };
    let connection = settings::resolve(&cli.connection.flags(), environment)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::local(&anyhow::anyhow!("cannot start the async runtime: {error}")))?;
    runtime.block_on(async {
        let channel = calls::connect(&connection).await?;
        calls::execute(channel, &cli.command, format).await
    })
}
