'use strict';
// chat-session (legacy-api.md §2): sessions in Redis, legacy record format.
//   node chat-session.js      (port CHAT_SESSION_PORT, default 8004)

const crypto = require('crypto');
const { App, errors, loadConfig, createRedis, isoNow, isPlainObject, runService } = require('./lib/common');
const {
  sessionKey, userIndexKey, readSession, readSessions, writeSession, canAccess,
} = require('./lib/sessions');

const AGENTS = new Set(['ai', 'human']);

// One level of Object.assign, except that `null` removes the key and `__proto__` is an
// ordinary key (JSON.parse makes it an own property; plain Object.assign would instead
// replace the prototype and lose it).
function mergeObject(target, patch) {
  const out = { ...target };
  for (const key of Object.keys(patch)) {
    if (patch[key] === null) delete out[key];
    else Object.defineProperty(out, key, { value: patch[key], enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function optionalObject(body, name) {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (!isPlainObject(v)) throw errors.badRequest(`${name} must be an object`);
  return v;
}

function buildApp(redis, cfg) {
  const app = new App('chat-session', { jwtSecret: cfg.jwtSecret });

  async function loadOwned(ctx) {
    const session = await readSession(redis, ctx.params.sessionId);
    if (!session) throw errors.notFound('session not found');
    if (!canAccess(ctx.user, session)) throw errors.forbidden('not your session');
    return session;
  }

  app.route('POST', '/api/sessions', async (ctx) => {
    const user = ctx.auth();
    const body = await ctx.body();
    let userId = body.userId;
    if (userId === undefined || userId === null) userId = user.sub;
    else if (typeof userId !== 'string' || userId === '') throw errors.badRequest('userId must be a non-empty string');
    const metadata = optionalObject(body, 'metadata') || {};
    if (user.role === 'customer' && userId !== user.sub) throw errors.forbidden('customers create sessions for themselves only');
    const now = isoNow();
    const session = {
      sessionId: crypto.randomUUID(),
      userId,
      agent: 'ai',
      context: {},
      metadata,
      createdAt: now,
      updatedAt: now,
    };
    return [201, await writeSession(redis, session)];
  });

  app.route('GET', '/api/sessions', async (ctx) => {
    const user = ctx.auth();
    const userId = ctx.query.get('userId');
    if (userId === null || userId === '') throw errors.badRequest('userId is required');
    if (user.role === 'customer' && userId !== user.sub) throw errors.forbidden('not your sessions');
    const ids = await redis.zRange(userIndexKey(userId), 0, -1);
    const sessions = (await readSessions(redis, ids))
      // expired (or unreadable) entries are skipped, not removed; a record of another
      // user that somehow sits in this index is not listed either
      .filter((s) => s !== null && s.userId === userId);
    sessions.sort((a, b) => {
      const d = Date.parse(b.createdAt) - Date.parse(a.createdAt);
      if (d !== 0) return d;
      return a.sessionId < b.sessionId ? 1 : a.sessionId > b.sessionId ? -1 : 0;
    });
    return [200, { data: sessions }];
  });

  app.route('GET', '/api/sessions/:sessionId', async (ctx) => {
    ctx.auth();
    return [200, await loadOwned(ctx)];
  });

  app.route('PATCH', '/api/sessions/:sessionId', async (ctx) => {
    ctx.auth();
    const body = await ctx.body();
    const agent = body.agent;
    if (agent !== undefined && agent !== null && !AGENTS.has(agent)) throw errors.badRequest('agent must be "ai" or "human"');
    const context = optionalObject(body, 'context');
    const metadata = optionalObject(body, 'metadata');
    const session = await loadOwned(ctx);
    if (agent !== undefined && agent !== null) session.agent = agent;
    if (context) session.context = mergeObject(session.context, context);
    if (metadata) session.metadata = mergeObject(session.metadata, metadata);
    session.updatedAt = isoNow();
    return [200, await writeSession(redis, session)];
  });

  app.route('DELETE', '/api/sessions/:sessionId', async (ctx) => {
    ctx.auth();
    const session = await loadOwned(ctx);
    await redis
      .multi()
      .del(sessionKey(session.sessionId))
      .zRem(userIndexKey(session.userId), session.sessionId)
      .exec();
    return [204];
  });

  return app;
}

async function main() {
  const cfg = loadConfig();
  const redis = await createRedis(cfg);
  const app = buildApp(redis, cfg);
  await app.listen(cfg.ports.session);
  process.stdout.write(`chat-session listening on ${cfg.ports.session}\n`);
  return async () => {
    app.server.close();
    await redis.quit().catch(() => {});
  };
}

if (require.main === module) runService('chat-session', main);

module.exports = { buildApp, mergeObject };
