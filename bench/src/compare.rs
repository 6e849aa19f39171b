//! The side-by-side comparison: sse-fanout, nchan and plain nginx in one run.
//!
//! For each scenario and contender it starts, on 127.0.0.1 ports:
//! - the benchmark app (`sse-bench app`), silent until told to start;
//! - the contender: sse-fanout (release build, a config written to a temp
//!   folder), nginx with nchan (events pushed to its publisher endpoint,
//!   subscribers on `nchan_subscriber eventsource`), or nginx as a plain SSE
//!   reverse proxy (`proxy_buffering off`: one upstream connection per
//!   subscriber);
//! - load generators (`sse-bench load`), several when one process would run
//!   out of file descriptors.
//!
//! It measures the contender's memory (PSS) before and after the ramp, then
//! lets the app emit the events and measures CPU time of the contender, the
//! app and the load generators over the delivery window, the upstream
//! connections (`ss`), and what the load generators report. Everything is
//! stopped at the end of each run; every wait has a deadline.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{timeout, Instant};

use crate::histogram::Histogram;
use crate::procstat;

/// The contenders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    SseFanout,
    Nchan,
    NginxProxy,
    /// Two sse-fanout instances behind HAProxy (`mode tcp`, `send-proxy-v2`),
    /// as `docs/operations.md` sets them up: the cost of the balancer hop.
    SseFanoutBehindHaproxy,
}

/// Debian's HAProxy, for [`Contender::SseFanoutBehindHaproxy`].
const HAPROXY: &str = "/usr/sbin/haproxy";

impl Contender {
    pub fn name(self) -> &'static str {
        match self {
            Contender::SseFanout => "sse-fanout",
            Contender::Nchan => "nchan",
            Contender::NginxProxy => "nginx proxy",
            Contender::SseFanoutBehindHaproxy => "2 × sse-fanout behind HAProxy",
        }
    }

    pub fn parse(text: &str) -> Option<Contender> {
        match text {
            "sse-fanout" => Some(Contender::SseFanout),
            "nchan" => Some(Contender::Nchan),
            "nginx" | "nginx-proxy" => Some(Contender::NginxProxy),
            "haproxy" => Some(Contender::SseFanoutBehindHaproxy),
            _ => None,
        }
    }
}

/// One load shape.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub label: String,
    /// `h2`, `h1` (over TLS).
    pub protocol: &'static str,
    pub streams_per_connection: usize,
    pub subscribers: usize,
    pub topics: usize,
    pub rate: f64,
    pub seconds: u64,
    pub size: usize,
    pub contenders: Vec<Contender>,
}

/// Everything a run needs to find.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Folder holding `sse-fanout` and `sse-bench` (release builds).
    pub bin_dir: PathBuf,
    /// The repository (for the development certificate).
    pub repo: PathBuf,
    /// nginx binary.
    pub nginx: PathBuf,
    /// Subscriptions opened per second while ramping.
    pub ramp: f64,
    /// Worker threads / processes each contender gets.
    pub workers: usize,
    /// Extra environment for sse-fanout (`LD_PRELOAD`, `MALLOC_ARENA_MAX`,
    /// `GLIBC_TUNABLES`...), so allocator settings are measured with the same
    /// binary and harness.
    pub proxy_env: Vec<(String, String)>,
    /// A program sse-fanout runs under (`heaptrack -o FILE`); empty for none.
    pub proxy_wrapper: Vec<String>,
}

/// The figures of one run.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub contender: &'static str,
    pub answered: u64,
    pub failed: u64,
    pub delivered: u64,
    pub expected: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub pss_per_subscriber: f64,
    pub cpu_us_per_delivery: f64,
    pub proxy_cpu_percent: f64,
    pub app_cpu_percent: f64,
    pub load_cpu_percent: f64,
    pub upstream_connections: Option<usize>,
    /// Event streams the app opened (its GETs on /stream/...) during the run.
    pub upstream_streams: Option<u64>,
    pub note: String,
}

