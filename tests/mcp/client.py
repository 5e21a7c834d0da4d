# MCP client for tests/mcp.rs (mcp==2.3.0), adapted from shared/reference/mcp-demo/client.py.
#   python client.py URL MODE [--token T] [--progress] [--silent SECONDS]
# MODE: legacy (initialize handshake, 2025-11-25) | auto | 2026-07-28 (stateless).
# Prints one JSON line with what it saw; exits 1 (traceback on stderr) on any failure.
import argparse
import asyncio
import json
import sys
import time

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


# Every HTTP status the client received, printed on failure: the SDK's own errors
# ("Server returned an error response") don't say which status refused it.
STATUSES: list[int] = []


async def record(response) -> None:
    STATUSES.append(response.status_code)


async def main(args) -> dict:
    out: dict = {}
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    http = create_mcp_http_client(headers=headers)
    http.event_hooks["response"].append(record)
    async with http, Client(streamable_http_client(args.url, http_client=http), mode=args.mode) as client:
        out["protocol_version"] = client.protocol_version
        out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
        out["add"] = (await client.call_tool("add", {"a": 1, "b": 2})).structured_content
        if args.progress:
            stamps: list[float] = []
            t0 = time.monotonic()

            async def on_progress(progress, total, message):
                stamps.append(round(time.monotonic() - t0, 3))

            r = await client.call_tool("slow_count", {"n": 3, "delay": 0.5}, progress_callback=on_progress)
            out["progress"] = {"result": r.content[0].text, "stamps": stamps}
        if args.silent:
            # One progress event after `silent` seconds of nothing: the gateway must
            # neither time out the response head nor the idle stream.
            t0 = time.monotonic()
            r = await client.call_tool("slow_count", {"n": 1, "delay": args.silent})
            out["silent"] = {"result": r.content[0].text, "seconds": round(time.monotonic() - t0, 2)}
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("mode")
    p.add_argument("--token")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--silent", type=float)
    try:
        result = asyncio.run(main(p.parse_args()))
    except BaseException:
        print(f"HTTP statuses: {STATUSES}", file=sys.stderr, flush=True)
        raise
    print(json.dumps(result), flush=True)
