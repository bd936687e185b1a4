'use strict';
// chat-admin: users, teams, labels, contacts, conversations and stats over the MySQL
// tables of schema.sql. Contract: /work/shared/contract/legacy-api.md §5 and §6 "chat-admin".
// Check order (§1): 404 path → 401 → 403 role → 413 → 400 (incl. referenced ids) →
// 404 addressed resource → 409. Every write runs in one transaction.

const {
  loadConfig, errors, App, parseId, parseQueryInt, jsLength,
  createMysqlPool, ensureSchema,
  runService,
} = require('./lib/common');
const {
  ER_DUP_ENTRY, ER_NO_REFERENCED_ROW_2, ER_ROW_IS_REFERENCED_2,
  sqlTime, timeToIso, withTx, resolveBefore, listMessages,
} = require('./lib/messages');

const EMAIL_RE = /^[^@]+@[^@]+$/;
const TITLE_RE = /^[a-z0-9_-]{1,64}$/;
const COLOR_RE = /^#[0-9a-fA-F]{6}$/;
const USER_ROLES = ['agent', 'admin'];
const STATUSES = ['open', 'pending', 'resolved'];
const TEXT_MAX_BYTES = 65535; // TEXT column (team description)

// ---------------------------------------------------------------------------------------
// Auth, input helpers

function canRead(ctx) {
  const user = ctx.auth();
  if (user.role === 'customer') throw errors.forbidden('customers may not use chat-admin');
  return user;
}

function canWrite(ctx) {
  const user = canRead(ctx);
  if (user.role !== 'admin') throw errors.forbidden('only admins may change data');
  return user;
}

const given = (v) => v !== undefined && v !== null; // null means "not given" for required fields

function str(body, name, { min = 1, max = 255, required = false } = {}) {
  const v = body[name];
  if (!given(v)) {
    if (required) throw errors.badRequest(`${name} is required`);
    return undefined;
  }
  if (typeof v !== 'string') throw errors.badRequest(`${name} must be a string`);
  const n = jsLength(v);
  if (n < min || n > max) throw errors.badRequest(`${name} must be ${min}..${max} characters`);
  return v;
}

/** A nullable string column: undefined = not given, null = clear. */
function nullableStr(body, name, { max }) {
  if (body[name] === undefined) return undefined;
  if (body[name] === null) return null;
  return str(body, name, { min: 0, max });
}

/** A nullable id: undefined = not given, null = clear, else a positive integer. */
function nullableId(body, name) {
  const v = body[name];
  if (v === undefined || v === null) return v;
  if (!Number.isInteger(v) || v < 1) throw errors.badRequest(`${name} must be a positive integer or null`);
  return v;
}

function oneOf(body, name, allowed) {
  const v = body[name];
  if (!given(v)) return undefined;
  if (!allowed.includes(v)) throw errors.badRequest(`${name} must be one of ${allowed.join(', ')}`);
  return v;
}

function labelTitle(body, { required }) {
  const v = body.title;
  if (!given(v)) {
    if (required) throw errors.badRequest('title is required');
    return undefined;
  }
  if (typeof v !== 'string') throw errors.badRequest('title must be a string');
  const t = v.toLowerCase();
  if (!TITLE_RE.test(t)) throw errors.badRequest('title must be 1..64 characters of [a-z0-9_-]');
  return t;
}

function pagination(query) {
  return {
    page: parseQueryInt(query, 'page', { min: 1, dflt: 1 }),
    perPage: parseQueryInt(query, 'perPage', { min: 1, max: 100, dflt: 25 }),
  };
}

function enumQuery(query, name, allowed) {
  const v = query.get(name);
  if (v === null) return undefined;
  if (!allowed.includes(v)) throw errors.badRequest(`${name} must be one of ${allowed.join(', ')}`);
  return v;
}

/** A referenced row must exist (400 otherwise, §1). */
async function requireRef(conn, table, id, name) {
  if (id === undefined || id === null) return;
  const [rows] = await conn.query(`SELECT id FROM ${table} WHERE id = ?`, [id]);
  if (!rows.length) throw errors.badRequest(`${name} ${id} does not exist`);
}

