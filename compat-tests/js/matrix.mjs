// The node runners of the routing matrix (compat-tests/tests/compat/matrix.rs): one command per
// (library, grant), `LIBRARY:GRANT`, each doing that grant the way the library's users do it and
// printing the token response it got. Validation (introspection and the JWT against the validating
// node's JWKS) is the Rust side's job, except `verify`, which checks a batch of JWTs with jose.
//
// Usage: node matrix.mjs COMMAND   (one JSON object on stdin; prints one JSON object)
// A protocol failure is an exception: the script exits non-zero with the error on stderr, and the
// matrix records the cell as failed with that text.
//
// Libraries: openid-client 6 (`openid-client:*`) and the MCP SDK's client auth
// (`mcp-sdk:*`, @modelcontextprotocol/sdk/client/auth.js). Grants: client_credentials,
// authorization_code (with PKCE S256, the login and consent pages posted by `browse`), refresh,
// token_exchange (RFC 8693), and device (RFC 8628: initiateDeviceAuthorization, the `/device` pages
// approved by `browse` while pollDeviceAuthorizationGrant polls).

import * as client from 'openid-client'
import * as jose from 'jose'
import { auth, discoverAuthorizationServerMetadata, refreshAuthorization } from '@modelcontextprotocol/sdk/client/auth.js'
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js'

const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'

// openid-client against one node: OIDC discovery (`oidc`) or RFC 8414 (`oauth2`), plain http.
function discover (issuer, clientId, auth, algorithm = 'oidc') {
  return client.discovery(new URL(issuer), clientId, undefined, auth, {
    algorithm,
    execute: [client.allowInsecureRequests]
  })
}

// A cookie-keeping "browser" without JavaScript: follows redirects by hand and submits each page's
// form — the login page (username, password), the consent page (decision=allow) and, for the
// device flow, the `/device` pages (the sign-in, the user_code form, then decision=approve) — until
// it reaches `redirectUri` (returned as a URL) or a page with no form (returned as { done: html }).
async function browse (start, { redirectUri, username, password, userCode }) {
  const cookies = new Map()
  const steps = []
  let url = new URL(start)
  let init = { method: 'GET' }
  for (let hop = 0; hop < 20; hop++) {
    if (redirectUri && url.href.startsWith(redirectUri)) return { callback: url, steps }
    const headers = { ...(init.headers ?? {}), cookie: [...cookies].map(([k, v]) => `${k}=${v}`).join('; ') }
    const response = await fetch(url, { ...init, redirect: 'manual', headers })
    for (const line of response.headers.getSetCookie?.() ?? []) {
      const [pair] = line.split(';')
      const [name, ...value] = pair.split('=')
      cookies.set(name.trim(), value.join('='))
    }
    steps.push({ url: url.href.split('?')[0], status: response.status })
    if (response.status >= 300 && response.status < 400) {
      url = new URL(response.headers.get('location'), url)
      init = { method: 'GET' }
      continue
    }
    const html = await response.text()
    if (response.status !== 200) throw new Error(`${url.pathname} answered ${response.status}: ${html.slice(0, 300)}`)
    const action = html.match(/<form[^>]*action="([^"]*)"/)
    if (!action) return { done: html, steps }
    const form = new URLSearchParams()
    for (const name of ['csrf_token', 'request', 'request_id', 'client_id', 'return_to', 'scope', 'state', 'user_code']) {
      const value = hidden(html, name)
      if (value !== undefined) form.set(name, value)
    }
    if (/type="password"/.test(html)) {
      form.set('username', username)
      form.set('password', password)
    } else if (/name="decision" value="approve"/.test(html)) {
      form.set('decision', 'approve')
    } else if (/name="user_code"/.test(html)) {
      if (!form.get('user_code')) {
        if (userCode === undefined) throw new Error(`${url.pathname} asks for a user code and none was given`)
        form.set('user_code', userCode)
      }
    } else {
      form.set('decision', 'allow')
    }
    url = new URL(action[1].replaceAll('&amp;', '&'), url)
    init = { method: 'POST', body: form.toString(), headers: { 'content-type': 'application/x-www-form-urlencoded' } }
  }
  throw new Error(`too many hops: ${JSON.stringify(steps)}`)
}

