//! `sse-bench`: the sse-fanout benchmark.
//!
//! ```text
//! sse-bench compare [--quick] [--out docs/benchmarks.md]   everything, side by side (see bench/compare.sh)
//! sse-bench app --listen ADDR ...                           the upstream app alone
//! sse-bench load --target ADDR --path P ...                 one load generator alone
//! sse-bench run [--contender C] [--protocol P] ...           one scenario, one contender
//! sse-bench churn [--quick] [--out docs/benchmarks.md]      the churn soak: RSS under turnover
//! ```
//!
//! `bench/compare.sh` installs nginx, nchan and wrk when missing, builds the
//! release binaries and runs `compare`, which writes its tables into
//! `docs/benchmarks.md`; then (unless `--no-churn`) `churn`, which writes its
//! own section there.

mod app;
mod churn;
mod compare;
mod histogram;
mod load;
mod procstat;
mod report;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

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
        /// Events a private topic (any name but t0..) sends when opened.
        #[arg(long, default_value_t = 5)]
        private_events: u64,
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
        #[command(flatten)]
        proxy: ProxyLaunch,
    },
    /// The churn soak: subscribers replaced for minutes, the proxy's RSS
    /// sampled; reports growth after the warm-up and RSS after everyone left.
    Churn {
        /// A short run (500 subscribers, 60 s warm-up, 60 s measured).
        #[arg(long)]
        quick: bool,
        /// Subscriptions kept open [default: 2000; --quick: 500].
        #[arg(long)]
        subscribers: Option<usize>,
        /// HTTP/2 streams per connection.
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Fraction of the subscriptions replaced every second.
        #[arg(long, default_value_t = 0.1)]
        replace: f64,
        /// Seconds of churn before measuring [default: 180; --quick: 60].
        #[arg(long)]
        warm_up: Option<u64>,
        /// Seconds measured [default: 600; --quick: 60].
        #[arg(long)]
        seconds: Option<u64>,
        /// Shared topics.
        #[arg(long, default_value_t = 10)]
        topics: usize,
        /// Fraction of new subscriptions on a private topic instance.
        #[arg(long, default_value_t = 0.1)]
        private: f64,
        /// Events per second per shared topic [default: 10; --quick: 50].
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds after every topic was reclaimed before the last RSS
        /// reading [default: 20; --quick: 10].
        #[arg(long)]
        settle: Option<u64>,
        /// Write the report into this file (between its churn markers).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write every RSS sample into this file (CSV).
        #[arg(long)]
        samples: Option<PathBuf>,
        #[arg(long, default_value = "target/release")]
        bin_dir: PathBuf,
        #[command(flatten)]
        proxy: ProxyLaunch,
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

/// How sse-fanout is started, for allocator and profiler runs.
#[derive(clap::Args)]
struct ProxyLaunch {
    /// Extra environment for sse-fanout, KEY=VALUE (repeatable), e.g.
    /// `MALLOC_ARENA_MAX=2` or `LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2`.
    #[arg(long = "proxy-env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A command sse-fanout runs under, e.g. "heaptrack -o /tmp/churn".
    #[arg(long = "proxy-wrapper", value_name = "COMMAND")]
    wrapper: Option<String>,
}

impl ProxyLaunch {
    fn setup(&self, bin_dir: PathBuf) -> compare::Setup {
        let proxy_env = self
            .env
            .iter()
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) => (key.to_string(), value.to_string()),
                None => {
                    eprintln!("sse-bench: --proxy-env takes KEY=VALUE, not {pair:?}");
                    std::process::exit(2);
                }
            })
            .collect();
        compare::Setup {
            bin_dir,
            repo: std::env::current_dir().expect("a working directory"),
            nginx: PathBuf::from("/usr/sbin/nginx"),
            ramp: 2000.0,
            workers: 2,
            proxy_env,
            proxy_wrapper: self
                .wrapper
                .as_deref()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        }
    }
}

fn main() {
    let args = Args::parse();
    let runtime = match &args.command {
        // A load generator keeps to one core, like one browser process would.
        Tool::Load { .. } | Tool::App { .. } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Tool::Compare { .. } | Tool::Run { .. } | Tool::Churn { .. } => {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
        }
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
                private_events,
            } => {
                let options = app::AppOptions {
                    listen,
                    topics,
                    rate,
                    events,
                    size,
                    publish_url,
                    private_events,
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
                proxy,
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
                    proxy.setup(bin_dir),
                    contender,
                    protocol,
                    streams,
                    subscribers,
                    seconds,
                    rate,
                )
                .await
            }
            Tool::Churn {
                quick,
                subscribers,
                streams,
                replace,
                warm_up,
                seconds,
                topics,
                private,
                rate,
                settle,
                out,
                samples,
                bin_dir,
                proxy,
            } => {
                let defaults = if quick {
                    churn::ChurnOptions::quick()
                } else {
                    churn::ChurnOptions::full()
                };
                let options = churn::ChurnOptions {
                    subscribers: subscribers.unwrap_or(defaults.subscribers),
                    streams,
                    replace,
                    warm_up: warm_up.map_or(defaults.warm_up, Duration::from_secs),
                    measure: seconds.map_or(defaults.measure, Duration::from_secs),
                    topics,
                    private,
                    rate: rate.unwrap_or(defaults.rate),
                    settle: settle.map_or(defaults.settle, Duration::from_secs),
                    out,
                    samples,
                    command_line: command_line(),
                    ..defaults
                };
                churn::run(proxy.setup(bin_dir), options).await
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

/// How this process was invoked, as `sse-bench ...`, for reports.
fn command_line() -> String {
    let mut words = vec!["sse-bench".to_string()];
    words.extend(std::env::args().skip(1));
    words.join(" ")
}
