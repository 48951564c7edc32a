// A small MCP server (Streamable HTTP, stateless, JSON responses) with no authorization of its
// own: it listens on loopback only and stands behind `meshgate protect`, which validates every
// bearer token and forwards the verified identity in X-Meshgate-Subject / -Client / -Scope
// headers (never the token). Part of examples/openclaw-mcp (see README.md there).
//
// Tools:
//   whoami            the identity meshgate protect forwarded
//   add {a, b}        a + b (a tool that does something)
//
// Usage: node server.mjs [PORT]   (listens on 127.0.0.1, port 0 = a free one; prints {"port": N})
import http from 'node:http'
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js'
import { z } from 'zod'

function newServer () {
  const server = new McpServer({ name: 'meshgate-example-tools', version: '0.1.0' })
  server.registerTool('whoami', { description: 'Who is calling, as verified by meshgate protect' }, async (extra) => {
    const headers = extra?.requestInfo?.headers ?? {}
    const identity = {
      subject: headers['x-meshgate-subject'] ?? null,
      client: headers['x-meshgate-client'] ?? null,
      scope: headers['x-meshgate-scope'] ?? null,
      authorization_header_seen: headers.authorization !== undefined
    }
    return { content: [{ type: 'text', text: JSON.stringify(identity) }] }
  })
  server.registerTool('add', {
    description: 'Adds two numbers',
    inputSchema: { a: z.number(), b: z.number() }
  }, async ({ a, b }) => ({ content: [{ type: 'text', text: String(a + b) }] }))
  return server
}

const MAX_BODY = 1024 * 1024
const listener = http.createServer(async (req, res) => {
  const chunks = []
  let size = 0
  for await (const chunk of req) {
    size += chunk.length
    if (size > MAX_BODY) {
      res.writeHead(413, { 'content-type': 'application/json' }).end('{"error":"body too large"}')
      return
    }
    chunks.push(chunk)
  }
  const text = Buffer.concat(chunks).toString('utf8')
  let body
  try {
    body = text ? JSON.parse(text) : undefined
  } catch {
    res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"not JSON"}')
    return
  }
  const server = newServer()
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true })
  res.on('close', () => { transport.close(); server.close() })
  await server.connect(transport)
  await transport.handleRequest(req, res, body)
})

listener.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  console.log(JSON.stringify({ port: listener.address().port }))
})
process.on('SIGTERM', () => process.exit(0))
process.on('SIGINT', () => process.exit(0))
