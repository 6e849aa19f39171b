//! Loading whole config texts: defaults, overrides, and the key each refusal names.

use std::path::Path;
use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[[listen]]
addr = "127.0.0.1:8080"

[app]
upstream = "127.0.0.1:3000"
"#;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_text(Path::new("test.toml"), text)
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let config = load(MINIMAL).unwrap();
    assert_eq!(config.server.grace_period, DEFAULT_GRACE_PERIOD);
    assert_eq!(
        config.server.max_concurrent_streams,
        DEFAULT_MAX_CONCURRENT_STREAMS
    );
    assert!(config.server.threads >= 1);
    assert_eq!(config.app.origin.port, 3000);
    assert!(config.topics.is_empty());
}

#[test]
fn a_silent_upstream_is_reopened_by_default_and_0s_turns_that_off() {
    let topic = "\n[[topic]]\npath = \"/e\"\nupstream = \"/s\"\n";
    let config = load(&format!("{MINIMAL}{topic}")).unwrap();
    assert_eq!(
        config.topics[0].settings.upstream_idle_timeout,
        Some(DEFAULT_UPSTREAM_IDLE_TIMEOUT)
    );
    let off = load(&format!(
        "{MINIMAL}\n[sse]\nupstream_idle_timeout = \"0s\"\n{topic}"
    ))
    .unwrap();
    assert_eq!(off.topics[0].settings.upstream_idle_timeout, None);
}

#[test]
fn durations_past_a_day_are_refused_before_they_can_overflow_a_deadline() {
    let error = load(&format!("{MINIMAL}\n[sse]\nlinger = \"400000000h\"\n")).unwrap_err();
    assert_eq!(error.key.as_deref(), Some("sse.linger"));
    assert!(
        error
            .message
            .contains("longer than the longest allowed, 1day"),
        "{error}"
    );
    assert!(load(&format!("{MINIMAL}\n[sse]\nlinger = \"24h\"\n")).is_ok());
}

#[test]
fn defaults_never_cap_one_address_or_a_templates_users_below_the_process_cap() {
    let limits = load(MINIMAL).unwrap().limits;
    assert_eq!(limits.max_topic_instances, limits.max_subscribers);
    assert_eq!(limits.max_subscribers_per_ip, None);
    assert_eq!(limits.subscribe_rate_per_ip, None);
}

#[test]
fn topic_overrides_sse_defaults() {
    let text = format!(
        "{MINIMAL}\n[sse]\nheartbeat = \"20s\"\nreplay = 10\n\n[[topic]]\npath = \"/e/{{id}}\"\nupstream = \"/s/{{id}}\"\nheartbeat = \"5s\"\n"
    );
    let config = load(&text).unwrap();
    let settings = config.topics[0].settings;
    assert_eq!(settings.heartbeat, Duration::from_secs(5));
    assert_eq!(settings.replay, 10);
    assert_eq!(settings.retry, DEFAULT_RETRY);
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let text = format!("{MINIMAL}\n[sse]\nheartbeet = \"5s\"\n");
    let e = load(&text).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("sse.heartbeet"));
    assert_eq!(e.position.map(|p| p.0), Some(9));
    assert!(e.message.contains("unknown field"), "{e}");
}

#[test]
fn wrong_type_names_the_key() {
    let text =
        format!("{MINIMAL}\n[[topic]]\npath = \"/a\"\nupstream = \"/b\"\nreplay = \"many\"\n");
    let e = load(&text).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("topic[0].replay"), "{e}");
}

#[test]
fn integer_duration_asks_for_a_unit() {
    let text = format!("{MINIMAL}\n[sse]\nheartbeat = 15\n");
    let e = load(&text).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("sse.heartbeat"));
    assert!(e.message.contains("\"15s\""), "{e}");
}

#[test]
fn key_inside_inline_table_is_named() {
    let text = "[[listen]]\naddr = \"127.0.0.1:1\"\ntls = { cert = \"a\", key = 5 }\n[app]\nupstream = \"127.0.0.1:2\"\n";
    let e = load(text).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("listen[0].tls.key"), "{e}");
}