/** MySQL constraint errors of a write, as §1 wants them. */
function mapDbError(err) {
  if (err && err.errno === ER_DUP_ENTRY) return errors.conflict('a unique value is taken');
  if (err && err.errno === ER_NO_REFERENCED_ROW_2) return errors.badRequest('a referenced id does not exist');
  if (err && err.errno === ER_ROW_IS_REFERENCED_2) return errors.conflict('the row is still referenced');
  return err;
}

async function tx(pool, fn) {
  try {
    return await withTx(pool, fn);
  } catch (err) {
    throw mapDbError(err);
  }
}

/** Code-point order (not UTF-16 unit order, not the SQL collation). */
function byCodePoint(a, b) {
  const x = Array.from(a);
  const y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d) return d;
  }
  return x.length - y.length;
}

// ---------------------------------------------------------------------------------------
// The four plain resources

const KINDS = {
  users: {
    table: 'users',
    wire: (r) => ({
      id: r.id, email: r.email, name: r.name, role: r.role, teamId: r.team_id,
      createdAt: timeToIso(r.created_at), updatedAt: timeToIso(r.updated_at),
    }),
    filters(query) {
      const where = [];
      const params = [];
      const role = enumQuery(query, 'role', USER_ROLES);
      if (role !== undefined) { where.push('role = ?'); params.push(role); }
      const teamId = parseQueryInt(query, 'teamId', { min: 1 });
      if (teamId !== undefined) { where.push('team_id = ?'); params.push(teamId); }
      return { where, params };
    },
    validate(body, create) {
      const cols = {};
      if (given(body.email)) {
        if (typeof body.email !== 'string') throw errors.badRequest('email must be a string');
        const email = body.email.toLowerCase();
        if (!EMAIL_RE.test(email) || jsLength(email) > 255) throw errors.badRequest('email is not valid');
        cols.email = email;
      } else if (create) {
        throw errors.badRequest('email is required');
      }
      const name = str(body, 'name', { required: create });
      if (name !== undefined) cols.name = name;
      const role = oneOf(body, 'role', USER_ROLES);
      if (role !== undefined) cols.role = role;
      else if (create) cols.role = 'agent';
      const teamId = nullableId(body, 'teamId');
      if (teamId !== undefined) cols.team_id = teamId;
      return cols;
    },
    refs: async (conn, cols) => requireRef(conn, 'teams', cols.team_id, 'teamId'),
  },

  teams: {
    table: 'teams',
    wire: (r) => ({
      id: r.id, name: r.name, description: r.description,
      createdAt: timeToIso(r.created_at), updatedAt: timeToIso(r.updated_at),
    }),
    validate(body, create) {
      const cols = {};
      const name = str(body, 'name', { required: create });
      if (name !== undefined) cols.name = name;
      const description = nullableStr(body, 'description', { max: Infinity });
      if (description !== undefined) {
        if (description !== null && Buffer.byteLength(description, 'utf8') > TEXT_MAX_BYTES) {
          throw errors.badRequest('description is too long');
        }
        cols.description = description;
      }
      return cols;
    },
  },

  labels: {
    table: 'labels',
    wire: (r) => ({
      id: r.id, title: r.title, color: r.color,
      createdAt: timeToIso(r.created_at), updatedAt: timeToIso(r.updated_at),
    }),
    validate(body, create) {
      const cols = {};
      const title = labelTitle(body, { required: create });
      if (title !== undefined) cols.title = title;
      if (given(body.color)) {
        if (typeof body.color !== 'string' || !COLOR_RE.test(body.color)) {
          throw errors.badRequest('color must be #rrggbb');
        }
        cols.color = body.color;
      } else if (create) {
        cols.color = '#1f93ff';
      }
      return cols;
    },
  },

  contacts: {
    table: 'customer_contacts',
    wire: (r) => ({
      id: r.id, name: r.name, email: r.email, phone: r.phone, externalId: r.external_id,
      createdAt: timeToIso(r.created_at), updatedAt: timeToIso(r.updated_at),
    }),
    filters(query) {
      const q = query.get('q');
      if (q === null || q === '') return { where: [], params: [] };
      // %, _ and the escape character itself match literally; the column collation
      // (utf8mb4_unicode_ci) makes it case- and accent-insensitive.
      const pattern = `%${q.replace(/[!%_]/g, '!$&')}%`;
      return {
        where: ["(name LIKE ? ESCAPE '!' OR email LIKE ? ESCAPE '!')"],
        params: [pattern, pattern],
      };
    },
    validate(body, create) {
      const cols = {};
      const name = str(body, 'name', { required: create });
      if (name !== undefined) cols.name = name;
      for (const [field, col, max] of [['email', 'email', 255], ['phone', 'phone', 64], ['externalId', 'external_id', 64]]) {
        const v = nullableStr(body, field, { max });
        if (v !== undefined) cols[col] = v;
        else if (create) cols[col] = null;
      }
      return cols;
    },
    async beforeDelete(conn, id) {
      const [rows] = await conn.query('SELECT COUNT(*) AS n FROM conversations WHERE contact_id = ?', [id]);
      if (Number(rows[0].n) > 0) throw errors.conflict('the contact has conversations');
    },
  },
};

