// Baseline for bench/run.sh: node `oidc-provider` configured like a small production
// deployment that does what the meshgate benchmark exercises: client_credentials tokens
// and RFC 7662 introspection for one confidential client (client_secret_basic).
//
// Environment:
//   BENCH_CLIENT_ID, BENCH_CLIENT_SECRET  the client's credentials (required)
//   BENCH_PORT                            port to listen on (default 0 = any free port)
//   BENCH_VERBOSE=1                       keep oidc-provider's console notices
//
// Once serving, prints ONE JSON line on stdout:
//   {"issuer":..., "listen":..., "token_endpoint":..., "introspection_endpoint":..., "pid":...}
//
// Notes on fairness:
// * NODE_ENV=production is set by run.sh; signing keys and cookie keys are generated at start
//   (no development-only keys), dev interactions are disabled.
// * oidc-provider's bundled MemoryAdapter is an LRU capped at 1,000 entries (development only);
//   with it, most of 10,000 pre-issued tokens would be evicted and introspect as inactive. A
//   production deployment uses an external store (Redis, a database); here a plain in-process
//   Map stands in for it, which is the fastest possible store and so favours oidc-provider.
// * Tokens are oidc-provider's default format: opaque (a random 43-character reference,
//   looked up in the store on introspection).

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';

if (process.env.BENCH_VERBOSE !== '1') {
  // oidc-provider prints its notices through console.info / console.warn.
  console.info = () => {};
  console.warn = () => {};
  console.log = () => {};
}

const { default: Provider } = await import('oidc-provider');

const clientId = process.env.BENCH_CLIENT_ID;
const clientSecret = process.env.BENCH_CLIENT_SECRET;
if (!clientId || !clientSecret) {
  process.stderr.write('BENCH_CLIENT_ID and BENCH_CLIENT_SECRET are required\n');
  process.exit(2);
}

// Unbounded in-process store with expiry, implementing oidc-provider's adapter interface.
const store = new Map();
class MapAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const exp = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    store.set(this.key(id), { payload, exp });
    if (payload.grantId) {
      const gk = `grant:${payload.grantId}`;
      const members = store.get(gk)?.payload ?? [];
      members.push(this.key(id));
      store.set(gk, { payload: members, exp });
    }
    if (payload.userCode) store.set(`userCode:${payload.userCode}`, { payload: id, exp });
    if (payload.uid) store.set(`uid:${payload.uid}`, { payload: id, exp });
  }

  async find(id) {
    const entry = store.get(this.key(id));
    if (!entry) return undefined;
    if (entry.exp <= Date.now()) {
      store.delete(this.key(id));
      return undefined;
    }
    return entry.payload;
  }

  async findByUserCode(userCode) {
    const id = store.get(`userCode:${userCode}`)?.payload;
    return id === undefined ? undefined : this.find(id);
  }

  async findByUid(uid) {
    const id = store.get(`uid:${uid}`)?.payload;
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    const gk = `grant:${grantId}`;
    for (const k of store.get(gk)?.payload ?? []) store.delete(k);
    store.delete(gk);
  }
}

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
const ed = generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' });

const server = http.createServer();
server.keepAliveTimeout = 65_000;
const port = Number(process.env.BENCH_PORT || 0);
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const listen = `127.0.0.1:${server.address().port}`;
const issuer = `http://${listen}`;

const provider = new Provider(issuer, {
  adapter: MapAdapter,
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'read write',
    },
  ],
  scopes: ['openid', 'offline_access', 'read', 'write'],
  jwks: { keys: [{ ...rsa, alg: 'RS256', use: 'sig', kid: 'rs1' }, { ...ed, alg: 'EdDSA', use: 'sig', kid: 'ed1' }] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // Any authenticated client may introspect (as meshgate's /introspect does).
      allowedPolicy: async () => true,
    },
  },
  ttl: { ClientCredentials: 3600 },
});
provider.on('server_error', (ctx, err) => {
  if (process.env.BENCH_VERBOSE === '1') process.stderr.write(`server_error: ${err?.stack ?? err}\n`);
});

server.on('request', provider.callback());

const shutdown = () => process.exit(0);
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

process.stdout.write(
  `${JSON.stringify({
    issuer,
    listen,
    token_endpoint: `${issuer}/token`,
    introspection_endpoint: `${issuer}/token/introspection`,
    pid: process.pid,
  })}\n`,
);
