"""The dashboard: one page on the admin listener (``/dashboard``) over the control API.

The page, its script and its stylesheet carry no secret and are served to anyone who
reaches the admin port; the page asks for an admin token (kept in ``sessionStorage``, gone
with the tab) and calls the JSON API with ``Authorization: Bearer``. It shows every route
with its live % new, ramp and guard state and, per side, req/s, error rate and p95 over the
live window, refreshed every 1.5 s; a percentage can be set per route (with a reason), all
routes rolled back after an in-page confirmation, the shadow match rates and the audit
trail follow.

Vanilla JavaScript, no build step, nothing from a CDN; script and style are separate
files so that a strict ``Content-Security-Policy`` (no inline script) holds. Data is put
in the page with ``textContent`` only, never as HTML.

Also here: ``GET /api/guard`` (bearer token), each route's guard state, reason and figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .api import error

if TYPE_CHECKING:
    from .plane import ControlPlane

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>chat-gateway control</title>
<link rel="stylesheet" href="/dashboard.css">
<script src="/dashboard.js" defer></script>
</head>
<body>
<header>
  <h1>chat-gateway</h1>
  <span id="replica"></span>
  <span id="status" role="status"></span>
</header>
<section id="login-box" hidden>
  <form id="login">
    <label>Admin token <input id="token" type="password" autocomplete="off" required></label>
    <button id="login-button" type="submit">Open</button>
  </form>
</section>
<main id="main" hidden>
  <section>
    <h2>Routes</h2>
    <table id="routes">
      <thead>
        <tr><th>route</th><th>match</th><th>% new</th><th>guard</th>
            <th>legacy req/s</th><th>legacy errors</th><th>legacy p95</th>
            <th>new req/s</th><th>new errors</th><th>new p95</th><th>set % new</th></tr>
      </thead>
      <tbody></tbody>
    </table>
  </section>
  <section id="danger">
    <button id="rollback-all" type="button">Roll back every route&hellip;</button>
    <div id="confirm-box" hidden>
      <p>Send <strong>every</strong> route back to legacy (0 % new) on all replicas?</p>
      <label>Reason <input id="rollback-reason" value="rollback from the dashboard"></label>
      <button id="confirm-rollback" type="button">Yes, roll back everything</button>
      <button id="cancel-rollback" type="button">Cancel</button>
    </div>
  </section>
  <section>
    <h2>Shadow</h2>
    <table>
      <thead><tr><th>Route</th><th>Mirrored</th><th>Match rate</th><th>Match</th>
        <th>Mismatch</th><th>Error</th><th>Dropped</th><th>Too large</th></tr></thead>
      <tbody id="shadow"></tbody>
    </table>
  </section>
  <section>
    <h2>Audit</h2>
    <ol id="audit"></ol>
  </section>
  <p><button id="logout" type="button">Forget token</button></p>
</main>
</body>
</html>
"""

