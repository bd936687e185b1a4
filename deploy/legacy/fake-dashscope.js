'use strict';
// A local stand-in for the DashScope text-generation API (dashscope.md), deterministic and
// with fault directives, for demos and tests. The only stand-in in the project.
//   FAKE_DASHSCOPE_PORT=8010 FAKE_DASHSCOPE_API_KEY=sk-fake-local node fake-dashscope.js
//
// Reply: "You said: " + <content of the last user message>.
// usage.input_tokens = sum of the UTF-16 lengths of all message contents,
// usage.output_tokens = number of pieces (the reply split after each space).
// Directives anywhere in the last user message: [fake:status=NNN] [fake:hang] [fake:malformed]
// [fake:nochoices] [fake:midstream-error] [fake:stream-close] [fake:stream-stall]
// [fake:stream-garbage] [fake:delay=MS] [fake:nousage]
// Recording: GET /_fake/requests -> {"data": [{path, headers, authOk, body}, ...]} oldest
// first (last 500); DELETE /_fake/requests clears it.

const crypto = require('crypto');
const http = require('http');

const GENERATION_PATH = '/api/v1/services/aigc/text-generation/generation';
const KEEP = 500;
const recorded = [];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function sendJson(res, status, obj) {
  const body = Buffer.from(JSON.stringify(obj), 'utf8');
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': body.length });
  res.end(body);
}

function errorCodeFor(status) {
  if (status === 401 || status === 403) return 'InvalidApiKey';
  if (status === 429) return 'Throttling';
  if (status >= 500) return 'InternalError';
  return 'InvalidParameter';
}

function sendProviderError(res, status, message, requestId) {
  sendJson(res, status, { code: errorCodeFor(status), message, request_id: requestId });
}

function parseDirectives(text) {
  const d = {};
  const re = /\[fake:([a-z-]+)(?:=(\d+))?\]/g;
  let m;
  while ((m = re.exec(text)) !== null) d[m[1]] = m[2] === undefined ? true : Number(m[2]);
  return d;
}

/** "You said: hi there" -> ["You ", "said: ", "hi ", "there"] */
function splitPieces(reply) {
  const pieces = [];
  let start = 0;
  for (let i = 0; i < reply.length; i++) {
    if (reply[i] === ' ') {
      pieces.push(reply.slice(start, i + 1));
      start = i + 1;
    }
  }
  if (start < reply.length) pieces.push(reply.slice(start));
  return pieces;
}

