//! Cross-origin subscriptions: which pages on other origins may subscribe.
//!
//! A page on `https://app.example` that opens
//! `new EventSource("https://events.example/events/news", { withCredentials: true })`
//! needs the topic's response to name its origin exactly, with
//! `Access-Control-Allow-Credentials: true`. A topic lists its allowed
//! origins in `cors_origins` (or `"*"` for a public topic read without
//! credentials); other origins get no CORS headers, so the browser refuses
//! the stream. A request with a custom header (`Last-Event-ID` set by a
//! polyfill, say) is preflighted with `OPTIONS`, answered here too.
//! Proxied (non-topic) paths are the app's business and are left alone.
//!
//! Origins are compared in the form browsers send them ([`normalize_origin`]:
//! scheme and host in lower case, no default port, no trailing slash), so a
//! configured `https://App.Example:443/` allows `https://app.example`.

use http::header::{self, HeaderName};

use crate::config::CorsOrigins;
use crate::upstream_addr::UpstreamAddr;

/// Headers a subscriber may send cross-origin (answer to a preflight).
const ALLOWED_HEADERS: &str = "Last-Event-ID, Cache-Control, Accept, Authorization";

/// How long a browser may reuse a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE_SECONDS: &str = "600";

/// An `http` or `https` origin as a browser serializes it: scheme and host
/// in lower case, the scheme's default port left out, no trailing `/`.
/// `None` for anything else (`null`, a path, another scheme).
pub fn normalize_origin(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return None;
    }
    let origin = UpstreamAddr::parse(&format!("{scheme}://{rest}")).ok()?;
    Some(
        UpstreamAddr {
            host: origin.host.to_ascii_lowercase(),
            ..origin
        }
        .to_string(),
    )
}

/// Whether the request's `origin` is one of `allowed`, both normalized.
fn is_allowed(allowed: &[String], origin: &str) -> bool {
    let Some(origin) = normalize_origin(origin) else {
        return false;
    };
    allowed
        .iter()
        .any(|a| normalize_origin(a).is_some_and(|a| a == origin))
}

/// The CORS response headers for a subscription request from `origin`
/// (the request's `Origin` header); empty when none apply.
pub fn response_headers(policy: &CorsOrigins, origin: Option<&str>) -> Vec<(HeaderName, String)> {
    let mut headers = Vec::new();
    match policy {
        CorsOrigins::None => {}
        CorsOrigins::Any => {
            headers.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".to_string()));
        }
        CorsOrigins::List(allowed) => {
            // The answer depends on the request's origin: caches must know.
            headers.push((header::VARY, "Origin".to_string()));
            if let Some(origin) = origin.filter(|o| is_allowed(allowed, o)) {
                headers.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.to_string()));
                headers.push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".to_string()));
            }
        }
    }
    headers
}

/// The headers of the answer to a preflight (`OPTIONS` with
/// `Access-Control-Request-Method`) from `origin`: the response headers
/// plus what may be sent, when the origin is allowed; nothing otherwise.
pub fn preflight_headers(policy: &CorsOrigins, origin: Option<&str>) -> Vec<(HeaderName, String)> {
    let mut headers = response_headers(policy, origin);
    if headers
        .iter()
        .any(|(name, _)| name == header::ACCESS_CONTROL_ALLOW_ORIGIN)
    {
        headers.push((header::ACCESS_CONTROL_ALLOW_METHODS, "GET".to_string()));
        headers.push((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            ALLOWED_HEADERS.to_string(),
        ));
        headers.push((
            header::ACCESS_CONTROL_MAX_AGE,
            PREFLIGHT_MAX_AGE_SECONDS.to_string(),
        ));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed() -> CorsOrigins {
        CorsOrigins::List(vec!["https://app.example".into()])
    }

    fn value(headers: &[(HeaderName, String)], name: HeaderName) -> Option<&str> {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn listed_origin_gets_itself_and_credentials() {
        let headers = response_headers(&listed(), Some("https://app.example"));
        assert_eq!(
            value(&headers, header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("https://app.example")
        );
        assert_eq!(
            value(&headers, header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
            Some("true")
        );
        assert_eq!(value(&headers, header::VARY), Some("Origin"));
    }

    #[test]
    fn origins_match_whatever_their_case_default_port_or_trailing_slash() {
        let configured = CorsOrigins::List(vec![
            "https://App.Example".into(),
            "http://local.example:80/".into(),
        ]);
        for (origin, allowed) in [
            ("https://app.example", true),
            ("https://APP.EXAMPLE", true),
            ("HTTPS://app.example:443", true),
            ("http://local.example", true),
            ("https://app.example:8443", false),
            ("http://app.example", false),
            ("https://app.example.evil", false),
            ("null", false),
        ] {
            let headers = response_headers(&configured, Some(origin));
            let echoed = value(&headers, header::ACCESS_CONTROL_ALLOW_ORIGIN);
            assert_eq!(echoed, allowed.then_some(origin), "{origin}");
        }
    }

    #[test]
    fn normalized_origins_read_as_browsers_send_them() {
        assert_eq!(
            normalize_origin("HTTPS://App.Example:443/").as_deref(),
            Some("https://app.example")
        );
        assert_eq!(
            normalize_origin("http://[::1]:8080").as_deref(),
            Some("http://[::1]:8080")
        );
        for bad in [
            "app.example",
            "ftp://x",
            "https://x/path",
            "null",
            "https://",
        ] {
            assert_eq!(normalize_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn other_origin_gets_no_allow_headers() {
        let headers = response_headers(&listed(), Some("https://evil.example"));
        assert_eq!(value(&headers, header::ACCESS_CONTROL_ALLOW_ORIGIN), None);
        assert_eq!(
            value(&headers, header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
            None
        );
    }

    #[test]
    fn any_origin_never_allows_credentials() {
        let headers = response_headers(&CorsOrigins::Any, Some("https://x.example"));
        assert_eq!(
            value(&headers, header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("*")
        );
        assert_eq!(
            value(&headers, header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
            None
        );
    }

    #[test]
    fn preflight_for_an_allowed_origin_names_method_and_headers() {
        let headers = preflight_headers(&listed(), Some("https://app.example"));
        assert_eq!(
            value(&headers, header::ACCESS_CONTROL_ALLOW_METHODS),
            Some("GET")
        );
        assert!(value(&headers, header::ACCESS_CONTROL_ALLOW_HEADERS)
            .unwrap()
            .contains("Last-Event-ID"));
        assert!(preflight_headers(&listed(), Some("https://evil.example"))
            .iter()
            .all(|(n, _)| *n != header::ACCESS_CONTROL_ALLOW_METHODS));
    }
}
