'use strict';
// Shared plumbing of the legacy services: config, errors, a tiny router on plain `http`,
// JWT authentication, time/number helpers and the Redis / MySQL clients.
// The wire rules implemented here are those of legacy-api.md §1 and §6 ("Requests and auth").

const fs = require('fs');
const http = require('http');
const path = require('path');
const jwt = require('jsonwebtoken');

const MAX_BODY_BYTES = 1048576; // 1 MiB; exactly this many bytes is accepted (§6)
const ROLES = new Set(['customer', 'agent', 'admin']);
const ACCESS_LOG = process.env.ACCESS_LOG === '1'; // one line per request on stdout

function envInt(name, dflt) {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
  return n;
}

function envStr(name, dflt) {
  const v = process.env[name];
  return v === undefined || v === '' ? dflt : v;
}

function loadConfig() {
  return {
    db: {
      host: envStr('DB_HOST', '127.0.0.1'),
      port: envInt('DB_PORT', 3306),
      user: envStr('DB_USER', 'root'),
      password: envStr('DB_PASSWORD', ''),
      database: envStr('DB_NAME', 'chat'),
    },
    redis: {
      host: envStr('REDIS_HOST', '127.0.0.1'),
      port: envInt('REDIS_PORT', 6379),
      password: envStr('REDIS_PASSWORD', undefined),
      db: envInt('REDIS_DB', 0),
    },
    jwtSecret: envStr('JWT_SECRET', ''),
    dashscope: {
      apiKey: envStr('DASHSCOPE_API_KEY', ''),
      baseUrl: envStr('DASHSCOPE_BASE_URL', 'https://dashscope.aliyuncs.com').replace(/\/+$/, ''),
      model: envStr('DASHSCOPE_MODEL', 'qwen-turbo'),
      timeoutMs: envInt('DASHSCOPE_TIMEOUT_MS', 30000),
    },
    aiServiceUrl: envStr('AI_SERVICE_URL', 'http://127.0.0.1:8003').replace(/\/+$/, ''),
    aiServiceTimeoutMs: envInt('AI_SERVICE_TIMEOUT_MS', 40000),
    ports: {
      core: envInt('CHAT_CORE_PORT', 8001),
      core2: envInt('CHAT_CORE2_PORT', null),
      ai: envInt('AI_SERVICE_PORT', 8003),
      session: envInt('CHAT_SESSION_PORT', 8004),
      admin: envInt('CHAT_ADMIN_PORT', 8005),
      fake: envInt('FAKE_DASHSCOPE_PORT', 8010),
    },
  };
}

// ---------------------------------------------------------------------------------------
// Errors: one class, mapped to {"error": {"code", "message"}} by App.

class HttpError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

const errors = {
  badRequest: (msg) => new HttpError(400, 'bad_request', msg || 'bad request'),
  unauthorized: (msg) => new HttpError(401, 'unauthorized', msg || 'unauthorized'),
  forbidden: (msg) => new HttpError(403, 'forbidden', msg || 'forbidden'),
  notFound: (msg) => new HttpError(404, 'not_found', msg || 'not found'),
  conflict: (msg) => new HttpError(409, 'conflict', msg || 'conflict'),
  payloadTooLarge: () => new HttpError(413, 'payload_too_large', 'request body over 1 MiB'),
  upstream: (msg) => new HttpError(502, 'upstream_error', msg || 'upstream error'),
  internal: () => new HttpError(500, 'internal', 'internal error'),
};

// ---------------------------------------------------------------------------------------
// Authentication (§1, §6): HS256 only, exp required and numeric, nbf honoured, no clock
// tolerance, aud/iss unchecked, sub a non-empty string, role one of the three.

function verifyToken(token, secret) {
  if (typeof token !== 'string' || token === '') throw errors.unauthorized('missing token');
  let payload;
  try {
    payload = jwt.verify(token, secret, { algorithms: ['HS256'] });
  } catch (e) {
    throw errors.unauthorized('invalid token');
  }
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
    throw errors.unauthorized('invalid token payload');
  }
  if (typeof payload.exp !== 'number') throw errors.unauthorized('token has no exp');
  if (typeof payload.sub !== 'string' || payload.sub === '') throw errors.unauthorized('token has no sub');
  if (typeof payload.role !== 'string' || !ROLES.has(payload.role)) throw errors.unauthorized('token has an unknown role');
  return { sub: payload.sub, role: payload.role };
}

function authenticate(header, secret) {
  if (typeof header !== 'string' || header === '') throw errors.unauthorized('missing Authorization header');
  if (!header.startsWith('Bearer ')) throw errors.unauthorized('Authorization is not Bearer');
  return verifyToken(header.slice(7), secret);
}

// ---------------------------------------------------------------------------------------
// Small helpers.

