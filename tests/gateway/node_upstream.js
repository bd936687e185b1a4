'use strict';
// A legacy stand-in for the gateway tests: one Node process, one `http` server per name.
//
//   node node_upstream.js a b c      → prints {"a": port, "b": port, "c": port} once listening
//
// Every server answers the same endpoints and says which one it is (`upstream`):
//   /big?mib=N[&chunked=1]   N MiB of a fixed 64 KiB pattern (i % 251), with backpressure
//   /upload                  request-body sink: {bytes, sha256, te, cl}
//   /sse?n=5&every=200       server-sent events, one every `every` ms, `n` of them
//   /slow?ms=N&tag=T         answers after N ms; a connection closed first is recorded
//   /break[?cl=1]            sends 10 000 bytes of body, then destroys the socket
//   /redirect /cookie /hop /conflict   see below
//   anything else            JSON echo of method, url, raw headers, body length
// Side endpoints (called directly, never through the gateway):
//   /__log  urls received   /__aborted?tag=T   /__wscloses?tag=T
//   /__wsraw?tag=T   the raw bytes a /ws?raw=1&tag=T socket received after its handshake
//                    (base64), as they came off the wire
//   /__wsflood?tag=T how far a "flood:" below got: {queued, written, done}
// WebSocket on /ws (any other upgrade path: HTTP 404, /ws-keepalive: a chunked 403 on a
// connection left open): echoes text and binary; "close:CODE:REASON" closes with that
// code; "headers" answers the handshake as JSON; "drop" destroys the socket without a
// close frame; "flood:MIB:KIB" sends MIB MiB of binary frames of KIB KiB each, as fast as
// the socket drains (never more than its buffer queued); the subprotocol chat.v2 is chosen
// when offered; the 101 carries "X-Upstream-Ws: <name>".
const http = require('http');
const crypto = require('crypto');
const { WebSocketServer } = require('ws');

const seen = [];
const aborted = new Set();
const wsCloses = {};
const wsRaw = {};
const wsFlood = {};

const PATTERN = Buffer.alloc(65536);
for (let i = 0; i < PATTERN.length; i++) PATTERN[i] = i % 251;

function pairs(raw) {
  const out = [];
  for (let i = 0; i < raw.length; i += 2) out.push([raw[i].toLowerCase(), raw[i + 1]]);
  return out;
}

function json(res, status, obj, extra) {
  const body = Buffer.from(JSON.stringify(obj));
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': body.length,
    ...(extra || {}),
  });
  res.end(body);
}