async function listPage(pool, { from, where, params, order, page, perPage }) {
  const whereSql = where.length ? ` WHERE ${where.join(' AND ')}` : '';
  const [[{ total }]] = await pool.query(`SELECT COUNT(*) AS total FROM ${from}${whereSql}`, params);
  const n = Number(total);
  const offset = (page - 1) * perPage;
  let rows = [];
  if (offset < n) {
    [rows] = await pool.query(`SELECT * FROM ${from}${whereSql} ORDER BY ${order} LIMIT ? OFFSET ?`,
      [...params, perPage, offset]);
  }
  return { rows, meta: { page, perPage, total: n } };
}

function crudRoutes(app, pool, kind, spec) {
  const base = `/api/admin/${kind}`;
  const load = async (conn, id, lock) => {
    if (id === null) return null;
    const [rows] = await conn.query(`SELECT * FROM ${spec.table} WHERE id = ?${lock ? ' FOR UPDATE' : ''}`, [id]);
    return rows[0] || null;
  };

  app.route('GET', base, async (ctx) => {
    canRead(ctx);
    const { page, perPage } = pagination(ctx.query);
    const { where, params } = spec.filters ? spec.filters(ctx.query) : { where: [], params: [] };
    const { rows, meta } = await listPage(pool, { from: spec.table, where, params, order: 'id ASC', page, perPage });
    return [200, { data: rows.map(spec.wire), meta }];
  });

  app.route('POST', base, async (ctx) => {
    canWrite(ctx);
    const cols = spec.validate(await ctx.body(), true);
    const row = await tx(pool, async (conn) => {
      if (spec.refs) await spec.refs(conn, cols);
      const t = sqlTime(new Date().toISOString());
      const names = [...Object.keys(cols), 'created_at', 'updated_at'];
      const [res] = await conn.query(
        `INSERT INTO ${spec.table} (${names.join(', ')}) VALUES (${names.map(() => '?').join(', ')})`,
        [...Object.values(cols), t, t]);
      return load(conn, res.insertId, false);
    });
    return [201, spec.wire(row)];
  });

  app.route('GET', `${base}/:id`, async (ctx) => {
    canRead(ctx);
    const row = await load(pool, parseId(ctx.params.id), false);
    if (!row) throw errors.notFound(`${kind} not found`);
    return [200, spec.wire(row)];
  });

  app.route('PATCH', `${base}/:id`, async (ctx) => {
    canWrite(ctx);
    const cols = spec.validate(await ctx.body(), false);
    const id = parseId(ctx.params.id);
    const row = await tx(pool, async (conn) => {
      if (spec.refs) await spec.refs(conn, cols);
      if (!(await load(conn, id, true))) throw errors.notFound(`${kind} not found`);
      cols.updated_at = sqlTime(new Date().toISOString());
      await conn.query(`UPDATE ${spec.table} SET ${Object.keys(cols).map((c) => `${c} = ?`).join(', ')} WHERE id = ?`,
        [...Object.values(cols), id]);
      return load(conn, id, false);
    });
    return [200, spec.wire(row)];
  });

  app.route('DELETE', `${base}/:id`, async (ctx) => {
    canWrite(ctx);
    const id = parseId(ctx.params.id);
    await tx(pool, async (conn) => {
      if (!(await load(conn, id, true))) throw errors.notFound(`${kind} not found`);
      if (spec.beforeDelete) await spec.beforeDelete(conn, id);
      // Foreign keys do the rest: SET NULL for team/assignee ids, CASCADE for label links.
      await conn.query(`DELETE FROM ${spec.table} WHERE id = ?`, [id]);
    });
    return [204];
  });
}

