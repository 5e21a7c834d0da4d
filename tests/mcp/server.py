# MCP server for tests/mcp.rs (mcp==2.3.0), adapted from shared/reference/mcp-demo/server.py.
#   python server.py [--json] [--stateless]
# Binds 127.0.0.1 on an ephemeral port and prints "PORT <n>" once it is bound, so the
# test needs no fixed port.
import socket
import sys

import anyio
import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings

mcp = MCPServer("portcullis-e2e")


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@mcp.tool()
async def slow_count(n: int, delay: float, ctx: Context) -> str:
    """Count to n, emitting a progress notification every `delay` seconds."""
    for i in range(1, n + 1):
        await anyio.sleep(delay)
        await ctx.report_progress(i, n, f"step {i}")
    return f"counted to {n}"


if __name__ == "__main__":
    app = mcp.streamable_http_app(
        streamable_http_path="/mcp",
        json_response="--json" in sys.argv,
        stateless_http="--stateless" in sys.argv,
        # The gateway sends the service's Host (127.0.0.1:<port>) and, from these
        # clients, no Origin.
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*"],
        ),
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
