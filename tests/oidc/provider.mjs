// A real OpenID provider for the end-to-end tests (tests/e2e/oidc.rs): oidc-provider, in
// memory, at issuer http://127.0.0.1:PORT, with one confidential client and two people.
//
//   node provider.mjs --port P --client-id leash --client-secret S --redirect-uri URI [...]
//
// Its own development sign-in and consent pages (devInteractions) are the ones the tests
// fill in: POST /interaction/:uid with prompt=login, login, password (any password), then
// POST /interaction/:uid with prompt=consent; GET /interaction/:uid/abort declines.
// Prints `oidc-provider listening http://127.0.0.1:P` once ready; exits on SIGTERM or
// when stdin closes.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    'client-id': { type: 'string', default: 'leash' },
    'client-secret': { type: 'string' },
    'redirect-uri': { type: 'string', multiple: true },
  },
});
if (!values.port || !values['client-secret'] || !values['redirect-uri']?.length) {
  console.error(
    'usage: node provider.mjs --port P --client-id ID --client-secret S --redirect-uri URI [--redirect-uri URI ...]',
  );
  process.exit(2);
}
const port = Number(values.port);
const issuer = `http://127.0.0.1:${port}`;

// The people this provider knows; any other login has no account.
const PEOPLE = {
  alice: {
    sub: 'alice',
    email: 'alice@example.com',
    email_verified: true,
    name: 'Alice Example',
    preferred_username: 'alice',
    groups: ['engineering'],
  },
  ann: {
    sub: 'ann',
    email: 'ann@example.com',
    email_verified: true,
    name: 'Ann Example',
    preferred_username: 'ann',
    groups: ['security'],
  },
};

// A fresh RS256 signing key for this run (no development keys).
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: randomBytes(8).toString('hex'),
  alg: 'RS256',
  use: 'sig',
};

const configuration = {
  clients: [
    {
      client_id: values['client-id'],
      client_secret: values['client-secret'],
      redirect_uris: values['redirect-uri'],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      // A client registered for client_secret_basic may also authenticate with
      // client_secret_post (oidc-provider treats the two as one).
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: {
    devInteractions: { enabled: true },
  },
  // The ID token itself carries the claims of the granted scopes (email, groups), not
  // only the userinfo endpoint.
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  // PKCE (S256) is accepted from this confidential client and required from public ones
  // (oidc-provider's default).
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

// The quick-start warnings this test provider knowingly earns (in-memory adapter,
// development interactions, a Node.js other than its LTS) are not printed.
const warn = console.warn.bind(console);
const EXPECTED = ['in-memory adapter', 'devInteractions', 'Unsupported runtime'];
console.warn = (...args) => {
  const text = args.map(String).join(' ');
  if (!(text.startsWith('oidc-provider WARNING') && EXPECTED.some((what) => text.includes(what)))) {
    warn(...args);
  }
};

const provider = new Provider(issuer, configuration);
const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening ${issuer}`);
});
server.on('error', (error) => {
  console.error(`oidc-provider could not listen on ${issuer}: ${error.message}`);
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