// ---------------------------------------------------------------------------------------
// Conversations

function conversationWire(r, labels) {
  return {
    id: r.id, sessionId: r.session_id, contactId: r.contact_id, status: r.status,
    assigneeId: r.assignee_id, teamId: r.team_id, labels: labels || [],
    createdAt: timeToIso(r.created_at), updatedAt: timeToIso(r.updated_at),
  };
}

async function withLabels(conn, rows) {
  if (!rows.length) return [];
  const [links] = await conn.query(
    'SELECT cl.conversation_id AS cid, l.title FROM conversation_labels cl ' +
    'JOIN labels l ON l.id = cl.label_id WHERE cl.conversation_id IN (?)', [rows.map((r) => r.id)]);
  const byConv = new Map();
  for (const { cid, title } of links) {
    if (!byConv.has(cid)) byConv.set(cid, []);
    byConv.get(cid).push(title);
  }
  return rows.map((r) => conversationWire(r, (byConv.get(r.id) || []).sort(byCodePoint)));
}

async function loadConversation(conn, id, lock = false) {
  if (id === null) return null;
  const [rows] = await conn.query(`SELECT * FROM conversations WHERE id = ?${lock ? ' FOR UPDATE' : ''}`, [id]);
  return rows[0] || null;
}

async function conversationOut(conn, id) {
  return (await withLabels(conn, [await loadConversation(conn, id)]))[0];
}

function conversationRoutes(app, pool) {
  const base = '/api/admin/conversations';

  app.route('GET', base, async (ctx) => {
    canRead(ctx);
    const { page, perPage } = pagination(ctx.query);
    const where = [];
    const params = [];
    const status = enumQuery(ctx.query, 'status', STATUSES);
    if (status !== undefined) { where.push('c.status = ?'); params.push(status); }
    const assigneeId = parseQueryInt(ctx.query, 'assigneeId', { min: 1 });
    if (assigneeId !== undefined) { where.push('c.assignee_id = ?'); params.push(assigneeId); }
    const teamId = parseQueryInt(ctx.query, 'teamId', { min: 1 });
    if (teamId !== undefined) { where.push('c.team_id = ?'); params.push(teamId); }
    const label = ctx.query.get('label');
    if (label !== null && label !== '') {
      where.push('EXISTS (SELECT 1 FROM conversation_labels cl JOIN labels l ON l.id = cl.label_id ' +
        'WHERE cl.conversation_id = c.id AND l.title = ?)');
      params.push(label.toLowerCase());
    }
    const { rows, meta } = await listPage(pool, {
      from: 'conversations c', where, params, order: 'c.updated_at DESC, c.id DESC', page, perPage,
    });
    return [200, { data: await withLabels(pool, rows), meta }];
  });

  app.route('GET', `${base}/:id`, async (ctx) => {
    canRead(ctx);
    const row = await loadConversation(pool, parseId(ctx.params.id));
    if (!row) throw errors.notFound('conversation not found');
    return [200, (await withLabels(pool, [row]))[0]];
  });

  app.route('PATCH', `${base}/:id`, async (ctx) => {
    canWrite(ctx);
    const body = await ctx.body();
    const cols = {};
    const status = oneOf(body, 'status', STATUSES);
    if (status !== undefined) cols.status = status;
    const assigneeId = nullableId(body, 'assigneeId');
    if (assigneeId !== undefined) cols.assignee_id = assigneeId;
    const teamId = nullableId(body, 'teamId');
    if (teamId !== undefined) cols.team_id = teamId;
    const id = parseId(ctx.params.id);
    const out = await tx(pool, async (conn) => {
      await requireRef(conn, 'users', cols.assignee_id, 'assigneeId');
      await requireRef(conn, 'teams', cols.team_id, 'teamId');
      if (!(await loadConversation(conn, id, true))) throw errors.notFound('conversation not found');
      cols.updated_at = sqlTime(new Date().toISOString());
      await conn.query(`UPDATE conversations SET ${Object.keys(cols).map((c) => `${c} = ?`).join(', ')} WHERE id = ?`,
        [...Object.values(cols), id]);
      return conversationOut(conn, id);
    });
    return [200, out];
  });

  app.route('POST', `${base}/:id/labels`, async (ctx) => {
    canWrite(ctx);
    const title = labelTitle(await ctx.body(), { required: true });
    const id = parseId(ctx.params.id);
    const out = await tx(pool, async (conn) => {
      if (!(await loadConversation(conn, id, true))) throw errors.notFound('conversation not found');
      const [labels] = await conn.query('SELECT id FROM labels WHERE title = ?', [title]);
      if (!labels.length) throw errors.notFound('label not found');
      const [res] = await conn.query(
        'INSERT IGNORE INTO conversation_labels (conversation_id, label_id) VALUES (?, ?)', [id, labels[0].id]);
      if (res.affectedRows > 0) {
        await conn.query('UPDATE conversations SET updated_at = ? WHERE id = ?', [sqlTime(new Date().toISOString()), id]);
      }
      return conversationOut(conn, id);
    });
    return [200, out];
  });

  app.route('DELETE', `${base}/:id/labels/:title`, async (ctx) => {
    canWrite(ctx);
    const title = ctx.params.title.toLowerCase();
    const id = parseId(ctx.params.id);
    const out = await tx(pool, async (conn) => {
      if (!(await loadConversation(conn, id, true))) throw errors.notFound('conversation not found');
      const [labels] = await conn.query('SELECT id FROM labels WHERE title = ?', [title]);
      if (!labels.length) throw errors.notFound('label not found');
      const [res] = await conn.query(
        'DELETE FROM conversation_labels WHERE conversation_id = ? AND label_id = ?', [id, labels[0].id]);
      if (res.affectedRows > 0) {
        await conn.query('UPDATE conversations SET updated_at = ? WHERE id = ?', [sqlTime(new Date().toISOString()), id]);
      }
      return conversationOut(conn, id);
    });
    return [200, out];
  });

  app.route('GET', `${base}/:id/messages`, async (ctx) => {
    canRead(ctx);
    const limit = parseQueryInt(ctx.query, 'limit', { min: 1, max: 200, dflt: 50 });
    const id = parseId(ctx.params.id);
    const before = ctx.query.get('before');
    const beforeId = before === null ? null : await resolveBefore(pool, { conversationId: id }, before);
    const conv = await loadConversation(pool, id);
    if (!conv) throw errors.notFound('conversation not found');
    const data = await listMessages(pool, { conversationId: id, sessionId: conv.session_id }, { limit, beforeId });
    return [200, { data }];
  });
}

