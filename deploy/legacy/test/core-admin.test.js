'use strict';
// chat-core + chat-admin against real Redis and MariaDB, with the fake provider and
// ai-service in front of it. Starts its own processes:
//   node --test test/core-admin.test.js
// Env: TEST_PORT_BASE (default 21150; uses base..base+5), TEST_REDIS_DB (default 2),
// TEST_DB_NAME (default legacy_core_admin_test; created and dropped).

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');
const { spawn } = require('node:child_process');
const WebSocket = require('ws');
const jwt = require('jsonwebtoken');
const mysql = require('mysql2/promise');
const { createClient } = require('redis');

const BASE = Number(process.env.TEST_PORT_BASE || 21150);
const PORTS = { fake: BASE, ai: BASE + 1, core: BASE + 2, core2: BASE + 3, admin: BASE + 5 };
const REDIS_DB = Number(process.env.TEST_REDIS_DB || 2);
const DB_NAME = process.env.TEST_DB_NAME || 'legacy_core_admin_test';
const SECRET = 'core-admin-test-secret';
const ROOT = path.join(__dirname, '..');

const token = (role, sub) => jwt.sign({ sub, role }, SECRET, { expiresIn: 3600 });
const auth = (role, sub) => ({ authorization: `Bearer ${token(role, sub)}` });
const ADMIN = auth('admin', 'admin-1');
const AGENT = auth('agent', 'agent-1');

const procs = [];
let redis;
let root;

async function waitHealth(port) {
  for (let i = 0; i < 100; i++) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/health`);
      if (r.status === 200) return;
    } catch (_) { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`service on ${port} did not come up`);
}

function start(script, env) {
  const p = spawn(process.execPath, [script], {
    cwd: ROOT,
    env: {
      ...process.env, ACCESS_LOG: '0', JWT_SECRET: SECRET, DB_NAME, REDIS_DB: String(REDIS_DB),
      DASHSCOPE_BASE_URL: `http://127.0.0.1:${PORTS.fake}`, DASHSCOPE_API_KEY: 'sk-test',
      AI_SERVICE_URL: `http://127.0.0.1:${PORTS.ai}`, AI_SERVICE_TIMEOUT_MS: '3000',
      DASHSCOPE_TIMEOUT_MS: '2000', ...env,
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  procs.push(p);
}

test.before(async () => {
  root = await mysql.createConnection({ host: '127.0.0.1', user: 'root', password: '' });
  await root.query(`DROP DATABASE IF EXISTS \`${DB_NAME}\``);
  await root.query(`CREATE DATABASE \`${DB_NAME}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`);
  redis = createClient({ database: REDIS_DB });
  await redis.connect();
  start('fake-dashscope.js', { FAKE_DASHSCOPE_PORT: String(PORTS.fake) });
  start('ai-service.js', { AI_SERVICE_PORT: String(PORTS.ai) });
  start('chat-core.js', { CHAT_CORE_PORT: String(PORTS.core) });
  start('chat-core.js', { CHAT_CORE_PORT: String(PORTS.core2) });
  start('chat-admin.js', { CHAT_ADMIN_PORT: String(PORTS.admin) });
  await Promise.all(Object.values(PORTS).map(waitHealth));
});

test.after(async () => {
  for (const p of procs) p.kill('SIGTERM');
  await redis.quit();
  await root.query(`DROP DATABASE IF EXISTS \`${DB_NAME}\``);
  await root.end();
});

async function newSession(userId, agent = 'ai') {
  const sessionId = crypto.randomUUID();
  const now = new Date().toISOString();
  await redis.set(`session:${sessionId}`, JSON.stringify({
    sessionId, userId, agent, context: {}, metadata: {}, createdAt: now, updatedAt: now,
  }), { EX: 600 });
  return sessionId;
}

