//! Shared test harness: certificates, the proxy as a real process, real
//! TLS/HTTP/2 clients and a scriptable app, all on 127.0.0.1.
//!
//! Every test starts its own `sse-fanout` binary with a config written to a
//! temporary folder, on ports of its own, so tests run in parallel without
//! sharing state.

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod app;
pub mod client;
pub mod pebble;
pub mod sse_app;
pub mod sse_client;

use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tempfile::TempDir;

/// How long a test waits for something that should happen "at once".
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A throwaway certificate authority and a `localhost` certificate it signed.
pub struct TestCerts {
    /// PEM of the authority, for the client's trust store.
    pub ca_pem: String,
    /// PEM of the server certificate chain (leaf, then the authority).
    pub chain_pem: String,
    /// PEM of the server's private key.
    pub key_pem: String,
}

impl TestCerts {
    pub fn generate() -> TestCerts {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        TestCerts {
            ca_pem: ca.pem(),
            chain_pem: format!("{}{}", leaf.pem(), ca.pem()),
            key_pem: leaf_key.serialize_pem(),
        }
    }

    /// A rustls root store that trusts only this authority.
    pub fn root_store(&self) -> Arc<rustls::RootCertStore> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        Arc::new(roots)
    }
}

/// The first port tests hand out: below Linux's ephemeral range (32768 and
/// up), so the kernel never gives one of them to an outgoing connection or
/// to a `bind(":0")`.
const TEST_PORTS_START: u16 = 12_000;
/// How many ports each test process may hand out.
const TEST_PORTS_PER_PROCESS: u16 = 1_000;

/// The block of ports this process owns: the first block whose lock file it
/// could lock (held until the process exits), so two test processes running
/// at once never share a block.
fn port_block() -> u16 {
    static BLOCK: std::sync::OnceLock<(u16, std::fs::File)> = std::sync::OnceLock::new();
    BLOCK
        .get_or_init(|| {
            let dir = std::env::temp_dir().join("sse-fanout-test-ports");
            std::fs::create_dir_all(&dir).expect("port lock folder");
            let blocks = (32_768 - TEST_PORTS_START) / TEST_PORTS_PER_PROCESS;
            let first = (std::process::id() % u32::from(blocks)) as u16;
            (0..blocks)
                .map(|i| (first + i) % blocks)
                .find_map(|block| {
                    let file = std::fs::File::create(dir.join(format!("{block}.lock"))).ok()?;
                    file.try_lock().ok()?;
                    Some((block, file))
                })
                .expect("a free block of test ports")
        })
        .0
}

/// A port on 127.0.0.1 for a listener the test starts (the proxy's, a dead
/// app's), with no bind-and-release race: ports come from a block below the
/// ephemeral range that this process alone holds (see [`port_block`]), and a
/// process-wide counter never hands out the same port twice. A port some
/// other program holds is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = TEST_PORTS_START + port_block() * TEST_PORTS_PER_PROCESS;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            offset < TEST_PORTS_PER_PROCESS,
            "this test process ran out of ports"
        );
        let port = base + offset;
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Reads until the proxy closes the connection (failing the test if it
/// does not within `PATIENCE`); what came before the close.
pub async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the proxy kept the connection open; received {:?}",
        String::from_utf8_lossy(&received)
    );
    received
}

/// Sends the signal `name` (`"HUP"`, `"TERM"`, ...) to process `pid`.
pub fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_listener(addr: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Path of the `sse-fanout` binary cargo built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sse-fanout")
}

/// Runs `sse-fanout` to completion with the given arguments.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("sse-fanout runs")
}

/// 127.0.0.1:`port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// What a proxy's config says, for [`Proxy::launch`].
struct Setup<'a> {
    /// The `[app]` table's `upstream`.
    upstream: &'a str,
    /// More keys of the `[app]` table.
    app_keys: &'a str,
    /// More keys of the `[server]` table.
    server: &'a str,
    /// The TLS listener's address.
    tls_addr: SocketAddr,
    /// The plaintext listener's address.
    plain_addr: SocketAddr,
    /// The TLS listener's `tls` value.
    tls: &'a str,
    /// Appended to the config (topics, `[sse]` settings, ...).
    extra: &'a str,
}