/// A child process with line-oriented stdin/stdout.
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Proc {
    pub fn spawn(command: &mut Command) -> std::io::Result<Proc> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Ok(Proc {
            child,
            stdin,
            stdout,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The next stdout line starting with `prefix` (rest of the line).
    pub async fn expect(&mut self, prefix: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let line = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.stdout.next_line(),
            )
            .await
            .ok()?
            .ok()??;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Some(rest.trim().to_string());
            }
        }
    }

    pub async fn say(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }
}

/// A free 127.0.0.1 port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

/// Waits until something accepts on `port`.
async fn wait_for_port(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A running contender: its processes and where subscribers go.
pub struct Running {
    /// The process whose PSS/CPU counts (nginx: master and workers).
    pub pids: Vec<u32>,
    /// Keeps processes alive; killed on drop.
    _processes: Vec<Child>,
    pub tls_port: u16,
    plain_port: u16,
    /// sse-fanout's admin listener (`/stats`); none for nginx.
    pub admin_port: Option<u16>,
    /// sse-fanout itself when it runs under a wrapper (whose process is the
    /// one in `_processes`): it is stopped with SIGTERM so the wrapper can
    /// finish its output.
    wrapped_proxy: Option<u32>,
    /// Subscription path, `{topic}` standing for the topic number.
    path: String,
    /// Where the app publishes (nchan), if anywhere.
    publish_url: Option<String>,
    /// nginx's prefix, to stop it.
    nginx_prefix: Option<PathBuf>,
    /// nginx's binary, to stop it even when a run ends early.
    nginx: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_nginx();
        if let Some(pid) = self.wrapped_proxy {
            signal(pid, "KILL");
        }
    }
}

/// Sends a signal with kill(1) (the benchmark has no unsafe code).
fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