// ---------------------------------------------------------------------------------------

function statsRoute(app, pool) {
  app.route('GET', '/api/admin/stats', async (ctx) => {
    canRead(ctx);
    const [byStatus] = await pool.query('SELECT status, COUNT(*) AS n FROM conversations GROUP BY status');
    const conversations = { open: 0, pending: 0, resolved: 0 };
    for (const { status, n } of byStatus) conversations[status] = Number(n);
    const [[counts]] = await pool.query(
      'SELECT (SELECT COUNT(*) FROM users) AS users, (SELECT COUNT(*) FROM teams) AS teams, ' +
      '(SELECT COUNT(*) FROM customer_contacts) AS contacts, (SELECT COUNT(*) FROM labels) AS labels');
    return [200, {
      conversations,
      users: Number(counts.users), teams: Number(counts.teams),
      contacts: Number(counts.contacts), labels: Number(counts.labels),
    }];
  });
}

function buildApp(pool, cfg) {
  const app = new App('chat-admin', { jwtSecret: cfg.jwtSecret });
  for (const [kind, spec] of Object.entries(KINDS)) crudRoutes(app, pool, kind, spec);
  conversationRoutes(app, pool);
  statsRoute(app, pool);
  return app;
}

async function main() {
  const cfg = loadConfig();
  const pool = await createMysqlPool(cfg);
  await ensureSchema(pool);
  const app = buildApp(pool, cfg);
  await app.listen(cfg.ports.admin);
  console.log(`chat-admin listening on ${cfg.ports.admin}`);
  return async () => {
    app.server.close();
    await pool.end();
  };
}

if (require.main === module) runService('chat-admin', main);

module.exports = { buildApp, byCodePoint };
