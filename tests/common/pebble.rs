//! Pebble, Let's Encrypt's ACME test server, as a real process on loopback:
//! the certificate authority of the proxy's ACME tests, offline.
//!
//! A [`Pebble`] is two processes, each on ports of its own:
//! - `pebble-challtestsrv` as a DNS server only, answering `127.0.0.1` for
//!   every name (its HTTP and TLS challenge servers, which would bind
//!   `*:5001-5003`, are switched off, and it answers no AAAA query);
//! - `pebble`, resolving names with it, validating `http-01` on the port
//!   given as `http_port` and `tls-alpn-01` on `tls_port` (the proxy's
//!   plaintext and TLS listeners), with no random validation sleeps, no
//!   rejected nonces and no authorization reuse: every order is validated
//!   against the proxy, renewals included.
//!
//! Pebble's directory is served over HTTPS with a certificate for
//! `localhost` and `127.0.0.1` from a throwaway CA ([`TestCerts`]), written
//! to [`Pebble::directory_ca`] for the proxy's `ca` key. The certificates
//! Pebble issues chain to a root it generates on every start, served on its
//! management port ([`Pebble::roots_pem`]).
//!
//! Needs Debian's `pebble` package (`/usr/bin/pebble`,
//! `/usr/bin/pebble-challtestsrv`); without it a test fails, saying so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{free_port, loopback, TestCerts, PATIENCE};

/// What to say when a Pebble program cannot be started.
const MISSING: &str = "the ACME tests need Debian's pebble package \
     (/usr/bin/pebble and /usr/bin/pebble-challtestsrv): .ci/run installs it \
     (apt-get install pebble)";

/// A running Pebble and its DNS server; dropping it kills both.
pub struct Pebble {
    /// The ACME server; `None` once stopped.
    pebble: Option<Child>,
    /// Its DNS server; `None` once stopped.
    dns: Option<Child>,
    /// Holds Pebble's config, its HTTPS certificate and both logs.
    dir: TempDir,
    /// Where the ACME directory is served (HTTPS).
    directory_addr: SocketAddr,
    /// Pebble's management interface (HTTPS): its roots and intermediates.
    management_addr: SocketAddr,
    /// The CA of the HTTPS certificate of both.
    https_certs: TestCerts,
    /// Where the DNS server answers, and its management interface.
    dns_addrs: (SocketAddr, SocketAddr),
    /// Pebble's config file.
    config_path: PathBuf,
}

impl Pebble {
    /// Starts the DNS server and Pebble, and returns once both accept
    /// connections. Pebble validates `http-01` on 127.0.0.1:`http_port` and
    /// `tls-alpn-01` on 127.0.0.1:`tls_port`; its certificates are valid for
    /// `validity` seconds (Pebble's default, five years, if `None`).
    pub fn start(http_port: u16, tls_port: u16, validity: Option<u64>) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let https_certs = TestCerts::generate();
        std::fs::write(dir.path().join("https-chain.pem"), &https_certs.chain_pem).unwrap();
        std::fs::write(dir.path().join("https-key.pem"), &https_certs.key_pem).unwrap();
        std::fs::write(dir.path().join("directory-ca.pem"), &https_certs.ca_pem).unwrap();
        let dns_addr = loopback(free_port());
        let dns_management_addr = loopback(free_port());
        let directory_addr = loopback(free_port());
        let management_addr = loopback(free_port());

        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": directory_addr.to_string(),
                "managementListenAddress": management_addr.to_string(),
                "certificate": dir.path().join("https-chain.pem"),
                "privateKey": dir.path().join("https-key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        if let Some(seconds) = validity {
            config["pebble"]["certificateValidityPeriod"] = seconds.into();
        }
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();