const isoNow = () => new Date().toISOString();

function toIso(v) {
  return (v instanceof Date ? v : new Date(v)).toISOString();
}

const DIGITS = /^[0-9]+$/;

function parseId(s) {
  if (typeof s !== 'string' || !DIGITS.test(s)) return null;
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n < 1) return null;
  return n;
}

function parseQueryInt(searchParams, name, opts = {}) {
  const { min = 1, max = Number.MAX_SAFE_INTEGER, dflt } = opts;
  const raw = searchParams.get(name);
  if (raw === null) return dflt;
  if (!DIGITS.test(raw)) throw errors.badRequest(`${name} must be a decimal integer`);
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw errors.badRequest(`${name} must be between ${min} and ${max}`);
  }
  return n;
}

const jsLength = (s) => s.length;

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

// ---------------------------------------------------------------------------------------
// App: a minimal router on plain `http`.

function sendJson(res, status, obj) {
  const body = Buffer.from(JSON.stringify(obj), 'utf8');
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Content-Length', body.length);
  res.end(body);
}

function sendError(res, err) {
  sendJson(res, err.status, { error: { code: err.code, message: err.message } });
}

// Reads the whole request body, at most MAX_BODY_BYTES. Over the limit: 413, and the rest
// of the body is drained so that the keep-alive connection stays usable.
function readBody(req) {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > MAX_BODY_BYTES) {
      req.resume();
      reject(errors.payloadTooLarge());
      return;
    }
    const chunks = [];
    let size = 0;
    let failed = false;
    req.on('data', (chunk) => {
      if (failed) return;
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        failed = true;
        chunks.length = 0;
        reject(errors.payloadTooLarge());
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (!failed) resolve(Buffer.concat(chunks));
    });
    req.on('error', (e) => {
      if (!failed) {
        failed = true;
        reject(e);
      }
    });
  });
}

function parseJsonBody(buf) {
  let text = buf.toString('utf8');
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1); // a UTF-8 BOM, as body-parser strips it
  if (text.trim() === '') return {};
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw errors.badRequest('body is not valid JSON');
  }
  if (!isPlainObject(value)) throw errors.badRequest('body must be a JSON object');
  return value;
}

function compile(pattern) {
  const names = [];
  const segs = pattern.split('/').map((seg) => {
    if (seg.startsWith(':')) {
      names.push(seg.slice(1));
      return '([^/]+)';
    }
    return seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  });
  return { re: new RegExp(`^${segs.join('/')}$`), names };
}

class Context {
  constructor(app, req, res, params, query) {
    this.app = app;
    this.req = req;
    this.res = res;
    this.params = params;
    this.query = query;
    this.user = null;
    this.streaming = false;
    this._body = undefined;
  }

  auth() {
    if (!this.user) this.user = authenticate(this.req.headers.authorization, this.app.jwtSecret);
    return this.user;
  }

  async body() {
    if (this._body === undefined) this._body = parseJsonBody(await readBody(this.req));
    return this._body;
  }

  send(status, obj) {
    sendJson(this.res, status, obj);
  }

  sendEmpty(status = 204) {
    this.res.statusCode = status;
    this.res.end();
  }
}

class App {
  /**
   * const app = new App('chat-session', { jwtSecret });
   * app.route('GET', '/api/sessions/:sessionId', async (ctx) => { ctx.auth(); return [200, {...}]; });
   * await app.listen(8004);
   */
  constructor(name, opts = {}) {
    this.name = name;
    this.jwtSecret = opts.jwtSecret !== undefined ? opts.jwtSecret : envStr('JWT_SECRET', '');
    this.routes = [];
    this.server = null;
    this.route('GET', '/health', async () => [200, { status: 'ok', service: this.name }]);
  }

  route(method, pattern, handler) {
    const { re, names } = compile(pattern);
    this.routes.push({ method: method.toUpperCase(), pattern, re, names, handler });
    return this;
  }

  match(method, pathname) {
    let pathFound = false;
    for (const r of this.routes) {
      const m = r.re.exec(pathname);
      if (!m) continue;
      pathFound = true;
      // HEAD is served by GET routes (Node drops the body), as Express does.
      if (r.method !== method && !(method === 'HEAD' && r.method === 'GET')) continue;
      const params = {};
      try {
        r.names.forEach((n, i) => { params[n] = decodeURIComponent(m[i + 1]); });
      } catch (e) {
        return { pathFound, route: null };
      }
      return { pathFound, route: r, params };
    }
    return { pathFound, route: null };
  }

