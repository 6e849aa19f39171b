//! `sse-fanout --check`: bad configs exit 2 with one line naming the key;
//! the shipped example config is valid.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{run_cli, temp_file, TestCerts};

/// Exit status for a config that cannot be used.
const BAD_CONFIG: i32 = 2;

const VALID: &str = r#"
[[listen]]
addr = "127.0.0.1:8443"
tls = { cert = "chain.pem", key = "key.pem" }

[app]
upstream = "127.0.0.1:3000"

[[topic]]
path = "/events/news"
upstream = "/stream/news"
"#;

/// Writes `config` beside a valid certificate pair and runs `--check` on it.
fn check(config: &str) -> std::process::Output {
    let (dir, path) = temp_file("sse-fanout.toml", config);
    let certs = TestCerts::generate();
    std::fs::write(dir.path().join("chain.pem"), &certs.chain_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &certs.key_pem).unwrap();
    run_cli(&["-c", path.to_str().unwrap(), "--check"])
}

/// Asserts a refusal: exit 2, one stderr line naming `key` and `words`, no panic.
fn assert_refused(output: std::process::Output, key: &str, words: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(BAD_CONFIG), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    assert!(stderr.contains(key), "key {key} not named: {stderr}");
    assert!(stderr.contains(words), "{words:?} not said: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

/// Asserts `--check` accepted the config (exit 0).
fn assert_passed(output: &std::process::Output) {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn valid_config_passes_check() {
    let output = check(VALID);
    assert_passed(&output);
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration is valid"));
}

#[test]
fn shipped_example_config_passes_check() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sse-fanout.toml");
    assert_passed(&run_cli(&["-c", example, "--check"]));
}

#[test]
fn unknown_key_is_refused_with_its_name_and_line() {
    let output = check(&format!("{VALID}\n[sse]\nheartbeet = \"5s\"\n"));
    assert_refused(output, "sse.heartbeet", "unknown field");
}

#[test]
fn wrong_type_is_refused_naming_the_key() {
    let output = check(&format!("{VALID}replay = \"lots\"\n"));
    assert_refused(output, "topic[0].replay", "invalid type");
}

#[test]
fn bad_duration_is_refused_with_an_example_of_a_good_one() {
    let output = check(&format!("{VALID}\n[sse]\nheartbeat = \"15 parsecs\"\n"));
    assert_refused(output, "sse.heartbeat", "\"15s\"");
}

#[test]
fn missing_certificate_file_is_refused() {
    let config = VALID.replace("chain.pem", "missing.pem");
    assert_refused(
        check(&config),
        "listen[0].tls.cert",
        "cannot read certificate file",
    );
}

#[test]
fn key_that_does_not_match_the_certificate_is_refused() {
    let (dir, path) = temp_file("sse-fanout.toml", VALID);
    let ours = TestCerts::generate();
    let theirs = TestCerts::generate();
    std::fs::write(dir.path().join("chain.pem"), &ours.chain_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &theirs.key_pem).unwrap();
    let output = run_cli(&["-c", path.to_str().unwrap(), "--check"]);
    assert_refused(output, "listen[0].tls.key", "does not fit certificate");
}

#[test]
fn file_that_is_not_a_certificate_is_refused() {
    let (dir, path) = temp_file("sse-fanout.toml", VALID);
    let certs = TestCerts::generate();
    std::fs::write(dir.path().join("chain.pem"), "not a certificate\n").unwrap();
    std::fs::write(dir.path().join("key.pem"), &certs.key_pem).unwrap();
    let output = run_cli(&["-c", path.to_str().unwrap(), "--check"]);
    assert_refused(output, "listen[0].tls.cert", "BEGIN CERTIFICATE");
}

#[test]
fn app_ca_that_holds_no_certificate_is_refused_and_a_good_one_passes() {
    // Relative to the config file's folder, like the listeners' files.
    let with_ca = VALID.replace(
        "upstream = \"127.0.0.1:3000\"",
        "upstream = \"https://127.0.0.1:3000\"\nca = \"chain.pem\"",
    );
    assert_eq!(check(&with_ca).status.code(), Some(0));
    let broken = with_ca.replace("ca = \"chain.pem\"", "ca = \"key.pem\"");
    assert_refused(check(&broken), "app.ca", "BEGIN CERTIFICATE");
    let missing = with_ca.replace("ca = \"chain.pem\"", "ca = \"missing.pem\"");
    assert_refused(check(&missing), "app.ca", "cannot read");
}

/// `VALID` with its TLS listener obtaining its certificate by ACME:
/// `tls` is the listener's table, `more` what follows the listener.
fn acme(tls: &str, more: &str) -> String {
    VALID.replace(
        "tls = { cert = \"chain.pem\", key = \"key.pem\" }",
        &format!("tls = {{ {tls} }}\n{more}"),
    )
}

#[test]
fn an_acme_listener_passes_check_without_contacting_the_ca() {
    let config = acme(
        "acme = [\"Events.Example.com\", \"www.example.com\"], email = \"ops@example.com\", directory = \"https://acme.invalid/directory\", cache = \"acme-cache\"",
        "",
    );
    assert_passed(&check(&config));
}

#[test]
fn acme_settings_that_cannot_work_are_refused_naming_the_key() {
    let cache = "cache = \"acme-cache\"";
    for (tls, more, key, words) in [
        (
            format!("acme = [\"*.example.com\"], {cache}"),
            "",
            "listen[0].tls.acme",
            "wildcard",
        ),
        (
            format!("acme = [], {cache}"),
            "",
            "listen[0].tls.acme",
            "at least one name",
        ),
        (
            format!("acme = [\"a.example.com\"], email = \"ops\", {cache}"),
            "",
            "listen[0].tls.email",
            "not an email address",
        ),
        (
            format!("acme = [\"a.example.com\"], directory = \"http://acme.example/dir\", {cache}"),
            "",
            "listen[0].tls.directory",
            "https://",
        ),
        (
            format!("acme = [\"a.example.com\"], challenge = \"dns-01\", {cache}"),
            "",
            "listen[0].tls.challenge",
            "not a challenge",
        ),
        (
            format!("acme = [\"a.example.com\"], challenge = \"http-01\", {cache}"),
            "",
            "listen[0].tls.challenge",
            "plaintext listener",
        ),
        (
            format!("acme = [\"a.example.com\"], cert = \"chain.pem\", {cache}"),
            "",
            "listen[0].tls",
            "not both",
        ),
        (
            "acme = [\"a.example.com\"], cache = \"chain.pem\"".to_string(),
            "",
            "listen[0].tls.cache",
            "not a directory",
        ),
        (
            format!("acme = [\"a.example.com\"], ca = \"missing.pem\", {cache}"),
            "",
            "listen[0].tls.ca",
            "missing.pem",
        ),
        (
            "cert = \"chain.pem\", key = \"key.pem\", email = \"ops@example.com\"".to_string(),
            "",
            "listen[0].tls.email",
            "ACME setting",
        ),
    ] {
        assert_refused(check(&acme(&tls, more)), key, words);
    }
    // http-01 with a plaintext listener to answer on passes.
    let config = acme(
        &format!("acme = [\"a.example.com\"], challenge = \"http-01\", {cache}"),
        "\n[[listen]]\naddr = \"127.0.0.1:8080\"\n",
    );
    assert_passed(&check(&config));
}

#[test]
fn duplicate_topic_path_is_refused() {
    let config = format!("{VALID}\n[[topic]]\npath = \"/events/news\"\nupstream = \"/other\"\n");
    assert_refused(check(&config), "topic[1].path", "duplicate topic path");
}

#[test]
fn upstream_placeholder_missing_from_the_path_is_refused() {
    let config = format!(
        "{VALID}\n[[topic]]\npath = \"/events/jobs/{{id}}\"\nupstream = \"/stream/{{job}}\"\n"
    );
    assert_refused(check(&config), "topic[1].upstream", "{job}");
}

#[test]
fn unparsable_listen_address_is_refused() {
    let config = VALID.replace("127.0.0.1:8443", "localhost:https");
    assert_refused(check(&config), "listen[0].addr", "IP address and port");
}

#[test]
fn missing_app_table_is_refused() {
    let config = VALID.replace("[app]\nupstream = \"127.0.0.1:3000\"\n", "");
    assert_refused(check(&config), "app", "missing [app]");
}

#[test]
fn missing_config_file_is_refused() {
    let output = run_cli(&["-c", "/nonexistent/sse-fanout.toml", "--check"]);
    assert_refused(
        output,
        "/nonexistent/sse-fanout.toml",
        "cannot read the config file",
    );
}

#[test]
fn bad_config_also_stops_a_normal_start_with_exit_2() {
    let (_dir, path) = temp_file("sse-fanout.toml", "[[listen]]\naddr = 5\n");
    let output = run_cli(&["-c", path.to_str().unwrap()]);
    assert_refused(output, "listen[0].addr", "invalid type");
}

#[test]
fn template_topic_without_auth_is_valid_but_warned_about() {
    let config =
        format!("{VALID}\n[[topic]]\npath = \"/events/users/{{id}}\"\nupstream = \"/s/{{id}}\"\n");
    let output = check(&config);
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning")
            && stderr.contains("/events/users/{id}")
            && stderr.contains("auth"),
        "{stderr}"
    );
}

#[test]
fn wildcard_cors_with_auth_is_refused() {
    let config = format!("{VALID}auth = \"/auth\"\ncors_origins = [\"*\"]\n");
    assert_refused(
        check(&config),
        "topic[0].cors_origins",
        "cannot go with auth",
    );
}

#[test]
fn cors_origin_with_a_path_is_refused() {
    let config = format!("{VALID}cors_origins = [\"https://app.example/page\"]\n");
    assert_refused(check(&config), "topic[0].cors_origins", "is not an origin");
}

#[test]
fn unknown_over_limit_answer_is_refused() {
    let config = format!("[limits]\nover_limit = \"418\"\n{VALID}");
    assert_refused(check(&config), "limits.over_limit", "is not an answer");
}

#[test]
fn upstream_header_the_proxy_sets_itself_is_refused() {
    let config = format!("{VALID}upstream_headers = {{ Host = \"other\" }}\n");
    assert_refused(check(&config), "topic[0].upstream_headers", "sets itself");
}

#[test]
fn unquoted_duration_is_refused_naming_the_key() {
    let output = check(&format!("{VALID}\n[sse]\nheartbeat = 15s\n"));
    assert_refused(output, "sse.heartbeat", "expected newline");
}

#[test]
fn key_missing_from_a_later_topic_names_that_topic() {
    let config = format!("{VALID}\n[[topic]]\npath = \"/events/other\"\n");
    assert_refused(check(&config), "topic[1]", "missing field `upstream`");
}
