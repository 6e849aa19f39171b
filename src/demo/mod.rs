//! `sse-fanout demo`: the proxy and a small demo app in one process, to see
//! sse-fanout do its job within a minute of cloning.
//!
//! ```text
//!  browser ──https://localhost:8443 (h2)──▶ ┌─ sse-fanout ─┐ ── one GET per topic ──▶ ┌─ demo app ─────────┐
//!  (dozens of EventSources on one page)    │  (the proxy, │    /stream/clock          │ 127.0.0.1:3000     │
//!  browser ──http://localhost:8080 (h1)──▶ │  conf/demo.  │    /stream/quiet          │ page, stats,       │
//!  (the same page: six streams, no more)   │  toml)       │    /stream/jobs/{id}      │ restart, streams   │
//!                                          └──────────────┘ ── everything else ────▶ └────────────────────┘
//! ```
//!
//! The proxy is built exactly as `sse-fanout -c FILE` builds it
//! ([`server::build`]); the demo only adds one more Pingora service, the
//! [`DemoApp`](app::DemoApp), on the loopback address the config's `[app]
//! upstream` names. The shipped `conf/demo.toml` is therefore also the worked
//! example of a config file. The page the app serves opens many
//! EventSources at once and shows, live, what the proxy and the app see.

mod app;
mod feed;
mod jobs;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use pingora::services::listening::Service;

use app::DemoApp;
use sse_fanout::config::{Config, Listener};
use sse_fanout::route::TopicRoutes;
use sse_fanout::server::{self, Built, StartOptions};

/// Where `sse-fanout demo` looks for its config when `-c` is not given.
pub const DEFAULT_DEMO_CONFIG_PATH: &str = "conf/demo.toml";

/// The topic paths the demo page subscribes to (a job id stands in for the
/// template's `{id}`); the config must serve each of them.
const PAGE_TOPICS: [&str; 3] = ["/events/clock", "/events/quiet", "/events/jobs/demo-1"];

/// Why the demo cannot start.
#[derive(Debug)]
pub enum DemoError {
    /// `[app] upstream` is not a plain `http` loopback address the demo app
    /// could listen on.
    AppAddress {
        /// The configured upstream.
        upstream: String,
    },
    /// The config lacks a topic the demo page subscribes to.
    MissingTopic {
        /// The path the page uses.
        path: &'static str,
    },
    /// Pingora could not build the server (a certificate, a listener).
    Start(Box<pingora::Error>),
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::AppAddress { upstream } => write!(
                f,
                "[app] upstream is {upstream}, but the demo app listens there itself, so it must be \
                 a plain http loopback address such as \"127.0.0.1:3000\""
            ),
            DemoError::MissingTopic { path } => write!(
                f,
                "the demo page subscribes to {path}, but the config has no [[topic]] for it \
                 (see conf/demo.toml)"
            ),
            DemoError::Start(e) => write!(f, "cannot start: {e}"),
        }
    }
}

impl std::error::Error for DemoError {}

/// The address the demo app listens on: the config's `[app] upstream`,
/// which must be plain `http` on a loopback address.
fn app_address(config: &Config) -> Result<SocketAddr, DemoError> {
    let origin = &config.app.origin;
    let ip = match origin.host.as_str() {
        "localhost" => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        host => host.parse::<IpAddr>().ok(),
    };
    match ip {
        Some(ip) if ip.is_loopback() && !origin.tls => Ok(SocketAddr::new(ip, origin.port)),
        _ => Err(DemoError::AppAddress {
            upstream: origin.to_string(),
        }),
    }
}

