#!/usr/bin/env python3
"""Replays a campaign's lifecycle and control events from JetStream with nats-py.

This is what an operator's own tooling sees: it uses no Herald code, only the
stream layout documented in docs/OPERATIONS.md. Prints one JSON line per message:
{"stream", "seq", "subject", "msg_id", "correlation", "payload"}.

    python3 scripts/replay_events.py --campaign <id> [--server nats://127.0.0.1:4222]
        [--subject-prefix ""] [--stream-prefix HERALD]

Needs nats-py (`pip install nats-py`, e.g. in a venv). The prefixes are those of
HERALD_SUBJECT_PREFIX and HERALD_STREAM_PREFIX, and those variables (and NATS_URL,
a comma-separated list as for the services) are the defaults.
"""

import argparse
import asyncio
import json
import os

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy, AckPolicy


async def replay(js, stream, subject):
    # An ephemeral pull consumer from the start of the stream, filtered to one campaign.
    sub = await js.pull_subscribe(
        subject,
        durable=None,
        stream=stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT),
    )
    out = []
    while True:
        try:
            batch = await sub.fetch(100, timeout=1)
        except nats.errors.TimeoutError:
            break
        for msg in batch:
            headers = msg.headers or {}
            out.append({
                "stream": stream,
                "seq": msg.metadata.sequence.stream,
                "subject": msg.subject,
                "msg_id": headers.get("Nats-Msg-Id"),
                "correlation": headers.get("X-Correlation-Id"),
                "payload": json.loads(msg.data),
            })
            await msg.ack()
    await sub.unsubscribe()
    return out


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--campaign", required=True)
    # The defaults are Herald's own settings, so the services' environment works as is.
    parser.add_argument("--server", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--subject-prefix", default=os.environ.get("HERALD_SUBJECT_PREFIX", ""))
    parser.add_argument("--stream-prefix", default=os.environ.get("HERALD_STREAM_PREFIX", "HERALD"))
    args = parser.parse_args()
    servers = [u.strip() if "://" in u else "nats://" + u.strip() for u in args.server.split(",") if u.strip()]
    nc = await nats.connect(servers=servers)
    js = nc.jetstream()
    p, s = args.subject_prefix, args.stream_prefix
    # Like HERALD_SUBJECT_PREFIX: `staging` and `staging.` are the same prefix.
    if p and not p.endswith("."):
        p += "."
    rows = await replay(js, f"{s}_EVENTS", f"{p}campaigns.events.{args.campaign}")
    rows += await replay(js, f"{s}_CONTROL", f"{p}campaigns.control.{args.campaign}")
    for row in rows:
        print(json.dumps(row))
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
