//! `sse-bench`: the sse-fanout benchmark.
//!
//! ```text
//! sse-bench compare [--quick] [--out docs/benchmarks.md]   everything, side by side (see bench/compare.sh)
//! sse-bench app --listen ADDR ...                           the upstream app alone
//! sse-bench load --target ADDR --path P ...                 one load generator alone
//! ```
//!
//! `bench/compare.sh` installs nginx, nchan and wrk when missing, builds the
//! release binaries and runs `compare`, which writes its tables into
//! `docs/benchmarks.md`.

mod app;
mod compare;
mod histogram;
mod load;
mod procstat;
mod report;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sse-bench",
    about = "Benchmark sse-fanout against nchan and nginx"
)]
struct Args {
    #[command(subcommand)]
    command: Tool,
}

#[derive(Subcommand)]
enum Tool {
    /// The scripted upstream app: SSE streams, nchan publishing, /hello.
    App {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        topics: usize,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value_t = 100)]
        events: u64,
        #[arg(long, default_value_t = 80)]
        size: usize,
        /// Also POST every event to URL/<topic> (nchan's publisher).
        #[arg(long)]
        publish_url: Option<String>,
    },
    /// A load generator: many SSE subscriptions, measured.
    Load {
        #[arg(long)]
        target: SocketAddr,
        /// Subscription path; `{topic}` stands for the topic number.
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 1)]
        topics: usize,
        #[arg(long)]
        subscribers: usize,
        /// h2, h1-tls or h1.
        #[arg(long, default_value = "h2")]
        protocol: String,
        /// HTTP/2 streams per connection.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Subscriptions opened per second.
        #[arg(long, default_value_t = 2000.0)]
        ramp: f64,
        #[arg(long, default_value_t = 100)]
        events: u64,
        /// Source address to bind (spreads ephemeral ports).
        #[arg(long)]
        source: Option<IpAddr>,
    },
    /// One scenario against one contender; prints its figures.
    Run {
        /// sse-fanout, nchan or nginx.
        #[arg(long, default_value = "sse-fanout")]
        contender: String,
        /// h2, h1 (over TLS) or h1-plain.
        #[arg(long, default_value = "h2")]
        protocol: String,
        #[arg(long, default_value_t = 100)]
        streams: usize,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value = "target/release")]
        bin_dir: PathBuf,
    },
    /// Runs every scenario against every contender and writes the report.
    Compare {
        /// A short run (fewer, smaller scenarios) to check the set-up.
        #[arg(long)]
        quick: bool,
        /// Where the markdown goes (between the comparison markers).
        #[arg(long, default_value = "docs/benchmarks.md")]
        out: PathBuf,
        /// Folder with the release binaries.
        #[arg(long, default_value = "target/release")]
        bin_dir: PathBuf,
        /// Only these contenders (sse-fanout, nchan, nginx).
        #[arg(long, value_delimiter = ',')]
        contenders: Option<Vec<String>>,
        /// Skip the search for the largest subscriber count.
        #[arg(long)]
        no_max_search: bool,
    },
}

fn main() {
    let args = Args::parse();
    let runtime = match &args.command {
        // A load generator keeps to one core, like one browser process would.
        Tool::Load { .. } | Tool::App { .. } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Tool::Compare { .. } | Tool::Run { .. } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build(),
    }
    .expect("a tokio runtime");
    runtime.block_on(async move {
        match args.command {
            Tool::App {
                listen,
                topics,
                rate,
                events,
                size,
                publish_url,
            } => {
                let options = app::AppOptions {
                    listen,
                    topics,
                    rate,
                    events,
                    size,
                    publish_url,
                };
                if let Err(e) = app::run(options).await {
                    eprintln!("sse-bench app: {e}");
                    std::process::exit(1);
                }
            }
            Tool::Load {
                target,
                path,
                topics,
                subscribers,
                protocol,
                streams,
                ramp,
                events,
                source,
            } => {
                let protocol = match protocol.as_str() {
                    "h2" => load::Protocol::H2,
                    "h1-tls" => load::Protocol::H1Tls,
                    "h1" => load::Protocol::H1,
                    other => {
                        eprintln!("sse-bench load: unknown protocol {other:?} (h2, h1-tls, h1)");
                        std::process::exit(2);
                    }
                };
                load::run(load::LoadOptions {
                    target,
                    path,
                    topics,
                    subscribers,
                    protocol,
                    streams_per_connection: streams,
                    ramp_per_second: ramp,
                    events,
                    source,
                })
                .await
            }
            Tool::Run {
                contender,
                protocol,
                streams,
                subscribers,
                seconds,
                rate,
                bin_dir,
            } => {
                let Some(contender) = compare::Contender::parse(&contender) else {
                    eprintln!(
                        "sse-bench run: unknown contender {contender:?} (sse-fanout, nchan, nginx)"
                    );
                    std::process::exit(2);
                };
                let protocol: &'static str = match protocol.as_str() {
                    "h2" => "h2",
                    "h1" => "h1",
                    "h1-plain" => "h1-plain",
                    other => {
                        eprintln!("sse-bench run: unknown protocol {other:?} (h2, h1, h1-plain)");
                        std::process::exit(2);
                    }
                };
                report::run_single(
                    contender,
                    protocol,
                    streams,
                    subscribers,
                    seconds,
                    rate,
                    bin_dir,
                )
                .await
            }
            Tool::Compare {
                quick,
                out,
                bin_dir,
                contenders,
                no_max_search,
            } => {
                let contenders = contenders.map(|names| {
                    names
                        .iter()
                        .filter_map(|n| compare::Contender::parse(n))
                        .collect::<Vec<_>>()
                });
                report::run(report::ReportOptions {
                    quick,
                    out,
                    bin_dir,
                    contenders,
                    max_search: !no_max_search,
                })
                .await
            }
        }
    });
}