  async handle(req, res) {
    const started = Date.now();
    const url = req.url || '/';
    const q = url.indexOf('?');
    let pathname = q === -1 ? url : url.slice(0, q);
    const query = new URLSearchParams(q === -1 ? '' : url.slice(q + 1));
    if (pathname.length > 1 && pathname.endsWith('/')) pathname = pathname.slice(0, -1);
    const { route, params } = this.match(req.method, pathname);
    if (ACCESS_LOG) {
      res.on('finish', () => {
        process.stdout.write(`${new Date().toISOString()} ${this.name} ${req.method} ${pathname} ${res.statusCode} ${Date.now() - started}ms\n`);
      });
    }
    if (!route) {
      sendError(res, errors.notFound(`no route for ${req.method} ${pathname}`));
      return;
    }
    const ctx = new Context(this, req, res, params, query);
    try {
      const out = await route.handler(ctx);
      if (ctx.streaming || res.headersSent || res.writableEnded) return;
      if (Array.isArray(out)) {
        const [status, obj] = out;
        if (obj === undefined) ctx.sendEmpty(status);
        else ctx.send(status, obj);
        return;
      }
      throw new Error(`handler for ${req.method} ${route.pattern} produced no response`);
    } catch (err) {
      if (!(err instanceof HttpError)) {
        process.stderr.write(`${new Date().toISOString()} ${this.name} ${req.method} ${pathname} internal error: ${err && err.stack ? err.stack : err}\n`);
      }
      if (res.headersSent || res.writableEnded) {
        // A started response cannot carry an error any more: never end it as if complete.
        if (!res.writableEnded) res.destroy();
        return;
      }
      sendError(res, err instanceof HttpError ? err : errors.internal());
    }
  }

  listen(port, host = process.env.BIND_HOST || undefined) {
    this.server = http.createServer((req, res) => { this.handle(req, res); });
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve(this.server);
      });
    });
  }
}

// ---------------------------------------------------------------------------------------
// Storage clients.

async function createRedis(cfg) {
  const { createClient } = require('redis');
  const r = cfg.redis || cfg;
  let connected = false;
  const client = createClient({
    socket: {
      host: r.host,
      port: r.port,
      // Fail fast when Redis is not there at start; once connected, reconnect forever.
      reconnectStrategy: (retries, err) => (connected ? Math.min(50 * (retries + 1), 2000) : err),
    },
    password: r.password || undefined,
    database: r.db || 0,
  });
  client.on('error', (e) => process.stderr.write(`redis error: ${e && e.message}\n`));
  await client.connect();
  connected = true;
  return client;
}

async function createMysqlPool(cfg) {
  const mysql = require('mysql2/promise');
  const d = cfg.db || cfg;
  const pool = mysql.createPool({
    host: d.host,
    port: d.port,
    user: d.user,
    password: d.password,
    database: d.database,
    timezone: 'Z',
    dateStrings: false,
    supportBigNumbers: true,
    charset: 'UTF8MB4_UNICODE_CI',
    connectionLimit: 10,
    waitForConnections: true,
  });
  // Fail fast when the server or database is not reachable.
  const conn = await pool.getConnection();
  conn.release();
  return pool;
}

function schemaStatements() {
  const sql = fs.readFileSync(path.join(__dirname, '..', 'schema.sql'), 'utf8');
  return sql
    .split('\n')
    .filter((line) => !line.trim().startsWith('--'))
    .join('\n')
    .split(';')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => s.replace(/^CREATE TABLE (?!IF NOT EXISTS)/i, 'CREATE TABLE IF NOT EXISTS '));
}

async function ensureSchema(pool) {
  for (const stmt of schemaStatements()) {
    await pool.query(stmt);
  }
}

/**
 * Run one service: ``start()`` listens and resolves to an async ``close()``. SIGTERM or
 * SIGINT calls ``close()`` once and exits (forced after 2 s); a failed start prints the
 * stack and exits 1. Every service's entry point is ``runService(name, main)``.
 */
function runService(name, start) {
  start().then(
    (close) => {
      let stopping = false;
      const stop = () => {
        if (stopping) return;
        stopping = true;
        setTimeout(() => process.exit(0), 2000).unref();
        Promise.resolve()
          .then(close)
          .catch((err) => process.stderr.write(`${name} stop failed: ${err && err.stack ? err.stack : err}\n`))
          .finally(() => process.exit(0));
      };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
    },
    (err) => {
      process.stderr.write(`${name} failed to start: ${err && err.stack ? err.stack : err}\n`);
      process.exit(1);
    },
  );
}

module.exports = {
  MAX_BODY_BYTES,
  ROLES,
  loadConfig,
  HttpError,
  errors,
  App,
  authenticate,
  verifyToken,
  isoNow,
  toIso,
  parseId,
  parseQueryInt,
  jsLength,
  isPlainObject,
  createRedis,
  createMysqlPool,
  ensureSchema,
  schemaStatements,
  sendJson,
  sendError,
  runService,
};