/// The URL a browser on this machine uses for a listener.
fn browser_url(listener: &Listener) -> String {
    let scheme = if listener.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let ip = listener.addr.ip();
    let host = if ip.is_loopback() || ip.is_unspecified() {
        "localhost".to_string()
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    format!("{scheme}://{host}:{}/", listener.addr.port())
}

/// What to open and what to look at, printed when the demo starts.
fn banner(config: &Config, app: SocketAddr) -> String {
    let mut text = format!("\nsse-fanout demo ({})\n\n", config.path.display());
    if let Some(tls) = config.listeners.iter().find(|l| l.tls.is_some()) {
        text += &format!(
            "  Open   {}\n         HTTP/2: dozens of EventSources on one page, each topic fed by ONE upstream stream.\n         \
             (Self-signed development certificate from certs/dev/: accept the browser's warning.)\n",
            browser_url(tls)
        );
    }
    if let Some(plain) = config.listeners.iter().find(|l| l.tls.is_none()) {
        text += &format!(
            "  Then   {}\n         The same page over HTTP/1.1: the browser holds six streams and no more.\n",
            browser_url(plain)
        );
    }
    if let Some(admin) = &config.admin {
        text += &format!("  Stats  http://{}/stats\n", admin.addr);
    }
    text += &format!(
        "\n  Look at: \"N subscribers, M upstream connections\" at the top of the page; press\n  \
         \"Restart the app's streams\" and watch every EventSource stay open with no gap in its ids.\n  \
         The demo app listens on {app}, behind the proxy. Ctrl-C stops.\n"
    );
    text
}

/// Builds the proxy for `config` plus the demo app on its `[app]` address,
/// and prints what to open. The caller runs the returned server.
pub fn start(config: &Config) -> Result<Built, DemoError> {
    let app_addr = app_address(config)?;
    let routes = TopicRoutes::new(config.topics.iter().map(|t| &t.path));
    if let Some(path) = PAGE_TOPICS.into_iter().find(|p| routes.find(p).is_none()) {
        return Err(DemoError::MissingTopic { path });
    }
    let mut built = server::build(config, StartOptions::default()).map_err(DemoError::Start)?;
    let mut app = Service::new(
        "sse-fanout demo app".into(),
        DemoApp::new(built.hub.clone()),
    );
    app.add_tcp(&app_addr.to_string());
    built.server.add_service(app);
    log::info!("demo app listening on {app_addr}");
    println!("{}", banner(config, app_addr));
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(app: &str, topics: &str) -> Config {
        let text =
            format!("[[listen]]\naddr = \"0.0.0.0:8080\"\n[app]\nupstream = \"{app}\"\n{topics}");
        Config::from_text(Path::new("demo.toml"), &text).expect("a valid config")
    }

    #[test]
    fn the_demo_app_listens_on_a_loopback_app_address_only() {
        let loopback = config("127.0.0.1:3000", "");
        assert_eq!(
            app_address(&loopback).unwrap(),
            "127.0.0.1:3000".parse().unwrap()
        );
        let localhost = config("http://localhost:3001", "");
        assert_eq!(
            app_address(&localhost).unwrap(),
            "127.0.0.1:3001".parse().unwrap()
        );
        for elsewhere in [
            "10.0.0.5:3000",
            "app.internal:3000",
            "https://127.0.0.1:3000",
        ] {
            assert!(
                matches!(
                    app_address(&config(elsewhere, "")),
                    Err(DemoError::AppAddress { .. })
                ),
                "{elsewhere}"
            );
        }
    }

    #[test]
    fn the_banner_names_urls_a_browser_on_this_machine_can_open() {
        let config = config("127.0.0.1:3000", "");
        assert_eq!(browser_url(&config.listeners[0]), "http://localhost:8080/");
        let text = banner(&config, "127.0.0.1:3000".parse().unwrap());
        assert!(text.contains("http://localhost:8080/"), "{text}");
    }

    #[test]
    fn the_shipped_demo_config_serves_every_topic_of_the_page() {
        let config = Config::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/",
            "conf/demo.toml"
        )))
        .expect("conf/demo.toml loads");
        assert!(app_address(&config).is_ok());
        let routes = TopicRoutes::new(config.topics.iter().map(|t| &t.path));
        for path in PAGE_TOPICS {
            assert!(routes.find(path).is_some(), "{path}");
        }
    }
}