#[test]
fn same_shape_templates_are_refused() {
    let text = format!(
        "{MINIMAL}\n[[topic]]\npath = \"/j/{{a}}\"\nupstream = \"/s/{{a}}\"\n[[topic]]\npath = \"/j/{{b}}\"\nupstream = \"/s/{{b}}\"\n"
    );
    let e = load(&text).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("topic[1].path"));
}

#[test]
fn full_url_upstream_keeps_its_own_origin() {
    let text =
        format!("{MINIMAL}\n[[topic]]\npath = \"/a\"\nupstream = \"https://feeds.internal/s\"\n");
    let config = load(&text).unwrap();
    assert!(config.topics[0].upstream.origin.tls);
    assert_eq!(config.topics[0].upstream.path.as_str(), "/s");
}

#[test]
fn missing_app_table_is_explained() {
    let e = load("[[listen]]\naddr = \"127.0.0.1:1\"\n").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("app"));
}

#[test]
fn sizes_take_units_or_plain_bytes() {
    let text = format!("{MINIMAL}\n[sse]\nreplay_bytes = \"2MiB\"\nmax_event_size = 1000\n");
    let config = load(&format!(
        "{text}[[topic]]\npath = \"/a\"\nupstream = \"/b\"\n"
    ))
    .unwrap();
    let topic = config.topics[0].settings;
    assert_eq!(topic.replay_bytes, 2 * 1024 * 1024);
    assert_eq!(topic.max_event_size, 1000);
    assert_eq!(
        topic.max_lag_bytes,
        1024 * 1024,
        "unset lag bound follows the window"
    );
}

#[test]
fn bad_size_is_refused_with_an_example() {
    let e = load(&format!("{MINIMAL}\n[sse]\nreplay_bytes = \"lots\"\n")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("sse.replay_bytes"));
    assert!(e.message.contains("\"4MiB\""), "{e}");
}

#[test]
fn max_lag_beyond_the_window_is_refused() {
    let e = load(&format!("{MINIMAL}\n[sse]\nreplay = 10\nmax_lag = 11\n")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("sse.max_lag"));
}

#[test]
fn lag_bytes_below_the_event_size_is_refused() {
    let e = load(&format!(
        "{MINIMAL}\n[sse]\nmax_lag_bytes = \"1KiB\"\nmax_event_size = \"2KiB\"\n"
    ))
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("sse.max_lag_bytes"));
}

#[test]
fn unknown_resume_policy_is_refused() {
    let e = load(&format!("{MINIMAL}\n[sse]\nresume_lost = \"guess\"\n")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("sse.resume_lost"));
}

#[test]
fn eager_template_topic_is_refused() {
    let text = format!(
        "{MINIMAL}\n[[topic]]\npath = \"/j/{{id}}\"\nupstream = \"/s/{{id}}\"\neager = true\n"
    );
    let e = load(&text).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("topic[0].eager"));
}

