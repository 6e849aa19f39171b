// Drives Debian's chromium (headless, through playwright-core) against a
// running `sse-fanout demo`, and prints what it saw as one machine-readable
// line, `VERDICT {json}`, which tests/browser.rs parses and asserts on.
//
//   node e2e.mjs H2_URL H1_URL OUT_DIR
//
// H2_URL is the demo page over https (HTTP/2 by ALPN), H1_URL the same page on
// the plaintext listener (HTTP/1.1 for a browser). Screenshots go to OUT_DIR.
// The script gathers facts and waits for conditions (each with a deadline); it
// does not judge them: a condition that never came is reported as such.

import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [h2Url, h1Url, outDir] = process.argv.slice(2);
if (!h2Url || !h1Url || !outDir) {
  console.error("usage: node e2e.mjs H2_URL H1_URL OUT_DIR");
  process.exit(2);
}

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
// How long any one condition may take to come true. The slowest is the quiet
// topic's next event (every 10 s) after its upstream was restarted.
const PATIENCE_MS = 40_000;
// The whole run may not take longer than this.
const WATCHDOG_MS = 180_000;
// Over HTTP/1.1, the stall is judged once a stream that did open has received
// this many clock events (one a second), so the page has had time to open more.
const STALL_EVENTS = 5;

const verdict = { h2: {}, h1: {}, notes: [] };

function report(exitCode) {
  console.log("VERDICT " + JSON.stringify(verdict));
  process.exit(exitCode);
}

setTimeout(() => {
  verdict.notes.push(`watchdog: the run took more than ${WATCHDOG_MS} ms`);
  report(1);
}, WATCHDOG_MS).unref();

// Polls `probe` in the page until `accept` holds for its result; returns the
// last result and whether it was accepted before the deadline.
async function waitFor(page, what, probe, accept) {
  const deadline = Date.now() + PATIENCE_MS;
  let last;
  for (;;) {
    last = await page.evaluate(probe);
    if (accept(last)) return { ok: true, value: last };
    if (Date.now() > deadline) {
      verdict.notes.push(`gave up waiting for ${what}`);
      return { ok: false, value: last };
    }
    await page.waitForTimeout(100);
  }
}

const summary = () => window.demo && window.demo.summary();

// A full-page screenshot of what the page knows right now.
async function screenshot(page, path) {
  await page.evaluate(() => window.demo.render());
  await page.screenshot({ path, fullPage: true });
}
const freshStats = async () => {
  const response = await fetch("/demo/stats", { cache: "no-store" });
  return response.json();
};

function pageTopics(s) {
  return Object.keys(s.expectedSubscribers);
}

function topicStats(stats, path) {
  return stats.proxy.topics.find((t) => t.path === path) || null;
}

