'use strict';
// Chat messages in MySQL (`messages`, `conversations`, `customer_contacts` of schema.sql),
// shared by chat-core (store + list by session) and chat-admin (list by conversation).
// Contract: legacy-api.md §4 "Message object on the wire", §6 chat-core.

const crypto = require('node:crypto');
const { errors } = require('./common');

// MySQL error numbers we map (https://mariadb.com/kb/en/mariadb-error-codes/).
const ER_DUP_ENTRY = 1062;
const ER_LOCK_DEADLOCK = 1213;
const ER_NO_REFERENCED_ROW_2 = 1452;
const ER_ROW_IS_REFERENCED_2 = 1451;

/** '2024-01-01T10:00:00.000Z' -> '2024-01-01 10:00:00.000' (a DATETIME(3) literal in UTC). */
function sqlTime(iso) {
  return iso.slice(0, 23).replace('T', ' ');
}

/** DATETIME(3) value as read by mysql2 (Date or string, whatever the pool says) -> ISO with ms. */
function timeToIso(v) {
  if (v === null || v === undefined) return null;
  if (v instanceof Date) return v.toISOString();
  const s = String(v);
  const m = /^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:\.(\d+))?/.exec(s);
  if (!m) return new Date(s).toISOString();
  return `${m[1]}T${m[2]}.${((m[3] || '') + '000').slice(0, 3)}Z`;
}

/** Run fn(conn) inside one transaction; retried on deadlock / duplicate races when asked. */
async function withTx(pool, fn, { retries = 0, retryOn = [ER_LOCK_DEADLOCK] } = {}) {
  for (let attempt = 0; ; attempt++) {
    const conn = await pool.getConnection();
    try {
      await conn.beginTransaction();
      const out = await fn(conn);
      await conn.commit();
      return out;
    } catch (err) {
      try { await conn.rollback(); } catch (_) { /* connection may be gone */ }
      if (attempt < retries && retryOn.includes(err && err.errno)) continue;
      throw err;
    } finally {
      conn.release();
    }
  }
}

function rowToMessage(row, sessionId) {
  return {
    messageId: row.message_uid,
    sessionId: sessionId === undefined ? row.session_id : sessionId,
    from: row.sender_type,
    senderId: row.sender_id === undefined ? null : row.sender_id,
    text: row.content,
    createdAt: timeToIso(row.created_at),
  };
}

/**
 * Store one message of a session. The first message creates the conversation and reuses
 * (external_id = userId) or creates its contact. The conversation's updated_at is bumped.
 * One transaction; a race between two first messages is retried.
 */
async function storeMessage(pool, { sessionId, userId, from, senderId, text }) {
  const messageId = crypto.randomUUID();
  let createdAt;
  await withTx(pool, async (conn) => {
    const [convs] = await conn.query(
      'SELECT id FROM conversations WHERE session_id = ? FOR UPDATE', [sessionId]);
    // The time is taken once the conversation row is locked, so that messages of one
    // conversation have createdAt in row-id order and updated_at never goes back.
    createdAt = new Date().toISOString();
    const t = sqlTime(createdAt);
    let conversationId;
    if (convs.length) {
      conversationId = convs[0].id;
    } else {
      const [contacts] = await conn.query(
        'SELECT id FROM customer_contacts WHERE external_id = ? ORDER BY id LIMIT 1 FOR UPDATE', [userId]);
      let contactId;
      if (contacts.length) {
        contactId = contacts[0].id;
      } else {
        const [ins] = await conn.query(
          'INSERT INTO customer_contacts (name, email, phone, external_id, created_at, updated_at) ' +
          'VALUES (?, NULL, NULL, ?, ?, ?)', [userId, userId, t, t]);
        contactId = ins.insertId;
      }
      const [ins] = await conn.query(
        'INSERT INTO conversations (session_id, contact_id, status, assignee_id, team_id, created_at, updated_at) ' +
        "VALUES (?, ?, 'open', NULL, NULL, ?, ?)", [sessionId, contactId, t, t]);
      conversationId = ins.insertId;
    }
    await conn.query(
      'INSERT INTO messages (message_uid, conversation_id, sender_type, sender_id, content, created_at) ' +
      'VALUES (?, ?, ?, ?, ?, ?)', [messageId, conversationId, from, senderId, text, t]);
    await conn.query('UPDATE conversations SET updated_at = ? WHERE id = ?', [t, conversationId]);
  }, { retries: 5, retryOn: [ER_LOCK_DEADLOCK, ER_DUP_ENTRY] });
  return { messageId, sessionId, from, senderId, text, createdAt };
}

/**
 * `before` must name a message of the conversation (by session id or by conversation id);
 * returns its row id or throws 400. Checked before the addressed resource (§1 check order).
 */
async function resolveBefore(pool, { sessionId, conversationId }, before) {
  const [rows] = sessionId !== undefined
    ? await pool.query(
      'SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id ' +
      'WHERE c.session_id = ? AND m.message_uid = ?', [sessionId, before])
    : await pool.query(
      'SELECT id FROM messages WHERE conversation_id = ? AND message_uid = ?', [conversationId, before]);
  if (!rows.length) throw errors.badRequest('before does not name a message of this conversation');
  return rows[0].id;
}

/** The last `limit` messages (before row id `beforeId` if given), oldest first. */
async function listMessages(pool, { sessionId, conversationId }, { limit, beforeId }) {
  let convId = conversationId;
  let sid = sessionId;
  if (convId === undefined) {
    const [convs] = await pool.query('SELECT id FROM conversations WHERE session_id = ?', [sessionId]);
    if (!convs.length) return [];
    convId = convs[0].id;
  } else if (sid === undefined) {
    const [convs] = await pool.query('SELECT session_id FROM conversations WHERE id = ?', [convId]);
    sid = convs.length ? convs[0].session_id : null;
  }
  const params = [convId];
  let sql = 'SELECT message_uid, sender_type, sender_id, content, created_at FROM messages WHERE conversation_id = ?';
  if (beforeId !== undefined && beforeId !== null) { sql += ' AND id < ?'; params.push(beforeId); }
  sql += ' ORDER BY id DESC LIMIT ?';
  params.push(limit);
  const [rows] = await pool.query(sql, params);
  return rows.reverse().map((r) => rowToMessage(r, sid));
}

module.exports = {
  ER_DUP_ENTRY, ER_LOCK_DEADLOCK, ER_NO_REFERENCED_ROW_2, ER_ROW_IS_REFERENCED_2,
  sqlTime, timeToIso, withTx, rowToMessage, storeMessage, resolveBefore, listMessages,
};