        let mut pebble = Pebble {
            pebble: None,
            dns: None,
            dir,
            directory_addr,
            management_addr,
            https_certs,
            dns_addrs: (dns_addr, dns_management_addr),
            config_path,
        };
        pebble.launch();
        pebble
    }

    /// Starts both programs (again, after [`stop`](Self::stop)) on the
    /// same ports and config, and returns once both accept connections.
    /// Pebble makes itself a new root at each start.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn launch(&mut self) {
        let (dns_addr, dns_management_addr) = self.dns_addrs;
        self.dns = Some(spawn(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &dns_addr.to_string()])
                .args(["-management", &dns_management_addr.to_string()])
                // Every other server off: by default they bind all
                // interfaces on fixed ports.
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-defaultIPv6", ""]),
            &self.dir.path().join("challtestsrv.log"),
        ));
        self.wait_for_listener(dns_addr, "pebble-challtestsrv's DNS");
        self.wait_for_listener(dns_management_addr, "pebble-challtestsrv's management");
        self.pebble = Some(spawn(
            Command::new("pebble")
                .arg("-config")
                .arg(&self.config_path)
                .args(["-dnsserver", &dns_addr.to_string()])
                .arg("-strict=false")
                // Validate at once (by default each validation first waits
                // up to 15 s), accept every good nonce, and validate every
                // order anew (by default half reuse a valid authorization).
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0"),
            &self.dir.path().join("pebble.log"),
        ));
        self.wait_for_listener(self.management_addr, "pebble's management interface");
        self.wait_for_listener(self.directory_addr, "pebble's ACME directory");
    }

    /// The ACME directory's URL, for the proxy's `directory` key.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.directory_addr)
    }

    /// A PEM file holding the CA of the directory's HTTPS certificate, for
    /// the proxy's `ca` key.
    pub fn directory_ca(&self) -> PathBuf {
        self.dir.path().join("directory-ca.pem")
    }

    /// The PEM of the root the certificates Pebble issues chain to (a new
    /// one every time Pebble starts), from its management interface.
    pub async fn roots_pem(&self) -> String {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(self.https_certs.root_store())
            .with_no_client_auth();
        let tcp = TcpStream::connect(self.management_addr)
            .await
            .expect("connect to pebble's management interface");
        let name = rustls_pki_types::ServerName::from(self.management_addr.ip());
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake with pebble's management interface");
        let (mut sender, connection) = http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 handshake with pebble");
        tokio::spawn(connection);
        let request = http::Request::get("/roots/0")
            .header(http::header::HOST, self.management_addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
            .await
            .expect("pebble answers GET /roots/0 in time")
            .expect("GET /roots/0 from pebble");
        assert_eq!(response.status(), 200, "GET /roots/0 from pebble");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).expect("a PEM root")
    }

    /// A rustls root store that trusts only Pebble's root: what a browser
    /// trusting Pebble as it trusts Let's Encrypt would verify against.
    pub async fn root_store(&self) -> Arc<rustls::RootCertStore> {
        use rustls_pki_types::pem::PemObject;
        let pem = self.roots_pem().await;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        assert!(!roots.is_empty(), "pebble served no root: {pem:?}");
        Arc::new(roots)
    }

    /// Stops Pebble and its DNS server (kills and reaps both).
    pub fn stop(&mut self) {
        for mut child in [self.pebble.take(), self.dns.take()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything Pebble logged so far (every request it served, every
    /// validation it attempted).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Everything the DNS server logged so far.
    pub fn dns_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("challtestsrv.log")).unwrap_or_default()
    }

    /// Waits until something accepts TCP connections on `addr`, failing at
    /// once if Pebble or its DNS server exited meanwhile.
    fn wait_for_listener(&mut self, addr: SocketAddr, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            for (name, child) in [
                ("pebble", &mut self.pebble),
                ("pebble-challtestsrv", &mut self.dns),
            ] {
                if let Some(status) = child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                    panic!("{name} exited ({status}) before {what} listened on {addr}");
                }
            }
            assert!(Instant::now() < deadline, "{what} never listened on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- pebble-challtestsrv log ---\n{}", self.dns_log());
            eprintln!("--- pebble log ---\n{}", self.log());
        }
    }
}

/// Starts `command` with its output going to `log`; a missing program
/// fails the test with how to install it.
fn spawn(command: &mut Command, log: &Path) -> Child {
    // Appended to: a restarted Pebble's log follows its first life's.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{:?} did not start ({e}): {MISSING}", command.get_program()))
}
