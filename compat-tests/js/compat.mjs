// Independent OAuth clients (openid-client 6, jose 6) driven by the compat-tests crate.
//
// Usage: node compat.mjs COMMAND  (the command's input is one JSON object on stdin)
// Prints one JSON object on stdout. Expected protocol failures are reported inside that object
// ({ ok: false, error, code, status, body }) so the Rust test asserts on them; anything unexpected
// makes the script exit non-zero with the error on stderr.

import * as client from 'openid-client'
import * as jose from 'jose'

const commands = {
  // Verifies an access token against the issuer's JWKS (RFC 9068 profile: typ at+jwt).
  async verify({ token, issuer, jwks_uri, audience }) {
    const jwks = jose.createRemoteJWKSet(new URL(jwks_uri))
    try {
      const { payload, protectedHeader } = await jose.jwtVerify(token, jwks, {
        issuer,
        typ: 'at+jwt',
        ...(audience === undefined ? {} : { audience }),
      })
      return { ok: true, header: protectedHeader, payload }
    } catch (error) {
      return failure(error)
    }
  },

  // The openid-client flows with a client secret: RFC 8414 discovery, client_credentials with
  // client_secret_basic and client_secret_post, introspection, revocation.
  async 'openid-client'({ issuer, client_id, client_secret, scope }) {
    const sent = []
    const basic = await discover(issuer, client_id, client.ClientSecretBasic(client_secret), sent)
    const post = await discover(issuer, client_id, client.ClientSecretPost(client_secret), sent)
    const metadata = basic.serverMetadata()

    const basicToken = await client.clientCredentialsGrant(basic, { scope })
    const postToken = await client.clientCredentialsGrant(post, { scope })
    const introspected = await client.tokenIntrospection(basic, basicToken.access_token)
    const introspectedByPost = await client.tokenIntrospection(post, postToken.access_token)
    await client.tokenRevocation(basic, basicToken.access_token)
    const afterRevocation = await client.tokenIntrospection(basic, basicToken.access_token)
    // RFC 7009 §2.2: revoking an unknown token still succeeds.
    await client.tokenRevocation(post, 'not-a-token-this-server-issued')

    const verified = await commands.verify({
      token: postToken.access_token,
      issuer,
      jwks_uri: metadata.jwks_uri,
    })
    return {
      metadata,
      basic_token: basicToken,
      post_token: postToken,
      introspected,
      introspected_by_post: introspectedByPost,
      after_revocation: afterRevocation,
      verified,
      sent,
    }
  },

  // openid-client in its strict default mode (no allowInsecureRequests: https only, the server's
  // certificate checked against the system roots plus NODE_EXTRA_CA_CERTS): discovery and
  // client_credentials with client_secret_basic, then introspection.
  async 'openid-client-strict'({ issuer, client_id, client_secret, scope }) {
    const config = await client.discovery(new URL(issuer), client_id, undefined, client.ClientSecretBasic(client_secret), {
      algorithm: 'oauth2',
    })
    const token = await client.clientCredentialsGrant(config, { scope })
    const introspected = await client.tokenIntrospection(config, token.access_token)
    return { metadata: config.serverMetadata(), token, introspected }
  },

  // The same discovery, expected to fail (e.g. the CA is not trusted): reports the error.
  async 'openid-client-strict-fails'({ issuer, client_id }) {
    try {
      await client.discovery(new URL(issuer), client_id, undefined, client.None(), { algorithm: 'oauth2' })
      return { ok: true }
    } catch (error) {
      return { ...failure(error), cause: String(error?.cause ?? '') }
    }
  },

  // Generates a client key pair; the public half goes into the JWKS file given to `client add`.
  async keygen({ alg }) {
    const { publicKey, privateKey } = await jose.generateKeyPair(alg, { extractable: true })
    const publicJwk = await jose.exportJWK(publicKey)
    const privateJwk = await jose.exportJWK(privateKey)
    const kid = await jose.calculateJwkThumbprint(publicJwk)
    return {
      private_jwk: { ...privateJwk, kid, alg },
      public_jwks: { keys: [{ ...publicJwk, kid, alg, use: 'sig' }] },
    }
  },

  // private_key_jwt (RFC 7523) through openid-client: token, introspection, revocation.
  async 'private-key-jwt'({ issuer, client_id, private_jwk, scope }) {
    const sent = []
    const key = await jose.importJWK(private_jwk, private_jwk.alg)
    const config = await discover(
      issuer,
      client_id,
      client.PrivateKeyJwt({ key, kid: private_jwk.kid }),
      sent,
    )
    const token = await client.clientCredentialsGrant(config, { scope })
    const introspected = await client.tokenIntrospection(config, token.access_token)
    await client.tokenRevocation(config, token.access_token)
    const afterRevocation = await client.tokenIntrospection(config, token.access_token)
    return { token, introspected, after_revocation: afterRevocation, sent }
  },

  // client_secret_jwt (RFC 7523 with an HS256 assertion keyed by the client secret) through
  // openid-client: token and introspection.
  async 'client-secret-jwt'({ issuer, client_id, client_secret, scope }) {
    const sent = []
    const config = await discover(issuer, client_id, client.ClientSecretJwt(client_secret), sent)
    const token = await client.clientCredentialsGrant(config, { scope })
    const introspected = await client.tokenIntrospection(config, token.access_token)
    return { token, introspected, sent }
  },

  // One HS256 client assertion keyed by a client secret, built by hand so a test can replay it.
  async 'hs-assertion'({ secret, client_id, aud, jti }) {
    const assertion = await new jose.SignJWT({})
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .setIssuer(client_id)
      .setSubject(client_id)
      .setAudience(aud)
      .setJti(jti ?? crypto.randomUUID())
      .setIssuedAt()
      .setExpirationTime('60s')
      .sign(new TextEncoder().encode(secret))
    return { assertion }
  },

  // A stand-in for the previous central gateway: a key pair (its public JWKS) and tokens it
  // issued — one valid, one with another issuer, one already expired.
  async 'legacy-gateway'({ alg, issuer, kid, client_id, scope }) {
    const { publicKey, privateKey } = await jose.generateKeyPair(alg, { extractable: true })
    const jwk = await jose.exportJWK(publicKey)
    const sign = (iss, exp) =>
      new jose.SignJWT({ client_id, scope })
        .setProtectedHeader({ alg, kid, typ: 'at+jwt' })
        .setIssuer(iss)
        .setSubject(client_id)
        .setAudience('https://api.corp')
        .setJti(crypto.randomUUID())
        .setIssuedAt()
        .setExpirationTime(exp)
        .sign(privateKey)
    return {
      jwks: { keys: [{ ...jwk, kid, alg, use: 'sig' }] },
      token: await sign(issuer, '1h'),
      other_issuer_token: await sign('https://not-the-old-gateway.example', '1h'),
      expired_token: await sign(issuer, Math.floor(Date.now() / 1000) - 120),
    }
  },

  // The authorization code flow with PKCE through openid-client (OIDC discovery), logging in
  // without a browser: fetch the login page, post the form with the session cookie and its CSRF
  // token, allow on the consent page, hand the redirect to openid-client; then ID token
  // validation, userinfo, refresh rotation and the reuse of a rotated refresh token.
  async 'code-flow'({ issuer, client_id, redirect_uri, username, password, scope }) {
    const config = await client.discovery(new URL(issuer), client_id, undefined, client.None(), {
      execute: [client.allowInsecureRequests],
    })
    const code_verifier = client.randomPKCECodeVerifier()
    const code_challenge = await client.calculatePKCECodeChallenge(code_verifier)
    const nonce = client.randomNonce()
    const state = client.randomState()
    const url = client.buildAuthorizationUrl(config, {
      redirect_uri,
      scope,
      code_challenge,
      code_challenge_method: 'S256',
      nonce,
      state,
    })
    const pages = []
    let cookie = null
    const step = async (target, form) => {
      const headers = {}
      if (cookie) headers.cookie = cookie
      const options = { redirect: 'manual', headers }
      if (form) {
        options.method = 'POST'
        headers['content-type'] = 'application/x-www-form-urlencoded'
        options.body = new URLSearchParams(form).toString()
      }
      const response = await fetch(target, options)
      const set = response.headers.get('set-cookie')
      if (set) cookie = set.split(';')[0]
      const text = await response.text()
      pages.push({ url: String(target), status: response.status, set_cookie: set })
      return { response, text }
    }
    const hidden = (html, name) => {
      const match = html.match(new RegExp(`name="${name}" value="([^"]*)"`))
      if (!match) throw new Error(`no ${name} field in ${html}`)
      return match[1]
    }
    const action = (html) => new URL(html.match(/<form method="post" action="([^"]+)"/)[1], issuer)
    const login = await step(url)
    if (login.response.status !== 200) throw new Error(`login page: ${login.response.status} ${login.text}`)
    const consent = await step(action(login.text), {
      csrf_token: hidden(login.text, 'csrf_token'),
      request: hidden(login.text, 'request'),
      username,
      password,
    })
    if (consent.response.status !== 200) throw new Error(`consent page: ${consent.response.status} ${consent.text}`)
    const back = await step(action(consent.text), {
      csrf_token: hidden(consent.text, 'csrf_token'),
      request: hidden(consent.text, 'request'),
      decision: 'allow',
    })
    const callback = new URL(back.response.headers.get('location'))
    const tokens = await client.authorizationCodeGrant(config, callback, {
      pkceCodeVerifier: code_verifier,
      expectedNonce: nonce,
      expectedState: state,
      idTokenExpected: true,
    })
    const claims = tokens.claims()
    const id_token_verified = await jose.jwtVerify(
      tokens.id_token,
      jose.createRemoteJWKSet(new URL(config.serverMetadata().jwks_uri)),
      { issuer, audience: client_id, typ: 'JWT', algorithms: ['RS256'] },
    )
    const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub)
    // A second authorization in the same session: no pages, the consent is remembered.
    const silent = await step(
      client.buildAuthorizationUrl(config, {
        redirect_uri,
        scope,
        code_challenge,
        code_challenge_method: 'S256',
        prompt: 'none',
        state,
      }),
    )
    const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token)
    const refreshed_again = await client.refreshTokenGrant(config, refreshed.refresh_token)
    let reuse
    try {
      await client.refreshTokenGrant(config, tokens.refresh_token)
      reuse = { ok: true }
    } catch (error) {
      reuse = failure(error)
    }
    let after_reuse
    try {
      await client.refreshTokenGrant(config, refreshed_again.refresh_token)
      after_reuse = { ok: true }
    } catch (error) {
      after_reuse = failure(error)
    }
    return {
      metadata: config.serverMetadata(),
      pages,
      callback: String(callback),
      tokens,
      claims,
      id_token_header: id_token_verified.protectedHeader,
      userinfo,
      silent_location: silent.response.headers.get('location'),
      refreshed,
      refreshed_claims: refreshed.claims() ?? null,
      refreshed_again,
      reuse,
      after_reuse,
    }
  },

  // The device authorization grant (RFC 8628) through openid-client: initiateDeviceAuthorization,
  // then pollDeviceAuthorizationGrant while the user approves on the verification page (fetched
  // without a browser: verification_uri_complete, sign in, confirm the code, approve, each form
  // posted with the session cookie and its CSRF token); ID token, refresh; then a second device
  // authorization the user denies.
  async 'device-flow'({ issuer, client_id, username, password, scope }) {
    const config = await client.discovery(new URL(issuer), client_id, undefined, client.None(), {
      execute: [client.allowInsecureRequests],
    })
    const settle = (promise) =>
      promise.then(
        (value) => ({ ok: true, value }),
        (error) => failure(error),
      )
    const pages = []
    let cookie = null
    const step = async (target, form) => {
      const headers = {}
      if (cookie) headers.cookie = cookie
      const options = { redirect: 'manual', headers }
      if (form) {
        options.method = 'POST'
        headers['content-type'] = 'application/x-www-form-urlencoded'
        options.body = new URLSearchParams(form).toString()
      }
      const response = await fetch(target, options)
      const set = response.headers.get('set-cookie')
      if (set) cookie = set.split(';')[0]
      const text = await response.text()
      pages.push({ url: String(target), status: response.status, set_cookie: set })
      if (response.status !== 200) throw new Error(`${target}: ${response.status} ${text}`)
      return text
    }
    const hidden = (html, name) => {
      const match = html.match(new RegExp(`name="${name}" value="([^"]*)"`))
      if (!match) throw new Error(`no ${name} field in ${html}`)
      return match[1]
    }
    const action = (html) => new URL(html.match(/<form method="post" action="([^"]+)"/)[1], issuer)

    const started = await client.initiateDeviceAuthorization(config, { scope })
    const polling = settle(client.pollDeviceAuthorizationGrant(config, started))
    const login = await step(new URL(started.verification_uri_complete))
    const entry = await step(action(login), {
      csrf_token: hidden(login, 'csrf_token'),
      user_code: hidden(login, 'user_code'),
      username,
      password,
    })
    const prefilled = hidden(entry, 'user_code')
    const confirm = await step(action(entry), { csrf_token: hidden(entry, 'csrf_token'), user_code: prefilled })
    const done = await step(action(confirm), {
      csrf_token: hidden(confirm, 'csrf_token'),
      user_code: hidden(confirm, 'user_code'),
      decision: 'approve',
    })
    const polled = await polling
    if (!polled.ok) throw new Error(`polling failed: ${JSON.stringify(polled)}`)
    const tokens = polled.value
    const claims = tokens.claims()
    const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token)

    // A second device, denied by the (still signed-in) user.
    const second = await client.initiateDeviceAuthorization(config, { scope })
    const deniedPolling = settle(client.pollDeviceAuthorizationGrant(config, second))
    const entry2 = await step(new URL(second.verification_uri_complete))
    const confirm2 = await step(action(entry2), {
      csrf_token: hidden(entry2, 'csrf_token'),
      user_code: hidden(entry2, 'user_code'),
    })
    await step(action(confirm2), {
      csrf_token: hidden(confirm2, 'csrf_token'),
      user_code: hidden(confirm2, 'user_code'),
      decision: 'deny',
    })
    const denied = await deniedPolling
    return {
      metadata: config.serverMetadata(),
      started,
      prefilled,
      confirm_page: confirm,
      done_page: done,
      pages,
      tokens,
      claims,
      refreshed,
      denied,
    }
  },

  // One client assertion built by hand, so a test can replay it.
  async assertion({ private_jwk, client_id, aud, jti, lifetime }) {
    const key = await jose.importJWK(private_jwk, private_jwk.alg)
    const assertion = await new jose.SignJWT({})
      .setProtectedHeader({ alg: private_jwk.alg, kid: private_jwk.kid, typ: 'JWT' })
      .setIssuer(client_id)
      .setSubject(client_id)
      .setAudience(aud)
      .setJti(jti ?? crypto.randomUUID())
      .setIssuedAt()
      .setExpirationTime(`${lifetime ?? 60}s`)
      .sign(key)
    return { assertion }
  },
}

async function discover(issuer, clientId, auth, sent) {
  return client.discovery(new URL(issuer), clientId, undefined, auth, {
    algorithm: 'oauth2',
    execute: [client.allowInsecureRequests],
    [client.customFetch]: recordingFetch(sent),
  })
}

// Records what each request carried (credentials included), so a test can grep the server's logs
// for every one of them.
function recordingFetch(sent) {
  return async (url, options) => {
    const headers = new Headers(options.headers)
    sent.push({
      url: String(url),
      method: options.method,
      authorization: headers.get('authorization'),
      body: options.body === undefined || options.body === null ? null : String(options.body),
    })
    return fetch(url, options)
  }
}

function failure(error) {
  return {
    ok: false,
    error: String(error),
    code: error.code ?? null,
    status: error.status ?? null,
    body: error.error ?? null,
  }
}

async function readStdin() {
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
  const result = await command(await readStdin())
  process.stdout.write(JSON.stringify(result) + '\n')
} catch (error) {
  console.error(`${name} failed:`, error)
  if (error?.cause) console.error('cause:', error.cause)
  process.exit(1)
}
