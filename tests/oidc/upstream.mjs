// An upstream OAuth provider and a resource server in one process, for the end-to-end tests
// of per-user upstream credentials: oidc-provider, in memory, at issuer http://127.0.0.1:PORT,
// with one confidential client, a resource-server client and two people (alice, bob).
//
//   node upstream.mjs --port P --client-id leash-up --client-secret S --redirect-uri URI
//                     [--redirect-uri URI ...] [--access-ttl SECONDS (default 3600)]
//
// Provider (oidc-provider's default paths): GET /auth, POST /token, POST /token/revocation,
// POST /token/introspection, /.well-known/openid-configuration. The client authenticates
// with client_secret_basic or client_secret_post and may use
//   - authorization_code, PKCE S256 required;
//   - refresh_token, rotated on every use (reusing a rotated one revokes its grant);
//   - client_credentials, scopes notes:read notes:write admin only;
//   - RFC 8693 token exchange (urn:ietf:params:oauth:grant-type:token-exchange) with
//     subject_token_type urn:ietf:params:oauth:token-type:access_token and an optional
//     narrower scope; each exchanged token has a grant of its own, so revoking it leaves
//     the user's tokens alone.
// Scopes: openid offline_access notes:read notes:write admin. Access tokens are opaque. Do
// not send `resource` (no resource servers are configured: invalid_target). A refresh token
// is issued whenever the authorization request asks for offline_access; prompt=consent is
// not needed (GET /auth with offline_access gets prompt=consent added here, so the consent
// page is always shown for such a request).
//
// Its own development sign-in and consent pages (devInteractions) are the ones the tests
// fill in: POST /interaction/:uid with prompt=login, login (alice or bob), password (any),
// then POST /interaction/:uid with prompt=consent; GET /interaction/:uid/abort declines.
//
// Resource server, same port:
//   GET|POST /rs/whoami  Authorization: Bearer T; T is introspected over HTTP at this
//                        provider (as client rs / rs-secret). 401 {"error":"invalid_token"}
//                        unless active, else 200 {sub, scope, client_id, token_suffix}.
// Test-only routes, same port:
//   GET  /test/seen                      every answered /rs/whoami: [{sub, scope, token, at}]
//   GET  /test/refreshes                 {"count": N} successful refresh_token grants
//   GET  /test/exchanges                 {"count": N} successful token exchanges
//   POST /test/revoke-account?account=A  destroys every grant of A (and its tokens)
//   POST /test/introspect  (token=T)     the introspection answer for T
//   POST /test/mode?mode=M               how POST /token answers from now on: normal (the
//                                        provider), down (503 HTML), garbage (200, body
//                                        `not json at all`), slow (30 s, then normal),
//                                        redirect (307 to another host), echo (400
//                                        invalid_grant quoting the token sent), echo_code
//                                        (the token sent as the error code), ctrl (a
//                                        "token" holding CR LF)
//   POST /test/revocation?down=1|0       POST /token/revocation answers 503 (or not)
//   GET  /test/echoed                    what echo mode quoted back
//
// Prints `upstream-provider listening http://127.0.0.1:P` once ready; exits on SIGTERM or
// when stdin closes.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';
import LRU from 'oidc-provider/lib/helpers/lru.js';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    'client-id': { type: 'string', default: 'leash-up' },
    'client-secret': { type: 'string' },
    'redirect-uri': { type: 'string', multiple: true },
    'access-ttl': { type: 'string', default: '3600' },
  },
});
const accessTtl = Number(values['access-ttl']);
if (
  !values.port
  || !values['client-secret']
  || !values['redirect-uri']?.length
  || !Number.isInteger(accessTtl)
  || accessTtl <= 0
) {
  console.error(
    'usage: node upstream.mjs --port P --client-id ID --client-secret S --redirect-uri URI [--redirect-uri URI ...] [--access-ttl SECONDS]',
  );
  process.exit(2);
}
const port = Number(values.port);
const issuer = `http://127.0.0.1:${port}`;
const clientId = values['client-id'];

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const RS_CLIENT = { id: 'rs', secret: 'rs-secret' };

// The people this provider knows; any other login has no account.
const PEOPLE = {
  alice: { sub: 'alice', name: 'Alice Example', email: 'alice@example.com' },
  bob: { sub: 'bob', name: 'Bob Example', email: 'bob@example.com' },
};

// A fresh RS256 signing key for this run (no development keys).
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: randomBytes(8).toString('hex'),
  alg: 'RS256',
  use: 'sig',
};