/// A running `sse-fanout` process with a TLS listener and a plaintext one.
pub struct Proxy {
    child: Child,
    /// Holds the config and certificates until the proxy is gone.
    dir: TempDir,
    /// The TLS listener (ALPN h2 and http/1.1).
    pub tls_addr: SocketAddr,
    /// The plaintext listener (HTTP/1.1 and h2c).
    pub plain_addr: SocketAddr,
    /// The admin listener (`/stats`).
    pub admin_addr: SocketAddr,
    /// The certificates the TLS listener serves.
    pub certs: TestCerts,
}

impl Proxy {
    /// Starts the proxy in front of `app` with `extra` appended to its config
    /// (topics, `[sse]` settings, ...).
    pub fn start(app: SocketAddr, extra: &str) -> Proxy {
        Proxy::start_with_server(app, "grace_period = \"1s\"", extra)
    }

    /// [`start`](Self::start), with `server` as the `[server]` table's keys
    /// besides the threads, the shutdown timeout and the files (give a
    /// `grace_period` there; `start` uses 1 s).
    pub fn start_with_server(app: SocketAddr, server: &str, extra: &str) -> Proxy {
        Proxy::start_with_app(&app.to_string(), "", server, extra)
    }

    /// [`start_with_server`](Self::start_with_server), with the app named
    /// by `upstream` (`host:port`, `http://…` or `https://…`) and `app_keys`
    /// added to the `[app]` table.
    pub fn start_with_app(upstream: &str, app_keys: &str, server: &str, extra: &str) -> Proxy {
        Proxy::launch(Setup {
            upstream,
            app_keys,
            server,
            tls_addr: loopback(free_port()),
            plain_addr: loopback(free_port()),
            tls: r#"{ cert = "chain.pem", key = "key.pem" }"#,
            extra,
        })
    }

    /// [`start`](Self::start), with the listeners on `tls_addr` and
    /// `plain_addr` (chosen before the proxy starts, for whoever must know
    /// them first: an ACME server validates on them) and the TLS listener's
    /// `tls` value given as `tls`, an inline table (`{ acme = [...], ... }`;
    /// relative paths in it are relative to [`dir`](Self::dir)). `certs`
    /// then holds certificates the proxy does not serve.
    pub fn start_with_tls(
        app: SocketAddr,
        tls_addr: SocketAddr,
        plain_addr: SocketAddr,
        tls: &str,
        extra: &str,
    ) -> Proxy {
        Proxy::launch(Setup {
            upstream: &app.to_string(),
            app_keys: "",
            server: "grace_period = \"1s\"",
            tls_addr,
            plain_addr,
            tls,
            extra,
        })
    }

    /// Writes the config `setup` describes (with a fresh `localhost`
    /// certificate as `chain.pem` and `key.pem`) to a new folder, starts the
    /// proxy on it and waits until every listener accepts connections.
    fn launch(setup: Setup) -> Proxy {
        let Setup {
            upstream,
            app_keys,
            server,
            tls_addr,
            plain_addr,
            tls,
            extra,
        } = setup;
        let dir = tempfile::tempdir().unwrap();
        let certs = TestCerts::generate();
        std::fs::write(dir.path().join("chain.pem"), &certs.chain_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &certs.key_pem).unwrap();
        let admin_addr = loopback(free_port());
        let config = format!(
            r#"
[server]
threads = 1
shutdown_timeout = "1s"
{server}
pid_file = "{dir}/sse-fanout.pid"
upgrade_sock = "{dir}/upgrade.sock"

[[listen]]
addr = "{tls_addr}"
tls = {tls}

[[listen]]
addr = "{plain_addr}"

[app]
upstream = "{upstream}"
connect_timeout = "2s"
{app_keys}

[admin]
addr = "{admin_addr}"

{extra}
"#,
            dir = dir.path().display(),
        );
        let config_path = dir.path().join("sse-fanout.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sse-fanout starts");
        let proxy = Proxy {
            child,
            dir,
            tls_addr,
            plain_addr,
            admin_addr,
            certs,
        };
        wait_for_listener(tls_addr);
        wait_for_listener(plain_addr);
        wait_for_listener(admin_addr);
        proxy
    }

    /// Everything the proxy logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.path().join("proxy.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// `GET /stats` from the admin listener.
    pub async fn stats(&self) -> serde_json::Value {
        let mut client = client::Client::h1(self.admin_addr).await;
        let body = client::body_bytes(client.get("/stats").await).await;
        serde_json::from_slice(&body).expect("stats are JSON")
    }

