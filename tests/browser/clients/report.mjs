// What every client script of the client matrix (tests/clients.rs) shares:
// its arguments, its report (one JSON line per thing the application sees,
// written at once) and its bounds (it exits when its parent closes stdin,
// or after a lifetime, whichever comes first).
//
//   node CLIENT.mjs URL [LIFETIME_MS]

/** The subscription URL and how long the script may run. */
export function args(usage) {
  const [url, lifetime] = process.argv.slice(2);
  if (!url) {
    console.error(`usage: node ${usage} URL [LIFETIME_MS]`);
    process.exit(2);
  }
  const lifetimeMs = Number(lifetime || 120_000);
  setTimeout(() => {
    report({ kind: "exit", why: `lifetime of ${lifetimeMs} ms` });
    process.exit(0);
  }, lifetimeMs).unref();
  // The test holds stdin open; when it goes away, so does the client.
  process.stdin.on("end", () => process.exit(0));
  process.stdin.on("error", () => process.exit(0));
  process.stdin.resume();
  return { url };
}

/**
 * One line of the report. Kinds:
 * - `connect`: a request is about to be sent; `lastEventId` is the
 *   `Last-Event-ID` header it carries (null: none);
 * - `open`: the stream was accepted;
 * - `message`: an event reached the application: its `type`, `data`, and
 *   `lastEventId`, the id the client would resume from right after it;
 * - `error`: the client saw an error (it may reconnect);
 * - `closed`: the client gave up for good.
 */
export function report(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}
