// THE FULL MCP AUTHORIZATION FLOW with the MCP SDK's auth(), run by compat-tests/tests/compat/mcp_sdk.rs
// (`mcp_sdk_full_authorization_flow_through_protect`).
//
// What it does, as an MCP client (Claude Code, Cursor, MCP Inspector) would:
//   1. an unauthenticated MCP request → 401 with WWW-Authenticate resource_metadata (meshgate protect);
//   2. auth(): RFC 9728 protected-resource metadata → RFC 8414 authorization-server metadata →
//      RFC 7591 dynamic registration (public client, loopback redirect) → PKCE S256 →
//      redirectToAuthorization(url);
//   3. the "browser": GET the authorization URL with a logged-in session cookie (input
//      `session_cookie`, or `username`/`password` posted to the login form the redirect leads to),
//      approve consent if asked, follow redirects until the loopback redirect URI, take `code`
//      (and check `state` and RFC 9207 `iss`);
//   4. auth() again with the authorizationCode (finishAuth) → tokens (RFC 8707 resource = aud);
//   5. an authorized MCP call (listTools + callTool whoami) through meshgate protect.
//
// Usage: node mcp_auth.mjs   (stdin: {"mcp_url", "issuer", "username", "password"} or
//        {"mcp_url", "issuer", "session_cookie"}; prints one JSON object)
// The login and consent forms are those of bridge/src/http/pages.rs (`username`, `password`,
// `csrf_token`, `request`, `decision=allow`).
import { auth, extractWWWAuthenticateParams } from '@modelcontextprotocol/sdk/client/auth.js'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'

const REDIRECT = 'http://127.0.0.1:33418/callback'

async function readStdin () {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

const input = await readStdin()
const mcpUrl = new URL(input.mcp_url)
const out = { steps: [] }
const saved = {}
const provider = {
  get redirectUrl () { return REDIRECT },
  get clientMetadata () {
    return {
      client_name: 'meshgate compat MCP client (code flow)',
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

// A minimal cookie-keeping "browser": follows redirects by hand, submits the login and consent
// forms, stops at the loopback redirect URI.
const cookies = new Map()
if (input.session_cookie) {
  const [name, ...value] = input.session_cookie.split('=')
  cookies.set(name, value.join('='))
}
function cookieHeader () { return [...cookies].map(([k, v]) => `${k}=${v}`).join('; ') }
function keepCookies (response) {
  for (const line of response.headers.getSetCookie?.() ?? []) {
    const [pair] = line.split(';')
    const [name, ...value] = pair.split('=')
    cookies.set(name.trim(), value.join('='))
  }
}
function hidden (html, name) {
  const m = html.match(new RegExp(`name="${name}"[^>]*value="([^"]*)"`)) ?? html.match(new RegExp(`value="([^"]*)"[^>]*name="${name}"`))
  return m ? m[1].replaceAll('&amp;', '&') : undefined
}
function formAction (html, base) {
  const m = html.match(/<form[^>]*action="([^"]*)"/)
  return new URL(m ? m[1].replaceAll('&amp;', '&') : base, base)
}
async function browse (start) {
  let url = new URL(start)
  let init = { method: 'GET' }
  for (let hop = 0; hop < 20; hop++) {
    if (url.href.startsWith(REDIRECT)) return url
    const response = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers ?? {}), cookie: cookieHeader() } })
    keepCookies(response)
    out.steps.push({ url: url.href.split('?')[0], status: response.status })
    if (response.status >= 300 && response.status < 400) {
      url = new URL(response.headers.get('location'), url)
      init = { method: 'GET' }
      continue
    }
    const html = await response.text()
    if (response.status !== 200) throw new Error(`${url.pathname} answered ${response.status}: ${html.slice(0, 300)}`)
    const form = new URLSearchParams()
    const csrf = hidden(html, 'csrf_token')
    if (csrf) form.set('csrf_token', csrf)
    for (const name of ['client_id', 'request', 'request_id', 'return_to', 'scope', 'state']) {
      const value = hidden(html, name)
      if (value !== undefined) form.set(name, value)
    }
    if (/type="password"/.test(html)) {
      form.set('username', input.username)
      form.set('password', input.password)
    } else {
      form.set('decision', 'allow')
    }
    url = formAction(html, url)
    init = { method: 'POST', body: form.toString(), headers: { 'content-type': 'application/x-www-form-urlencoded' } }
  }
  throw new Error('too many redirects')
}

// 1. + 2.
const probe = await fetch(mcpUrl, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: '{"jsonrpc":"2.0","id":1,"method":"ping"}' })
const { resourceMetadataUrl, scope } = extractWWWAuthenticateParams(probe)
out.probe_status = probe.status
out.first = await auth(provider, { serverUrl: mcpUrl, resourceMetadataUrl, scope })
out.client_id = saved.client?.client_id
const authorizationUrl = saved.authorizationUrl
out.authorization_params = Object.fromEntries(authorizationUrl.searchParams)
// 3.
const back = await browse(authorizationUrl)
out.callback_params = Object.fromEntries(back.searchParams)
if (back.searchParams.get('state') !== saved.state) throw new Error('state mismatch')
const code = back.searchParams.get('code')
if (!code) throw new Error(`no code: ${back.href}`)
// 4.
out.second = await auth(provider, { serverUrl: mcpUrl, resourceMetadataUrl, authorizationCode: code })
out.token_type = saved.tokens?.token_type
out.has_refresh_token = Boolean(saved.tokens?.refresh_token)
// 5.
const client = new Client({ name: 'meshgate-compat-code-flow', version: '0.1.0' })
await client.connect(new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider }))
out.tools = (await client.listTools()).tools.map((t) => t.name)
out.whoami = JSON.parse((await client.callTool({ name: 'whoami', arguments: {} })).content[0].text)
await client.close()
console.log(JSON.stringify(out))
