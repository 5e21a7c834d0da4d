// MCP client for tests/mcp.rs, @modelcontextprotocol/sdk 1.32.2 (adapted from
// shared/reference/mcp-demo/client.mjs). node client.mjs URL; MCP_TOKEN = bearer token.
// Prints one JSON line with what it saw; exits 1 on any failure.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const url = new URL(process.argv[2]);
const transport = new StreamableHTTPClientTransport(url, {
  requestInit: { headers: process.env.MCP_TOKEN ? { Authorization: `Bearer ${process.env.MCP_TOKEN}` } : {} },
});
const client = new Client({ name: 'portcullis-e2e', version: '0.0.1' });
try {
  await client.connect(transport);
  const out = { session: transport.sessionId ?? null, protocol_version: transport.protocolVersion ?? null };
  out.tools = (await client.listTools()).tools.map(t => t.name).sort();
  out.add = (await client.callTool({ name: 'add', arguments: { a: 1, b: 2 } })).content[0].text;
  const t0 = Date.now();
  const stamps = [];
  const r = await client.callTool({ name: 'slow_count', arguments: { n: 3, delay: 0.5 } }, undefined, {
    onprogress: () => stamps.push((Date.now() - t0) / 1000),
  });
  out.progress = { result: r.content[0].text, stamps };
  if (transport.sessionId) {
    await transport.terminateSession(); // DELETE; throws unless the server accepted it
    out.terminated = transport.sessionId === undefined;
  }
  await client.close();
  console.log(JSON.stringify(out));
} catch (e) {
  // StreamableHTTPError carries the HTTP status as `code`; same line as client.py.
  if (typeof e?.code === 'number') console.error(`HTTP statuses: [${e.code}]`);
  console.error(e?.stack ?? String(e));
  process.exit(1);
}