function hidden (html, name) {
  const m = html.match(new RegExp(`name="${name}"[^>]*value="([^"]*)"`)) ??
    html.match(new RegExp(`value="([^"]*)"[^>]*name="${name}"`))
  return m ? m[1].replaceAll('&amp;', '&') : undefined
}

async function callback (url, input) {
  const { callback, steps } = await browse(url, { redirectUri: input.redirect_uri, ...input })
  if (!callback) throw new Error(`the pages never led back to ${input.redirect_uri}: ${JSON.stringify(steps)}`)
  return callback
}

const commands = {
  // client_credentials with client_secret_basic, RFC 8414 discovery.
  async 'openid-client:client_credentials' ({ issuer, client_id, client_secret, scope }) {
    const config = await discover(issuer, client_id, client.ClientSecretBasic(client_secret), 'oauth2')
    return { tokens: await client.clientCredentialsGrant(config, { scope }) }
  },

  // The authorization code flow with PKCE S256, state and nonce; the ID token validated by
  // openid-client.
  async 'openid-client:authorization_code' (input) {
    const config = await discover(input.issuer, input.client_id, client.None())
    const verifier = client.randomPKCECodeVerifier()
    const nonce = client.randomNonce()
    const state = client.randomState()
    const url = client.buildAuthorizationUrl(config, {
      redirect_uri: input.redirect_uri,
      scope: input.scope,
      code_challenge: await client.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
      nonce,
      state
    })
    const tokens = await client.authorizationCodeGrant(config, await callback(url, input), {
      pkceCodeVerifier: verifier,
      expectedNonce: nonce,
      expectedState: state,
      idTokenExpected: true
    })
    return { tokens, id_token_claims: tokens.claims() }
  },

  // refresh_token at the node given as `issuer` (public client).
  async 'openid-client:refresh' ({ issuer, client_id, refresh_token }) {
    const config = await discover(issuer, client_id, client.None())
    return { tokens: await client.refreshTokenGrant(config, refresh_token) }
  },

  // RFC 8693 through openid-client's generic grant request, client_secret_basic.
  async 'openid-client:token_exchange' ({ issuer, client_id, client_secret, subject_token, subject_token_type, scope }) {
    const config = await discover(issuer, client_id, client.ClientSecretBasic(client_secret), 'oauth2')
    const tokens = await client.genericGrantRequest(config, EXCHANGE, { subject_token, subject_token_type, scope })
    return { tokens }
  },

  // The device grant (RFC 8628): initiateDeviceAuthorization, then pollDeviceAuthorizationGrant
  // while `browse` approves the code on the verification page (the user's side); the ID token
  // validated by openid-client.
  async 'openid-client:device' ({ issuer, client_id, username, password, scope }) {
    const config = await discover(issuer, client_id, client.None())
    const started = await client.initiateDeviceAuthorization(config, { scope })
    const polling = client.pollDeviceAuthorizationGrant(config, started).then(
      (tokens) => ({ tokens }),
      (error) => ({ error })
    )
    const { done, steps } = await browse(started.verification_uri_complete ?? started.verification_uri, {
      userCode: started.user_code,
      username,
      password
    })
    if (!done?.includes('You approved the request')) {
      throw new Error(`the device page did not approve: ${JSON.stringify(steps)} ${done?.slice(0, 300)}`)
    }
    const { tokens, error } = await polling
    if (error) throw error
    return { tokens, id_token_claims: tokens.claims() }
  },

  // The MCP SDK's client_credentials provider through auth(): the node itself is the server URL
  // (no protected-resource metadata there, so the SDK falls back to it as the authorization server).
  async 'mcp-sdk:client_credentials' ({ issuer, client_id, client_secret, scope }) {
    const provider = new ClientCredentialsProvider({ clientId: client_id, clientSecret: client_secret, expectedIssuer: issuer, scope })
    const result = await auth(provider, { serverUrl: new URL(issuer), scope })
    if (result !== 'AUTHORIZED') throw new Error(`auth() answered ${result}`)
    return { tokens: provider.tokens() }
  },

  // The SDK's auth() with a pre-registered public client: redirectToAuthorization, the pages,
  // then auth() again with the code (PKCE S256 by the SDK).
  async 'mcp-sdk:authorization_code' (input) {
    const saved = { client: { client_id: input.client_id } }
    const provider = {
      get redirectUrl () { return input.redirect_uri },
      get clientMetadata () {
        return { redirect_uris: [input.redirect_uri], token_endpoint_auth_method: 'none', grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'] }
      },
      state: () => { saved.state = crypto.randomUUID(); return saved.state },
      clientInformation: () => saved.client,
      saveClientInformation: (info) => { saved.client = info },
      tokens: () => saved.tokens,
      saveTokens: (tokens) => { saved.tokens = tokens },
      redirectToAuthorization: (url) => { saved.url = url },
      saveCodeVerifier: (verifier) => { saved.verifier = verifier },
      codeVerifier: () => saved.verifier
    }
    const serverUrl = new URL(input.issuer)
    const first = await auth(provider, { serverUrl, scope: input.scope })
    if (first !== 'REDIRECT') throw new Error(`auth() answered ${first}, not REDIRECT`)
    if (saved.url.searchParams.get('code_challenge_method') !== 'S256') throw new Error(`no PKCE S256 in ${saved.url}`)
    const back = await callback(saved.url, input)
    if (back.searchParams.get('state') !== saved.state) throw new Error(`state mismatch: ${back}`)
    const second = await auth(provider, { serverUrl, authorizationCode: back.searchParams.get('code') })
    if (second !== 'AUTHORIZED') throw new Error(`auth() with the code answered ${second}`)
    return { tokens: saved.tokens }
  },

  // The SDK's refreshAuthorization against the node's RFC 8414 metadata.
  async 'mcp-sdk:refresh' ({ issuer, client_id, refresh_token }) {
    const metadata = await discoverAuthorizationServerMetadata(new URL(issuer))
    if (!metadata) throw new Error(`no authorization server metadata at ${issuer}`)
    const tokens = await refreshAuthorization(new URL(issuer), {
      metadata,
      clientInformation: { client_id },
      refreshToken: refresh_token
    })
    return { tokens }
  },

  // jose: each { token, issuer, jwks_uri } verified (typ at+jwt) against that JWKS; one result each.
  async verify ({ tokens }) {
    const results = []
    for (const { token, issuer, jwks_uri } of tokens) {
      try {
        const { protectedHeader } = await jose.jwtVerify(token, jose.createRemoteJWKSet(new URL(jwks_uri)), { issuer, typ: 'at+jwt' })
        results.push({ ok: true, alg: protectedHeader.alg })
      } catch (error) {
        results.push({ ok: false, error: `${error.code ?? ''} ${error}` })
      }
    }
    return { results }
  }
}

async function readStdin () {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  const text = Buffer.concat(chunks).toString('utf8').trim()
  return text === '' ? {} : JSON.parse(text)
}

const name = process.argv[2]
const command = commands[name]
if (command === undefined) {
  console.error(`unknown command ${JSON.stringify(name)}; one of: ${Object.keys(commands).join(', ')}`)
  process.exit(2)
}
try {
  process.stdout.write(JSON.stringify(await command(await readStdin())) + '\n')
} catch (error) {
  console.error(`${name}: ${error?.error ?? ''} ${error}${error?.cause ? ` (cause: ${error.cause})` : ''}`)
  process.exit(1)
}