#[test]
fn connection_limits_default_to_documented_values_and_no_address_cap() {
    let config = load(MINIMAL).unwrap();
    assert_eq!(config.connections.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    assert_eq!(
        config.connections.tls_handshake_timeout,
        DEFAULT_TLS_HANDSHAKE_TIMEOUT
    );
    assert_eq!(config.connections.max_connections_per_ip, None);
    let capped = load(&format!(
        "{MINIMAL}\n[limits]\nmax_connections_per_ip = 3\nidle_timeout = \"5s\"\n"
    ))
    .unwrap();
    assert_eq!(capped.connections.max_connections_per_ip, Some(3));
    assert_eq!(capped.connections.idle_timeout, Duration::from_secs(5));
    let zero = load(&format!(
        "{MINIMAL}\n[limits]\nmax_connections_per_ip = 0\n"
    ))
    .unwrap_err();
    assert_eq!(zero.key.as_deref(), Some("limits.max_connections_per_ip"));
}

#[test]
fn admin_table_defaults_to_loopback() {
    let config = load(&format!("{MINIMAL}\n[admin]\n")).unwrap();
    assert_eq!(config.admin.unwrap().addr.to_string(), DEFAULT_ADMIN_ADDR);
    assert!(load(MINIMAL).unwrap().admin.is_none());
}

#[test]
fn error_line_reads_file_line_column_key_message() {
    let e = ConfigError {
        file: "c.toml".into(),
        position: Some((3, 7)),
        key: Some("sse.retry".into()),
        message: "bad".into(),
    };
    assert_eq!(e.to_string(), "c.toml:3:7: sse.retry: bad");
}

#[test]
fn per_address_caps_are_off_unless_configured() {
    let limits = load(MINIMAL).unwrap().limits;
    assert_eq!(limits.max_subscribers_per_ip, None);
    assert_eq!(limits.subscribe_rate_per_ip, None);
    let text =
        format!("[limits]\nmax_subscribers_per_ip = 1000\nsubscribe_rate_per_ip = 100\n{MINIMAL}");
    let limits = load(&text).unwrap().limits;
    assert_eq!(limits.max_subscribers_per_ip, Some(1000));
    assert_eq!(limits.subscribe_rate_per_ip, Some(100));
    let e = load(&format!("[limits]\nsubscribe_rate_per_ip = 0\n{MINIMAL}")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("limits.subscribe_rate_per_ip"));
}

#[test]
fn auth_decisions_are_cached_briefly_unless_configured() {
    let text = format!(
        "{MINIMAL}\n[[topic]]\npath = \"/a\"\nupstream = \"/b\"\nauth = \"/auth\"\n\n[[topic]]\npath = \"/c\"\nupstream = \"/d\"\nauth = \"/auth\"\nauth_cache = \"0s\"\n"
    );
    let config = load(&text).unwrap();
    assert_eq!(config.topics[0].access.auth_cache, DEFAULT_AUTH_CACHE);
    assert_eq!(config.topics[1].access.auth_cache, Duration::ZERO);
}

#[test]
fn a_missing_key_names_the_array_element_it_is_missing_from() {
    let topic = "\n[[topic]]\npath = \"/a\"\nupstream = \"/b\"\n";
    let e = load(&format!("{MINIMAL}{topic}\n[[topic]]\npath = \"/c\"\n")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("topic[1]"), "{e}");
    assert!(e.message.contains("missing field `upstream`"), "{e}");
}

#[test]
fn an_unquoted_duration_is_a_syntax_error_naming_its_key() {
    let e = load(&format!("{MINIMAL}\n[sse]\nheartbeat = 15s\n")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "test.toml:9:15: sse.heartbeat: expected newline, `#`"
    );
}

#[test]
fn a_header_inside_a_string_does_not_count_as_a_topic() {
    let text = format!(
        "{MINIMAL}\n[[topic]]\npath = \"/a\"\nupstream = \"/b\"\nauth = \"\"\"\n[[topic]]\n\"\"\"\nreplay = \"x\"\n"
    );
    let e = load(&text).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("topic[0].replay"), "{e}");
}

#[test]
fn trusted_proxies_take_cidrs_and_single_addresses_and_default_to_none() {
    assert!(load(MINIMAL).unwrap().server.trusted_proxies.is_empty());
    let config = load(&format!(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\", \"192.0.2.7\"]\n{MINIMAL}"
    ))
    .unwrap();
    let nets: Vec<String> = config
        .server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "fd00::/8", "192.0.2.7/32"]);
}

#[test]
fn a_trusted_proxy_that_is_not_a_cidr_is_refused_at_its_place() {
    for (bad, says) in [
        ("10.0.0.0/33", "is not a CIDR"),
        ("ten", "is not a CIDR"),
        ("10.1.2.3/8", "write the range as \"10.0.0.0/8\""),
    ] {
        let e = load(&format!(
            "[server]\ntrusted_proxies = [\"fd00::/8\", \"{bad}\"]\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.trusted_proxies"), "{e}");
        assert_eq!(e.position.map(|p| p.0), Some(2), "{e}");
        assert!(e.message.contains(says), "{bad}: {e}");
    }
}