async function call(port, method, p, headers, body) {
  const r = await fetch(`http://127.0.0.1:${port}${p}`, {
    method, headers, body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)),
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}
const core = (m, p, h, b) => call(PORTS.core, m, p, h, b);
const admin = (m, p, h, b) => call(PORTS.admin, m, p, h, b);

/** A WebSocket client with a frame inbox: `await ws.next(type)`. */
function connect(port, tok, { header } = {}) {
  const url = `ws://127.0.0.1:${port}/ws${header || !tok ? '' : `?token=${tok}`}`;
  const ws = new WebSocket(url, header ? { headers: { authorization: `Bearer ${tok}` } } : {});
  const inbox = [];
  const waiters = [];
  ws.on('message', (d) => {
    inbox.push(JSON.parse(d.toString()));
    for (const w of [...waiters]) w();
  });
  ws.next = (type, ms = 4000) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} frame; inbox ${JSON.stringify(inbox)}`)), ms);
    const check = () => {
      const i = inbox.findIndex((f) => f.type === type);
      if (i < 0) return;
      clearTimeout(timer);
      waiters.splice(waiters.indexOf(check), 1);
      resolve(inbox.splice(i, 1)[0]);
    };
    waiters.push(check);
    check();
  });
  ws.inbox = inbox;
  ws.sendJson = (o) => ws.send(JSON.stringify(o));
  ws.closed = new Promise((r) => ws.on('close', (code) => r(code)));
  ws.opened = new Promise((resolve, reject) => { ws.on('open', resolve); ws.on('error', reject); });
  return ws;
}

// ---------------------------------------------------------------------------------------
// chat-core HTTP

test('POST /api/messages: customer message is answered by the AI and listed oldest first', async () => {
  const sid = await newSession('cust-http');
  const c = auth('customer', 'cust-http');
  const r = await core('POST', '/api/messages', c, { sessionId: sid, text: ' hi there ' });
  assert.equal(r.status, 201);
  assert.equal(r.body.message.text, ' hi there ');
  assert.equal(r.body.message.from, 'customer');
  assert.equal(r.body.message.senderId, 'cust-http');
  assert.match(r.body.message.createdAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.equal(r.body.reply.from, 'ai');
  assert.equal(r.body.reply.senderId, null);
  const list = await core('GET', `/api/sessions/${sid}/messages`, c);
  assert.deepEqual(list.body.data, [r.body.message, r.body.reply]);
  const older = await core('GET', `/api/sessions/${sid}/messages?before=${r.body.reply.messageId}`, c);
  assert.deepEqual(older.body.data, [r.body.message]);
  const last = await core('GET', `/api/sessions/${sid}/messages?limit=1`, c);
  assert.deepEqual(last.body.data, [r.body.reply]);
});

test('POST /api/messages: agents get no AI reply; validation, 404 and 403 in order', async () => {
  const sid = await newSession('cust-2');
  const r = await core('POST', '/api/messages', AGENT, { sessionId: sid, text: 'agent here' });
  assert.equal(r.status, 201);
  assert.equal(r.body.message.from, 'agent');
  assert.equal(r.body.reply, null);
  const c = auth('customer', 'someone-else');
  assert.equal((await core('POST', '/api/messages', {}, { sessionId: sid, text: 'x' })).status, 401);
  assert.equal((await core('POST', '/api/messages', c, { sessionId: '', text: 'x' })).status, 400);
  assert.equal((await core('POST', '/api/messages', c, { sessionId: sid, text: ' \ufeff ' })).status, 400);
  assert.equal((await core('POST', '/api/messages', c, { sessionId: sid, text: '😀'.repeat(2001) })).status, 400);
  assert.equal((await core('POST', '/api/messages', AGENT, { sessionId: sid, text: '😀'.repeat(2000) })).status, 201);
  assert.equal((await core('POST', '/api/messages', c, { sessionId: 'missing', text: 'x' })).status, 404);
  assert.equal((await core('POST', '/api/messages', c, { sessionId: sid, text: 'x' })).status, 403);
  assert.equal((await core('GET', `/api/sessions/${sid}/messages`, c)).status, 403);
  assert.equal((await core('GET', `/api/sessions/${sid}/messages?limit=201`, AGENT)).status, 400);
  assert.equal((await core('GET', `/api/sessions/${sid}/messages?limit=0`, AGENT)).status, 400);
  assert.equal((await core('GET', `/api/sessions/${sid}/messages?before=nope`, AGENT)).status, 400);
  assert.equal((await core('GET', '/api/sessions/missing/messages', AGENT)).status, 404);
});

test('POST /api/messages: AI failure is 502 and the customer message stays', async () => {
  const sid = await newSession('cust-fail');
  const c = auth('customer', 'cust-fail');
  const r = await core('POST', '/api/messages', c, { sessionId: sid, text: 'boom [fake:status=500]' });
  assert.equal(r.status, 502);
  assert.equal(r.body.error.code, 'upstream_error');
  const list = await core('GET', `/api/sessions/${sid}/messages`, c);
  assert.equal(list.body.data.length, 1);
  assert.equal(list.body.data[0].text, 'boom [fake:status=500]');
});

// ---------------------------------------------------------------------------------------
// chat-core WebSocket

test('ws: two instances deliver to each other; typing skips the sender; handoff', async () => {
  const sid = await newSession('cust-ws');
  const a = connect(PORTS.core, token('customer', 'cust-ws'));
  const b = connect(PORTS.core2, token('agent', 'agent-ws'), { header: true });
  await Promise.all([a.opened, b.opened]);
  a.sendJson({ type: 'join', sessionId: sid });
  b.sendJson({ type: 'join', sessionId: sid });
  assert.deepEqual(await a.next('joined'), { type: 'joined', sessionId: sid });
  await b.next('joined');

  a.sendJson({ type: 'message', sessionId: sid, text: 'hello [fake:delay=800]', clientMsgId: 7 });
  a.sendJson({ type: 'ping' });
  const ack = await a.next('ack');
  assert.equal(ack.clientMsgId, 7);
  assert.deepEqual(await a.next('message'), { type: 'message', message: ack.message });
  assert.deepEqual(await b.next('message'), { type: 'message', message: ack.message });
  await a.next('pong');
  assert.equal(a.inbox.length, 0, 'the AI reply comes after the pong');
  assert.equal((await b.next('message')).message.from, 'ai');
  assert.equal((await a.next('message')).message.from, 'ai');

  b.sendJson({ type: 'typing', sessionId: sid });
  assert.deepEqual(await a.next('typing'), { type: 'typing', sessionId: sid, from: 'agent', senderId: 'agent-ws' });
  b.sendJson({ type: 'handoff', sessionId: sid });
  assert.deepEqual(await b.next('handoff'), { type: 'handoff', sessionId: sid, agent: 'human' });
  await a.next('handoff');
  assert.equal(b.inbox.filter((f) => f.type === 'typing').length, 0);
  assert.equal(JSON.parse(await redis.get(`session:${sid}`)).agent, 'human');

  a.sendJson({ type: 'message', sessionId: sid, text: 'human now?' });
  assert.equal((await a.next('ack')).clientMsgId, null);
  await b.next('message');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(b.inbox.length, 0, 'no AI reply after the handoff');
  a.close();
  b.close();
});

test('ws: errors are frames; implicit join; foreign payloads ignored', async () => {
  const sid = await newSession('cust-e');
  const other = await newSession('cust-other');
  const a = connect(PORTS.core2, token('customer', 'cust-e'));
  await a.opened;
  for (const [frame, code] of [['nope', 'bad_request'], ['[1]', 'bad_request'], ['{"type":"x"}', 'bad_request'],
    ['{"type":"join"}', 'bad_request'], [`{"type":"join","sessionId":"${other}"}`, 'forbidden'],
    ['{"type":"typing","sessionId":"missing"}', 'not_found'],
    [`{"type":"message","sessionId":"${sid}","text":"  "}`, 'bad_request']]) {
    a.send(frame);
    const err = await a.next('error');
    assert.equal(err.code, code, frame);
  }
  a.send(Buffer.from('{"type":"ping"}'), { binary: true });
  await a.next('pong');
  a.sendJson({ type: 'message', sessionId: sid, text: 'implicit [fake:status=503]' });
  await a.next('ack');
  await a.next('message');
  assert.equal((await a.next('error')).code, 'upstream_error');
  await redis.publish(`chat:session:${sid}`, 'garbage');
  await redis.publish(`chat:session:${sid}`, JSON.stringify({ frame: [1], exclude: null }));
  await redis.publish(`chat:session:${sid}`, JSON.stringify({ frame: { type: 'peer' }, exclude: null }));
  await a.next('peer');
  assert.equal(a.inbox.length, 0);
  a.close();
});

test('ws: bad token closes 4401; /ws/ is 404; frames over 64 KiB close 1009', async () => {
  assert.equal(await connect(PORTS.core, 'bad').closed, 4401);
  assert.equal(await connect(PORTS.core, null).closed, 4401);
  const ok = token('agent', 'x');
  const w = new WebSocket(`ws://127.0.0.1:${PORTS.core}/ws/?token=${ok}`);
  const status = await new Promise((r) => w.on('unexpected-response', (_, res) => r(res.statusCode)));
  assert.equal(status, 404);
  const big = connect(PORTS.core, ok);
  await big.opened;
  big.send('x'.repeat(65537));
  assert.equal(await big.closed, 1009);
});

