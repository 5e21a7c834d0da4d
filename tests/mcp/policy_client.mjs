// MCP client for tests/mcp_policy.rs, @modelcontextprotocol/sdk 1.32.2: lists the
// tools, then calls each NAME=JSON_ARGS argument and records its text or the JSON-RPC
// error the client raised. node policy_client.mjs URL [NAME=ARGS]... [--progress];
// MCP_TOKEN = bearer token. Prints one JSON line; exits 1 on anything else.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';

const [url, ...rest] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: process.env.MCP_TOKEN ? { Authorization: `Bearer ${process.env.MCP_TOKEN}` } : {} },
});
const client = new Client({ name: 'portcullis-policy', version: '0.0.1' });
try {
  await client.connect(transport);
  const out = { protocol_version: transport.protocolVersion ?? null, calls: {} };
  out.tools = (await client.listTools()).tools.map(t => t.name).sort();
  for (const spec of rest.filter(a => a !== '--progress')) {
    const i = spec.indexOf('=');
    const name = i < 0 ? spec : spec.slice(0, i);
    const args = i < 0 ? {} : JSON.parse(spec.slice(i + 1) || '{}');
    try {
      const r = await client.callTool({ name, arguments: args });
      out.calls[name] = { ok: r.content?.[0]?.text ?? null };
    } catch (e) {
      if (!(e instanceof McpError)) throw e;
      out.calls[name] = { error: { code: e.code, message: e.message } };
    }
  }
  if (rest.includes('--progress')) {
    const t0 = Date.now();
    const stamps = [];
    const r = await client.callTool({ name: 'slow_count', arguments: { n: 3, delay: 0.5 } }, undefined, {
      onprogress: () => stamps.push((Date.now() - t0) / 1000),
    });
    out.progress = { result: r.content[0].text, stamps };
  }
  await client.close();
  console.log(JSON.stringify(out));
} catch (e) {
  if (typeof e?.code === 'number') console.error(`HTTP statuses: [${e.code}]`);
  console.error(e?.stack ?? String(e));
  process.exit(1);
}