impl Running {
    /// Stops nginx (sse-fanout is killed when its `Child` drops) and waits
    /// for its processes to go, so the next run starts on a quiet machine.
    pub async fn stop(mut self) {
        if let Some(pid) = self.wrapped_proxy.take() {
            // A wrapper (heaptrack) writes its output when the proxy exits.
            signal(pid, "TERM");
            for child in &mut self._processes {
                if timeout(Duration::from_secs(60), child.wait())
                    .await
                    .is_err()
                {
                    signal(pid, "KILL");
                }
            }
        }
        self.stop_nginx();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pids.iter().any(|p| {
            Path::new(&format!("/proc/{p}/stat")).exists() && procstat::cpu_time(*p).is_some()
        }) && self.nginx_prefix.is_some()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop_nginx(&self) {
        if let Some(prefix) = &self.nginx_prefix {
            let _ = std::process::Command::new(&self.nginx)
                .args([
                    "-p",
                    &prefix.to_string_lossy(),
                    "-c",
                    "nginx.conf",
                    "-s",
                    "stop",
                ])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn nginx_conf(
    setup: &Setup,
    contender: Contender,
    prefix: &Path,
    tls_port: u16,
    plain_port: u16,
    app_port: u16,
) -> String {
    let cert = setup.repo.join("certs/dev/localhost.pem");
    let key = setup.repo.join("certs/dev/localhost-key.pem");
    let locations = match contender {
        Contender::Nchan => "
        location ~ ^/sub/(\\w+)$ { nchan_subscriber eventsource; nchan_channel_id $1; }
        location ~ ^/pub/(\\w+)$ { nchan_publisher; nchan_channel_id $1; nchan_message_buffer_length 1000; nchan_message_timeout 5m; }
        location = /hello { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"
            .to_string(),
        _ => "
        location /events/ {
            proxy_pass http://app/stream/;
            proxy_http_version 1.1; proxy_set_header Connection \"\";
            proxy_buffering off; proxy_cache off; proxy_read_timeout 1h;
        }
        location = /hello { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"
            .to_string(),
    };
    let module = if contender == Contender::Nchan {
        "load_module /usr/lib/nginx/modules/ngx_nchan_module.so;"
    } else {
        ""
    };
    format!(
        "{module}
worker_processes {workers};
worker_rlimit_nofile 19000;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
daemon on;
events {{ worker_connections 18000; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp; fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
    upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{tls_port} ssl http2;
        listen 127.0.0.1:{plain_port};
        http2_max_concurrent_streams 128;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        {locations}
    }}
}}
",
        workers = setup.workers,
        prefix = prefix.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

/// The ports of one sse-fanout instance.
struct Ports {
    tls: u16,
    plain: u16,
    admin: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            tls: free_port(),
            plain: free_port(),
            admin: free_port(),
        }
    }
}

/// `proxy_protocol`: the TLS listener takes connections from HAProxy, each
/// after a PROXY header.
fn sse_fanout_conf(
    setup: &Setup,
    ports: &Ports,
    proxy_protocol: bool,
    app_port: u16,
    dir: &Path,
) -> String {
    let (tls_port, plain_port, admin_port) = (ports.tls, ports.plain, ports.admin);
    let cert = setup.repo.join("certs/dev/localhost.pem");
    let key = setup.repo.join("certs/dev/localhost-key.pem");
    format!(
        r#"
[server]
threads = {workers}
grace_period = "1s"
shutdown_timeout = "1s"
pid_file = "{dir}/sse-fanout.pid"
upgrade_sock = "{dir}/upgrade.sock"

[[listen]]
addr = "127.0.0.1:{tls_port}"
tls = {{ cert = "{cert}", key = "{key}" }}
proxy_protocol = {proxy_protocol}

[[listen]]
addr = "127.0.0.1:{plain_port}"

[app]
upstream = "127.0.0.1:{app_port}"

[admin]
addr = "127.0.0.1:{admin_port}"

# The load generators open every subscription from a few addresses, fast.
[limits]
max_subscribers = 1000000
max_subscribers_per_ip = 1000000
subscribe_rate_per_ip = 1000000

[sse]
heartbeat = "30s"
linger = "5s"

[[topic]]
path = "/events/{{topic}}"
upstream = "/stream/{{topic}}"
"#,
        workers = setup.workers,
        dir = dir.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

pub async fn start_contender(
    setup: &Setup,
    contender: Contender,
    app_port: u16,
    dir: &Path,
) -> Result<Running, String> {
    let tls_port = free_port();
    let plain_port = free_port();
    match contender {
        Contender::SseFanout => {
            let admin_port = free_port();
            let ports = Ports {
                tls: tls_port,
                plain: plain_port,
                admin: admin_port,
            };
            let config = dir.join("sse-fanout.toml");
            std::fs::write(
                &config,
                sse_fanout_conf(setup, &ports, false, app_port, dir),
            )
            .map_err(|e| e.to_string())?;
            let binary = setup.bin_dir.join("sse-fanout");
            let mut command = match setup.proxy_wrapper.split_first() {
                Some((program, args)) => {
                    let mut command = Command::new(program);
                    command.args(args).arg(&binary);
                    command
                }
                None => Command::new(&binary),
            };
            let child = command
                .arg("-c")
                .arg(&config)
                .env("RUST_LOG", "warn")
                .envs(setup.proxy_env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start sse-fanout: {e}"))?;
            let child_pid = child.id().unwrap_or(0);
            if !wait_for_port(tls_port).await {
                return Err("sse-fanout did not start listening".into());
            }
            let pid = procstat::find_named(child_pid, "sse-fanout").unwrap_or(child_pid);
            Ok(Running {
                pids: vec![pid],
                _processes: vec![child],
                tls_port,
                plain_port,
                admin_port: Some(admin_port),
                wrapped_proxy: (pid != child_pid).then_some(pid),
                path: "/events/t{topic}".into(),
                publish_url: None,
                nginx_prefix: None,
                nginx: setup.nginx.clone(),
            })
        }
        Contender::SseFanoutBehindHaproxy => {
            let mut pids = Vec::new();
            let mut processes = Vec::new();
            let mut servers = String::new();
            for n in 0..2 {
                let instance = dir.join(format!("sse-fanout-{n}"));
                std::fs::create_dir_all(&instance).map_err(|e| e.to_string())?;
                let ports = Ports::free();
                let config = instance.join("sse-fanout.toml");
                std::fs::write(
                    &config,
                    sse_fanout_conf(setup, &ports, true, app_port, &instance),
                )
                .map_err(|e| e.to_string())?;
                let child = Command::new(setup.bin_dir.join("sse-fanout"))
                    .arg("-c")
                    .arg(&config)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| format!("cannot start sse-fanout: {e}"))?;
                if !wait_for_port(ports.tls).await {
                    return Err("sse-fanout did not start listening".into());
                }
                pids.push(child.id().unwrap_or(0));
                processes.push(child);
                let _ = writeln!(
                    servers,
                    "    server s{n} 127.0.0.1:{} send-proxy-v2 check port {}",
                    ports.tls, ports.admin
                );
            }
            // The config docs/operations.md shows, with room for the load
            // (two sockets per connection, within a 20000 open-file limit).
            let config = format!(
                "global
    maxconn 9000

defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    retries 3
    option redispatch

frontend sse
    bind 127.0.0.1:{tls_port}
    maxconn 9000
    default_backend sse_fanout

backend sse_fanout
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500ms fall 1 rise 2
{servers}"
            );
            let path = dir.join("haproxy.cfg");
            std::fs::write(&path, config).map_err(|e| e.to_string())?;
            // -db: in the foreground, so it stops with its `Child`.
            let haproxy = Command::new(HAPROXY)
                .arg("-db")
                .arg("-f")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start haproxy ({HAPROXY}): {e}"))?;
            if !wait_for_port(tls_port).await {
                return Err("haproxy did not start listening".into());
            }
            pids.push(haproxy.id().unwrap_or(0));
            processes.push(haproxy);
            Ok(Running {
                pids,
                _processes: processes,
                tls_port,
                plain_port,
                admin_port: None,
                wrapped_proxy: None,
                path: "/events/t{topic}".into(),
                publish_url: None,
                nginx_prefix: None,
                nginx: setup.nginx.clone(),
            })
        }
        Contender::Nchan | Contender::NginxProxy => {
            let prefix = dir.join("nginx");
            std::fs::create_dir_all(prefix.join("tmp")).map_err(|e| e.to_string())?;
            std::fs::write(
                prefix.join("nginx.conf"),
                nginx_conf(setup, contender, &prefix, tls_port, plain_port, app_port),
            )
            .map_err(|e| e.to_string())?;
            let status = Command::new(&setup.nginx)
                .args(["-p", &prefix.to_string_lossy(), "-c", "nginx.conf"])
                .status()
                .await
                .map_err(|e| format!("cannot start nginx: {e}"))?;
            if !status.success() || !wait_for_port(tls_port).await {
                let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
                return Err(format!("nginx did not start: {log}"));
            }
            let master: u32 = std::fs::read_to_string(prefix.join("nginx.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .ok_or("no nginx pid")?;
            let mut pids = vec![master];
            pids.extend(procstat::children(master));
            let (path, publish_url) = match contender {
                Contender::Nchan => (
                    "/sub/t{topic}".to_string(),
                    Some(format!("http://127.0.0.1:{plain_port}/pub")),
                ),
                _ => ("/events/t{topic}".to_string(), None),
            };
            Ok(Running {
                pids,
                _processes: Vec::new(),
                tls_port,
                plain_port,
                admin_port: None,
                wrapped_proxy: None,
                path,
                publish_url,
                nginx_prefix: Some(prefix),
                nginx: setup.nginx.clone(),
            })
        }
    }
}

fn percent(cpu: Duration, wall: Duration) -> f64 {
    100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
}

/// Subscriptions one load process handles (its open-file limit is ~20000).
const SUBSCRIBERS_PER_LOAD_PROCESS: usize = 10_000;

/// How long a ramp may take before it counts as failed.
fn ramp_limit(setup: &Setup, scenario: &Scenario) -> Duration {
    Duration::from_secs_f64(scenario.subscribers as f64 / setup.ramp + 60.0)
}

/// Starts the load generators for a scenario (several when one process
/// would run out of file descriptors).
async fn ramp_up(
    setup: &Setup,
    scenario: &Scenario,
    running: &Running,
    events: u64,
) -> Result<Vec<Proc>, String> {
    let processes = scenario
        .subscribers
        .div_ceil(SUBSCRIBERS_PER_LOAD_PROCESS)
        .max(1);
    let mut loads = Vec::new();
    for index in 0..processes {
        let share = scenario.subscribers / processes
            + usize::from(index < scenario.subscribers % processes);
        let port = if scenario.protocol == "h1-plain" {
            running.plain_port
        } else {
            running.tls_port
        };
        let protocol = match scenario.protocol {
            "h2" => "h2",
            "h1-plain" => "h1",
            _ => "h1-tls",
        };
        let mut command = Command::new(setup.bin_dir.join("sse-bench"));
        command.args([
            "load",
            "--target",
            &format!("127.0.0.1:{port}"),
            "--path",
            &running.path,
            "--topics",
            &scenario.topics.to_string(),
            "--subscribers",
            &share.to_string(),
            "--protocol",
            protocol,
            "--streams",
            &scenario.streams_per_connection.to_string(),
            "--ramp",
            &(setup.ramp / processes as f64).to_string(),
            "--events",
            &events.to_string(),
            "--source",
            &format!("127.0.0.{}", 2 + index),
        ]);
        loads.push(
            Proc::spawn(&mut command).map_err(|e| format!("cannot start a load generator: {e}"))?,
        );
    }
    Ok(loads)
}

/// Runs one scenario for one contender.
pub async fn run_one(setup: &Setup, scenario: &Scenario, contender: Contender) -> Outcome {
    let mut outcome = Outcome {
        contender: contender.name(),
        ..Outcome::default()
    };
    let dir =
        std::env::temp_dir().join(format!("sse-bench-{}-{}", std::process::id(), free_port()));
    let _ = std::fs::create_dir_all(&dir);
    let result = run_in(setup, scenario, contender, &dir, &mut outcome).await;
    if let Err(note) = result {
        outcome.note = note;
    }
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn run_in(
    setup: &Setup,
    scenario: &Scenario,
    contender: Contender,
    dir: &Path,
    outcome: &mut Outcome,
) -> Result<(), String> {
    let app_port = free_port();
    let events = (scenario.rate * scenario.seconds as f64).round() as u64;
    // The contender first (it knows the app's port, and connects only when
    // subscribers arrive), then the app: nchan gets events pushed to its
    // publisher endpoint; the others pull streams from the app.
    let running = start_contender(setup, contender, app_port, dir).await?;
    let mut app_command = Command::new(setup.bin_dir.join("sse-bench"));
    app_command.args([
        "app",
        "--listen",
        &format!("127.0.0.1:{app_port}"),
        "--topics",
        &scenario.topics.to_string(),
        "--rate",
        &scenario.rate.to_string(),
        "--events",
        &events.to_string(),
        "--size",
        &scenario.size.to_string(),
    ]);
    if let Some(url) = &running.publish_url {
        app_command.args(["--publish-url", url]);
    }
    let mut app =
        Proc::spawn(&mut app_command).map_err(|e| format!("cannot start the app: {e}"))?;
    app.expect("listening", Duration::from_secs(10))
        .await
        .ok_or("the app did not start")?;
    tokio::time::sleep(Duration::from_millis(500)).await; // let the contender finish starting up

    let mut pids = running.pids.clone();
    if running.nginx_prefix.is_some() {
        pids = vec![running.pids[0]];
        pids.extend(procstat::children(running.pids[0]));
    }
    let pss_before = procstat::total_pss(&pids);
    // A warm-up round first: subscribe everyone, then disconnect. A
    // long-running server reuses freed memory, and reused memory costs more
    // than fresh (a zeroed buffer from recycled memory is written, fresh
    // pages are not), so the figure below, taken in the second round against
    // the fresh baseline, is the steady-state cost of N subscribers.
    let mut warm_up = ramp_up(setup, scenario, &running, events).await?;
    for load in &mut warm_up {
        load.expect("ready", ramp_limit(setup, scenario))
            .await
            .ok_or("a load generator never got ready (warm-up)")?;
    }
    drop(warm_up);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut loads = ramp_up(setup, scenario, &running, events).await?;
    for load in &mut loads {
        let ready = load
            .expect("ready", ramp_limit(setup, scenario))
            .await
            .ok_or("a load generator never got ready")?;
        let ready: Value = serde_json::from_str(&ready).unwrap_or_default();
        outcome.answered += ready["answered"].as_u64().unwrap_or(0);
        outcome.failed += ready["failed"].as_u64().unwrap_or(0);
    }
    // Let buffers settle, then take the idle memory figure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pss_after = procstat::total_pss(&pids);
    outcome.pss_per_subscriber =
        (pss_after.saturating_sub(pss_before)) as f64 / (outcome.answered.max(1) as f64);

    // The delivery window.
    let load_pids: Vec<u32> = loads.iter().map(Proc::pid).collect();
    let (proxy_cpu0, app_cpu0, load_cpu0) = (
        procstat::total_cpu(&pids),
        procstat::total_cpu(&[app.pid()]),
        procstat::total_cpu(&load_pids),
    );
    let window_start = Instant::now();
    app.say("start").await;
    let emit_limit = Duration::from_secs(scenario.seconds * 3 + 30);
    let mid_window = Duration::from_secs(scenario.seconds / 2).max(Duration::from_millis(500));
    tokio::time::sleep(mid_window).await;
    outcome.upstream_connections = procstat::established_to_port(app_port);
    let done = app
        .expect("done", emit_limit)
        .await
        .ok_or("the app never finished emitting")?;
    let done: Value = serde_json::from_str(&done).unwrap_or_default();
    outcome.upstream_streams = done["streams_opened"].as_u64();
    // Stragglers get a grace period, then the load generators report.
    let grace = Duration::from_secs(5);
    let mut results = Vec::new();
    let report_deadline = Instant::now() + grace + Duration::from_secs(30);
    for load in &mut loads {
        // Ask to stop after the grace period unless already complete.
        let result = match timeout(grace, load.stdout.next_line()).await {
            Ok(Ok(Some(line))) if line.starts_with('{') => Some(line),
            _ => {
                load.say("stop").await;
                load.expect(
                    "{",
                    report_deadline.saturating_duration_since(Instant::now()),
                )
                .await
                .map(|rest| format!("{{{rest}"))
            }
        };
        results.push(result.ok_or("a load generator did not report")?);
    }
    let wall = window_start.elapsed();
    let proxy_cpu = procstat::total_cpu(&pids).saturating_sub(proxy_cpu0);
    let app_cpu = procstat::total_cpu(&[app.pid()]).saturating_sub(app_cpu0);
    let load_cpu = procstat::total_cpu(&load_pids).saturating_sub(load_cpu0);

    let mut latency = Histogram::default();
    for line in &results {
        let result: Value =
            serde_json::from_str(line).map_err(|e| format!("bad load report: {e}"))?;
        outcome.delivered += result["delivered"].as_u64().unwrap_or(0);
        outcome.duplicates += result["duplicates"].as_u64().unwrap_or(0);
        outcome.out_of_order += result["out_of_order"].as_u64().unwrap_or(0);
        latency.merge(&Histogram::from_json(&result["latency"]));
        if let Some(error) = result["first_error"].as_str() {
            if outcome.note.is_empty() {
                outcome.note = format!("first failure: {error}");
            }
        }
    }
    outcome.expected = events * scenario.subscribers as u64;
    outcome.p50_ms = latency.percentile(0.50) as f64 / 1000.0;
    outcome.p99_ms = latency.percentile(0.99) as f64 / 1000.0;
    outcome.max_ms = latency.max_us() as f64 / 1000.0;
    outcome.cpu_us_per_delivery = proxy_cpu.as_secs_f64() * 1e6 / (outcome.delivered.max(1) as f64);
    outcome.proxy_cpu_percent = percent(proxy_cpu, wall);
    outcome.app_cpu_percent = percent(app_cpu, wall);
    outcome.load_cpu_percent = percent(load_cpu, wall);
    drop(loads);
    drop(app);
    running.stop().await;
    Ok(())
}

/// The markdown table of one scenario.
pub fn table(scenario: &Scenario, outcomes: &[Outcome]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "### {}\n\n{} subscribers, {}, {} topic(s), {} events/s per topic for {} s, {}-byte events.\n",
        scenario.label,
        scenario.subscribers,
        match scenario.protocol {
            "h2" => format!("HTTP/2 + TLS, {} stream(s) per connection", scenario.streams_per_connection),
            "h1" => "HTTP/1.1 + TLS".to_string(),
            other => other.to_string(),
        },
        scenario.topics,
        scenario.rate,
        scenario.seconds,
        scenario.size,
    );
    text.push_str("| contender | answered | delivered / expected | dup / reordered | p50 ms | p99 ms | max ms | memory per idle subscriber | CPU per delivery | contender CPU | app CPU | load CPU | upstream conns (ss) / streams opened |\n");
    text.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for o in outcomes {
        let delivered = if o.expected > 0 {
            format!(
                "{} / {} ({:.1} %)",
                o.delivered,
                o.expected,
                100.0 * o.delivered as f64 / o.expected as f64
            )
        } else {
            "-".into()
        };
        let connections = format!(
            "{} / {}",
            o.upstream_connections
                .map_or("-".to_string(), |n| n.to_string()),
            o.upstream_streams
                .map_or("-".to_string(), |n| n.to_string())
        );
        let _ = writeln!(
            text,
            "| {} | {}{} | {} | {} / {} | {:.2} | {:.2} | {:.1} | {:.1} KB | {:.2} µs | {:.0} % | {:.0} % | {:.0} % | {} |",
            o.contender,
            o.answered,
            if o.failed > 0 { format!(" ({} failed)", o.failed) } else { String::new() },
            delivered,
            o.duplicates,
            o.out_of_order,
            o.p50_ms,
            o.p99_ms,
            o.max_ms,
            o.pss_per_subscriber / 1000.0,
            o.cpu_us_per_delivery,
            o.proxy_cpu_percent,
            o.app_cpu_percent,
            o.load_cpu_percent,
            connections,
        );
    }
    for o in outcomes.iter().filter(|o| !o.note.is_empty()) {
        let _ = writeln!(text, "\n{}: {}", o.contender, o.note);
    }
    text
}

/// How ordinary requests are sent through a contender to the app's `/hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxiedLoad {
    /// `wrk -t1 -c32`: HTTP/1.1 keep-alive on the plaintext listener.
    Http1,
    /// `h2load -c20 -m10`: HTTP/2 over TLS on the TLS listener.
    Http2Tls,
}

impl ProxiedLoad {
    /// The table's name for the load.
    pub fn name(self) -> &'static str {
        match self {
            ProxiedLoad::Http1 => "HTTP/1.1 keep-alive (`wrk -t1 -c32`)",
            ProxiedLoad::Http2Tls => "HTTP/2 + TLS (`h2load -c20 -m10`)",
        }
    }

    /// The load generator's command: program and arguments, for `seconds`
    /// (with `--latency` where the program reports percentiles).
    fn command(self, running: &Running, seconds: u64) -> (&'static str, Vec<String>) {
        match self {
            ProxiedLoad::Http1 => (
                "wrk",
                vec![
                    "-t1".into(),
                    "-c32".into(),
                    format!("-d{seconds}s"),
                    "--latency".into(),
                    format!("http://127.0.0.1:{}/hello", running.plain_port),
                ],
            ),
            ProxiedLoad::Http2Tls => (
                "h2load",
                vec![
                    "-c20".into(),
                    "-m10".into(),
                    "-D".into(),
                    seconds.to_string(),
                    format!("https://127.0.0.1:{}/hello", running.tls_port),
                ],
            ),
        }
    }

    /// Requests/s, requests done and the latency cell from the program's
    /// output.
    fn read(self, text: &str) -> Result<(f64, u64, String), String> {
        let line = |prefix: &str| text.lines().map(str::trim).find(|l| l.starts_with(prefix));
        let word = |prefix: &str, n: usize| {
            line(prefix)
                .and_then(|l| l.split_whitespace().nth(n))
                .map(|w| w.trim_end_matches(',').to_string())
        };
        match self {
            ProxiedLoad::Http1 => {
                let rps = word("Requests/sec:", 1).and_then(|r| r.parse().ok());
                let done = text
                    .lines()
                    .find(|l| l.contains("requests in"))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|n| n.parse().ok());
                let errors = text
                    .lines()
                    .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
                    .map(|l| format!(" ({})", l.trim()))
                    .unwrap_or_default();
                let latency = format!(
                    "p50 {}, p99 {}{errors}",
                    word("50%", 1).unwrap_or_default(),
                    word("99%", 1).unwrap_or_default()
                );
                Ok((
                    rps.ok_or(format!("wrk printed no rate: {text}"))?,
                    done.unwrap_or(0),
                    latency,
                ))
            }
            ProxiedLoad::Http2Tls => {
                // "finished in 10.00s, 28376.40 req/s, 3.52MB/s"
                let rps = word("finished in", 3).and_then(|r| r.parse().ok());
                // "requests: 283764 total, 283764 started, 283764 done, 283764 succeeded, 0 failed, ..."
                let done = word("requests:", 5).and_then(|n| n.parse().ok());
                let failed = word("requests:", 9).unwrap_or_default();
                // "time for request:  1.10ms  94.02ms  6.95ms  4.08ms  80.20%" (min max mean sd)
                let mean = word("time for request:", 5).unwrap_or_default();
                let latency = if failed == "0" {
                    format!("mean {mean}")
                } else {
                    format!("mean {mean} ({failed} failed)")
                };
                Ok((
                    rps.ok_or(format!("h2load printed no rate: {text}"))?,
                    done.unwrap_or(0),
                    latency,
                ))
            }
        }
    }
}

/// Runs `load` through `contender` to the app's `/hello` for `seconds`
/// (after a second of warm-up); returns the table cells
/// `requests/s | latency | proxy CPU | CPU per request`.
pub async fn proxied_run(
    setup: &Setup,
    contender: Contender,
    load: ProxiedLoad,
    seconds: u64,
) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!(
        "sse-bench-proxied-{}-{}",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::create_dir_all(&dir);
    let app_port = free_port();
    let mut app = Proc::spawn(Command::new(setup.bin_dir.join("sse-bench")).args([
        "app",
        "--listen",
        &format!("127.0.0.1:{app_port}"),
    ]))
    .map_err(|e| format!("cannot start the app: {e}"))?;
    app.expect("listening", Duration::from_secs(10))
        .await
        .ok_or("the app did not start")?;
    let running = start_contender(setup, contender, app_port, &dir).await?;
    let mut pids = running.pids.clone();
    if running.nginx_prefix.is_some() {
        pids = vec![running.pids[0]];
        pids.extend(procstat::children(running.pids[0]));
    }
    // Warm up (connection pools), then measure.
    let (program, warm_up) = load.command(&running, 1);
    let _ = Command::new(program).args(&warm_up).output().await;
    let (program, args) = load.command(&running, seconds);
    let cpu0 = procstat::total_cpu(&pids);
    let started = Instant::now();
    let output = Command::new(program)
        .args(&args)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"));
    let cpu_time = procstat::total_cpu(&pids).saturating_sub(cpu0);
    let cpu = percent(cpu_time, started.elapsed());
    running.stop().await;
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&output?.stdout).to_string();
    let (rps, done, latency) = load.read(&text)?;
    let per_request = if done > 0 {
        format!("{:.1} µs", cpu_time.as_secs_f64() * 1e6 / done as f64)
    } else {
        "–".to_string()
    };
    Ok(format!("{rps:.0} | {latency} | {cpu:.0} % | {per_request}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_and_h2load_outputs_give_rate_requests_and_latency() {
        let wrk = "Running 2s test @ http://127.0.0.1:36080/hello
  1 threads and 32 connections
  Latency Distribution
     50%    1.11ms
     75%    1.34ms
     99%    2.47ms
  54769 requests in 2.00s, 6.84MB read
Requests/sec:  27363.99
";
        assert_eq!(
            ProxiedLoad::Http1.read(wrk).unwrap(),
            (27363.99, 54769, "p50 1.11ms, p99 2.47ms".to_string())
        );
        let h2load = "finished in 2.00s, 20307.00 req/s, 794.29KB/s
requests: 40614 total, 40814 started, 40614 done, 40614 succeeded, 3 failed, 0 errored, 0 timeout
                     min         max         mean         sd        +/- sd
time for request:     1.40ms     24.54ms      9.65ms      2.79ms    68.86%
";
        assert_eq!(
            ProxiedLoad::Http2Tls.read(h2load).unwrap(),
            (20307.0, 40614, "mean 9.65ms (3 failed)".to_string())
        );
        assert!(ProxiedLoad::Http2Tls
            .read("h2load: connection refused")
            .is_err());
    }
}
