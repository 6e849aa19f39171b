//! The `sse-fanout` command: read the arguments, load the config, run.
//!
//! ```text
//! sse-fanout [-c FILE]            run with FILE (default conf/sse-fanout.toml)
//! sse-fanout [-c FILE] --check    validate FILE and its certificates, then exit 0 or 2
//! sse-fanout [-c FILE] --upgrade  take over the listeners of a running instance
//! sse-fanout [-c FILE] --reload   check FILE, then have the running instance reload it
//! sse-fanout demo [-c FILE]       the proxy and a demo app (default conf/demo.toml)
//! ```
//!
//! Running, it stops on `SIGTERM` (gracefully) or `SIGINT`, hands over to a
//! new process on `SIGQUIT`, and reloads its config file on `SIGHUP`.

mod demo;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use sse_fanout::config::{Config, DEFAULT_CONFIG_PATH};
use sse_fanout::pid_file;
use sse_fanout::server::{self, StartOptions};

/// Exit status for a config that cannot be used, as `nginx -t` does.
const EXIT_BAD_CONFIG: u8 = 2;

/// A reverse proxy that fans one upstream Server-Sent Events stream per topic
/// out to every subscriber, and proxies everything else to the app.
#[derive(Parser, Debug)]
#[command(
    name = "sse-fanout",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
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

    /// Check the config as --check does, then send SIGHUP to the running
    /// instance named by its `pid_file`, which reloads it (exit 0 once sent,
    /// 2 for a config that cannot be used, 1 when no instance runs). The
    /// instance logs what the reload changed.
    #[arg(long, conflicts_with_all = ["check", "upgrade"])]
    reload: bool,

    /// Something other than running the proxy.
    #[command(subcommand)]
    command: Option<Command>,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// See it work: the proxy on https://localhost:8443 with a built-in demo
    /// app behind it, whose page opens dozens of EventSources at once.
    Demo {
        /// The config file (the demo app listens on its `[app] upstream`).
        #[arg(short = 'c', long = "config", value_name = "FILE", default_value = demo::DEFAULT_DEMO_CONFIG_PATH)]
        config: PathBuf,
    },
}

/// Loads a config, or says why not (the caller exits with [`EXIT_BAD_CONFIG`]).
fn load(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(config) => Some(config),
        Err(e) => {
            eprintln!("sse-fanout: {e}");
            None
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    if let Some(Command::Demo { config }) = &args.command {
        let Some(config) = load(config) else {
            return ExitCode::from(EXIT_BAD_CONFIG);
        };
        match demo::start(&config) {
            Ok(server) => server::run(server),
            Err(e) => {
                eprintln!("sse-fanout demo: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    let Some(config) = load(&args.config) else {
        return ExitCode::from(EXIT_BAD_CONFIG);
    };
    for warning in &config.warnings {
        eprintln!("sse-fanout: {}: warning: {warning}", args.config.display());
    }
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

    if args.reload {
        let pid_file = Path::new(&config.server.pid_file);
        return match pid_file::signal_running(pid_file) {
            Ok(pid) => {
                println!(
                    "{}: configuration is valid; asked sse-fanout (pid {pid}) to reload it",
                    args.config.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sse-fanout: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let start = StartOptions {
        upgrade: args.upgrade,
    };
    match server::build(&config, start) {
        Ok(built) => server::run(built),
        Err(e) => {
            eprintln!("sse-fanout: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}
