// Supabase's own MCP server (@supabase/mcp-server-supabase 0.6.3, Studio's ^0.6.3) for
// tests/mcp_policy.rs, run as Studio's /api/mcp runs it: a new server per POST, the
// TypeScript SDK's stateless transport in JSON mode (enableJsonResponse), 405 on other
// methods. The platform is a stub (no database): each operation answers canned data.
// Features: database and development (docs would fetch a schema from the internet).
//   node supabase.mjs        prints "PORT <n>" once bound to 127.0.0.1:<ephemeral>
// GET /received answers every JSON-RPC message the server got, as [{method, name}].
import http from 'node:http';
import { createSupabaseMcpServer } from '@supabase/mcp-server-supabase';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';

const received = [];
const platform = {
  database: {
    async executeSql(_projectId, { query }) {
      return /^\s*select 1/i.test(query) ? [{ ok: 1 }] : [];
    },
    async listMigrations() { return [{ version: '20250101000000', name: 'init' }]; },
    async applyMigration() {},
  },
  development: {
    async getProjectUrl() { return 'http://127.0.0.1:54321'; },
    async getPublishableKeys() {
      return [{ api_key: 'anon-key', name: 'anon', type: 'legacy', description: null, id: null, disabled: false }];
    },
    async generateTypescriptTypes() { return { types: 'export type Json = string' }; },
  },
};

http.createServer(async (req, res) => {
  if (req.method === 'GET' && req.url === '/received') {
    res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(received));
    return;
  }
  if (!req.url.startsWith('/mcp')) { res.writeHead(404).end(); return; }
  if (req.method !== 'POST') {
    res.writeHead(405, { Allow: 'POST', 'Content-Type': 'application/json' })
      .end(JSON.stringify({ error: { message: `Method ${req.method} Not Allowed` } }));
    return;
  }
  const chunks = [];
  for await (const c of req) chunks.push(c);
  let body;
  try { body = JSON.parse(Buffer.concat(chunks).toString()); } catch { body = null; }
  for (const m of Array.isArray(body) ? body : [body]) {
    if (m?.method) received.push({ method: m.method, name: m.params?.name ?? null });
  }
  const server = createSupabaseMcpServer({ platform, projectId: 'default', features: ['database', 'development'] });
  const t = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
  res.on('close', () => { t.close(); server.close(); });
  await server.connect(t);
  await t.handleRequest(req, res, body);
}).listen(0, '127.0.0.1', function () { console.log(`PORT ${this.address().port}`); });