// ---------------------------------------------------------------------------------------
// chat-admin

test('admin: conversation from chat-core, labels, patch and updatedAt rules', async () => {
  const sid = await newSession('cust-admin');
  await core('POST', '/api/messages', AGENT, { sessionId: sid, text: 'first' });
  const contacts = await admin('GET', '/api/admin/contacts?q=CUST-ADMIN', AGENT);
  assert.equal(contacts.body.data.length, 1);
  assert.deepEqual([contacts.body.data[0].name, contacts.body.data[0].externalId], ['cust-admin', 'cust-admin']);
  const list = await admin('GET', '/api/admin/conversations?status=open', AGENT);
  const conv = list.body.data.find((c) => c.sessionId === sid);
  assert.equal(conv.contactId, contacts.body.data[0].id);
  assert.deepEqual(conv.labels, []);

  for (const title of ['zeta', 'alpha']) {
    assert.equal((await admin('POST', '/api/admin/labels', ADMIN, { title: title.toUpperCase() })).status, 201);
  }
  const p = `/api/admin/conversations/${conv.id}`;
  let r = await admin('POST', `${p}/labels`, ADMIN, { title: 'ZETA' });
  assert.equal(r.status, 200);
  r = await admin('POST', `${p}/labels`, ADMIN, { title: 'alpha' });
  assert.deepEqual(r.body.labels, ['alpha', 'zeta']);
  const again = await admin('POST', `${p}/labels`, ADMIN, { title: 'alpha' });
  assert.equal(again.body.updatedAt, r.body.updatedAt, 'adding twice changes nothing');
  assert.equal((await admin('POST', `${p}/labels`, ADMIN, { title: 'nope' })).status, 404);
  assert.equal((await admin('POST', `${p}/labels`, AGENT, { title: 'alpha' })).status, 403);
  assert.equal((await admin('DELETE', `${p}/labels/nope`, ADMIN)).status, 404);
  r = await admin('DELETE', `${p}/labels/ZETA`, ADMIN);
  assert.deepEqual(r.body.labels, ['alpha']);
  assert.equal((await admin('GET', '/api/admin/conversations?label=ALPHA', AGENT)).body.data[0].id, conv.id);

  const team = (await admin('POST', '/api/admin/teams', ADMIN, { name: 'Support' })).body;
  const user = (await admin('POST', '/api/admin/users', ADMIN, { email: 'A@B.io', name: 'A', teamId: team.id })).body;
  assert.equal(user.email, 'a@b.io');
  assert.equal((await admin('PATCH', p, ADMIN, { assigneeId: 999999 })).status, 400);
  assert.equal((await admin('PATCH', '/api/admin/conversations/999999', ADMIN, { status: 'pending' })).status, 404);
  r = await admin('PATCH', p, ADMIN, { status: 'pending', assigneeId: user.id, teamId: team.id });
  assert.equal(r.status, 200);
  assert.deepEqual([r.body.status, r.body.assigneeId, r.body.teamId], ['pending', user.id, team.id]);
  const before = r.body.updatedAt;
  assert.equal((await admin('DELETE', `/api/admin/teams/${team.id}`, ADMIN)).status, 204);
  assert.equal((await admin('DELETE', `/api/admin/users/${user.id}`, ADMIN)).status, 204);
  const after = (await admin('GET', p, AGENT)).body;
  assert.deepEqual([after.assigneeId, after.teamId, after.updatedAt], [null, null, before]);

  const msgs = await admin('GET', `${p}/messages`, AGENT);
  assert.deepEqual(msgs.body.data.map((m) => [m.text, m.sessionId]), [['first', sid]]);
  assert.equal((await admin('DELETE', `/api/admin/contacts/${conv.contactId}`, ADMIN)).status, 409);
  const stats = await admin('GET', '/api/admin/stats', AGENT);
  assert.ok(stats.body.conversations.pending >= 1);
});