SCRIPT = r"""'use strict';
(function () {
  const KEY = 'chatgw-admin-token';
  const REFRESH_MS = 1500;
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let editing = new Set();

  function token() { return sessionStorage.getItem(KEY) || ''; }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function status(text, bad) {
    const s = $('status');
    s.textContent = text;
    s.className = bad ? 'bad' : '';
  }

  async function call(method, path, body) {
    const opts = {method, headers: {'Authorization': 'Bearer ' + token()}, cache: 'no-store'};
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (r.status === 401 || r.status === 403) {
      showLogin((data && data.error && data.error.message) || 'token refused');
      throw new Error('unauthorized');
    }
    if (!r.ok) {
      throw new Error((data && data.error && data.error.message) || ('HTTP ' + r.status));
    }
    return data;
  }

  function fmt(v, unit) { return v === null || v === undefined ? '–' : v + (unit || ''); }
  function pct(rate) { return rate === null || rate === undefined ? '–' : (rate * 100).toFixed(2) + ' %'; }

  function sideCells(tr, s) {
    tr.appendChild(el('td', fmt(s.rps), 'num'));
    tr.appendChild(el('td', pct(s.error_rate) + ' (' + s.errors + ')', 'num'));
    tr.appendChild(el('td', fmt(s.p95_ms, ' ms'), 'num'));
  }

  function row(r, guard) {
    const tr = document.createElement('tr');
    tr.dataset.route = r.name;
    tr.appendChild(el('td', r.name, 'name'));
    tr.appendChild(el('td', r.match));
    const p = el('td', r.module ? r.percent + ' %' : 'legacy only', 'percent num');
    if (r.ramp) p.appendChild(el('small', ' ramp ' + r.ramp.state + ' step ' + (r.ramp.step + 1) + '/' + r.ramp.steps.length));
    tr.appendChild(p);
    const g = guard && guard[r.name];
    tr.appendChild(g ? el('td', g.state, 'guard ' + g.state) : el('td', '–'));
    if (g) tr.lastChild.title = g.reason;
    sideCells(tr, r.sides.legacy);
    sideCells(tr, r.sides.new);
    const ctl = document.createElement('td');
    if (r.module) {
      const input = el('input', null, 'pct');
      input.type = 'number'; input.min = '0'; input.max = '100'; input.step = '0.01';
      input.value = r.percent;
      const reason = el('input', null, 'reason');
      reason.placeholder = 'reason';
      const button = el('button', 'Set', 'set');
      button.type = 'button';
      for (const i of [input, reason]) {
        i.addEventListener('focus', () => editing.add(r.name));
        i.addEventListener('blur', () => editing.delete(r.name));
      }
      button.addEventListener('click', () => setPercent(r.name, input.value, reason.value));
      ctl.append(input, reason, button);
    }
    tr.appendChild(ctl);
    return tr;
  }

  async function setPercent(name, value, reason) {
    editing.delete(name);
    try {
      const out = await call('PUT', '/api/routes/' + encodeURIComponent(name) + '/percent',
        {percent: Number(value), reason: reason.trim() || 'set from the dashboard', source: 'dashboard'});
      status(name + ': ' + out.from + ' % → ' + out.to + ' % (version ' + out.version + ')');
    } catch (e) { if (e.message !== 'unauthorized') status(name + ': ' + e.message, true); }
    refresh();
  }

  async function rollbackAll() {
    const reason = $('rollback-reason').value.trim() || 'rollback from the dashboard';
    $('confirm-box').hidden = true;
    try {
      const out = await call('POST', '/api/rollback', {reason, source: 'dashboard'});
      status('rolled back ' + out.changed.length + ' route(s) (version ' + out.version + ')');
    } catch (e) { if (e.message !== 'unauthorized') status('rollback: ' + e.message, true); }
    refresh();
  }

  function renderRoutes(data, guard) {
    $('replica').textContent = 'replica ' + data.replica + ' · version ' + data.version +
      ' · store ' + data.store.kind + (data.store.reachable ? '' : ' UNREACHABLE');
    const body = document.querySelector('#routes tbody');
    for (const r of data.routes) {
      const old = body.querySelector('tr[data-route="' + CSS.escape(r.name) + '"]');
      if (old && editing.has(r.name)) continue;  // keep what is being typed
      const fresh = row(r, guard);
      if (old) body.replaceChild(fresh, old); else body.appendChild(fresh);
    }
    const names = new Set(data.routes.map((r) => r.name));
    for (const tr of Array.from(body.children)) if (!names.has(tr.dataset.route)) tr.remove();
  }

  function renderAudit(entries) {
    const list = $('audit');
    list.replaceChildren();
    for (const e of entries) {
      const li = el('li');
      li.appendChild(el('time', new Date(e.ts * 1000).toLocaleTimeString()));
      li.appendChild(el('span', ' ' + e.who + ' (' + e.source + ') ' + e.action + ' ' + e.route + ' ', ''));
      if (e.from_percent !== null || e.to_percent !== null) {
        li.appendChild(el('span', fmt(e.from_percent, ' %') + ' → ' + fmt(e.to_percent, ' %') + ' ', 'change'));
      }
      li.appendChild(el('q', e.reason));
      if (e.detail) li.appendChild(el('small', ' ' + e.detail));
      li.dataset.source = e.source;
      list.appendChild(li);
    }
  }

  function renderShadow(data) {
    const body = $('shadow');
    body.replaceChildren();
    for (const [name, r] of Object.entries(data.routes || {})) {
      const tr = el('tr');
      tr.dataset.route = name;
      const c = r.counts || {};
      tr.appendChild(el('td', name));
      tr.appendChild(el('td', fmt(r.percent, ' %'), 'mirrored'));
      tr.appendChild(el('td', pct(r.match_rate), 'match-rate'));
      for (const k of ['match', 'mismatch', 'error', 'dropped', 'too_large']) {
        tr.appendChild(el('td', String(c[k] || 0), k));
      }
      body.appendChild(tr);
    }
  }

  async function refresh() {
    if (!token()) return;
    try {
      const [routes, guard, audit, shadow] = await Promise.all([
        call('GET', '/api/routes'), call('GET', '/api/guard').catch(() => ({routes: {}})),
        call('GET', '/api/audit?limit=30'), call('GET', '/api/shadow').catch(() => ({routes: {}}))]);
      renderRoutes(routes, guard.routes);
      renderShadow(shadow);
      renderAudit(audit.entries);
      $('main').dataset.version = routes.version;
      if ($('status').className === 'bad' && $('status').textContent.startsWith('refresh')) status('');
    } catch (e) { if (e.message !== 'unauthorized') status('refresh failed: ' + e.message, true); }
  }

  function showLogin(message) {
    clearInterval(timer); timer = null;
    $('main').hidden = true;
    $('login-box').hidden = false;
    if (message) status(message, true);
  }

  function start() {
    $('login-box').hidden = true;
    $('main').hidden = false;
    refresh();
    if (!timer) timer = setInterval(refresh, REFRESH_MS);
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login').addEventListener('submit', (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, $('token').value.trim());
      $('token').value = '';
      status('');
      start();
    });
    $('logout').addEventListener('click', () => { sessionStorage.removeItem(KEY); showLogin(''); });
    $('rollback-all').addEventListener('click', () => { $('confirm-box').hidden = false; });
    $('cancel-rollback').addEventListener('click', () => { $('confirm-box').hidden = true; });
    $('confirm-rollback').addEventListener('click', rollbackAll);
    if (token()) start(); else showLogin('');
  });
})();
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1rem 2rem; color: #222; }
header { display: flex; gap: 1rem; align-items: baseline; }
h1 { font-size: 1.3rem; margin: 0; }
#status.bad { color: #b00020; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.guard.red { color: #fff; background: #b00020; }
td.guard.green { color: #0a6b2d; }
input.pct { width: 5rem; }
input.reason { width: 10rem; }
#danger { margin: 1rem 0; }
#rollback-all, #confirm-rollback { background: #b00020; color: #fff; border: 0; padding: .4rem .8rem; }
#audit { font-size: 13px; max-height: 20rem; overflow: auto; }
#audit time { color: #666; margin-right: .3rem; }
"""


def routes(plane: ControlPlane) -> list[Route]:
    """``/dashboard`` (+ its script and style) and ``/api/guard``."""

    async def page(request: Request) -> Response:
        return Response(PAGE, media_type="text/html; charset=utf-8", headers=HEADERS)

    async def script(request: Request) -> Response:
        return Response(SCRIPT, media_type="text/javascript; charset=utf-8", headers=HEADERS)

    async def style(request: Request) -> Response:
        return Response(STYLE, media_type="text/css; charset=utf-8", headers=HEADERS)

    async def guard(request: Request) -> Response:
        if not plane.tokens.configured:
            return error(
                403, plane.tokens_error or "GATEWAY_ADMIN_TOKEN is not set on this gateway"
            )
        if plane.tokens.who(request.headers.get("authorization")) is None:
            return error(401, "missing or wrong bearer token (Authorization: Bearer ...)")
        view = plane.guard.view() if plane.guard is not None else {}
        return JSONResponse({"enabled": plane.guard is not None, "routes": view})

    return [
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard.js", script, methods=["GET"]),
        Route("/dashboard.css", style, methods=["GET"]),
        Route("/api/guard", guard, methods=["GET"]),
    ]