/// A TLS listener with the dev certificate, and `extra` keys.
fn tls_listener(extra: &str) -> String {
    format!(
        "[[listen]]\naddr = \"127.0.0.1:8443\"\ntls = {{ cert = \"certs/dev/localhost.pem\", key = \"certs/dev/localhost-key.pem\" }}\n{extra}\n[app]\nupstream = \"127.0.0.1:3000\"\n"
    )
}

#[test]
fn listeners_expect_no_proxy_header_and_send_no_hsts_by_default() {
    let config = load(&tls_listener("")).unwrap();
    assert!(!config.listeners[0].proxy_protocol);
    assert_eq!(config.listeners[0].hsts, None);
    let config = load(&tls_listener(
        "proxy_protocol = true\nhsts = \"max-age=63072000; includeSubDomains\"",
    ))
    .unwrap();
    assert!(config.listeners[0].proxy_protocol);
    assert_eq!(
        config.listeners[0].hsts.as_deref(),
        Some("max-age=63072000; includeSubDomains")
    );
}

#[test]
fn hsts_is_refused_on_a_plaintext_listener_and_when_malformed() {
    let plain = "[[listen]]\naddr = \"127.0.0.1:8080\"\nhsts = \"max-age=10\"\n[app]\nupstream = \"127.0.0.1:3000\"\n";
    let e = load(plain).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("listen[0].hsts"));
    assert!(e.message.contains("TLS listeners only"), "{e}");
    let e = load(&tls_listener("hsts = \"max-age=soon\"")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("listen[0].hsts"));
    assert_eq!(e.position.map(|p| p.0), Some(4), "{e}");
    assert!(e.message.contains("max-age=63072000"), "{e}");
}

#[test]
fn priming_is_by_id_unless_sse_or_the_topic_says_otherwise() {
    let topics = "\n[[topic]]\npath = \"/a\"\nupstream = \"/a\"\n\n[[topic]]\npath = \"/b\"\nupstream = \"/b\"\nprime = \"last\"\n";
    let config = load(&format!("{MINIMAL}{topics}")).unwrap();
    assert_eq!(config.topics[0].settings.prime, Prime::Id);
    assert_eq!(config.topics[1].settings.prime, Prime::Last);
    let config = load(&format!("{MINIMAL}\n[sse]\nprime = \"none\"\n{topics}")).unwrap();
    assert_eq!(config.topics[0].settings.prime, Prime::None);
    assert_eq!(config.topics[1].settings.prime, Prime::Last);
    let e = load(&format!("{MINIMAL}\n[sse]\nprime = \"all\"\n")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("sse.prime"));
}

#[test]
fn heartbeat_padding_is_bounded() {
    let topic = "\n[[topic]]\npath = \"/a\"\nupstream = \"/a\"\n";
    let config = load(&format!(
        "{MINIMAL}\n[sse]\nheartbeat_padding = 2048\n{topic}"
    ))
    .unwrap();
    assert_eq!(config.topics[0].settings.heartbeat_padding, 2048);
    let e = load(&format!("{MINIMAL}\n[sse]\nheartbeat_padding = 5000\n")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("sse.heartbeat_padding"));
}

#[test]
fn connections_have_no_read_buffer_of_their_own_unless_asked() {
    assert_eq!(load(MINIMAL).unwrap().server.read_buffer, 0);
    let config = load(&format!("{MINIMAL}\n[server]\nread_buffer = \"4KiB\"\n")).unwrap();
    assert_eq!(config.server.read_buffer, 4096);
    let e = load(&format!("{MINIMAL}\n[server]\nread_buffer = 512\n")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("server.read_buffer"));
}
