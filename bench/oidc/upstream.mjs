// node `oidc-provider` as meshgate's *upstream* identity provider, for the compatibility suite
// (compat-tests/tests/compat/upstream.rs): one confidential client_credentials client whose
// access tokens, requested for the resource indicator UPSTREAM_RESOURCE, are RS256 JWTs
// (RFC 9068) with `aud` = UPSTREAM_AUDIENCE — the tokens meshgate exchanges (RFC 8693).
//
// Environment:
//   UPSTREAM_CLIENT_ID, UPSTREAM_CLIENT_SECRET  the client's credentials (required)
//   UPSTREAM_RESOURCE                           resource indicator (default https://meshgate.test/)
//   UPSTREAM_AUDIENCE                           `aud` of the access tokens (default meshgate)
//   UPSTREAM_VERBOSE=1                          keep oidc-provider's console notices
//   UPSTREAM_CLIENT2_ID, UPSTREAM_CLIENT2_SECRET  an optional second client, same settings
//   UPSTREAM_LOGIN_CLIENT_ID, UPSTREAM_LOGIN_CLIENT_SECRET, UPSTREAM_LOGIN_REDIRECT
//                                               an optional authorization-code client (login
//                                               federation); turns on oidc-provider's development
//                                               login pages (any login name, no password check);
//                                               the account `NAME` has the ID token claims
//                                               name "User NAME" and email NAME@upstream.test
//   UPSTREAM_LOGIN_NATIVE=1                     registers that client as `application_type: native`,
//                                               so its loopback redirect matches on any port (RFC 8252)
//
// Once serving, prints ONE JSON line on stdout: {"issuer":..., "token_endpoint":..., "pid":...}

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';

if (process.env.UPSTREAM_VERBOSE !== '1') {
  console.info = () => {};
  console.warn = () => {};
  console.log = () => {};
}

const { default: Provider } = await import('oidc-provider');

const clientId = process.env.UPSTREAM_CLIENT_ID;
const clientSecret = process.env.UPSTREAM_CLIENT_SECRET;
if (!clientId || !clientSecret) {
  process.stderr.write('UPSTREAM_CLIENT_ID and UPSTREAM_CLIENT_SECRET are required\n');
  process.exit(2);
}
const resource = process.env.UPSTREAM_RESOURCE || 'https://meshgate.test/';
const audience = process.env.UPSTREAM_AUDIENCE || 'meshgate';

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const client = (client_id, client_secret) => ({
  client_id,
  client_secret,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic',
  scope: 'read write',
});
const clients = [client(clientId, clientSecret)];
if (process.env.UPSTREAM_CLIENT2_ID && process.env.UPSTREAM_CLIENT2_SECRET) {
  clients.push(client(process.env.UPSTREAM_CLIENT2_ID, process.env.UPSTREAM_CLIENT2_SECRET));
}

const login = process.env.UPSTREAM_LOGIN_CLIENT_ID && process.env.UPSTREAM_LOGIN_CLIENT_SECRET
  && process.env.UPSTREAM_LOGIN_REDIRECT;
if (login) {
  clients.push({
    client_id: process.env.UPSTREAM_LOGIN_CLIENT_ID,
    client_secret: process.env.UPSTREAM_LOGIN_CLIENT_SECRET,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: [process.env.UPSTREAM_LOGIN_REDIRECT],
    token_endpoint_auth_method: 'client_secret_basic',
    ...(process.env.UPSTREAM_LOGIN_NATIVE === '1' ? { application_type: 'native' } : {}),
  });
}

const provider = new Provider(issuer, {
  clients,
  scopes: ['openid', 'read', 'write', 'profile', 'email'],
  claims: { openid: ['sub'], profile: ['name'], email: ['email', 'email_verified'] },
  // The profile claims go into the ID token, as Keycloak does by default.
  conformIdTokenClaims: false,
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: () => ({ sub: id, name: `User ${id}`, email: `${id}@upstream.test`, email_verified: true }),
  }),
  jwks: { keys: [{ ...rsa, alg: 'RS256', use: 'sig', kid: 'upstream-rs256' }] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    devInteractions: { enabled: Boolean(login) },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => {
        if (indicator !== resource) throw new Error(`unknown resource ${indicator}`);
        return {
          scope: 'read write',
          audience,
          accessTokenTTL: 3600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
});
provider.on('server_error', (ctx, err) => {
  if (process.env.UPSTREAM_VERBOSE === '1') process.stderr.write(`server_error: ${err?.stack ?? err}\n`);
});
server.on('request', provider.callback());

const shutdown = () => process.exit(0);
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

process.stdout.write(`${JSON.stringify({ issuer, token_endpoint: `${issuer}/token`, pid: process.pid })}\n`);
