'use strict';
// chat-core: messages over HTTP and WebSocket `/ws`, delivered to every socket joined to a
// session through Redis pub/sub (channel `chat:session:{sessionId}`, payload
// {"frame": <frame>, "exclude": <socket id>|null}), so several instances are peers.
// Contract: /work/shared/contract/legacy-api.md §4 and §6 "chat-core".

const crypto = require('node:crypto');
const { WebSocketServer, WebSocket } = require('ws');
const {
  loadConfig, HttpError, errors, App, verifyToken, isoNow, parseQueryInt, jsLength,
  createRedis, createMysqlPool, ensureSchema,
  runService,
} = require('./lib/common');
const { readSession, writeSession, canAccess } = require('./lib/sessions');
const { storeMessage, resolveBefore, listMessages } = require('./lib/messages');

const CHANNEL_PREFIX = 'chat:session:';
const MAX_FRAME_BYTES = 64 * 1024; // "Frames over 64 KiB close the socket with 1009" (ws does it)
const MAX_TEXT = 4000;
const ECHO_WAIT_MS = 2000;

const senderKind = (user) => (user.role === 'customer' ? 'customer' : 'agent');

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** sessionId must be a non-empty string; text a string of 1..4000 UTF-16 units after trim. */
function requireSessionId(obj) {
  if (typeof obj.sessionId !== 'string' || obj.sessionId === '') {
    throw errors.badRequest('sessionId must be a non-empty string');
  }
  return obj.sessionId;
}

function requireText(obj) {
  if (typeof obj.text !== 'string') throw errors.badRequest('text must be a string');
  const n = jsLength(obj.text.trim());
  if (n < 1 || n > MAX_TEXT) throw errors.badRequest(`text must be 1..${MAX_TEXT} characters`);
  return obj.text;
}

class ChatCore {
  constructor(cfg, redis, sub, pool) {
    this.cfg = cfg;
    this.redis = redis; // commands + PUBLISH
    this.sub = sub; // SUBSCRIBE only
    this.pool = pool;
    this.channels = new Map(); // sessionId -> { sockets: Set<SocketState>, ready: Promise }
    this.channelOps = new Map(); // sessionId -> last queued SUBSCRIBE/UNSUBSCRIBE (kept in order)
    this.echoWaiters = new Map(); // published payload -> resolvers waiting for it to come back
    this.onChannelMessage = this.onChannelMessage.bind(this);
  }

  // --- sessions and routing -------------------------------------------------------------

  async loadSession(user, sessionId) {
    const session = await readSession(this.redis, sessionId);
    if (!session) throw errors.notFound('session not found');
    if (!canAccess(user, session)) throw errors.forbidden('not your session');
    return session;
  }

  routesToAi(user, session) {
    return session.agent === 'ai' && user.role === 'customer';
  }

  async storeFrom(user, session, text) {
    return storeMessage(this.pool, {
      sessionId: session.sessionId, userId: session.userId,
      from: senderKind(user), senderId: user.sub, text,
    });
  }

