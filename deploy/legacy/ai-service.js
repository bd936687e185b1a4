'use strict';
// ai-service (legacy-api.md §3, §6 "ai-service"): chat with the DashScope provider
// (dashscope.md), conversation history in Redis.
//   node ai-service.js      (port AI_SERVICE_PORT, default 8003)

const { App, errors, loadConfig, createRedis, runService } = require('./lib/common');
const { readSession, canAccess } = require('./lib/sessions');

const SYSTEM_PROMPT = 'You are a helpful customer service assistant.';
const HISTORY_TTL = 86400;
const HISTORY_KEEP = 50;
const HISTORY_IN_PROMPT = 20;
const MAX_MESSAGE = 4000;
const GENERATION_PATH = '/api/v1/services/aigc/text-generation/generation';

const historyKey = (sessionId) => `history:${sessionId}`;

// ---------------------------------------------------------------------------------------
// Request checks and prompt

async function checkedRequest(ctx, redis) {
  ctx.auth();
  const body = await ctx.body();
  const { sessionId, message } = body;
  if (typeof sessionId !== 'string' || sessionId === '') throw errors.badRequest('sessionId must be a non-empty string');
  if (typeof message !== 'string') throw errors.badRequest('message must be a string');
  const len = message.trim().length; // UTF-16 code units, JS trim (strips U+FEFF too)
  if (len < 1 || len > MAX_MESSAGE) throw errors.badRequest(`message must be 1..${MAX_MESSAGE} characters`);
  const session = await readSession(redis, sessionId);
  if (!session) throw errors.notFound('session not found');
  if (!canAccess(ctx.user, session)) throw errors.forbidden('not your session');
  return { sessionId, message };
}

function validHistoryItem(raw) {
  let item;
  try {
    item = JSON.parse(raw);
  } catch (e) {
    return null;
  }
  if (item === null || typeof item !== 'object' || Array.isArray(item)) return null;
  if ((item.role !== 'user' && item.role !== 'assistant') || typeof item.content !== 'string') return null;
  return { role: item.role, content: item.content };
}

async function buildMessages(redis, sessionId, message) {
  const raw = await redis.lRange(historyKey(sessionId), -HISTORY_IN_PROMPT, -1);
  const history = raw.map(validHistoryItem).filter(Boolean);
  return [{ role: 'system', content: SYSTEM_PROMPT }, ...history, { role: 'user', content: message }];
}

async function appendHistory(redis, sessionId, message, reply) {
  const key = historyKey(sessionId);
  await redis
    .multi()
    .rPush(key, [JSON.stringify({ role: 'user', content: message }), JSON.stringify({ role: 'assistant', content: reply })])
    .lTrim(key, -HISTORY_KEEP, -1)
    .expire(key, HISTORY_TTL)
    .exec();
}

function tokenCounts(usage) {
  const n = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
  if (usage === null || typeof usage !== 'object') return { inputTokens: 0, outputTokens: 0 };
  return { inputTokens: n(usage.input_tokens), outputTokens: n(usage.output_tokens) };
}

// ---------------------------------------------------------------------------------------
// Provider client

function providerRequest(cfg, messages, stream, signal) {
  const parameters = { result_format: 'message' };
  const headers = {
    Authorization: `Bearer ${cfg.dashscope.apiKey}`,
    'Content-Type': 'application/json',
  };
  if (stream) {
    parameters.incremental_output = true;
    headers['X-DashScope-SSE'] = 'enable';
  }
  return fetch(cfg.dashscope.baseUrl + GENERATION_PATH, {
    method: 'POST',
    headers,
    body: JSON.stringify({ model: cfg.dashscope.model, input: { messages }, parameters }),
    signal,
    redirect: 'manual',
  });
}

async function callProvider(cfg, messages) {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), cfg.dashscope.timeoutMs);
  try {
    const resp = await providerRequest(cfg, messages, false, ac.signal);
    const text = await resp.text();
    if (resp.status !== 200) throw errors.upstream(`provider answered ${resp.status}`);
    let data;
    try {
      data = JSON.parse(text);
    } catch (e) {
      throw errors.upstream('provider answer is not JSON');
    }
    const content = data && data.output && Array.isArray(data.output.choices) && data.output.choices[0]
      && data.output.choices[0].message && data.output.choices[0].message.content;
    if (typeof content !== 'string') throw errors.upstream('provider answer has no output.choices[0].message.content');
    return { reply: content, usage: tokenCounts(data.usage) };
  } catch (e) {
    if (e.status) throw e;
    throw errors.upstream(ac.signal.aborted ? 'provider timed out' : `provider unreachable: ${e.message}`);
  } finally {
    clearTimeout(timer);
  }
}

// Incremental text/event-stream parser: feed() text, get back complete events
// {event, data} (data lines joined by "\n"; comment lines and id: ignored).
class SseParser {
  constructor() {
    this.buf = '';
    this.event = '';
    this.data = null;
  }

  feed(text) {
    this.buf += text;
    const out = [];
    let m;
    const lineRe = /\r\n|\r|\n/g;
    let start = 0;
    while ((m = lineRe.exec(this.buf)) !== null) {
      // A lone "\r" at the very end may be the first half of "\r\n": wait for more.
      if (m[0] === '\r' && m.index === this.buf.length - 1) break;
      const line = this.buf.slice(start, m.index);
      start = m.index + m[0].length;
      this.line(line, out);
    }
    this.buf = this.buf.slice(start);
    return out;
  }