    /// The stats of the topic `path`, if it is live.
    pub async fn topic_stats(&self, path: &str) -> Option<serde_json::Value> {
        let stats = self.stats().await;
        stats["topics"]
            .as_array()?
            .iter()
            .find(|t| t["path"] == path)
            .cloned()
    }

    /// Polls the stats until `check` holds for them.
    pub async fn wait_for_stats(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let stats = self.stats().await;
            if check(&stats) {
                return stats;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stats never showed {what}: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the topic `path` has `n` subscribers and a connected
    /// upstream (so events published next reach them all).
    pub async fn wait_for_subscribers(&self, path: &str, n: u64) {
        self.wait_for_stats(&format!("{n} subscribers on {path}"), |stats| {
            stats["topics"].as_array().unwrap().iter().any(|t| {
                t["path"] == path && t["subscribers"] == n && t["upstream_state"] == "connected"
            })
        })
        .await;
    }

    /// A TLS connection that negotiated HTTP/2.
    pub async fn h2(&self) -> client::Client {
        client::Client::tls(self.tls_addr, &self.certs, &["h2"]).await
    }

    /// A TLS connection that negotiated HTTP/1.1.
    pub async fn h1(&self) -> client::Client {
        client::Client::tls(self.tls_addr, &self.certs, &["http/1.1"]).await
    }

    /// Sends SIGTERM (graceful stop).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "proxy did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The folder holding the proxy's config.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The proxy's process id.
    pub fn child_id(&self) -> u32 {
        self.child.id()
    }

    /// Sends the signal `name` (`"HUP"`, `"USR1"`, ...) to the proxy.
    pub fn signal(&self, name: &str) {
        send_signal(self.child.id(), name);
    }

    /// Waits until the proxy has logged a line containing `text`.
    pub async fn wait_for_log(&self, text: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !self.log().contains(text) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the proxy never logged {text:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- proxy log ---\n{}", self.log());
        }
    }
}

/// Writes `text` to a file in a new temporary folder and returns both.
pub fn temp_file(name: &str, text: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

impl Proxy {
    /// Starts a second `sse-fanout` from this proxy's config with
    /// `--upgrade`, and returns once it waits on `upgrade_sock` for this
    /// one's listeners: send this one `SIGQUIT` next (a graceful upgrade).
    pub async fn start_successor(&self) -> Successor {
        let upgrade_sock = self.dir().join("upgrade.sock");
        let log = self.dir().join("successor.log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(self.dir().join("sse-fanout.toml"))
            .arg("--upgrade")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the successor starts");
        let successor = Successor { child, log };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !upgrade_sock.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the successor never waited on {}:\n{}",
                upgrade_sock.display(),
                successor.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        successor
    }

    /// Waits (without blocking the runtime) up to `limit` for the process to
    /// exit, and returns its status.
    pub async fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        exit_within(&mut self.child, limit, "proxy").await
    }
}

/// Waits up to `limit` for `child` to exit.
async fn exit_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the {what} did not exit within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A proxy started with `--upgrade` by [`Proxy::start_successor`]: once it
/// has the listeners, it serves at the predecessor's addresses.
pub struct Successor {
    child: Child,
    /// Where it logs (in the predecessor's folder).
    log: PathBuf,
}

impl Successor {
    /// Everything the successor logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends the signal `name` (`"TERM"`, ...) to the successor.
    pub fn signal(&self, name: &str) {
        send_signal(self.child.id(), name);
    }

    /// Waits up to `limit` for the successor to exit.
    pub async fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        exit_within(&mut self.child, limit, "successor").await
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- successor log ---\n{}", self.log());
        }
    }
}

impl Proxy {
    /// Kills the process with `SIGKILL` (a crash: no drain, no goodbye) and
    /// reaps it.
    pub fn kill_hard(&mut self) {
        self.child.kill().expect("SIGKILL sent");
        let _ = self.child.wait();
    }

    /// Kills the proxy (SIGKILL) and starts a new process with the same
    /// config, on the same addresses: a crash and a restart. Its log goes on
    /// in the same file.
    pub fn restart_hard(&mut self) {
        self.kill_hard();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("proxy.log"))
            .unwrap();
        self.child = Command::new(binary())
            .arg("-c")
            .arg(self.dir.path().join("sse-fanout.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sse-fanout starts again");
        wait_for_listener(self.tls_addr);
        wait_for_listener(self.plain_addr);
        wait_for_listener(self.admin_addr);
    }
}
