//! Runs the whole comparison and writes `docs/benchmarks.md`'s comparison section.

use std::fmt::Write as _;
use std::path::PathBuf;

use tokio::process::Command;

use crate::compare::{self, Contender, Outcome, ProxiedLoad, Scenario, Setup};

/// Marks the part of the output file this tool owns.
const START_MARK: &str = "<!-- sse-bench compare: start -->";
const END_MARK: &str = "<!-- sse-bench compare: end -->";

/// The p99 latency the scale target allows.
const P99_TARGET_MS: f64 = 250.0;

pub struct ReportOptions {
    pub quick: bool,
    pub out: PathBuf,
    pub bin_dir: PathBuf,
    pub contenders: Option<Vec<Contender>>,
    pub max_search: bool,
}

fn scenario(
    label: &str,
    protocol: &'static str,
    streams: usize,
    subscribers: usize,
    seconds: u64,
    contenders: &[Contender],
) -> Scenario {
    Scenario {
        label: label.to_string(),
        protocol,
        streams_per_connection: streams,
        subscribers,
        topics: 1,
        rate: 10.0,
        seconds,
        size: 80,
        contenders: contenders.to_vec(),
    }
}

async fn command_output(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output().await {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
        .trim()
        .to_string(),
        Err(_) => "unknown".into(),
    }
}

async fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    format!(
        "- machine: {cores} cores ({cpu}), {:.0} GiB RAM, {}\n- nginx: {}; nchan: {}\n- sse-fanout: {} (release build), 2 worker threads; nginx: 2 worker processes\n- date: {}",
        memory as f64 / 1024.0 / 1024.0,
        command_output("uname", &["-sr"]).await,
        command_output("nginx", &["-v"]).await.trim_start_matches("nginx version: "),
        command_output("dpkg-query", &["-W", "-f", "${Version}", "libnginx-mod-nchan"]).await,
        command_output("git", &["describe", "--always", "--dirty"]).await,
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).await,
    )
}