function handler(name) {
  return (req, res) => {
    const u = new URL(req.url, 'http://x');
    const p = u.pathname;
    const q = u.searchParams;
    if (p === '/__log') return json(res, 200, { seen });
    if (p === '/__aborted') return json(res, 200, { aborted: aborted.has(q.get('tag')) });
    if (p === '/__wscloses') return json(res, 200, { closes: wsCloses[q.get('tag')] || [] });
    if (p === '/__wsraw') {
      return json(res, 200, { raw: Buffer.concat(wsRaw[q.get('tag')] || []).toString('base64') });
    }
    if (p === '/__wsflood') {
      const f = wsFlood[q.get('tag')];
      return json(res, 200, f ? { queued: f.queued, written: f.sock.bytesWritten, done: f.done }
        : {});
    }
    seen.push(req.url);

    if (p.startsWith('/big')) {
      const total = Number(q.get('mib') || '1') * 1024 * 1024;
      const head = { 'content-type': 'application/octet-stream' };
      if (!q.get('chunked')) head['content-length'] = total;
      res.writeHead(200, head);
      let sent = 0;
      const pump = () => {
        while (sent < total) {
          const n = Math.min(PATTERN.length, total - sent);
          sent += n;
          if (!res.write(n === PATTERN.length ? PATTERN : PATTERN.subarray(0, n))) {
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      return pump();
    }
    if (p.startsWith('/upload')) {
      const h = crypto.createHash('sha256');
      let bytes = 0;
      req.on('data', (c) => { bytes += c.length; h.update(c); });
      req.on('end', () => json(res, 200, {
        upstream: name, bytes, sha256: h.digest('hex'),
        te: req.headers['transfer-encoding'] || null, cl: req.headers['content-length'] || null,
      }));
      return;
    }
    if (p.startsWith('/sse')) {
      const n = Number(q.get('n') || '5');
      const every = Number(q.get('every') || '200');
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      let i = 0;
      const tick = () => {
        res.write(`id: ${i}\ndata: {"i":${i},"t":${Date.now()}}\n\n`);
        i += 1;
        if (i < n) setTimeout(tick, every); else res.end();
      };
      return tick();
    }
    if (p.startsWith('/slow')) {
      const tag = q.get('tag') || '';
      const timer = setTimeout(() => json(res, 200, { upstream: name, slow: true }),
        Number(q.get('ms') || '1000'));
      res.on('close', () => {
        if (!res.writableEnded) { aborted.add(tag); clearTimeout(timer); }
      });
      return;
    }
    if (p.startsWith('/break')) {
      const head = { 'content-type': 'application/octet-stream' };
      if (q.get('cl')) head['content-length'] = 1024 * 1024;
      res.writeHead(200, head);
      res.write(Buffer.alloc(10000, 97));
      setTimeout(() => req.socket.destroy(), 100);
      return;
    }
    if (p.startsWith('/redirect')) {
      res.writeHead(302, { location: '/redirect-target', 'set-cookie': 'r=1; Path=/',
        'content-length': 0 });
      return res.end();
    }
    if (p.startsWith('/cookie')) {
      return json(res, 200, { upstream: name }, { 'set-cookie': 'sid=upstream-secret; Path=/' });
    }
    if (p.startsWith('/hop')) {
      res.setHeader('Connection', 'keep-alive, X-Hop-Named');
      res.setHeader('X-Hop-Named', 'hop-secret');
      res.setHeader('Keep-Alive', 'timeout=5');
      res.setHeader('Proxy-Authenticate', 'Basic realm="x"');
      res.setHeader('X-End-To-End', 'kept');
      return json(res, 200, { upstream: name });
    }
    if (p.startsWith('/conflict')) {
      // The contract's error shape, padded to exactly 409 bytes.
      const base = { error: { code: 'conflict', message: '' } };
      base.error.message = 'x'.repeat(409 - JSON.stringify(base).length);
      return json(res, 409, base);
    }
    let bodyLen = 0;
    req.on('data', (c) => { bodyLen += c.length; });
    req.on('end', () => json(res, 200, {
      upstream: name, method: req.method, url: req.url, headers: pairs(req.rawHeaders),
      body_len: bodyLen,
    }));
  };
}

function wsUpgrade(name, server) {
  const wss = new WebSocketServer({
    noServer: true,
    handleProtocols: (protocols) => (protocols.has('chat.v2') ? 'chat.v2' : false),
  });
  wss.on('headers', (headers) => headers.push(`X-Upstream-Ws: ${name}`));
  server.on('upgrade', (req, socket, head) => {
    const u = new URL(req.url, 'http://x');
    seen.push(req.url);
    if (u.pathname === '/ws-keepalive') {
      socket.write('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n' +
        'Transfer-Encoding: chunked\r\n\r\n5\r\nnope!\r\n0\r\n\r\n');
      return;  // and the connection stays open
    }
    if (u.pathname !== '/ws') {
      const body = '{"error":{"code":"not_found","message":"no such path"}}';
      socket.end('HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n' +
        `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
      return;
    }
    const tag = u.searchParams.get('tag') || '';
    if (u.searchParams.get('raw')) {
      const chunks = wsRaw[tag] = [];
      if (head.length) chunks.push(Buffer.from(head));
      socket.on('data', (c) => chunks.push(Buffer.from(c)));
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('error', () => {});  // a broken frame: ws closes with 1002, the process stays
      ws.on('message', (data, isBinary) => {
        if (isBinary) return ws.send(data, { binary: true });
        const s = data.toString();
        if (s === 'drop') return ws.terminate();
        if (s.startsWith('flood:')) {
          const [, mib, kib] = s.split(':').map(Number);
          const frame = Buffer.alloc(kib * 1024, 0x61);
          const f = wsFlood[tag] = { queued: 0, done: false, sock: ws._socket };
          const pump = () => {
            while (f.queued < mib * 1024 * 1024) {
              ws.send(frame, { binary: true });
              f.queued += frame.length;
              if (f.sock.writableNeedDrain) return f.sock.once('drain', pump);
            }
            f.done = true;
          };
          return pump();
        }
        if (s.startsWith('close:')) {
          const [, code, reason] = s.split(':');
          return ws.close(Number(code), reason);
        }
        if (s === 'headers') {
          return ws.send(JSON.stringify({
            upstream: name, url: req.url, headers: pairs(req.rawHeaders), protocol: ws.protocol,
          }));
        }
        return ws.send(s);
      });
      ws.on('close', (code, reason) => {
        (wsCloses[tag] = wsCloses[tag] || []).push({ code, reason: reason.toString() });
      });
    });
  });
}

const ports = {};
const names = process.argv.slice(2);
let pending = names.length;
for (const name of names) {
  const server = http.createServer(handler(name));
  wsUpgrade(name, server);
  server.listen(0, '127.0.0.1', () => {
    ports[name] = server.address().port;
    pending -= 1;
    if (pending === 0) process.stdout.write(JSON.stringify(ports) + '\n');
  });
}
