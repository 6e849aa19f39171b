// `@microsoft/fetch-event-source` as its README tells an application to use
// it: `openWhenHidden` (Node has no page to hide), `onopen` checking the
// answer, `onclose` throwing so the stream is retried, `onerror` returning
// (retry after the server's `retry:`) unless the error is fatal. The
// library sends `last-event-id` itself. See report.mjs for the output.
//
//   node fetch-event-source.mjs URL [LIFETIME_MS]

import { args, report } from "./report.mjs";

// What the library expects of a browser: `window` (fetch and timers) and
// `document` (visibility, unused with openWhenHidden).
globalThis.window = globalThis;
globalThis.document = { hidden: false, addEventListener() {}, removeEventListener() {} };
const { fetchEventSource } = await import("@microsoft/fetch-event-source");

const { url } = args("fetch-event-source.mjs");

class RetriableError extends Error {}
class FatalError extends Error {}

// The library keeps its headers in one object across reconnects and sets
// `last-event-id` in it as ids arrive: that object is its resume point.
let resumeHeaders = {};
const watchedFetch = (input, init) => {
  resumeHeaders = init.headers;
  report({ kind: "connect", lastEventId: resumeHeaders["last-event-id"] ?? null });
  return fetch(input, init);
};

try {
  await fetchEventSource(url, {
    fetch: watchedFetch,
    openWhenHidden: true,
    async onopen(response) {
      const type = response.headers.get("content-type") || "";
      if (response.ok && type.startsWith("text/event-stream")) {
        report({ kind: "open" });
        return;
      }
      if (response.status >= 400 && response.status < 500 && response.status !== 429) {
        throw new FatalError(`status ${response.status}`);
      }
      if (response.status === 204) throw new FatalError("204: the stream has ended");
      throw new RetriableError(`status ${response.status}, content type ${type}`);
    },
    onmessage(message) {
      report({
        kind: "message",
        type: message.event || "message",
        data: message.data,
        lastEventId: resumeHeaders["last-event-id"] ?? "",
      });
    },
    onclose() {
      report({ kind: "error", message: "the server ended the stream" });
      throw new RetriableError("the server ended the stream");
    },
    onerror(error) {
      if (error instanceof FatalError) throw error;
      if (!(error instanceof RetriableError)) report({ kind: "error", message: String(error) });
      // undefined: retry after the server's `retry:` interval
    },
  });
} catch (error) {
  report({ kind: "error", message: String(error) });
}
report({ kind: "closed" });
