'use strict';
// Smoke test of chat-session, ai-service and the fake provider, in process, against the
// real Redis (db LEGACY_TEST_REDIS_DB, default 1; unique ids, nothing is flushed).
//   cd deploy/legacy && node --test test/

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const http = require('node:http');
const jwt = require('jsonwebtoken');

const SECRET = 'smoke-secret';
process.env.FAKE_DASHSCOPE_API_KEY = 'sk-smoke';

const { createRedis, loadConfig } = require('../lib/common');
const { parseStoredTime } = require('../lib/sessions');
const session = require('../chat-session');
const ai = require('../ai-service');
const fake = require('../fake-dashscope');

let redis; let fakeServer; let sessionApp; let aiApp; let S; let A; let F;
const uid = () => `smoke-${crypto.randomUUID()}`;
const token = (sub, role = 'customer', extra = {}) => jwt.sign({ sub, role, ...extra }, SECRET, { expiresIn: 600 });

async function call(base, method, path, { tok, body, raw, headers = {} } = {}) {
  const h = { ...headers };
  if (tok) h.Authorization = `Bearer ${tok}`;
  const resp = await fetch(base + path, { method, headers: h, body: raw !== undefined ? raw : body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  const isJson = (resp.headers.get('content-type') || '').includes('json');
  return { status: resp.status, headers: resp.headers, text, json: text && isJson ? JSON.parse(text) : null };
}

before(async () => {
  fakeServer = http.createServer(fake.handle);
  await new Promise((r) => fakeServer.listen(0, '127.0.0.1', r));
  F = `http://127.0.0.1:${fakeServer.address().port}`;
  const cfg = loadConfig();
  cfg.redis.db = Number(process.env.LEGACY_TEST_REDIS_DB || 1);
  cfg.jwtSecret = SECRET;
  cfg.dashscope = { apiKey: 'sk-smoke', baseUrl: F, model: 'qwen-turbo', timeoutMs: 800 };
  redis = await createRedis(cfg);
  sessionApp = session.buildApp(redis, cfg);
  aiApp = ai.buildApp(redis, cfg);
  S = `http://127.0.0.1:${(await sessionApp.listen(0, '127.0.0.1')).address().port}`;
  A = `http://127.0.0.1:${(await aiApp.listen(0, '127.0.0.1')).address().port}`;
});

after(async () => {
  for (const srv of [sessionApp.server, aiApp.server, fakeServer]) { srv.closeAllConnections(); srv.close(); }
  await redis.quit();
});

test('health and routing', async () => {
  const r = await call(S, 'GET', '/health');
  assert.equal(r.text, '{"status":"ok","service":"chat-session"}');
  assert.equal(r.headers.get('content-type'), 'application/json; charset=utf-8');
  assert.equal((await call(S, 'GET', '/nope')).status, 404);
  assert.equal((await call(S, 'PUT', '/api/sessions')).json.error.code, 'not_found');
});

test('authentication rejects bad tokens with 401', async () => {
  const u = uid();
  const bad = [
    undefined,
    jwt.sign({ sub: u, role: 'customer' }, SECRET), // no exp
    jwt.sign({ sub: 42, role: 'customer' }, SECRET, { expiresIn: 60 }),
    jwt.sign({ sub: u, role: 'root' }, SECRET, { expiresIn: 60 }),
    jwt.sign({ sub: u, role: 'customer' }, 'other', { expiresIn: 60 }),
    jwt.sign({ sub: u, role: 'customer', exp: Math.floor(Date.now() / 1000) - 1 }, SECRET),
    jwt.sign({ sub: u, role: 'customer' }, SECRET, { expiresIn: 60, algorithm: 'HS512' }),
  ];
  for (const tok of bad) assert.equal((await call(S, 'GET', `/api/sessions?userId=${u}`, { tok })).status, 401);
  const ok = token(u);
  assert.equal((await call(S, 'GET', `/api/sessions?userId=${u}`, { headers: { Authorization: `bearer ${ok}` } })).status, 401);
  assert.equal((await call(S, 'GET', `/api/sessions?userId=${u}`, { tok: token(u, 'customer', { aud: 'x', iss: 'y' }) })).status, 200);
});

test('session lifecycle, merge, ownership and TTLs', async () => {
  const u = uid();
  const tok = token(u);
  const c = await call(S, 'POST', '/api/sessions', { tok, raw: '  ' });
  assert.equal(c.status, 201);
  const s = c.json;
  assert.deepEqual(Object.keys(s), ['sessionId', 'userId', 'agent', 'context', 'metadata', 'createdAt', 'updatedAt']);
  assert.equal(s.userId, u);
  assert.equal(s.createdAt, s.updatedAt);
  assert.equal((await call(S, 'POST', '/api/sessions', { tok, body: { userId: 'someone' } })).status, 403);
  assert.equal((await call(S, 'GET', `/api/sessions/${s.sessionId}`, { tok: token(uid()) })).status, 403);
  const p = await call(S, 'PATCH', `/api/sessions/${s.sessionId}`, { tok, body: { agent: 'human', context: { a: 1, b: 2 } } });
  assert.equal(p.json.agent, 'human');
  const p2 = await call(S, 'PATCH', `/api/sessions/${s.sessionId}`, { tok, body: { context: { a: null, c: { x: 1 } } } });
  assert.deepEqual(p2.json.context, { b: 2, c: { x: 1 } });
  assert.ok(await redis.ttl(`session:${s.sessionId}`) > 86000);
  assert.ok(await redis.ttl(`user_sessions:${u}`) > 86000);
  assert.equal((await call(S, 'PATCH', `/api/sessions/${s.sessionId}`, { tok, body: { agent: 'bot' } })).status, 400);
  assert.equal((await call(S, 'DELETE', `/api/sessions/${s.sessionId}`, { tok })).status, 204);
  assert.equal((await call(S, 'DELETE', `/api/sessions/${s.sessionId}`, { tok })).status, 404);
  assert.equal(await redis.zScore(`user_sessions:${u}`, s.sessionId), null);
});

test('python-shaped records are read; list order and expired entries', async () => {
  const u = uid();
  await redis.set('session:smoke-py-a', JSON.stringify({ session_id: 'x', user_id: u, agent_type: 'human', created_at: '2024-01-01T10:00:00.123456+00:00' }), { EX: 600 });
  await redis.set('session:smoke-py-b', JSON.stringify({ user_id: u, agent_type: 'ai', created_at: 1704103200, updated_at: 1704103260.5 }), { EX: 600 });
  await redis.zAdd(`user_sessions:${u}`, [
    { score: 1704103200123, value: 'smoke-py-a' }, { score: 1704103200000, value: 'smoke-py-b' },
    { score: 1704103200000, value: 'smoke-py-gone' },
  ]);
  await redis.expire(`user_sessions:${u}`, 600);
  const r = await call(S, 'GET', `/api/sessions?userId=${u}`, { tok: token(u) });
  assert.deepEqual(r.json.data.map((s) => s.sessionId), ['smoke-py-a', 'smoke-py-b']);
  assert.deepEqual(r.json.data[0], {
    sessionId: 'smoke-py-a', userId: u, agent: 'human', context: {}, metadata: {},
    createdAt: '2024-01-01T10:00:00.123Z', updatedAt: '2024-01-01T10:00:00.123Z',
  });
  assert.equal(r.json.data[1].updatedAt, '2024-01-01T10:01:00.500Z');
  assert.equal(parseStoredTime(1704103200.123), 1704103200123);
});

test('body limits', async () => {
  const tok = token(uid());
  const pad = (n) => `{"metadata":{}}${' '.repeat(n - 15)}`;
  assert.equal((await call(S, 'POST', '/api/sessions', { tok, raw: pad(1048576) })).status, 201);
  assert.equal((await call(S, 'POST', '/api/sessions', { tok, raw: pad(1048577) })).status, 413);
  assert.equal((await call(S, 'POST', '/api/sessions', { raw: pad(1048577) })).status, 401);
  assert.equal((await call(S, 'POST', '/api/sessions', { tok, raw: '[]' })).status, 400);
});

test('ai chat, history and provider failures', async () => {
  const u = uid();
  const tok = token(u);
  const { sessionId } = (await call(S, 'POST', '/api/sessions', { tok })).json;
  const r = await call(A, 'POST', '/api/ai/chat', { tok, body: { sessionId, message: 'hello' } });
  assert.equal(r.status, 200);
  assert.deepEqual(r.json, { sessionId, reply: 'You said: hello', model: 'qwen-turbo', usage: { inputTokens: 50, outputTokens: 3 } });
  assert.deepEqual(await redis.lRange(`history:${sessionId}`, 0, -1), [
    '{"role":"user","content":"hello"}', '{"role":"assistant","content":"You said: hello"}',
  ]);
  assert.equal((await call(A, 'POST', '/api/ai/chat', { tok, body: { sessionId, message: '😀'.repeat(2001) } })).status, 400);
  assert.equal((await call(A, 'POST', '/api/ai/chat', { tok, body: { sessionId, message: ' \ufeff ' } })).status, 400);
  for (const d of ['[fake:status=429]', '[fake:malformed]', '[fake:nochoices]', '[fake:hang]']) {
    const f = await call(A, 'POST', '/api/ai/chat', { tok, body: { sessionId, message: d } });
    assert.equal(f.status, 502, d);
    assert.equal(f.json.error.code, 'upstream_error');
  }
  assert.equal(await redis.lLen(`history:${sessionId}`), 2);
  const rec = (await call(F, 'GET', '/_fake/requests')).json.data;
  const last = rec[rec.length - 1];
  assert.equal(last.headers.authOk, true);
  assert.deepEqual(last.body.parameters, { result_format: 'message' });
});

test('ai chat stream: deltas, done, and errors after the start', async () => {
  const u = uid();
  const tok = token(u);
  const { sessionId } = (await call(S, 'POST', '/api/sessions', { tok })).json;
  const ok = await call(A, 'POST', '/api/ai/chat/stream', { tok, body: { sessionId, message: 'hi there' } });
  assert.equal(ok.headers.get('content-type'), 'text/event-stream');
  assert.equal(ok.text, [
    'data: {"delta":"You "}', 'data: {"delta":"said: "}', 'data: {"delta":"hi "}', 'data: {"delta":"there"}',
    'data: {"done":true,"reply":"You said: hi there","usage":{"inputTokens":53,"outputTokens":4}}', '',
  ].join('\n\n'));
  for (const d of ['[fake:midstream-error]', '[fake:stream-close]', '[fake:stream-stall]', '[fake:stream-garbage]']) {
    const r = await call(A, 'POST', '/api/ai/chat/stream', { tok, body: { sessionId, message: d } });
    assert.equal(r.status, 200, d);
    assert.match(r.text, /data: \{"error":\{"code":"upstream_error","message":"[^"]*"\}\}\n\n$/, d);
  }
  const pre = await call(A, 'POST', '/api/ai/chat/stream', { tok, body: { sessionId, message: '[fake:status=500]' } });
  assert.equal(pre.status, 502);
  assert.equal(await redis.lLen(`history:${sessionId}`), 2);
});