pub async fn run(options: ReportOptions) {
    let repo = std::env::current_dir().expect("a working directory");
    if !repo.join("certs/dev/localhost.pem").exists() {
        eprintln!("sse-bench compare: run it from the repository root (certs/dev/ not found)");
        std::process::exit(2);
    }
    let setup = Setup {
        bin_dir: options.bin_dir.clone(),
        repo: repo.clone(),
        nginx: PathBuf::from("/usr/sbin/nginx"),
        ramp: 2000.0,
        workers: 2,
        proxy_env: Vec::new(),
        proxy_wrapper: Vec::new(),
    };
    let all = options.contenders.clone().unwrap_or_else(|| {
        vec![
            Contender::SseFanout,
            Contender::Nchan,
            Contender::NginxProxy,
        ]
    });
    let without_proxy: Vec<Contender> = all
        .iter()
        .copied()
        .filter(|c| *c != Contender::NginxProxy)
        .collect();
    // `mid`: the CPU figure at scale; `huge`: many idle-ish subscribers at
    // 1 event/s; `few`: the latency the proxy adds when nothing queues.
    let (small, mid, huge, few, seconds) = if options.quick {
        (200, 2000, 5000, 20, 3)
    } else {
        (1000, 10_000, 50_000, 100, 10)
    };
    let mut huge_scenario = scenario(
        &format!("{huge} subscribers, HTTP/2, 100 streams per connection, 1 event/s"),
        "h2",
        100,
        huge,
        seconds.max(10),
        &without_proxy,
    );
    huge_scenario.rate = 1.0;
    let scenarios = vec![
        scenario(
            &format!("{few} subscribers, HTTP/2, 1 stream per connection (latency at low load)"),
            "h2",
            1,
            few,
            seconds,
            &without_proxy,
        ),
        scenario(
            &format!("{small} subscribers, HTTP/2, 100 streams per connection"),
            "h2",
            100,
            small,
            seconds,
            &all,
        ),
        scenario(
            &format!("{small} subscribers, HTTP/2, 1 stream per connection"),
            "h2",
            1,
            small,
            seconds,
            &all,
        ),
        scenario(
            &format!("{small} subscribers, HTTP/1.1"),
            "h1",
            1,
            small,
            seconds,
            &all,
        ),
        scenario(
            &format!("{mid} subscribers, HTTP/2, 100 streams per connection"),
            "h2",
            100,
            mid,
            seconds,
            &without_proxy,
        ),
        huge_scenario,
        // The balancer hop: one instance, and two behind HAProxy.
        scenario(
            &format!("{small} subscribers, HTTP/2, 1 stream per connection: one instance, and two behind HAProxy"),
            "h2",
            1,
            small,
            seconds,
            &[Contender::SseFanout, Contender::SseFanoutBehindHaproxy],
        ),
    ];

    let mut sections = String::new();
    let mut results: Vec<(Scenario, Vec<Outcome>)> = Vec::new();
    for scenario in &scenarios {
        let mut outcomes = Vec::new();
        for contender in &scenario.contenders {
            eprintln!("sse-bench: {} — {}", scenario.label, contender.name());
            let outcome = compare::run_one(&setup, scenario, *contender).await;
            eprintln!("  {}", one_line(&outcome));
            outcomes.push(outcome);
        }
        sections.push_str(&compare::table(scenario, &outcomes));
        sections.push('\n');
        results.push((scenario.clone(), outcomes));
    }

    let mut max_lines = String::new();
    let mut largest = Vec::new();
    if options.max_search && !options.quick {
        for contender in &without_proxy {
            let (line, count) = max_search(&setup, *contender, seconds).await;
            let _ = writeln!(max_lines, "| {} | {} |", contender.name(), line);
            largest.push((*contender, count));
        }
    }

    let proxied = proxied_requests(&setup, &all, options.quick).await;
    let targets = targets(&results, &largest);

    let mut text = String::new();
    let _ = writeln!(text, "{START_MARK}");
    let _ = writeln!(text, "## sse-fanout, nchan and nginx, side by side\n");
    let _ = writeln!(
        text,
        "Command: `bash bench/compare.sh{}` (installs nginx, nchan and wrk when missing, builds the release binaries, runs `target/release/sse-bench compare`).\n",
        if options.quick { " --quick" } else { "" }
    );
    let _ = writeln!(text, "{}\n", machine().await);
    text.push_str(
        "Everything runs on this one machine: the contender, the benchmark app and the load generators share its cores (their CPU is reported so saturation shows). \
Memory per idle subscriber is the contender's PSS with all subscriptions open minus its PSS when freshly started, divided by their number, taken in steady state: a warm-up round subscribes and disconnects everyone first, so the figure includes freed-and-reused memory (which a zeroing allocation then writes, unlike fresh pages), as a long-running server's would. \
CPU per delivery is the contender's CPU time over the delivery window divided by the events delivered. \
Latency is from the app's emit timestamp (inside each event) to its arrival at the load generator. \
Upstream conns are the established connections to the app in the middle of the window (`ss`), streams opened the event streams the app served during the run; nchan is fed by pushes, so it has neither.\n\n",
    );
    text.push_str("### Targets\n\n");
    text.push_str(&targets);
    text.push('\n');
    text.push_str(&sections);
    if !max_lines.is_empty() {
        let _ = writeln!(
            text,
            "### Largest subscriber count with 100 % delivered and p99 ≤ {P99_TARGET_MS} ms (HTTP/2, 100 streams per connection, 10 events/s)\n\n| contender | subscribers |\n|---|---|\n{max_lines}"
        );
    }
    text.push_str(&proxied);
    let _ = writeln!(text, "{END_MARK}");

    let existing =
        std::fs::read_to_string(&options.out).unwrap_or_else(|_| "# Benchmarks\n".into());
    let updated = match (existing.find(START_MARK), existing.find(END_MARK)) {
        (Some(start), Some(end)) => format!(
            "{}{}{}",
            &existing[..start],
            text,
            &existing[end + END_MARK.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n{}", existing.trim_end(), format_args!("\n{text}")),
    };
    if let Err(e) = std::fs::write(&options.out, updated) {
        eprintln!(
            "sse-bench compare: cannot write {}: {e}",
            options.out.display()
        );
    }
    println!("{text}");
}

/// `sse-bench run`: one scenario, one contender, one line of figures.
pub async fn run_single(
    setup: Setup,
    contender: Contender,
    protocol: &'static str,
    streams: usize,
    subscribers: usize,
    seconds: u64,
    rate: f64,
) {
    let mut scenario = scenario(
        "single",
        protocol,
        streams,
        subscribers,
        seconds,
        &[contender],
    );
    scenario.rate = rate;
    let outcome = compare::run_one(&setup, &scenario, contender).await;
    println!("{} {}", contender.name(), one_line(&outcome));
}

fn one_line(o: &Outcome) -> String {
    format!(
        "answered {} failed {} delivered {}/{} dup {} p50 {:.1} ms p99 {:.1} ms mem {:.1} KB/sub cpu {:.2} µs/delivery ({:.0} %) app {:.0} % load {:.0} % upstream {:?} {}",
        o.answered, o.failed, o.delivered, o.expected, o.duplicates, o.p50_ms, o.p99_ms,
        o.pss_per_subscriber / 1000.0, o.cpu_us_per_delivery, o.proxy_cpu_percent, o.app_cpu_percent, o.load_cpu_percent,
        o.upstream_connections, o.note
    )
}

fn passed(o: &Outcome) -> bool {
    o.failed == 0 && o.expected > 0 && o.delivered == o.expected && o.p99_ms <= P99_TARGET_MS
}

/// The largest subscriber count (in steps) that still passes: the line for
/// the table, and the count.
async fn max_search(setup: &Setup, contender: Contender, seconds: u64) -> (String, Option<usize>) {
    let mut largest = None;
    for subscribers in [
        15_000, 20_000, 25_000, 30_000, 40_000, 50_000, 60_000, 80_000,
    ] {
        let scenario = scenario("max search", "h2", 100, subscribers, seconds, &[contender]);
        eprintln!(
            "sse-bench: max search — {} with {subscribers}",
            contender.name()
        );
        let outcome = compare::run_one(setup, &scenario, contender).await;
        eprintln!("  {}", one_line(&outcome));
        if !passed(&outcome) {
            let shown = largest.map_or("below 15000".to_string(), |n: usize| n.to_string());
            let line = format!(
                "{shown} (at {subscribers}: {:.1} % delivered, p99 {:.0} ms)",
                100.0 * outcome.delivered as f64 / outcome.expected.max(1) as f64,
                outcome.p99_ms
            );
            return (line, largest);
        }
        largest = Some(subscribers);
    }
    let shown = largest.map_or_else(String::new, |n| n.to_string());
    (format!("{shown} or more (largest tried)"), largest)
}

/// Ordinary proxied requests: HTTP/1.1 (wrk) and HTTP/2 + TLS (h2load)
/// through sse-fanout and nginx to the app's `/hello`.
async fn proxied_requests(setup: &Setup, contenders: &[Contender], quick: bool) -> String {
    let mut text = String::from("### Ordinary proxied requests\n\n");
    let seconds = if quick { 3 } else { 10 };
    let _ = writeln!(
        text,
        "{seconds} s of each load (after 1 s of warm-up) through each proxy to the same app (`sse-bench app`, `GET /hello`, 6 bytes). \
CPU per request: the proxy's CPU time (user + system, all its processes) over the requests done. \
`bash bench/proxied.sh` runs the same loads in interleaved rounds, with latency at a fixed rate.\n\n\
| load | proxy | requests/s | latency | proxy CPU | CPU per request |\n|---|---|---|---|---|---|"
    );
    for load in [ProxiedLoad::Http1, ProxiedLoad::Http2Tls] {
        for contender in contenders
            .iter()
            .filter(|c| matches!(c, Contender::SseFanout | Contender::NginxProxy))
        {
            match compare::proxied_run(setup, *contender, load, seconds).await {
                Ok(cells) => {
                    let _ = writeln!(text, "| {} | {} | {cells} |", load.name(), contender.name());
                }
                Err(e) => {
                    let _ = writeln!(
                        text,
                        "| {} | {} | failed: {e} | | | |",
                        load.name(),
                        contender.name()
                    );
                }
            }
        }
    }
    text.push('\n');
    text
}

/// The targets, checked against this run.
fn targets(results: &[(Scenario, Vec<Outcome>)], largest: &[(Contender, Option<usize>)]) -> String {
    // Scenarios in the order `run` lists them: low load, small (h2 ×100,
    // h2 ×1, h1), mid, huge.
    let find = |index: usize, contender: &str| -> Option<Outcome> {
        results
            .get(index)?
            .1
            .iter()
            .find(|o| o.contender == contender)
            .cloned()
    };
    let (low, h2_many, h2_one, h1, mid, huge) = (0, 1, 2, 3, 4, 5);
    let mut text = String::from("| target | sse-fanout | nchan | met |\n|---|---|---|---|\n");
    let mut row = |what: String, ours: String, theirs: String, met: Option<bool>| {
        let verdict = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        let _ = writeln!(text, "| {what} | {ours} | {theirs} | {verdict} |");
    };
    let kb = |o: &Outcome| format!("{:.1} KB", o.pss_per_subscriber / 1000.0);
    let cpu = |o: &Outcome| format!("{:.2} µs", o.cpu_us_per_delivery);
    let subscribers = |index: usize| results.get(index).map_or(0, |(s, _)| s.subscribers);
    if let (Some(us), Some(them)) = (find(mid, "sse-fanout"), find(mid, "nchan")) {
        row(
            format!(
                "CPU per delivery ≤ 0.5 × nchan's (HTTP/2, 100 streams/conn, {} subscribers)",
                subscribers(mid)
            ),
            cpu(&us),
            cpu(&them),
            Some(us.cpu_us_per_delivery <= 0.5 * them.cpu_us_per_delivery),
        );
        row(
            format!(
                "p99 latency ≤ nchan's (HTTP/2, 100 streams/conn, {} subscribers)",
                subscribers(mid)
            ),
            format!("{:.1} ms", us.p99_ms),
            format!("{:.1} ms", them.p99_ms),
            Some(us.p99_ms <= them.p99_ms),
        );
    }
    if let (Some(us), Some(them)) = (find(h2_one, "sse-fanout"), find(h2_one, "nchan")) {
        row(
            "CPU per delivery ≤ 0.8 × nchan's (HTTP/2, 1 stream/conn)".into(),
            cpu(&us),
            cpu(&them),
            Some(us.cpu_us_per_delivery <= 0.8 * them.cpu_us_per_delivery),
        );
        row(
            "memory per idle subscriber ≤ nchan's (HTTP/2, 1 stream/conn; aim ≤ 32 KB)".into(),
            kb(&us),
            kb(&them),
            Some(us.pss_per_subscriber <= them.pss_per_subscriber),
        );
    }
    if let (Some(us), Some(them)) = (find(h1, "sse-fanout"), find(h1, "nchan")) {
        row(
            "CPU per delivery ≤ 0.6 × nchan's (HTTP/1.1 + TLS)".into(),
            cpu(&us),
            cpu(&them),
            Some(us.cpu_us_per_delivery <= 0.6 * them.cpu_us_per_delivery),
        );
        row(
            "memory per idle subscriber ≤ 0.6 × nchan's (HTTP/1.1 + TLS)".into(),
            kb(&us),
            kb(&them),
            Some(us.pss_per_subscriber <= 0.6 * them.pss_per_subscriber),
        );
    }
    for index in [h2_many, mid] {
        if let Some(us) = find(index, "sse-fanout") {
            row(
                format!(
                    "memory per idle subscriber ≤ 5 KB (HTTP/2, 100 streams/conn, {} subscribers)",
                    subscribers(index)
                ),
                kb(&us),
                find(index, "nchan").map_or("-".into(), |t| kb(&t)),
                Some(us.pss_per_subscriber <= 5000.0),
            );
        }
    }
    if let Some(us) = find(huge, "sse-fanout") {
        let show = |o: &Outcome| {
            format!(
                "{:.1} % delivered, p99 {:.0} ms",
                100.0 * o.delivered as f64 / o.expected.max(1) as f64,
                o.p99_ms
            )
        };
        row(
            format!(
                "{} subscribers at 1 event/s: 100 % delivered, p99 ≤ 200 ms",
                subscribers(huge)
            ),
            show(&us),
            find(huge, "nchan").as_ref().map_or("-".into(), show),
            Some(
                us.failed == 0
                    && us.expected > 0
                    && us.delivered == us.expected
                    && us.p99_ms <= 200.0,
            ),
        );
    }
    let count = |c: Contender| largest.iter().find(|(l, _)| *l == c).and_then(|(_, n)| *n);
    if let (Some(us), Some(them)) = (count(Contender::SseFanout), count(Contender::Nchan)) {
        row(
            format!(
                "largest subscriber count with p99 ≤ {P99_TARGET_MS} ms ≥ 1.5 × nchan's (below)"
            ),
            us.to_string(),
            them.to_string(),
            Some(us as f64 >= 1.5 * them as f64),
        );
    }
    if let Some(us) = find(low, "sse-fanout") {
        row(
            format!(
                "latency at low load ({} subscribers), p99 ≤ 1 ms: app emit to the subscriber's read, which bounds what the proxy adds",
                subscribers(low)
            ),
            format!("p50 {:.2} ms, p99 {:.2} ms", us.p50_ms, us.p99_ms),
            find(low, "nchan").map_or("-".into(), |t| format!("p50 {:.2} ms, p99 {:.2} ms", t.p50_ms, t.p99_ms)),
            Some(us.p99_ms <= 1.0),
        );
    }
    let upstreams: Vec<String> = results
        .iter()
        .flat_map(|(_, o)| o.iter())
        .filter(|o| o.contender == "sse-fanout")
        .map(|o| o.upstream_streams.map_or("?".into(), |n| n.to_string()))
        .collect();
    row(
        "upstream streams opened: one per topic (1 topic, every scenario)".into(),
        upstreams.join(", "),
        "pushed".into(),
        Some(upstreams.iter().all(|u| u == "1")),
    );
    text
}
