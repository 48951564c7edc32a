// The MCP client side of examples/openclaw-mcp, with the MCP SDK (@modelcontextprotocol/sdk),
// doing what OpenClaw does for an `mcp.servers.<name>` entry with `"auth": "oauth"`
// (`openclaw mcp login NAME`, then tool calls):
//
//   node client.mjs oauth    stdin: {"mcp_url", "username", "password"}
//     1. an unauthenticated MCP request → 401 + WWW-Authenticate resource_metadata (meshgate protect)
//     2. auth(): RFC 9728 protected-resource metadata → RFC 8414 authorization-server metadata →
//        RFC 7591 dynamic registration (public client, loopback redirect) → PKCE S256 →
//        the authorization URL (with RFC 8707 resource = the MCP endpoint)
//     3. the "browser": a scripted user signs in on meshgate's login page and approves consent;
//        the code comes back on the loopback redirect URI (state and RFC 9207 iss checked)
//     4. auth() with the code → access and refresh tokens
//     5. an authorized MCP session: listTools, callTool whoami, callTool add
//
//   node client.mjs bearer   stdin: {"mcp_url", "token"}
//     an MCP session with a static `Authorization: Bearer` header, e.g. a token printed by
//     meshgate-token.sh (the exec secret provider)
//
// Prints one JSON object on stdout; exits non-zero on any failure.
import { auth, extractWWWAuthenticateParams } from '@modelcontextprotocol/sdk/client/auth.js'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'

const REDIRECT = 'http://127.0.0.1:33418/callback'

async function readStdin () {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

async function useTools (mcpUrl, transportOptions, out) {
  const client = new Client({ name: 'meshgate-example-openclaw-mcp', version: '0.1.0' })
  await client.connect(new StreamableHTTPClientTransport(mcpUrl, transportOptions))
  out.tools = (await client.listTools()).tools.map((t) => t.name).sort()
  out.whoami = JSON.parse((await client.callTool({ name: 'whoami', arguments: {} })).content[0].text)
  out.add = (await client.callTool({ name: 'add', arguments: { a: 2, b: 40 } })).content[0].text
  await client.close()
}

// A minimal cookie-keeping "browser": follows redirects by hand, fills in meshgate's login form
// (username, password, csrf_token) and approves its consent form, stops at the redirect URI.
function browser (username, password, steps) {
  const cookies = new Map()
  const cookieHeader = () => [...cookies].map(([k, v]) => `${k}=${v}`).join('; ')
  const keep = (response) => {
    for (const line of response.headers.getSetCookie?.() ?? []) {
      const [pair] = line.split(';')
      const [name, ...value] = pair.split('=')
      cookies.set(name.trim(), value.join('='))
    }
  }
  const hidden = (html, name) => {
    const m = html.match(new RegExp(`name="${name}"[^>]*value="([^"]*)"`)) ?? html.match(new RegExp(`value="([^"]*)"[^>]*name="${name}"`))
    return m ? m[1].replaceAll('&amp;', '&') : undefined
  }
  return async function browse (start) {
    let url = new URL(start)
    let init = { method: 'GET' }
    for (let hop = 0; hop < 20; hop++) {
      if (url.href.startsWith(REDIRECT)) return url
      const response = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers ?? {}), cookie: cookieHeader() } })
      keep(response)
      steps.push({ page: url.pathname, status: response.status })
      if (response.status >= 300 && response.status < 400) {
        url = new URL(response.headers.get('location'), url)
        init = { method: 'GET' }
        continue
      }
      const html = await response.text()
      if (response.status !== 200) throw new Error(`${url.pathname} answered ${response.status}`)
      const form = new URLSearchParams()
      for (const name of ['csrf_token', 'client_id', 'request', 'request_id', 'return_to', 'scope', 'state']) {
        const value = hidden(html, name)
        if (value !== undefined) form.set(name, value)
      }
      if (/type="password"/.test(html)) {
        form.set('username', username)
        form.set('password', password)
      } else {
        form.set('decision', 'allow')
      }
      const action = html.match(/<form[^>]*action="([^"]*)"/)
      url = new URL(action ? action[1].replaceAll('&amp;', '&') : url.href, url)
      init = { method: 'POST', body: form.toString(), headers: { 'content-type': 'application/x-www-form-urlencoded' } }
    }
    throw new Error('too many redirects')
  }
}

async function oauth (input) {
  const mcpUrl = new URL(input.mcp_url)
  const out = { mode: 'oauth', steps: [] }
  const saved = {}
  // The OAuthClientProvider: where an MCP client (OpenClaw, Claude Code, ...) keeps its state.
  const provider = {
    get redirectUrl () { return REDIRECT },
    get clientMetadata () {
      return {
        client_name: 'OpenClaw (meshgate example)',
        redirect_uris: [REDIRECT],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        token_endpoint_auth_method: 'none'
      }
    },
    state: () => { saved.state = crypto.randomUUID(); return saved.state },
    clientInformation: () => saved.client,
    saveClientInformation: (info) => { saved.client = info },
    tokens: () => saved.tokens,
    saveTokens: (tokens) => { saved.tokens = tokens },
    redirectToAuthorization: (url) => { saved.authorizationUrl = url },
    saveCodeVerifier: (verifier) => { saved.verifier = verifier },
    codeVerifier: () => saved.verifier,
    saveDiscoveryState: (state) => { saved.discovery = state },
    discoveryState: () => saved.discovery
  }
  // 1.
  const probe = await fetch(mcpUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: '{"jsonrpc":"2.0","id":1,"method":"ping"}'
  })
  out.unauthenticated_status = probe.status
  const { resourceMetadataUrl, scope } = extractWWWAuthenticateParams(probe)
  out.resource_metadata_url = resourceMetadataUrl?.href
  // 2.
  out.first_auth = await auth(provider, { serverUrl: mcpUrl, resourceMetadataUrl, scope })
  out.registered_client_id = saved.client?.client_id
  const params = saved.authorizationUrl.searchParams
  out.authorization = {
    endpoint: saved.authorizationUrl.origin + saved.authorizationUrl.pathname,
    code_challenge_method: params.get('code_challenge_method'),
    resource: params.get('resource'),
    scope: params.get('scope')
  }
  // 3.
  const back = await browser(input.username, input.password, out.steps)(saved.authorizationUrl)
  if (back.searchParams.get('state') !== saved.state) throw new Error('state mismatch')
  out.callback_iss = back.searchParams.get('iss')
  const code = back.searchParams.get('code')
  if (!code) throw new Error(`no code: ${back.searchParams.get('error') ?? back.href}`)
  // 4.
  out.second_auth = await auth(provider, { serverUrl: mcpUrl, resourceMetadataUrl, authorizationCode: code })
  out.token_type = saved.tokens?.token_type
  out.has_refresh_token = Boolean(saved.tokens?.refresh_token)
  // 5.
  await useTools(mcpUrl, { authProvider: provider }, out)
  return out
}

async function bearer (input) {
  const out = { mode: 'bearer' }
  await useTools(new URL(input.mcp_url), { requestInit: { headers: { authorization: `Bearer ${input.token}` } } }, out)
  return out
}

const mode = process.argv[2]
const input = await readStdin()
try {
  const out = mode === 'oauth' ? await oauth(input) : mode === 'bearer' ? await bearer(input) : null
  if (!out) throw new Error('usage: node client.mjs oauth|bearer  (JSON input on stdin)')
  console.log(JSON.stringify(out))
} catch (error) {
  console.error(`client.mjs ${mode}: ${error?.stack ?? error}`)
  process.exit(1)
}