  /** Ask ai-service; any transport error, timeout, non-200 or garbage is upstream_error. */
  async askAi(authorization, sessionId, text) {
    const url = `${String(this.cfg.aiServiceUrl).replace(/\/+$/, '')}/api/ai/chat`;
    let data;
    try {
      const res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization },
        body: JSON.stringify({ sessionId, message: text }),
        signal: AbortSignal.timeout(this.cfg.aiServiceTimeoutMs || 40000),
      });
      if (res.status !== 200) {
        await res.arrayBuffer().catch(() => {});
        throw new Error(`ai-service answered ${res.status}`);
      }
      data = await res.json();
    } catch (err) {
      throw errors.upstream(`ai-service failed: ${err.message}`);
    }
    if (!isPlainObject(data) || typeof data.reply !== 'string') {
      throw errors.upstream('ai-service answered without a reply');
    }
    return data.reply;
  }

  /** The AI half of a customer message: ask, store, deliver. Returns the reply message. */
  async aiReply(authorization, session, text) {
    const reply = await this.askAi(authorization, session.sessionId, text);
    const message = await storeMessage(this.pool, {
      sessionId: session.sessionId, userId: session.userId, from: 'ai', senderId: null, text: reply,
    });
    await this.publish(session.sessionId, { type: 'message', message }, null);
    return message;
  }

  // --- pub/sub ----------------------------------------------------------------------------

  /**
   * Publish a frame to every socket joined to the session, on every instance. When this
   * instance has sockets joined to it, wait (up to ECHO_WAIT_MS) until our own subscriber
   * got it back, so a sender sees its `ack`, then the `message`, then answers to its next
   * frames (a `pong`) in that order, and an HTTP answer comes after local delivery.
   */
  async publish(sessionId, frame, exclude) {
    const payload = JSON.stringify({ frame, exclude });
    let echo = null;
    const ch = this.channels.get(sessionId);
    if (ch && ch.sockets.size > 0) { // subscribed, with local sockets
      echo = new Promise((resolve) => {
        const list = this.echoWaiters.get(payload) || [];
        list.push(resolve);
        this.echoWaiters.set(payload, list);
        setTimeout(() => this.resolveEcho(payload, resolve), ECHO_WAIT_MS).unref();
      });
    }
    await this.redis.publish(CHANNEL_PREFIX + sessionId, payload);
    if (echo) await echo;
  }

  /** Resolve one waiter (or all when `only` is not given) for a payload seen on a channel. */
  resolveEcho(payload, only) {
    const list = this.echoWaiters.get(payload);
    if (!list) return;
    const keep = only ? list.filter((r) => r !== only) : [];
    if (keep.length) this.echoWaiters.set(payload, keep); else this.echoWaiters.delete(payload);
    if (only) only(); else list.forEach((r) => r());
  }

  queueChannelOp(sessionId, fn) {
    const prev = this.channelOps.get(sessionId) || Promise.resolve();
    const p = prev.catch(() => {}).then(fn);
    this.channelOps.set(sessionId, p);
    p.catch(() => {}).finally(() => {
      if (this.channelOps.get(sessionId) === p) this.channelOps.delete(sessionId);
    });
    return p;
  }

  /** Resolves once this instance's SUBSCRIBE to the session's channel is in place. */
  async join(sock, sessionId) {
    let ch = this.channels.get(sessionId);
    if (!ch) {
      ch = { sockets: new Set(), ready: null };
      this.channels.set(sessionId, ch);
      ch.ready = this.queueChannelOp(sessionId,
        () => this.sub.subscribe(CHANNEL_PREFIX + sessionId, this.onChannelMessage));
      ch.ready.catch(() => {
        if (this.channels.get(sessionId) === ch) this.channels.delete(sessionId);
      });
    }
    await ch.ready;
    if (sock.closed) {
      if (this.channels.get(sessionId) === ch && ch.sockets.size === 0) this.dropChannel(sessionId);
      return;
    }
    if (this.channels.get(sessionId) !== ch) return this.join(sock, sessionId);
    ch.sockets.add(sock);
    sock.joined.add(sessionId);
  }

  leaveAll(sock) {
    for (const sessionId of sock.joined) {
      const ch = this.channels.get(sessionId);
      if (!ch) continue;
      ch.sockets.delete(sock);
      if (ch.sockets.size === 0) this.dropChannel(sessionId);
    }
    sock.joined.clear();
  }

  dropChannel(sessionId) {
    this.channels.delete(sessionId);
    this.queueChannelOp(sessionId, () => this.sub.unsubscribe(CHANNEL_PREFIX + sessionId))
      .catch(() => {});
  }

  onChannelMessage(payload, channel) {
    try {
      if (!channel.startsWith(CHANNEL_PREFIX)) return;
      const ch = this.channels.get(channel.slice(CHANNEL_PREFIX.length));
      if (!ch) return;
      let msg;
      try { msg = JSON.parse(payload); } catch (_) { return; }
      // Only the contract shape is delivered; anything else on the channel is ignored.
      if (!isPlainObject(msg) || !isPlainObject(msg.frame)) return;
      if (!(msg.exclude === null || typeof msg.exclude === 'string')) return;
      const text = JSON.stringify(msg.frame);
      for (const sock of ch.sockets) {
        if (sock.id !== msg.exclude) sock.sendRaw(text);
      }
    } finally {
      this.resolveEcho(payload);
    }
  }

  // --- HTTP -------------------------------------------------------------------------------

  routes(app) {
    app.route('POST', '/api/messages', async (ctx) => {
      const user = ctx.auth();
      const body = await ctx.body();
      const sessionId = requireSessionId(body);
      const text = requireText(body);
      const session = await this.loadSession(user, sessionId);
      const message = await this.storeFrom(user, session, text);
      await this.publish(sessionId, { type: 'message', message }, null);
      let reply = null;
      if (this.routesToAi(user, session)) {
        reply = await this.aiReply(ctx.req.headers.authorization, session, text);
      }
      return [201, { message, reply }];
    });

    app.route('GET', '/api/sessions/:sessionId/messages', async (ctx) => {
      const user = ctx.auth();
      const sessionId = ctx.params.sessionId;
      const limit = parseQueryInt(ctx.query, 'limit', { min: 1, max: 200, dflt: 50 });
      const before = ctx.query.get('before');
      const beforeId = before === null ? null : await resolveBefore(this.pool, { sessionId }, before);
      await this.loadSession(user, sessionId);
      return [200, { data: await listMessages(this.pool, { sessionId }, { limit, beforeId }) }];
    });
  }

  // --- WebSocket --------------------------------------------------------------------------

  attach(server) {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: MAX_FRAME_BYTES });
    server.on('upgrade', (req, socket, head) => {
      socket.on('error', () => {});
      let url;
      try { url = new URL(req.url, 'http://localhost'); } catch (_) { url = null; }
      if (!url || url.pathname !== '/ws') {
        const body = JSON.stringify({ error: { code: 'not_found', message: 'not found' } });
        socket.end('HTTP/1.1 404 Not Found\r\n' +
          'Content-Type: application/json; charset=utf-8\r\n' +
          `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, req, url));
    });
  }

  onConnection(ws, req, url) {
    ws.on('error', () => {}); // e.g. 1009 on an oversized frame; ws closes the socket itself
    // The query token wins over the header; an empty ?token= counts as absent.
    let token = url.searchParams.get('token');
    if (!token) {
      const h = req.headers.authorization;
      token = typeof h === 'string' && h.startsWith('Bearer ') ? h.slice(7) : null;
    }
    let user = null;
    if (token) {
      try { user = verifyToken(token, this.cfg.jwtSecret); } catch (_) { user = null; }
    }
    if (!user) {
      ws.close(4401, 'unauthorized');
      return;
    }
    const sock = {
      id: crypto.randomUUID(),
      user,
      authorization: `Bearer ${token}`,
      joined: new Set(),
      closed: false,
      queue: Promise.resolve(),
      sendRaw: (text) => { if (ws.readyState === WebSocket.OPEN) ws.send(text); },
    };
    sock.send = (obj) => sock.sendRaw(JSON.stringify(obj));
    ws.on('message', (data, isBinary) => {
      const text = Buffer.isBuffer(data) ? data.toString('utf8')
        : Array.isArray(data) ? Buffer.concat(data).toString('utf8') : Buffer.from(data).toString('utf8');
      sock.queue = sock.queue.then(() => this.handleFrame(sock, text)
        .catch((err) => this.sendError(sock, err)));
    });
    ws.on('close', () => {
      sock.closed = true;
      this.leaveAll(sock);
    });
  }

  sendError(sock, err) {
    if (err instanceof HttpError) {
      sock.send({ type: 'error', code: err.code, message: err.message });
    } else {
      console.error('chat-core ws error:', err);
      sock.send({ type: 'error', code: 'internal', message: 'internal error' });
    }
  }

  async handleFrame(sock, text) {
    let frame;
    try { frame = JSON.parse(text); } catch (_) { throw errors.badRequest('frame is not JSON'); }
    if (!isPlainObject(frame)) throw errors.badRequest('frame is not an object');
    switch (frame.type) {
      case 'ping':
        sock.send({ type: 'pong' });
        return;
      case 'join': {
        const sessionId = requireSessionId(frame);
        await this.loadSession(sock.user, sessionId);
        await this.join(sock, sessionId);
        sock.send({ type: 'joined', sessionId });
        return;
      }
      case 'message':
        return this.wsMessage(sock, frame);
      case 'typing': {
        const sessionId = requireSessionId(frame);
        await this.loadSession(sock.user, sessionId);
        await this.publish(sessionId, {
          type: 'typing', sessionId, from: senderKind(sock.user), senderId: sock.user.sub,
        }, sock.id);
        return;
      }
      case 'handoff': {
        const sessionId = requireSessionId(frame);
        const session = await this.loadSession(sock.user, sessionId);
        await writeSession(this.redis, { ...session, agent: 'human', updatedAt: isoNow() });
        await this.publish(sessionId, { type: 'handoff', sessionId, agent: 'human' }, null);
        return;
      }
      default:
        throw errors.badRequest('unknown frame type');
    }
  }

  async wsMessage(sock, frame) {
    const sessionId = requireSessionId(frame);
    const text = requireText(frame);
    const clientMsgId = Object.prototype.hasOwnProperty.call(frame, 'clientMsgId') ? frame.clientMsgId : null;
    const session = await this.loadSession(sock.user, sessionId);
    if (!sock.joined.has(sessionId)) await this.join(sock, sessionId); // implicit join, no `joined`
    const message = await this.storeFrom(sock.user, session, text);
    sock.send({ type: 'ack', clientMsgId, message });
    await this.publish(sessionId, { type: 'message', message }, null);
    if (this.routesToAi(sock.user, session)) {
      // Not awaited: later frames of this socket (pings) are answered meanwhile.
      this.aiReply(sock.authorization, session, text).catch((err) => this.sendError(sock, err));
    }
  }

  async close() {
    if (this.wss) for (const ws of this.wss.clients) ws.close(1001, 'shutting down');
  }
}

async function main() {
  const cfg = loadConfig();
  const port = cfg.ports.core;
  const redis = await createRedis(cfg);
  const sub = redis.duplicate();
  sub.on('error', (err) => console.error('chat-core redis subscriber:', err.message));
  await sub.connect();
  const pool = await createMysqlPool(cfg); // the lib's factory is async (checks the connection)
  await ensureSchema(pool);

  const core = new ChatCore(cfg, redis, sub, pool);
  const app = new App('chat-core', { jwtSecret: cfg.jwtSecret });
  core.routes(app);
  await app.listen(port); // app.server exists only once listening
  core.attach(app.server);
  console.log(`chat-core listening on ${port}`);

  return async () => {
    await core.close();
    app.server.close();
    await Promise.allSettled([sub.quit(), redis.quit(), pool.end()]);
  };
}

if (require.main === module) runService('chat-core', main);

module.exports = { ChatCore };
