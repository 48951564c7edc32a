// The MCP SDK's client against an MCP server behind `meshgate protect`, for the parts that need
// no user: RFC 9728 protected-resource discovery → RFC 8414 authorization-server
// discovery → RFC 7591 dynamic registration (through the SDK's own auth() and registerClient()),
// then an authorized MCP call with the SDK's client_credentials provider.
// (The full interactive auth() flow — redirect, login, code, finishAuth — is mcp_auth.mjs.)
//
// Usage: node mcp_discovery.mjs   (input on stdin: {"mcp_url", "issuer", "client_id", "client_secret"};
//        prints one JSON object with what each step saw)
import {
  auth,
  discoverAuthorizationServerMetadata,
  discoverOAuthProtectedResourceMetadata,
  extractWWWAuthenticateParams,
  registerClient
} from '@modelcontextprotocol/sdk/client/auth.js'
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'

async function readStdin () {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

const input = await readStdin()
const mcpUrl = new URL(input.mcp_url)
const out = {}

// 1. An unauthenticated MCP request: 401 with the resource metadata URL.
const initialize = {
  jsonrpc: '2.0',
  id: 1,
  method: 'initialize',
  params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'probe', version: '0' } }
}
const unauthenticated = await fetch(mcpUrl, {
  method: 'POST',
  headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
  body: JSON.stringify(initialize)
})
const challenge = extractWWWAuthenticateParams(unauthenticated)
out.unauthenticated = {
  status: unauthenticated.status,
  resource_metadata_url: challenge.resourceMetadataUrl?.href ?? null,
  scope: challenge.scope ?? null
}

// 2. Protected-resource metadata, 3. authorization-server metadata (the SDK validates both).
const prm = await discoverOAuthProtectedResourceMetadata(mcpUrl, { resourceMetadataUrl: challenge.resourceMetadataUrl })
out.protected_resource = prm
const asUrl = prm.authorization_servers[0]
// The SDK's own RFC 8414 discovery (its schema requires `authorization_endpoint`, which the node
// serves); the SDK gets the result below as its cached discovery state.
const asMetadata = await discoverAuthorizationServerMetadata(asUrl)
if (!asMetadata) throw new Error(`the SDK found no authorization-server metadata at ${asUrl}`)
out.authorization_server = asMetadata
const discovery = {
  authorizationServerUrl: asUrl,
  resourceMetadataUrl: challenge.resourceMetadataUrl?.href,
  resourceMetadata: prm,
  authorizationServerMetadata: asMetadata
}

// 4. Dynamic registration of a public MCP client, as the SDK's auth() does it.
const clientMetadata = {
  client_name: 'meshgate compat MCP client',
  redirect_uris: ['http://127.0.0.1:33418/callback'],
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'none'
}
const registered = await registerClient(asUrl, { metadata: asMetadata, clientMetadata, scope: prm.scopes_supported.join(' ') })
out.registered = registered

// 5. The SDK's auth() itself: discovery and registration through an OAuthClientProvider. It then
// needs /authorize to go on: 'REDIRECT' once the authorization endpoint exists, or an error
// naming the missing code flow before that; either way the client got registered.
const saved = {}
const provider = {
  get redirectUrl () { return 'http://127.0.0.1:33418/callback' },
  get clientMetadata () { return clientMetadata },
  clientInformation: () => saved.client,
  saveClientInformation: (info) => { saved.client = info },
  tokens: () => undefined,
  saveTokens: (tokens) => { saved.tokens = tokens },
  redirectToAuthorization: (url) => { saved.authorization_url = url.href },
  saveCodeVerifier: (verifier) => { saved.verifier = verifier },
  codeVerifier: () => saved.verifier,
  saveDiscoveryState: (state) => { saved.discovery = state },
  discoveryState: () => saved.discovery ?? discovery
}
try {
  out.auth_result = await auth(provider, { serverUrl: mcpUrl, resourceMetadataUrl: challenge.resourceMetadataUrl })
} catch (error) {
  out.auth_result = 'ERROR'
  out.auth_error = String(error?.message ?? error)
}
out.auth_registered = saved.client ?? null
out.auth_discovery = saved.discovery
  ? { authorizationServerUrl: saved.discovery.authorizationServerUrl, resource: saved.discovery.resourceMetadata?.resource }
  : null

// 6. An authorized MCP call: the SDK's client_credentials provider, through meshgate protect.
const credentials = new ClientCredentialsProvider({
  clientId: input.client_id,
  clientSecret: input.client_secret,
  expectedIssuer: input.issuer
})
credentials.discoveryState = () => discovery
credentials.saveDiscoveryState = () => {}
const transport = new StreamableHTTPClientTransport(mcpUrl, { authProvider: credentials })
const client = new Client({ name: 'meshgate-compat', version: '0.1.0' })
await client.connect(transport)
const tools = await client.listTools()
out.tools = tools.tools.map((t) => t.name)
const result = await client.callTool({ name: 'whoami', arguments: {} })
out.whoami = JSON.parse(result.content[0].text)
await client.close()

console.log(JSON.stringify(out))