// oidc-provider's own in-memory adapter, but with room for more than its default of about
// 1000 entries (sessions, interactions, grants and tokens alike) before the oldest are
// forgotten; a long test run needs more.
const store = new LRU({ maxSize: 100_000 });

const configuration = {
  adapter: (model) => new MemoryAdapter(model, store),
  clients: [
    {
      client_id: clientId,
      client_secret: values['client-secret'],
      redirect_uris: values['redirect-uri'],
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials', TOKEN_EXCHANGE],
      response_types: ['code'],
      // A client registered for client_secret_basic may also authenticate with
      // client_secret_post (oidc-provider treats the two as one).
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      // Only the resource server's introspection calls.
      client_id: RS_CLIENT.id,
      client_secret: RS_CLIENT.secret,
      redirect_uris: [],
      grant_types: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    // Any confidential client (rs above all) may introspect any token.
    introspection: { enabled: true, allowedPolicy: async (_ctx, client) => client.clientAuthMethod !== 'none' },
    // A client may revoke only its own tokens.
    revocation: {
      enabled: true,
      allowedPolicy: async (_ctx, client, token) => {
        if (token.clientId !== client.clientId) {
          throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
        }
        return true;
      },
    },
  },
  // The openid scope carries every claim (no email or profile scopes).
  claims: {
    openid: ['sub', 'name', 'email'],
  },
  // Custom scopes count only when listed here.
  scopes: ['openid', 'offline_access', 'notes:read', 'notes:write', 'admin'],
  // PKCE (S256, the only method oidc-provider knows) for every authorization request.
  pkce: { required: () => true },
  // A refresh token whenever this authorization asked for offline_access (kept without
  // prompt=consent, see the /auth rewrite below).
  async issueRefreshToken(_ctx, client, source) {
    return client.grantTypeAllowed('refresh_token') && source.scopes.has('offline_access');
  },
  rotateRefreshToken: true,
  // Tokens outlive the provider's sign-in session.
  expiresWithSession: async () => false,
  ttl: {
    AccessToken: accessTtl,
    ClientCredentials: accessTtl,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 14 * 24 * 60 * 60,
    Grant: 14 * 24 * 60 * 60,
    Interaction: 60 * 60,
    Session: 14 * 24 * 60 * 60,
  },
  async findAccount(_ctx, id) {
    const person = PEOPLE[id];
    if (!person) {
      return undefined;
    }
    return {
      accountId: id,
      async claims() {
        return { ...person };
      },
    };
  },
};

// The quick-start warnings this test provider knowingly earns (development interactions,
// a Node.js other than its LTS) are not printed.
const warn = console.warn.bind(console);
const EXPECTED = ['devInteractions', 'Unsupported runtime'];
console.warn = (...args) => {
  const text = args.map(String).join(' ');
  if (!(text.startsWith('oidc-provider WARNING') && EXPECTED.some((what) => text.includes(what)))) {
    warn(...args);
  }
};

const provider = new Provider(issuer, configuration);

// What the tests ask about.
const seen = [];
let refreshes = 0;
let exchanges = 0;
let tokenMode = 'normal';
// Whether POST /token/revocation answers 503 (the provider's revocation is away).
let revocationDown = false;
// What `echo` mode quoted back (the secrets a client sent), for the test to look for.
const echoed = [];
const grantsOf = new Map(); // accountId -> Set of grant ids

provider.on('grant.saved', (grant) => {
  if (grant.accountId) {
    if (!grantsOf.has(grant.accountId)) {
      grantsOf.set(grant.accountId, new Set());
    }
    grantsOf.get(grant.accountId).add(grant.jti);
  }
});
provider.on('grant.success', (ctx) => {
  if (ctx.oidc.params.grant_type === 'refresh_token') {
    refreshes += 1;
  }
});

// RFC 8693 token exchange: an access token of this client in, a new access token with the
// same or a narrower scope out, under a grant of its own.
provider.registerGrantType(
  TOKEN_EXCHANGE,
  async (ctx) => {
    const { params, client } = ctx.oidc;
    if (!params.subject_token) {
      throw new errors.InvalidRequest('missing required parameter(s) (subject_token)');
    }
    if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest(`subject_token_type must be ${ACCESS_TOKEN_TYPE}`);
    }
    if (params.requested_token_type !== undefined && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest(`requested_token_type must be ${ACCESS_TOKEN_TYPE}`);
    }
    if (params.resource !== undefined) {
      throw new errors.InvalidTarget();
    }
    // `audience` is accepted and ignored.

    const subject = await provider.AccessToken.find(params.subject_token);
    if (!subject || !subject.isValid) {
      throw new errors.InvalidGrant('subject token not found, expired or revoked');
    }
    if (subject.clientId !== client.clientId) {
      throw new errors.InvalidGrant('subject token was issued to another client');
    }
    if (subject.grantId) {
      const subjectGrant = await provider.Grant.find(subject.grantId);
      if (!subjectGrant || subjectGrant.accountId !== subject.accountId) {
        throw new errors.InvalidGrant('subject token grant not found');
      }
    }

    const held = new Set(subject.scope ? subject.scope.split(' ') : []);
    let scopes;
    if (params.scope) {
      scopes = [...new Set(params.scope.split(' '))];
      const missing = scopes.filter((scope) => !held.has(scope));
      if (missing.length) {
        throw new errors.InvalidScope('requested scope exceeds the subject token', missing.join(' '));
      }
    } else {
      scopes = [...held];
    }
    scopes = scopes.filter((scope) => scope !== 'offline_access');
    const scope = scopes.join(' ') || undefined;

    const grant = new provider.Grant({ accountId: subject.accountId, clientId: client.clientId });
    if (scope) {
      grant.addOIDCScope(scope);
    }
    const grantId = await grant.save();

    const at = new provider.AccessToken({
      accountId: subject.accountId,
      client,
      grantId,
      scope,
      gty: 'token_exchange',
      expiresWithSession: false,
    });
    ctx.oidc.entity('Grant', grant);
    ctx.oidc.entity('AccessToken', at);
    const accessToken = await at.save();
    exchanges += 1;

    ctx.body = {
      access_token: accessToken,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: 'Bearer',
      expires_in: at.expiration,
      scope,
    };
  },
  ['subject_token', 'subject_token_type', 'scope', 'requested_token_type', 'audience', 'resource'],
);

