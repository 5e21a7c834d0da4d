# MCP client for tests/mcp_policy.rs (mcp==2.3.0): lists the tools, then calls each
# --call NAME=JSON_ARGS and records its text or the JSON-RPC error the client raised.
#   python policy_client.py URL MODE [--token T] [--call NAME=ARGS]... [--progress]
# MODE: legacy (initialize handshake, 2025-11-25) | auto | 2026-07-28 (stateless).
# Prints one JSON line; exits 1 (traceback on stderr) on anything but a tool's refusal.
import argparse
import asyncio
import json
import sys
import time

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

STATUSES: list[int] = []


async def record(response) -> None:
    STATUSES.append(response.status_code)


async def main(args) -> dict:
    out: dict = {"calls": {}}
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    http = create_mcp_http_client(headers=headers)
    http.event_hooks["response"].append(record)
    async with http, Client(streamable_http_client(args.url, http_client=http), mode=args.mode) as client:
        out["protocol_version"] = client.protocol_version
        out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
        for spec in args.call or []:
            name, _, raw = spec.partition("=")
            try:
                r = await client.call_tool(name, json.loads(raw or "{}"))
                out["calls"][name] = {"ok": r.content[0].text if r.content else None}
            except MCPError as e:
                out["calls"][name] = {"error": {"code": e.code, "message": e.message}}
        if args.progress:
            stamps: list[float] = []
            t0 = time.monotonic()

            async def on_progress(progress, total, message):
                stamps.append(round(time.monotonic() - t0, 3))

            r = await client.call_tool("slow_count", {"n": 3, "delay": 0.5}, progress_callback=on_progress)
            out["progress"] = {"result": r.content[0].text, "stamps": stamps}
    out["statuses"] = STATUSES
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("mode")
    p.add_argument("--token")
    p.add_argument("--call", action="append")
    p.add_argument("--progress", action="store_true")
    try:
        result = asyncio.run(main(p.parse_args()))
    except BaseException:
        print(f"HTTP statuses: {STATUSES}", file=sys.stderr, flush=True)
        raise
    print(json.dumps(result), flush=True)
