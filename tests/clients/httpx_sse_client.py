"""httpx-sse as Python services use it, for the client matrix (tests/clients.rs).

httpx-sse parses a response into events and does not reconnect; services
(and SDKs built on it) reconnect themselves when the stream ends: wait the
server's last `retry`, then send the last event id they saw as
`Last-Event-ID`. This script does exactly that, and prints one JSON line per
thing the application sees (see tests/browser/clients/report.mjs):

    python httpx_sse_client.py URL [LIFETIME_MS]

It exits when its parent closes stdin, or after its lifetime.
"""

import json
import os
import sys
import threading
import time

import httpx
from httpx_sse import connect_sse

# What a service waits before reconnecting when the server named no `retry`.
DEFAULT_RETRY_MS = 3000


def report(line):
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def exit_when_stdin_closes():
    sys.stdin.read()
    os._exit(0)


def exit_after(lifetime_ms):
    time.sleep(lifetime_ms / 1000)
    report({"kind": "exit", "why": f"lifetime of {lifetime_ms} ms"})
    os._exit(0)


def main():
    if len(sys.argv) < 2:
        print("usage: httpx_sse_client.py URL [LIFETIME_MS]", file=sys.stderr)
        sys.exit(2)
    url = sys.argv[1]
    lifetime_ms = int(sys.argv[2]) if len(sys.argv) > 2 else 120_000
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    threading.Thread(target=exit_after, args=(lifetime_ms,), daemon=True).start()

    last_event_id = None
    retry_ms = DEFAULT_RETRY_MS
    with httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client:
        while True:
            headers = {}  # connect_sse adds Accept and Cache-Control
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            report({"kind": "connect", "lastEventId": last_event_id})
            try:
                with connect_sse(client, "GET", url, headers=headers) as source:
                    if source.response.status_code == 204:
                        report({"kind": "closed", "why": "204"})
                        return
                    source.response.raise_for_status()
                    report({"kind": "open"})
                    for sse in source.iter_sse():
                        if sse.id:
                            last_event_id = sse.id
                        if sse.retry is not None:
                            retry_ms = sse.retry
                        report(
                            {
                                "kind": "message",
                                "type": sse.event,
                                "data": sse.data,
                                "lastEventId": sse.id,
                            }
                        )
                report({"kind": "error", "message": "the server ended the stream"})
            except httpx.HTTPStatusError as error:
                report({"kind": "error", "message": str(error)})
                if 400 <= error.response.status_code < 500:
                    report({"kind": "closed"})
                    return
            except (httpx.HTTPError, ValueError) as error:
                report({"kind": "error", "message": repr(error)})
            time.sleep(retry_ms / 1000)


if __name__ == "__main__":
    main()
