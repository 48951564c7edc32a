// A small MCP server (Streamable HTTP, stateless, JSON responses) for the compat tests: it stands
// behind `meshgate protect`, which validates the bearer token and forwards the verified identity
// in X-Meshgate-* headers. Its one tool, `whoami`, answers those headers, so a test sees what the
// gateway forwarded.
//
// Usage: node mcp_server.mjs   (listens on 127.0.0.1, a free port; prints {"port": N} on stdout)
import http from 'node:http'
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js'

function newServer () {
  const server = new McpServer({ name: 'meshgate-compat-mcp', version: '0.1.0' })
  server.registerTool('whoami', { description: 'The identity meshgate protect forwarded' }, async (extra) => {
    const headers = extra?.requestInfo?.headers ?? {}
    const identity = {
      subject: headers['x-meshgate-subject'] ?? null,
      client: headers['x-meshgate-client'] ?? null,
      scope: headers['x-meshgate-scope'] ?? null,
      authorization: headers.authorization ?? null
    }
    return { content: [{ type: 'text', text: JSON.stringify(identity) }] }
  })
  return server
}

const listener = http.createServer(async (req, res) => {
  const chunks = []
  for await (const chunk of req) chunks.push(chunk)
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

listener.listen(0, '127.0.0.1', () => {
  console.log(JSON.stringify({ port: listener.address().port }))
})
process.on('SIGTERM', () => process.exit(0))