test('admin: roles, pagination, validation, null rules, q escaping', async () => {
  assert.equal((await admin('GET', '/api/admin/users', auth('customer', 'c'))).status, 403);
  assert.equal((await admin('POST', '/api/admin/teams', AGENT, { name: 'x' })).status, 403);
  assert.equal((await admin('GET', '/api/admin/users?page=0', AGENT)).status, 400);
  assert.equal((await admin('GET', '/api/admin/users?perPage=101', AGENT)).status, 400);
  assert.equal((await admin('GET', '/api/admin/users/abc', AGENT)).status, 404);
  const t = await admin('POST', '/api/admin/teams', ADMIN, { name: 'Paging', description: 'd' });
  assert.equal((await admin('POST', '/api/admin/teams', ADMIN, { name: 'PAGING' })).status, 409);
  let r = await admin('PATCH', `/api/admin/teams/${t.body.id}`, ADMIN, { name: null, description: null });
  assert.deepEqual([r.body.name, r.body.description], ['Paging', null]);
  r = await admin('GET', '/api/admin/teams?page=1&perPage=1', AGENT);
  assert.equal(r.body.data.length, 1);
  assert.deepEqual(Object.keys(r.body.meta), ['page', 'perPage', 'total']);
  assert.equal((await admin('POST', '/api/admin/labels', ADMIN, { title: 'ok', color: '#12345' })).status, 400);
  assert.equal((await admin('POST', '/api/admin/users', ADMIN, { email: 'a@b@c', name: 'x' })).status, 400);
  const c1 = await admin('POST', '/api/admin/contacts', ADMIN, { name: 'Renée 100%_sure\\', externalId: 'ext-q' });
  assert.equal(c1.status, 201);
  assert.equal((await admin('POST', '/api/admin/contacts', ADMIN, { name: 'dup', externalId: 'ext-q' })).status, 409);
  await admin('POST', '/api/admin/contacts', ADMIN, { name: 'Rene 1000 sure' });
  const q = async (s) => (await admin('GET', `/api/admin/contacts?q=${encodeURIComponent(s)}`, AGENT)).body.data.map((c) => c.id);
  assert.deepEqual(await q('%_sure\\'), [c1.body.id]);
  assert.deepEqual(await q('RENEE 100'), [c1.body.id]);
  assert.equal((await admin('DELETE', `/api/admin/contacts/${c1.body.id}`, ADMIN)).status, 204);
});