async function h2Phase(context) {
  const v = verdict.h2;
  const page = await context.newPage();
  // The protocol of every EventSource response, as the browser's network stack saw it.
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  const streams = [];
  cdp.on("Network.responseReceived", (e) => {
    if (e.type === "EventSource") streams.push({ url: e.response.url, protocol: e.response.protocol, status: e.response.status });
  });

  await page.goto(h2Url);
  // Every EventSource opens. (Receiving is checked after the restart below:
  // a late joiner of the quiet topic waits up to 10 s for its first event,
  // and the restart should come while the shortest job still runs.)
  const opened = await waitFor(page, "every EventSource to open", summary,
    (s) => s && s.subs.every((x) => x.opened));
  let s = opened.value;
  v.protocol = s.protocol;
  v.planned = s.planned;
  v.all_open = s.subs.every((x) => x.opened);
  v.eventsource_responses = streams.length;
  v.eventsource_protocols = [...new Set(streams.map((x) => x.protocol))];

  // The stats: every topic of the page has its subscribers and one upstream connection.
  const topics = pageTopics(s);
  // (A subscriber is answered before its topic's upstream has connected:
  // wait for both.)
  const settled = await waitFor(page, "the stats to count every subscriber and upstream", freshStats,
    (st) => topics.every((p) => topicStats(st, p)?.subscribers === s.expectedSubscribers[p]
      && topicStats(st, p)?.upstream_state === "connected"));
  const before = settled.value;
  v.topics = topics.map((p) => {
    const t = topicStats(before, p);
    return { path: p, expected_subscribers: s.expectedSubscribers[p], subscribers: t?.subscribers,
      upstream_state: t?.upstream_state, upstream_connects: t?.upstream_connects };
  });
  v.app_open_streams = before.app.open_streams;
  v.totals = before.proxy.totals;

  // Press the button: the app ends every stream it serves.
  await page.click("#restart");
  const pressed = await waitFor(page, "the restart to be answered", summary,
    (x) => x.restarts.length === 1 && (x.restarts[0].answer || x.restarts[0].error));
  const mark = pressed.value.restarts[0];
  v.restart_answer = mark.answer || null;
  v.restart_error = mark.error || null;
  // Topics still running when the button was pressed: every one reconnects upstream once.
  const running = topics.filter((p) => !before.proxy.topics.find((t) => t.path === p && t.upstream_state === "ended"));
  const reconnected = await waitFor(page, "every running topic to reconnect upstream", freshStats,
    (st) => running.every((p) => {
      const t = topicStats(st, p);
      return t && (t.upstream_connects >= 2 || t.upstream_state === "ended");
    }));
  // After the reconnect, every EventSource that was open on a running topic
  // keeps receiving, on the same stream (no error event: no reconnect).
  const afterReconnect = await page.evaluate(summary);
  const finished = (sub) => sub.job && sub.lastId === 100;
  const checked = afterReconnect.subs.map((x, i) => mark.subs[i].readyState === 1 && running.includes(x.topic));
  const receiving = (x) => x.subs.every((sub, i) => !checked[i] || finished(sub) || sub.count > afterReconnect.subs[i].count);
  const kept = await waitFor(page, "every open EventSource to receive an event after the upstream restart", summary, receiving);
  s = kept.value;
  const unfinished = s.subs.filter((sub, i) => checked[i] && !finished(sub));
  // The picture for the README: every stream live, right after the restart.
  v.screenshot = join(outDir, "demo.png");
  await screenshot(page, v.screenshot);
  v.all_received = s.subs.every((x) => x.count > 0);
  v.restart = {
    eventsources_checked: unfinished.length,
    still_receiving: receiving(s),
    all_still_open: unfinished.every((sub) => sub.readyState === 1),
    error_events: s.subs.reduce((n, sub, i) => n + (checked[i] && !finished(sub) ? sub.errors - mark.subs[i].errors : 0), 0),
    topics_reconnected: reconnected.ok,
    topics: running.map((p) => {
      const t = topicStats(reconnected.value, p);
      return { path: p, job: p.startsWith("/events/jobs/"),
        subscribers_before: topicStats(before, p)?.subscribers, subscribers_after: t?.subscribers,
        upstream_connects: t?.upstream_connects, upstream_state: t?.upstream_state };
    }),
  };

  // A job that ends: its topic's upstream answers 204 and its EventSources stop.
  const firstJob = topics.find((p) => p.startsWith("/events/jobs/") && p.endsWith("-1"));
  const ended = await waitFor(page, `the EventSources of ${firstJob} to stop`, summary,
    (x) => x.subs.filter((sub) => sub.topic === firstJob).every((sub) => sub.readyState === 2));
  s = ended.value;
  const jobSubs = s.subs.filter((sub) => sub.topic === firstJob);
  const jobStats = topicStats(await page.evaluate(freshStats), firstJob);
  v.ended_job = {
    path: firstJob,
    eventsources: jobSubs.length,
    closed: jobSubs.every((sub) => sub.readyState === 2),
    last_ids: [...new Set(jobSubs.map((sub) => sub.lastId))],
    upstream_state: jobStats?.upstream_state ?? "reclaimed",
  };

  // The whole run, every EventSource: ids seen without a gap.
  v.gaps = s.subs.reduce((n, sub) => n + sub.gaps, 0);
  v.events = s.subs.reduce((n, sub) => n + sub.count, 0);
  v.wire = s.wire;

  await waitFor(page, "the stats to show the ended job", () => window.demo.stats,
    (st) => st && topicStats(st, firstJob)?.upstream_state !== "connected");
  v.screenshot_job_ended = join(outDir, "demo-job-ended.png");
  await screenshot(page, v.screenshot_job_ended);
  await page.close();
}

async function h1Phase(context) {
  const v = verdict.h1;
  const page = await context.newPage();
  await page.goto(h1Url);
  const waited = await waitFor(page, `an open EventSource over HTTP/1.1 to receive ${STALL_EVENTS} events`, summary,
    (s) => s && s.subs.some((x) => x.count >= STALL_EVENTS));
  const s = waited.value;
  v.protocol = s.protocol;
  v.planned = s.planned;
  v.open_now = s.subs.filter((x) => x.readyState === 1).length;
  v.max_open = s.maxOpen;
  v.ever_opened = s.subs.filter((x) => x.opened).length;
  v.still_connecting = s.subs.filter((x) => x.readyState === 0 && !x.opened).length;
  v.events_on_open_streams = s.subs.filter((x) => x.opened).map((x) => x.count);
  v.screenshot = join(outDir, "demo-http1.png");
  await screenshot(page, v.screenshot);
  await page.close();
}

mkdirSync(outDir, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), "sse-fanout-chromium-"));
let context;
let exitCode = 0;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 900 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--no-first-run",
    ],
  });
  await h2Phase(context);
  await h1Phase(context);
} catch (e) {
  verdict.notes.push(`error: ${e && e.stack ? e.stack : e}`);
  exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
report(exitCode);
