//! Reads a subscription's event stream the way a browser would.

use std::collections::VecDeque;
use std::time::Duration;

use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::timeout;

use sse_fanout::sse::{Event, Item, Parser, ParserLimits};

use super::client::Client;
use super::PATIENCE;

/// A subscription's response body, parsed as it arrives.
pub struct EventStream {
    body: Incoming,
    parser: Parser,
    items: VecDeque<Item>,
    /// Every byte received, for byte-for-byte comparisons.
    pub raw: Vec<u8>,
    /// Whether the server ended the stream.
    pub ended: bool,
}

impl EventStream {
    /// Wraps a subscription response, checking it is an event stream.
    pub fn new(response: Response<Incoming>) -> EventStream {
        assert_eq!(response.status(), 200, "subscription not answered 200");
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(content_type.as_deref(), Some("text/event-stream"));
        EventStream {
            body: response.into_body(),
            parser: Parser::new(ParserLimits::default()),
            items: VecDeque::new(),
            raw: Vec::new(),
            ended: false,
        }
    }

    /// Subscribes with `client` to `path` (optionally with `Last-Event-ID`).
    pub async fn open(client: &mut Client, path: &str, last_event_id: Option<&str>) -> EventStream {
        let headers: Vec<(&str, &str)> = last_event_id
            .map(|id| ("last-event-id", id))
            .into_iter()
            .collect();
        EventStream::new(subscribe(client, path, &headers).await)
    }
}

/// Sends a subscription request with extra headers; returns the response
/// whatever its status.
pub async fn subscribe(
    client: &mut Client,
    path: &str,
    headers: &[(&str, &str)],
) -> Response<Incoming> {
    let mut request = client
        .request("GET", path)
        .header("accept", "text/event-stream");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client
        .send(request.body(Default::default()).unwrap())
        .await
        .expect("subscription request")
}

impl EventStream {
    /// The next item, or `None` when the stream ended cleanly. Panics if
    /// nothing arrives within the test's patience or the stream breaks.
    pub async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.items.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            let frame = timeout(PATIENCE, self.body.frame())
                .await
                .expect("nothing arrived on the event stream in time");
            match frame {
                None => {
                    self.ended = true;
                    self.parser.finish();
                }
                Some(Err(e)) => panic!("event stream broke: {e}"),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.raw.extend_from_slice(&data);
                        let mut items = Vec::new();
                        self.parser.feed(&data, &mut items);
                        if let Some(Item::Skipped(error)) =
                            items.iter().find(|item| matches!(item, Item::Skipped(_)))
                        {
                            panic!("proxy output breaks a parser limit: {error}");
                        }
                        self.items.extend(items);
                    }
                }
            }
        }
    }

    /// The next event a browser would fire (data present), skipping comments
    /// and id-only or retry-only blocks.
    pub async fn next_message(&mut self) -> Option<Event> {
        loop {
            match self.next_item().await? {
                Item::Event(event) if event.data().is_some() => return Some(event),
                _ => {}
            }
        }
    }

    /// The next `n` messages' ids.
    pub async fn message_ids(&mut self, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let event = self.next_message().await.expect("stream ended early");
            ids.push(event.id().unwrap_or("").to_string());
        }
        ids
    }

    /// Reads until the server ends the stream; returns what came meanwhile.
    pub async fn until_end(&mut self) -> Vec<Item> {
        let mut rest = Vec::new();
        while let Some(item) = self.next_item().await {
            rest.push(item);
        }
        rest
    }

    /// Every `retry:` value received so far, in order. (A `retry:` line
    /// needs no block of its own: a client applies it as it reads it, so the
    /// proxy's own travel with the next block or end the stream.)
    pub fn retries(&self) -> Vec<u64> {
        String::from_utf8_lossy(&self.raw)
            .lines()
            .filter_map(|line| line.strip_prefix("retry:"))
            .filter_map(|value| value.trim_start().parse().ok())
            .collect()
    }
}

/// What a browser's `EventSource` keeps across reconnections: one parser
/// (so its last event id carries over) and the server's latest `retry:`.
pub struct Resuming {
    parser: Parser,
    /// The reconnection delay the server last asked for, if it did.
    pub retry: Option<Duration>,
}

impl Resuming {
    pub fn new() -> Resuming {
        Resuming {
            parser: Parser::new(ParserLimits::default()),
            retry: None,
        }
    }

    /// The `Last-Event-ID` to reconnect with, once there is one.
    pub fn last_event_id(&self) -> Option<String> {
        Some(self.parser.last_event_id().to_string()).filter(|id| !id.is_empty())
    }

    /// Feeds received bytes; returns the ids of the messages they fired
    /// (blocks with data), in order.
    pub fn feed(&mut self, data: &[u8]) -> Vec<String> {
        let mut items = Vec::new();
        self.parser.feed(data, &mut items);
        let mut fired = Vec::new();
        for item in items {
            if let Item::Event(event) = item {
                if let Some(ms) = event.retry() {
                    self.retry = Some(Duration::from_millis(ms));
                }
                if event.data().is_some() {
                    fired.push(event.id().unwrap_or("").to_string());
                }
            }
        }
        fired
    }

    /// The connection ended: a block cut in the middle is lost (with its
    /// id), as in a browser.
    pub fn connection_ended(&mut self) {
        self.parser.finish();
    }
}