function readAll(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function record(req, pathname, authOk, body) {
  const headers = { ...req.headers };
  delete headers.authorization;
  headers.authOk = authOk;
  recorded.push({ path: pathname, headers, authOk, body });
  if (recorded.length > KEEP) recorded.splice(0, recorded.length - KEEP);
}

function checkKey(header) {
  const expected = process.env.FAKE_DASHSCOPE_API_KEY;
  if (typeof header !== 'string' || !header.startsWith('Bearer ')) return false;
  const key = header.slice(7).trim();
  if (expected) return key === expected;
  return key !== '';
}

// Never answers; the connection stays open until the client gives up.
function hang(req, res) {
  res.on('close', () => {});
}

async function generation(req, res, pathname) {
  const requestId = crypto.randomUUID();
  const raw = await readAll(req);
  let body;
  try {
    body = JSON.parse(raw);
  } catch (e) {
    body = raw;
  }
  const authOk = checkKey(req.headers.authorization);
  record(req, pathname, authOk, body);
  if (!authOk) {
    sendJson(res, 401, { code: 'InvalidApiKey', message: 'Invalid API-key provided.', request_id: requestId });
    return;
  }
  const messages = body && body.input && body.input.messages;
  if (!Array.isArray(messages) || messages.length === 0) {
    sendProviderError(res, 400, 'input.messages is required', requestId);
    return;
  }
  const params = (body && typeof body.parameters === 'object' && body.parameters) || {};
  const format = params.result_format === 'message' ? 'message' : 'text'; // DashScope's default is text
  const incremental = params.incremental_output === true;
  const lastUser = [...messages].reverse().find((m) => m && m.role === 'user');
  const content = lastUser && typeof lastUser.content === 'string' ? lastUser.content : '';
  const d = parseDirectives(content);
  const reply = `You said: ${content}`;
  const pieces = splitPieces(reply);
  const inputTokens = messages.reduce((n, m) => n + (m && typeof m.content === 'string' ? m.content.length : 0), 0);
  const usageFor = (out) => (d.nousage ? undefined : { input_tokens: inputTokens, output_tokens: out, total_tokens: inputTokens + out });
  const delay = typeof d.delay === 'number' ? d.delay : 0;
  const accept = String(req.headers.accept || '').toLowerCase();
  const stream = String(req.headers['x-dashscope-sse'] || '').toLowerCase() === 'enable' || accept.includes('text/event-stream');

  if (typeof d.status === 'number' && d.status >= 400 && d.status <= 599) {
    sendProviderError(res, d.status, `fake error status ${d.status}`, requestId);
    return;
  }
  if (d.hang) {
    hang(req, res);
    return;
  }
  if (d.malformed) {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end('this is not JSON {');
    return;
  }

  const outputFor = (text, finish) => (format === 'message'
    ? { choices: [{ message: { role: 'assistant', content: text }, finish_reason: finish }] }
    : { text, finish_reason: finish });

  if (!stream) {
    if (delay) await sleep(delay);
    const out = { output: d.nochoices ? { finish_reason: 'stop' } : outputFor(reply, 'stop') };
    const usage = usageFor(pieces.length);
    if (usage) out.usage = usage;
    out.request_id = requestId;
    sendJson(res, 200, out);
    return;
  }

  // Streaming
  let closed = false;
  res.on('close', () => { closed = true; });
  res.writeHead(200, { 'Content-Type': 'text/event-stream;charset=UTF-8', 'Cache-Control': 'no-cache' });
  let id = 0;
  const event = (data, type = 'result', status = 200) => {
    if (closed) return;
    id += 1;
    res.write(`id:${id}\nevent:${type}\n:HTTP_STATUS/${status}\ndata:${JSON.stringify(data)}\n\n`);
  };
  const resultEvent = (output, outTokens) => {
    const data = { output };
    const usage = usageFor(outTokens);
    if (usage) data.usage = usage;
    data.request_id = requestId;
    event(data);
  };

  if (d.nochoices) {
    resultEvent({}, 0);
    res.end();
    return;
  }
  resultEvent(outputFor('', 'null'), 0); // the empty first event; clients skip it
  let limit = pieces.length;
  if (d['midstream-error'] || d['stream-close']) limit = Math.min(2, pieces.length);
  if (d['stream-stall'] || d['stream-garbage']) limit = Math.min(1, pieces.length);
  let sofar = '';
  for (let i = 0; i < limit; i++) {
    if (delay) await sleep(delay);
    if (closed) return;
    sofar += pieces[i];
    const last = i === pieces.length - 1;
    resultEvent(outputFor(incremental ? pieces[i] : sofar, last ? 'stop' : 'null'), i + 1);
  }
  if (d['midstream-error']) {
    event({ code: 'InternalError', message: 'fake mid-stream error', request_id: requestId }, 'error', 500);
    res.end();
  } else if (d['stream-close']) {
    res.end();
  } else if (d['stream-stall']) {
    hang(req, res);
  } else if (d['stream-garbage']) {
    if (!closed) res.write(`id:${id + 1}\nevent:result\n:HTTP_STATUS/200\ndata:{this is not json\n\n`);
    hang(req, res); // stays open: the client must fail on the garbage, not on a close
  } else {
    res.end();
  }
}

async function handle(req, res) {
  const url = req.url || '/';
  const q = url.indexOf('?');
  const pathname = q === -1 ? url : url.slice(0, q);
  try {
    if (pathname === '/health' && req.method === 'GET') {
      sendJson(res, 200, { status: 'ok', service: 'fake-dashscope' });
    } else if (pathname === '/_fake/requests' && req.method === 'GET') {
      sendJson(res, 200, { data: recorded });
    } else if (pathname === '/_fake/requests' && req.method === 'DELETE') {
      recorded.length = 0;
      res.writeHead(204);
      res.end();
    } else if (pathname === GENERATION_PATH && req.method === 'POST') {
      await generation(req, res, pathname);
    } else {
      sendJson(res, 404, { code: 'NotFound', message: `no route for ${req.method} ${pathname}`, request_id: crypto.randomUUID() });
    }
  } catch (e) {
    process.stderr.write(`fake-dashscope error: ${e && e.stack ? e.stack : e}\n`);
    if (!res.headersSent) sendJson(res, 500, { code: 'InternalError', message: 'fake failed', request_id: crypto.randomUUID() });
    else res.destroy();
  }
}

function main() {
  const port = Number(process.env.FAKE_DASHSCOPE_PORT || 8010);
  const server = http.createServer(handle);
  server.listen(port, process.env.BIND_HOST || undefined, () => {
    process.stdout.write(`fake-dashscope listening on ${port}${process.env.FAKE_DASHSCOPE_API_KEY ? '' : ' (any API key accepted)'}\n`);
  });
  const stop = () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (require.main === module) main();

module.exports = { splitPieces, parseDirectives, handle };
