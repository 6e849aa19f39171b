// Chromium's own EventSource (Debian's /usr/bin/chromium, headless, through
// playwright-core): a page on the proxy's origin (any ordinary proxied path)
// runs `new EventSource(path)`, and each event it fires is reported as it
// comes. The Last-Event-ID of each request is read from the browser's
// network events. See report.mjs for the output.
//
//   node chromium.mjs URL [LIFETIME_MS]

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { args, report } from "./report.mjs";

const { url } = args("chromium.mjs");
const target = new URL(url);
// An ordinary path on the proxy: the app answers it, and the page is then
// on the same origin as the stream.
const page_url = new URL("/page", target.origin).href;

const profile = mkdtempSync(join(tmpdir(), "sse-fanout-client-chromium-"));
const cleanup = () => rmSync(profile, { recursive: true, force: true });
process.on("exit", cleanup);

const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run",
  ],
});
const page = context.pages()[0] ?? (await context.newPage());
// Reported in the order the requests were made; the headers the network
// stack sent (Last-Event-ID among them) come a moment after each request.
let connects = Promise.resolve();
page.on("request", (request) => {
  if (request.resourceType() !== "eventsource") return;
  const headers = request.allHeaders();
  connects = connects.then(async () => {
    const sent = await headers.catch(() => request.headers());
    report({ kind: "connect", lastEventId: sent["last-event-id"] ?? null });
  });
});
await page.exposeFunction("report", (line) => report(line));
await page.goto(page_url);
await page.evaluate((path) => {
  const source = new EventSource(path);
  source.onopen = () => window.report({ kind: "open" });
  source.onmessage = (event) =>
    window.report({ kind: "message", type: event.type, data: event.data, lastEventId: event.lastEventId });
  source.onerror = () => {
    window.report({ kind: "error", message: `readyState ${source.readyState}` });
    if (source.readyState === EventSource.CLOSED) window.report({ kind: "closed" });
  };
}, target.pathname + target.search);
// The page now runs by itself; the process ends with stdin or its lifetime.
