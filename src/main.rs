//! The `sse-fanout` command: read the arguments, load the config, run.
//!
//! ```text
//! sse-fanout [-c FILE]            run with FILE (default conf/sse-fanout.toml)
//! sse-fanout [-c FILE] --check    validate FILE and its certificates, then exit 0 or 2
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use sse_fanout::config::{Config, DEFAULT_CONFIG_PATH};
use sse_fanout::server::{self, StartOptions};

/// Exit status for a config that cannot be used, as `nginx -t` does.
const EXIT_BAD_CONFIG: u8 = 2;

/// A reverse proxy that fans one upstream Server-Sent Events stream per topic
/// out to every subscriber, and proxies everything else to the app.
#[derive(Parser, Debug)]
#[command(name = "sse-fanout", version, about)]
struct Args {
    /// The config file.
    #[arg(short = 'c', long = "config", value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,

    /// Validate the config (and load its certificates), print the verdict and
    /// exit: 0 when it is usable, 2 when it is not.
    #[arg(long)]
    check: bool,

    /// Take over the listening sockets of a running sse-fanout through its
    /// `upgrade_sock`, for a restart that drops no connection.
    #[arg(long)]
    upgrade: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sse-fanout: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if args.check {
        println!(
            "{}: configuration is valid ({} listener(s), {} topic(s), app at {})",
            args.config.display(),
            config.listeners.len(),
            config.topics.len(),
            config.app.origin,
        );
        return ExitCode::SUCCESS;
    }

    let start = StartOptions {
        upgrade: args.upgrade,
    };
    match server::build(&config, start) {
        Ok((server, _hub)) => server.run_forever(),
        Err(e) => {
            eprintln!("sse-fanout: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}
