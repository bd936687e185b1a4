'use strict';
// Session records in Redis (legacy-api.md §2 and §6 "chat-session").
// Readers accept the legacy shape and the Python shape; writers always write the legacy shape.

const { isPlainObject } = require('./common');

const SESSION_TTL = 86400;
const sessionKey = (id) => `session:${id}`;
const userIndexKey = (userId) => `user_sessions:${userId}`;

// ISO-8601 as Python's isoformat() and JavaScript's toISOString() print it: any number of
// fraction digits, `Z` or an offset; no offset at all is read as UTC.
const ISO_RE = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?(?:(Z)|([+-])(\d{2}):?(\d{2}))?$/i;

/** Epoch milliseconds (integer, truncated) of a stored timestamp, or null if unreadable. */
function parseStoredTime(v) {
  if (typeof v === 'number') {
    if (!Number.isFinite(v) || v < 0) return null;
    // seconds below 1e11, milliseconds above; round to microseconds first so that float
    // noise (1704103200.123 * 1000 = ...122.99998) does not lose a millisecond.
    const micros = v < 1e11 ? Math.round(v * 1e6) : Math.round(v * 1e3);
    return Math.floor(micros / 1000);
  }
  if (typeof v !== 'string') return null;
  const m = ISO_RE.exec(v.trim());
  if (!m) return null;
  const [, y, mo, d, h, mi, s = '0', frac = '', z, sign, oh, om] = m;
  const ms = Number((frac + '000').slice(0, 3));
  let t = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s), ms);
  if (Number(mo) < 1 || Number(mo) > 12 || Number(d) < 1 || Number(d) > 31 || Number(h) > 23 || Number(mi) > 59 || Number(s) > 59) return null;
  if (!z && sign) {
    const off = (Number(oh) * 60 + Number(om)) * 60000;
    t = sign === '+' ? t - off : t + off;
  }
  return Number.isFinite(t) ? t : null;
}

function timeToIso(v) {
  const t = parseStoredTime(v);
  return t === null ? null : new Date(t).toISOString();
}

const objOrEmpty = (v) => (isPlainObject(v) ? v : {});

function userIdOf(v) {
  if (typeof v === 'string' && v !== '') return v;
  if (typeof v === 'number' && Number.isFinite(v)) return String(v);
  return null;
}

/**
 * A stored record (parsed JSON, either shape) as the wire session, or null when the
 * record is not a readable session (then it is treated as missing).
 *   fromStored({"user_id": "u1", "agent_type": "ai", "created_at": 1704103200}, "abc")
 *   -> {sessionId: "abc", userId: "u1", agent: "ai", context: {}, metadata: {}, createdAt: "2024-01-01T10:00:00.000Z", updatedAt: same}
 */
function fromStored(obj, keyId) {
  if (!isPlainObject(obj)) return null;
  const legacy = 'userId' in obj || 'createdAt' in obj || !('user_id' in obj);
  let s;
  if (legacy) {
    const createdAt = timeToIso(obj.createdAt);
    s = {
      sessionId: keyId != null ? keyId : obj.sessionId,
      userId: userIdOf(obj.userId),
      agent: obj.agent,
      context: objOrEmpty(obj.context),
      metadata: objOrEmpty(obj.metadata),
      createdAt,
      updatedAt: obj.updatedAt == null ? createdAt : timeToIso(obj.updatedAt),
    };
  } else {
    const createdAt = timeToIso(obj.created_at);
    s = {
      sessionId: keyId != null ? keyId : obj.session_id,
      userId: userIdOf(obj.user_id),
      agent: obj.agent_type,
      context: objOrEmpty(obj.context),
      metadata: objOrEmpty(obj.metadata),
      createdAt,
      updatedAt: obj.updated_at == null ? createdAt : timeToIso(obj.updated_at),
    };
  }
  if (typeof s.sessionId !== 'string' || s.sessionId === '') return null;
  if (s.userId === null || s.createdAt === null || s.updatedAt === null) return null;
  if (typeof s.agent !== 'string') s.agent = 'ai';
  return s;
}

function parseRecord(raw, id) {
  if (raw === null || raw === undefined) return null;
  let obj;
  try {
    obj = JSON.parse(raw);
  } catch (e) {
    return null;
  }
  return fromStored(obj, id);
}

/** The wire session stored under session:{id}, or null (missing, expired or unreadable). */
async function readSession(redis, id) {
  return parseRecord(await redis.get(sessionKey(id)), id);
}

/** Several sessions at once (MGET); the result has null for missing ones. */
async function readSessions(redis, ids) {
  if (ids.length === 0) return [];
  const raws = await redis.mGet(ids.map(sessionKey));
  return raws.map((raw, i) => parseRecord(raw, ids[i]));
}

/** Writes the legacy shape with a fresh TTL and (re)indexes it; resets the index TTL. */
async function writeSession(redis, s) {
  const stored = {
    sessionId: s.sessionId,
    userId: s.userId,
    agent: s.agent,
    context: s.context,
    metadata: s.metadata,
    createdAt: s.createdAt,
    updatedAt: s.updatedAt,
  };
  const idx = userIndexKey(s.userId);
  await redis
    .multi()
    .set(sessionKey(s.sessionId), JSON.stringify(stored), { EX: SESSION_TTL })
    .zAdd(idx, { score: Date.parse(s.createdAt), value: s.sessionId })
    .expire(idx, SESSION_TTL)
    .exec();
  return stored;
}

/** §2 ownership: customers only touch their own sessions; agents and admins any. */
function canAccess(user, session) {
  return user.role !== 'customer' || session.userId === user.sub;
}

module.exports = {
  SESSION_TTL,
  sessionKey,
  userIndexKey,
  parseStoredTime,
  fromStored,
  readSession,
  readSessions,
  writeSession,
  canAccess,
};