// client_credentials, as oidc-provider does it, but only for the API scopes.
const CLIENT_CREDENTIALS_SCOPES = new Set(['notes:read', 'notes:write', 'admin']);
provider.registerGrantType(
  'client_credentials',
  async (ctx) => {
    const { params, client } = ctx.oidc;
    if (params.resource !== undefined) {
      throw new errors.InvalidTarget();
    }
    const scopes = [...new Set(params.scope ? params.scope.split(' ') : [])];
    const refused = scopes.filter((scope) => !CLIENT_CREDENTIALS_SCOPES.has(scope));
    if (refused.length) {
      throw new errors.InvalidScope('requested scope is not allowed', refused.join(' '));
    }
    const token = new provider.ClientCredentials({ client, scope: scopes.join(' ') || undefined });
    ctx.oidc.entity('ClientCredentials', token);
    const accessToken = await token.save();
    ctx.body = {
      access_token: accessToken,
      expires_in: token.expiration,
      scope: token.scope,
      token_type: 'Bearer',
    };
  },
  ['scope', 'resource'],
);

async function readForm(ctx) {
  const chunks = [];
  for await (const chunk of ctx.req) {
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function introspect(token) {
  const response = await fetch(`${issuer}/token/introspection`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${RS_CLIENT.id}:${RS_CLIENT.secret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ token }).toString(),
  });
  if (!response.ok) {
    throw new Error(`introspection answered ${response.status}: ${await response.text()}`);
  }
  return response.json();
}

async function revokeAccount(account) {
  const ids = [...(grantsOf.get(account) ?? [])];
  grantsOf.delete(account);
  let destroyed = 0;
  for (const id of ids) {
    await Promise.all([
      provider.AccessToken.revokeByGrantId(id),
      provider.RefreshToken.revokeByGrantId(id),
      provider.AuthorizationCode.revokeByGrantId(id),
    ]);
    const grant = await provider.Grant.find(id, { ignoreExpiration: true });
    if (grant) {
      await grant.destroy();
      destroyed += 1;
    }
  }
  return destroyed;
}