  line(line, out) {
    if (line === '') {
      if (this.data !== null) out.push({ event: this.event || 'message', data: this.data });
      this.event = '';
      this.data = null;
      return;
    }
    if (line.startsWith(':')) return;
    const i = line.indexOf(':');
    const field = i === -1 ? line : line.slice(0, i);
    let value = i === -1 ? '' : line.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.event = value;
    else if (field === 'data') this.data = this.data === null ? value : `${this.data}\n${value}`;
  }
}

function writeEvent(res, obj) {
  res.write(`data: ${JSON.stringify(obj)}\n\n`);
}

async function streamChat(ctx, cfg, redis, sessionId, message, messages) {
  const { res } = ctx;
  const ac = new AbortController();
  let timer = setTimeout(() => ac.abort(), cfg.dashscope.timeoutMs);
  let clientGone = false;
  res.on('close', () => {
    if (!res.writableFinished) {
      clientGone = true;
      ac.abort();
    }
  });

  // Phase 1: until the provider answered 200 with an event stream, failures are plain 502.
  let resp;
  try {
    resp = await providerRequest(cfg, messages, true, ac.signal);
  } catch (e) {
    clearTimeout(timer);
    throw errors.upstream(ac.signal.aborted ? 'provider timed out' : `provider unreachable: ${e.message}`);
  }
  const ctype = (resp.headers.get('content-type') || '').toLowerCase();
  if (resp.status !== 200 || !ctype.startsWith('text/event-stream') || !resp.body) {
    clearTimeout(timer);
    ac.abort();
    throw errors.upstream(resp.status !== 200 ? `provider answered ${resp.status}` : 'provider did not answer an event stream');
  }

  // Phase 2: the stream has started.
  ctx.streaming = true;
  res.statusCode = 200;
  res.setHeader('Content-Type', 'text/event-stream');
  res.setHeader('Cache-Control', 'no-cache');
  res.flushHeaders();

  const idle = () => {
    clearTimeout(timer);
    timer = setTimeout(() => ac.abort(), cfg.dashscope.timeoutMs);
  };
  idle();

  const parser = new SseParser();
  const decoder = new TextDecoder('utf-8');
  let reply = '';
  let usage = { inputTokens: 0, outputTokens: 0 };
  let failure = null;
  let done = false;

  const handleEvent = (ev) => {
    if (ev.event === 'error') {
      failure = 'provider reported an error mid-stream';
      return;
    }
    let data;
    try {
      data = JSON.parse(ev.data);
    } catch (e) {
      failure = 'provider sent an unparsable event';
      return;
    }
    if (data === null || typeof data !== 'object' || Array.isArray(data)) {
      failure = 'provider sent an unparsable event';
      return;
    }
    const choice = data.output && Array.isArray(data.output.choices) ? data.output.choices[0] : undefined;
    const piece = choice && choice.message ? choice.message.content : undefined;
    if (typeof piece === 'string' && piece !== '') {
      reply += piece;
      writeEvent(res, { delta: piece });
    }
    if (choice && choice.finish_reason === 'stop') {
      usage = tokenCounts(data.usage);
      done = true;
    }
  };

  try {
    const reader = resp.body.getReader();
    while (!done && !failure) {
      const { value, done: eof } = await reader.read();
      if (eof) {
        // As in the SSE spec, an event not terminated by a blank line is discarded at EOF.
        failure = 'provider closed the stream before finishing';
        break;
      }
      idle();
      for (const ev of parser.feed(decoder.decode(value, { stream: true }))) {
        handleEvent(ev);
        if (done || failure) break;
      }
    }
  } catch (e) {
    failure = ac.signal.aborted ? 'provider timed out' : `provider stream failed: ${e.message}`;
  } finally {
    clearTimeout(timer);
    ac.abort(); // release the provider connection (after stop, or on failure)
  }

  if (clientGone) return;
  if (failure) {
    writeEvent(res, { error: { code: 'upstream_error', message: failure } });
    res.end();
    return;
  }
  await appendHistory(redis, sessionId, message, reply);
  writeEvent(res, { done: true, reply, usage });
  res.end();
}

// ---------------------------------------------------------------------------------------

function buildApp(redis, cfg) {
  const app = new App('ai-service', { jwtSecret: cfg.jwtSecret });

  app.route('POST', '/api/ai/chat', async (ctx) => {
    const { sessionId, message } = await checkedRequest(ctx, redis);
    const messages = await buildMessages(redis, sessionId, message);
    const { reply, usage } = await callProvider(cfg, messages);
    await appendHistory(redis, sessionId, message, reply);
    return [200, { sessionId, reply, model: cfg.dashscope.model, usage }];
  });

  app.route('POST', '/api/ai/chat/stream', async (ctx) => {
    const { sessionId, message } = await checkedRequest(ctx, redis);
    const messages = await buildMessages(redis, sessionId, message);
    await streamChat(ctx, cfg, redis, sessionId, message, messages);
  });

  return app;
}

async function main() {
  const cfg = loadConfig();
  const redis = await createRedis(cfg);
  const app = buildApp(redis, cfg);
  await app.listen(cfg.ports.ai);
  process.stdout.write(`ai-service listening on ${cfg.ports.ai}, provider ${cfg.dashscope.baseUrl}, model ${cfg.dashscope.model}\n`);
  return async () => {
    app.server.close();
    await redis.quit().catch(() => {});
  };
}

if (require.main === module) runService('ai-service', main);

module.exports = { buildApp, SseParser, validHistoryItem };
