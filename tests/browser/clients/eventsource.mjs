// The `eventsource` npm package (a WHATWG EventSource for Node.js), as an
// application uses it: `onmessage`, `onopen`, `onerror`, and its own
// reconnects with `Last-Event-ID`. See report.mjs for the output.
//
//   node eventsource.mjs URL [LIFETIME_MS]

import { EventSource } from "eventsource";
import { args, report } from "./report.mjs";

const { url } = args("eventsource.mjs");

// The library's own fetch, watched: the Last-Event-ID each request carries.
const watchedFetch = (input, init) => {
  const headers = init?.headers ?? {};
  report({ kind: "connect", lastEventId: headers["Last-Event-ID"] ?? null });
  return fetch(input, init);
};

const source = new EventSource(url, { fetch: watchedFetch });
source.onopen = () => report({ kind: "open" });
source.onmessage = (event) =>
  report({ kind: "message", type: event.type, data: event.data, lastEventId: event.lastEventId });
source.onerror = (event) => {
  report({ kind: "error", message: String(event.message ?? ""), code: event.code ?? null });
  if (source.readyState === EventSource.CLOSED) report({ kind: "closed" });
};