// The resource server and the test routes, before the provider's own routes.
provider.use(async (ctx, next) => {
  const { path, method } = ctx;

  if (path === '/rs/whoami' && (method === 'GET' || method === 'POST')) {
    const match = /^Bearer\s+(\S+)$/i.exec(ctx.get('authorization'));
    const info = match ? await introspect(match[1]) : { active: false };
    if (!info.active) {
      ctx.status = 401;
      ctx.set('WWW-Authenticate', 'Bearer error="invalid_token"');
      ctx.body = { error: 'invalid_token' };
      return;
    }
    const token = match[1];
    seen.push({ sub: info.sub, scope: info.scope, token, at: Date.now() });
    ctx.body = { sub: info.sub, scope: info.scope, client_id: info.client_id, token_suffix: token.slice(-6) };
    return;
  }

  if (path.startsWith('/test/')) {
    if (path === '/test/seen' && method === 'GET') {
      ctx.body = seen;
    } else if (path === '/test/refreshes' && method === 'GET') {
      ctx.body = { count: refreshes };
    } else if (path === '/test/exchanges' && method === 'GET') {
      ctx.body = { count: exchanges };
    } else if (path === '/test/revoke-account' && method === 'POST') {
      const account = ctx.query.account;
      if (!account) {
        ctx.status = 400;
        ctx.body = { error: 'account is required' };
        return;
      }
      ctx.body = { account, grants_destroyed: await revokeAccount(account) };
    } else if (path === '/test/introspect' && method === 'POST') {
      const token = (await readForm(ctx)).get('token');
      if (!token) {
        ctx.status = 400;
        ctx.body = { error: 'token is required' };
        return;
      }
      ctx.body = await introspect(token);
    } else if (path === '/test/mode' && method === 'POST') {
      const mode = ctx.query.mode;
      const modes = ['normal', 'down', 'garbage', 'slow', 'redirect', 'echo', 'echo_code', 'ctrl'];
      if (!modes.includes(mode)) {
        ctx.status = 400;
        ctx.body = { error: `mode must be one of ${modes.join(', ')}` };
        return;
      }
      tokenMode = mode;
      ctx.body = { mode };
    } else if (path === '/test/revocation' && method === 'POST') {
      revocationDown = ctx.query.down === '1';
      ctx.body = { down: revocationDown };
    } else if (path === '/test/echoed' && method === 'GET') {
      ctx.body = echoed;
    } else {
      ctx.status = 404;
      ctx.body = { error: 'no such test route' };
    }
    return;
  }

  if (path === '/token/revocation' && revocationDown) {
    ctx.status = 503;
    ctx.type = 'text/html';
    ctx.body = '<html><body><h1>503 Service Unavailable</h1></body></html>';
    return;
  }

  if (path === '/token') {
    if (tokenMode === 'echo' || tokenMode === 'echo_code') {
      // An error that quotes the secret the client sent: in its description, or as the
      // error code itself.
      const form = await readForm(ctx);
      const sent = form.get('refresh_token') || form.get('subject_token') || form.get('code') || '';
      echoed.push(sent);
      ctx.status = 400;
      ctx.body = tokenMode === 'echo'
        ? { error: 'invalid_grant', error_description: `bad token ${sent}` }
        : { error: sent };
      return;
    }
    if (tokenMode === 'ctrl') {
      // A "token" that would inject a header.
      ctx.status = 200;
      ctx.body = { access_token: 'abc\r\nX-Injected: 1', token_type: 'Bearer', expires_in: 3600 };
      return;
    }
    if (tokenMode === 'down') {
      ctx.status = 503;
      ctx.type = 'text/html';
      ctx.body = '<html><body><h1>503 Service Unavailable</h1></body></html>';
      return;
    }
    if (tokenMode === 'garbage') {
      ctx.status = 200;
      ctx.type = 'text/plain';
      ctx.body = 'not json at all';
      return;
    }
    if (tokenMode === 'redirect') {
      // Sends the client, with whatever it posted, somewhere else.
      ctx.status = 307;
      ctx.redirect('http://127.0.0.1:9/stolen');
      return;
    }
    if (tokenMode === 'slow') {
      await new Promise((resolve) => { setTimeout(resolve, 30_000); });
    }
  }

  // oidc-provider drops offline_access unless prompt includes consent (OpenID Connect
  // Core); here asking for offline_access is enough.
  if (path === '/auth' && method === 'GET') {
    const { scope, prompt } = ctx.query;
    if (typeof scope === 'string' && scope.split(' ').includes('offline_access')) {
      const prompts = typeof prompt === 'string' ? prompt.split(' ').filter(Boolean) : [];
      if (!prompts.includes('consent') && !prompts.includes('none')) {
        ctx.query = { ...ctx.query, prompt: [...prompts, 'consent'].join(' ') };
      }
    }
  }

  await next();
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`upstream-provider listening ${issuer}`);
});
server.on('error', (error) => {
  console.error(`upstream-provider could not listen on ${issuer}: ${error.message}`);
  process.exit(1);
});

const stop = () => {
  server.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.resume();
