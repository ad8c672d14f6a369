/**
 * The live dashboard: one self-contained page (no CDN, no build step: the admin machine may be offline).
 * Every value from a task (names, tags, args, log lines) is put on the page with `textContent`, never as
 * HTML, so a task cannot inject markup; the Content-Security-Policy only lets this page's own nonce'd
 * script and style run.
 */
export interface DashboardConfig {
  prefix: string;
  traceUrl: string | undefined;
}

export function dashboardHtml(config: DashboardConfig, nonce: string): string {
  // `<` escaped so no value can close the <script> element it sits in.
  const json = JSON.stringify(config).replace(/</g, '\\u003c');
  // A function replacement: `$&` and friends in the JSON must stay as they are.
  return PAGE.replaceAll('__NONCE__', nonce).replace('__CONFIG__', () => json);
}

const PAGE = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>koa-taskflow · tasks</title>
<link rel="icon" href="data:,">
<style nonce="__NONCE__">
:root { --bg:#f6f7f9; --panel:#fff; --ink:#1d2330; --muted:#6b7385; --line:#e3e6ec; --accent:#3457d5;
  --pending:#8a6d00; --pending-bg:#fff4cc; --running:#1a56b8; --running-bg:#dde9ff; --success:#16794a; --success-bg:#d9f5e6;
  --failed:#b42318; --failed-bg:#fde3e1; --interrupted:#9a4b00; --interrupted-bg:#ffe8d1; --cancelled:#555d6e; --cancelled-bg:#e9ebf0; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg); color:var(--ink); }
header { display:flex; align-items:center; gap:16px; padding:12px 20px; background:var(--ink); color:#fff; }
header h1 { font-size:16px; margin:0; font-weight:600; letter-spacing:.2px; }
header .spacer { flex:1; }
#conn { font-size:12px; padding:2px 8px; border-radius:10px; background:#444b5c; }
#conn.live { background:#16794a; } #conn.down { background:#b42318; }
button { font:inherit; border:1px solid var(--line); background:#fff; color:var(--ink); border-radius:6px; padding:5px 12px; cursor:pointer; }
button:hover { border-color:var(--accent); }
button.primary { background:var(--accent); border-color:var(--accent); color:#fff; }
header button { background:transparent; color:#fff; border-color:#5b6377; }
main { padding:16px 20px; display:grid; gap:16px; }
#counts { display:grid; grid-template-columns:repeat(6,1fr); gap:10px; }
.count { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:10px 14px; cursor:pointer; border-top:4px solid var(--c); }
.count b { display:block; font-size:24px; font-weight:600; color:var(--c); }
.count span { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.5px; }
.count.active { outline:2px solid var(--accent); }
#filters { display:flex; gap:10px; align-items:end; flex-wrap:wrap; background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:10px 14px; }
#filters label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); gap:3px; }
#filters input, #filters select { font:inherit; padding:5px 8px; border:1px solid var(--line); border-radius:6px; min-width:160px; }
#filters input.invalid { border-color:var(--failed); }
.split { display:grid; grid-template-columns:minmax(0,3fr) minmax(0,2fr); gap:16px; align-items:start; }
.panel { background:var(--panel); border:1px solid var(--line); border-radius:8px; overflow:hidden; }
table { width:100%; border-collapse:collapse; }
th, td { text-align:left; padding:7px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:12px; color:var(--muted); font-weight:500; background:#fafbfc; }
.list tbody tr { cursor:pointer; }
.list tbody tr:hover { background:#f3f6ff; }
.list tbody tr.selected { background:#e8eeff; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:500; color:var(--c); background:var(--cb); }
.s-pending { --c:var(--pending); --cb:var(--pending-bg); } .s-running { --c:var(--running); --cb:var(--running-bg); }
.s-success { --c:var(--success); --cb:var(--success-bg); } .s-failed { --c:var(--failed); --cb:var(--failed-bg); }
.s-interrupted { --c:var(--interrupted); --cb:var(--interrupted-bg); } .s-cancelled { --c:var(--cancelled); --cb:var(--cancelled-bg); }
.tag { display:inline-block; font-size:11px; background:#eef0f5; border-radius:4px; padding:0 5px; margin:0 3px 2px 0; color:#3a4150; }
.muted { color:var(--muted); } .due { font-size:12px; } progress.bar { width:64px; height:8px; margin-left:6px; vertical-align:middle; accent-color:var(--running); } .mono { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12px; }
.empty { padding:24px; text-align:center; color:var(--muted); }
#more-row { padding:8px 10px; }
#detail { padding:14px 16px; }
#detail h2 { margin:0 0 8px; font-size:16px; display:flex; gap:10px; align-items:center; }
#detail h3 { font-size:13px; margin:16px 0 6px; color:var(--muted); text-transform:uppercase; letter-spacing:.5px; }
#detail dl { display:grid; grid-template-columns:max-content 1fr; gap:4px 14px; margin:0; }
#detail dt { color:var(--muted); } #detail dd { margin:0; word-break:break-all; }
pre { background:#f3f4f7; border-radius:6px; padding:8px 10px; overflow:auto; max-height:260px; margin:0; font-size:12px; }
#detail pre { white-space:pre-wrap; overflow-wrap:anywhere; }
#detail table { table-layout:fixed; }
#detail table th:nth-child(1) { width:88px; } #detail table th:nth-child(2) { width:64px; } #detail table th:nth-child(3) { width:56px; }
.error-box { background:var(--failed-bg); color:var(--failed); border-radius:6px; padding:8px 10px; }
#detail .actions { margin-top:12px; display:flex; gap:8px; }
a { color:var(--accent); }
#views { display:flex; gap:8px; }
#views button.active { background:var(--ink); border-color:var(--ink); color:#fff; }
#views .n { display:inline-block; min-width:18px; margin-left:6px; padding:0 6px; border-radius:9px; font-size:12px; background:var(--failed-bg); color:var(--failed); }
#failed td.error { color:var(--failed); max-width:260px; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
#failed td.action, #failed td.mono { white-space:nowrap; }
#failed-note { padding:8px 10px; border-bottom:1px solid var(--line); }
#toast { position:fixed; right:20px; bottom:20px; background:var(--ink); color:#fff; padding:8px 14px; border-radius:6px; opacity:0; transition:opacity .2s; max-width:420px; }
#toast.show { opacity:.95; }
</style>
</head>
<body>
<header>
  <h1>koa-taskflow</h1><span class="muted">tasks</span>
  <span id="conn">connecting…</span>
  <span class="spacer"></span>
  <button id="retry-failed" type="button">Retry all failed</button>
</header>
<main>
  <section id="counts" aria-label="tasks per status"></section>
  <nav id="views" aria-label="views">
    <button id="view-all" type="button" class="active">All tasks</button>
    <button id="view-failed" type="button">Failed<span class="n" id="failed-count">0</span></button>
  </nav>
  <form id="filters" autocomplete="off">
    <label>Status<select id="f-status"><option value="">any</option></select></label>
    <label>Name<input id="f-name" placeholder="sendWelcome"></label>
    <label>Tags<input id="f-tag" placeholder="tenant=acme, region=eu"></label>
    <button id="f-clear" type="button">Clear</button>
  </form>
  <div class="split">
    <div class="panel">
      <table id="tasks" class="list">
        <thead><tr><th>Created</th><th>Name</th><th>Status</th><th>Tags</th><th>Attempts</th><th>Duration</th></tr></thead>
        <tbody></tbody>
      </table>
      <div id="failed-view" hidden>
        <div id="failed-note" class="muted">Failed and interrupted tasks (the dead letters), newest first, kept after the successes around them are gone. A retry runs as a new task; the failed one stays here as it was. “Retry all failed” retries the failed ones not retried yet; an interrupted task may have done part of its work: retry it from its row.</div>
        <table id="failed" class="list">
          <thead><tr><th>Ended</th><th>Name</th><th>Status</th><th>Attempts</th><th>Error</th><th></th></tr></thead>
          <tbody></tbody>
        </table>
      </div>
      <div id="more-row" hidden><button id="more" type="button">Load more</button></div>
    </div>
    <div class="panel" id="detail"><div class="empty">Select a task to see its args, attempts, error and logs.</div></div>
  </div>
</main>
<div id="toast" role="status" aria-live="polite"></div>
<script type="application/json" id="config">__CONFIG__</script>
<script nonce="__NONCE__">
(function () {
  'use strict';
  var cfg = JSON.parse(document.getElementById('config').textContent);
  var STATUSES = ['pending', 'running', 'success', 'failed', 'interrupted', 'cancelled'];
  var state = { view: location.hash === '#failed' ? 'failed' : 'all', status: '', name: '', tags: [], selected: null, cursor: null };
  // Dead letters retried from this page: original id → id of its retry.
  var retriedAs = {};
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // Same-origin requests: the browser re-sends whatever authenticated this page (Basic credentials,
  // the app's session cookie for a function check).
  function api(path, init) {
    var options = { credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (init) for (var k in init) options[k] = init[k];
    return fetch(cfg.prefix + path, options).then(function (res) {
      return res.json().catch(function () { return {}; }).then(function (body) {
        if (!res.ok) { var error = new Error(body.error || ('HTTP ' + res.status)); error.body = body; throw error; }
        return body;
      });
    });
  }

  var toastTimer;
  function toast(message) {
    var t = $('toast');
    t.textContent = message;
    t.className = 'show';
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { t.className = ''; }, 4000);
  }

  function time(ms) { return ms ? new Date(ms).toLocaleTimeString() : ''; }
  function fullTime(ms) { return ms ? new Date(ms).toISOString() : '—'; }
  function duration(ms) { return ms === undefined || ms === null ? '' : ms < 1000 ? ms + ' ms' : (ms / 1000).toFixed(2) + ' s'; }
  function badge(status) { return el('span', 'badge s-' + status, status); }
  function traceLink(traceId, spanId, label) {
    if (!cfg.traceUrl || !traceId || /^0+$/.test(traceId)) return null;
    var a = el('a', '', label);
    a.href = cfg.traceUrl.replace('{traceId}', encodeURIComponent(traceId)).replace('{spanId}', encodeURIComponent(spanId || ''));
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
    return a;
  }

  // ---- counts
  var counts = $('counts');
  STATUSES.forEach(function (status) {
    var card = el('div', 'count s-' + status);
    card.dataset.status = status;
    card.appendChild(el('b', '', '0')).id = 'count-' + status;
    card.appendChild(el('span', '', status));
    card.addEventListener('click', function () {
      if (state.view !== 'all') showView('all');
      $('f-status').value = state.status === status ? '' : status;
      readFilters();
    });
    counts.appendChild(card);
    $('f-status').appendChild(el('option', '', status)).value = status;
  });

  function renderCounts(metrics) {
    $('failed-count').textContent = String((metrics.byStatus.failed || 0) + (metrics.byStatus.interrupted || 0));
    STATUSES.forEach(function (status) {
      $('count-' + status).textContent = String(metrics.byStatus[status] || 0);
      counts.querySelector('[data-status="' + status + '"]').classList.toggle('active', state.status === status);
    });
  }

  // ---- filters
  function readFilters() {
    state.status = $('f-status').value;
    state.name = $('f-name').value.trim();
    var raw = $('f-tag').value.trim();
    var tags = [];
    var ok = raw.split(',').every(function (part) {
      part = part.trim();
      if (!part) return true;
      var eq = part.indexOf('=');
      if (eq < 1) return false;
      tags.push([part.slice(0, eq).trim(), part.slice(eq + 1).trim()]);
      return true;
    });
    $('f-tag').classList.toggle('invalid', !ok);
    if (!ok) return;
    state.tags = tags;
    refresh();
  }
  var typing;
  $('f-status').addEventListener('change', readFilters);
  ['f-name', 'f-tag'].forEach(function (id) {
    $(id).addEventListener('input', function () { clearTimeout(typing); typing = setTimeout(readFilters, 250); });
  });
  $('filters').addEventListener('submit', function (e) { e.preventDefault(); readFilters(); });
  $('f-clear').addEventListener('click', function () { $('f-status').value = ''; $('f-name').value = ''; $('f-tag').value = ''; readFilters(); });

  function listQuery(cursor) {
    var p = new URLSearchParams();
    if (state.view === 'failed') p.set('status', 'failed,interrupted');
    else if (state.status) p.set('status', state.status);
    if (state.name) p.set('name', state.name);
    state.tags.forEach(function (t) { p.set('tag.' + t[0], t[1]); });
    p.set('limit', '50');
    if (cursor) p.set('cursor', cursor);
    return '?' + p.toString();
  }

  // ---- views: every task, or the dead letters
  function showView(view) {
    state.view = view;
    $('view-all').classList.toggle('active', view === 'all');
    $('view-failed').classList.toggle('active', view === 'failed');
    $('tasks').hidden = view === 'failed';
    $('failed-view').hidden = view !== 'failed';
    $('f-status').disabled = view === 'failed';
    history.replaceState(null, '', view === 'failed' ? '#failed' : location.pathname + location.search);
  }
  $('view-all').addEventListener('click', function () { showView('all'); refresh(); });
  $('view-failed').addEventListener('click', function () { showView('failed'); refresh(); });

  // ---- table
  var tbody = document.querySelector('#tasks tbody');
  var failedBody = document.querySelector('#failed tbody');
  function retryLink(cell, id) {
    cell.textContent = 'retried as ';
    var a = cell.appendChild(el('a', 'mono', id.slice(0, 8) + '…'));
    a.href = '#';
    a.title = id;
    a.addEventListener('click', function (e) { e.preventDefault(); e.stopPropagation(); select(id); });
  }
  // A row of either table: its time (created or ended), name and status; a click shows the task's detail.
  function rowStart(task, at) {
    var tr = el('tr', task.id === state.selected ? 'selected' : '');
    tr.dataset.id = task.id;
    tr.dataset.status = task.status;
    var cell = el('td', 'mono', time(at));
    cell.title = fullTime(at);
    tr.appendChild(cell);
    tr.appendChild(el('td', '', task.name));
    var status = tr.appendChild(el('td'));
    status.appendChild(badge(task.status));
    // A delayed first attempt, or a retry waiting: when it is due.
    if (task.status === 'pending' && task.runAt) {
      var due = status.appendChild(el('span', 'due muted', ' due ' + time(task.runAt)));
      due.title = fullTime(task.runAt);
    }
    // A running task that reports progress (taskProgress()): a bar, kept up to date by the event stream.
    if (task.status === 'running' && typeof task.progress === 'number') progressBar(tr, task.progress);
    tr.addEventListener('click', function () { select(task.id); });
    return tr;
  }
  function progressBar(tr, value) {
    var bar = tr.querySelector('progress.bar');
    if (!bar) {
      bar = tr.children[2].appendChild(el('progress', 'bar'));
      bar.max = 1;
    }
    bar.value = value;
    bar.title = Math.round(value * 100) + '%';
  }
  function deadRow(task) {
    var tr = rowStart(task, task.endedAt);
    tr.appendChild(el('td', '', task.attempts + ' / ' + task.maxAttempts));
    var message = task.error ? task.error.type + ': ' + task.error.message : (task.reason || '');
    tr.appendChild(el('td', 'error', message)).title = message;
    var action = tr.appendChild(el('td', 'action'));
    if (retriedAs[task.id]) {
      retryLink(action, retriedAs[task.id]);
    } else {
      var retry = action.appendChild(el('button', 'retry-one', 'Retry'));
      retry.type = 'button';
      retry.addEventListener('click', function (e) {
        e.stopPropagation();
        retry.disabled = true;
        api('/' + encodeURIComponent(task.id) + '/retry', { method: 'POST' }).then(function (body) {
          retriedAs[task.id] = body.id;
          retryLink(action, body.id);
          toast('Retried as ' + body.id);
        }).catch(function (error) {
          // Retried before (another tab, another admin): say by which task.
          var already = error.body && error.body.retriedAs;
          if (already) { retriedAs[task.id] = already; retryLink(action, already); } else retry.disabled = false;
          toast(error.message);
        });
      });
    }
    return tr;
  }
  function row(task) {
    var tr = rowStart(task, task.createdAt);
    var tags = tr.appendChild(el('td'));
    Object.keys(task.tags || {}).forEach(function (k) { tags.appendChild(el('span', 'tag', k + '=' + task.tags[k])); });
    tr.appendChild(el('td', '', task.attempts + ' / ' + task.maxAttempts));
    tr.appendChild(el('td', 'muted', duration(task.durationMs)));
    return tr;
  }
  function renderRows(tasks, append) {
    var failed = state.view === 'failed';
    var body = failed ? failedBody : tbody;
    if (!append) body.textContent = '';
    tasks.forEach(function (task) { body.appendChild(failed ? deadRow(task) : row(task)); });
    if (!body.firstChild) {
      var td = el('td', 'empty', failed ? 'No failed tasks.' : 'No tasks match.');
      td.colSpan = 6;
      body.appendChild(el('tr')).appendChild(td);
    }
  }

  var loading = false, again = false;
  function refresh() {
    if (loading) { again = true; return; }
    loading = true;
    var view = state.view;
    Promise.all([api('/metrics'), api(listQuery())]).then(function (results) {
      renderCounts(results[0]);
      // The view changed while this was loading: the refresh queued by the change renders it.
      if (view !== state.view) return;
      renderRows(results[1].tasks, false);
      state.cursor = results[1].nextCursor;
      $('more-row').hidden = !state.cursor;
      if (state.selected) return loadDetail(state.selected);
    }).catch(function (error) { toast(error.message); }).then(function () {
      loading = false;
      if (again) { again = false; refresh(); }
    });
  }
  $('more').addEventListener('click', function () {
    var view = state.view;
    api(listQuery(state.cursor)).then(function (page) {
      if (view !== state.view) return;
      renderRows(page.tasks, true);
      state.cursor = page.nextCursor;
      $('more-row').hidden = !state.cursor;
    }).catch(function (error) { toast(error.message); });
  });

  // Events arrive in bursts (a task's whole life can be a few ms): one refresh per burst.
  var pendingRefresh;
  function soon() {
    if (pendingRefresh) return;
    pendingRefresh = setTimeout(function () { pendingRefresh = undefined; refresh(); }, 150);
  }

  // ---- detail
  function field(dl, label, value) {
    if (value === undefined || value === null || value === '') return;
    dl.appendChild(el('dt', '', label));
    var dd = dl.appendChild(el('dd'));
    if (value instanceof Node) dd.appendChild(value); else dd.textContent = String(value);
  }
  function select(id) {
    state.selected = id;
    Array.prototype.forEach.call(document.querySelectorAll('.list tbody tr'), function (tr) { tr.classList.toggle('selected', tr.dataset.id === id); });
    loadDetail(id).catch(function (error) { toast(error.message); });
  }
  function loadDetail(id) {
    return api('/' + encodeURIComponent(id)).then(function (task) { if (state.selected === id) renderDetail(task); });
  }
  function renderDetail(task) {
    var box = $('detail');
    box.textContent = '';
    box.dataset.id = task.id;
    var h = box.appendChild(el('h2', '', task.name));
    h.appendChild(badge(task.status));
    var dl = box.appendChild(el('dl'));
    field(dl, 'id', el('span', 'mono', task.id));
    field(dl, 'attempts', task.attempts + ' of ' + task.maxAttempts);
    field(dl, 'created', fullTime(task.createdAt));
    field(dl, 'started', task.startedAt && fullTime(task.startedAt));
    field(dl, 'ended', task.endedAt && fullTime(task.endedAt));
    field(dl, 'duration', duration(task.durationMs));
    if (task.status === 'pending' && task.runAt) field(dl, task.attempts === 0 ? 'due' : 'next attempt', fullTime(task.runAt));
    field(dl, 'priority', task.priority);
    field(dl, 'idempotency key', task.idempotencyKey);
    field(dl, 'reason', task.reason);
    var tags = el('span');
    Object.keys(task.tags || {}).forEach(function (k) { tags.appendChild(el('span', 'tag', k + '=' + task.tags[k])); });
    if (tags.firstChild) field(dl, 'tags', tags);
    if (task.retryOf) {
      var of = el('a', 'mono', task.retryOf);
      of.href = '#';
      of.addEventListener('click', function (e) { e.preventDefault(); select(task.retryOf); });
      field(dl, 'retry of', of);
    }
    field(dl, 'trace', traceLink(task.traceId, task.spanId, 'open trace ' + (task.traceId || '').slice(0, 8) + '…') || (task.traceId && el('span', 'mono', task.traceId)));
    field(dl, 'request', traceLink(task.requestTraceId, task.requestSpanId, 'request trace ' + (task.requestTraceId || '').slice(0, 8) + '…'));
    if (task.error) {
      box.appendChild(el('h3', '', 'Error'));
      box.appendChild(el('div', 'error-box', task.error.type + ': ' + task.error.message));
      if (task.error.stack) box.appendChild(el('pre', 'mono', task.error.stack));
    }
    box.appendChild(el('h3', '', 'Args'));
    box.appendChild(el('pre', 'mono args', JSON.stringify(task.args, null, 2)));
    box.appendChild(el('h3', '', 'Logs (' + task.logs.length + ')'));
    if (task.logs.length) {
      var table = box.appendChild(el('table'));
      var head = table.appendChild(el('tr'));
      ['time', 'attempt', 'level', 'message'].forEach(function (c) { head.appendChild(el('th', '', c)); });
      task.logs.forEach(function (log) {
        var tr = table.appendChild(el('tr'));
        tr.appendChild(el('td', 'mono', time(log.time)));
        tr.appendChild(el('td', '', log.attempt));
        tr.appendChild(el('td', '', log.level));
        var msg = tr.appendChild(el('td', '', log.message));
        if (log.fields && Object.keys(log.fields).length) msg.appendChild(el('pre', 'mono', JSON.stringify(log.fields)));
      });
    } else {
      box.appendChild(el('div', 'muted', 'none'));
    }
    if (task.status === 'failed' || task.status === 'interrupted') {
      var actions = box.appendChild(el('div', 'actions'));
      var retry = actions.appendChild(el('button', 'primary', 'Retry'));
      retry.id = 'retry';
      retry.addEventListener('click', function () {
        retry.disabled = true;
        api('/' + encodeURIComponent(task.id) + '/retry', { method: 'POST' }).then(function (body) {
          retriedAs[task.id] = body.id;
          toast('Retried as ' + body.id);
          select(body.id);
        }).catch(function (error) { retry.disabled = false; toast(error.message); });
      });
    }
    // Pending (delayed or waiting for a slot or a retry) and running tasks can be cancelled (manager.cancel).
    if (task.status === 'pending' || task.status === 'running') {
      var cancelBox = box.appendChild(el('div', 'actions'));
      var cancel = cancelBox.appendChild(el('button', '', 'Cancel'));
      cancel.id = 'cancel';
      cancel.type = 'button';
      cancel.addEventListener('click', function () {
        cancel.disabled = true;
        api('/' + encodeURIComponent(task.id) + '/cancel', { method: 'POST' }).then(function (body) {
          toast(body.status === 'cancelled' ? 'Cancelled' : 'Cancel requested: the instance running it stops it');
          soon();
        }).catch(function (error) { cancel.disabled = false; toast(error.message); });
      });
    }
  }

  $('retry-failed').addEventListener('click', function () {
    api('/retry-failed', { method: 'POST' }).then(function (body) {
      body.retried.forEach(function (r) { retriedAs[r.id] = r.newId; });
      toast('Retried ' + body.retried.length + ' failed task(s)' + (body.errors.length ? ', ' + body.errors.length + ' could not be' : ''));
      soon();
    }).catch(function (error) { toast(error.message); });
  });

  // ---- live
  var conn = $('conn');
  function connect() {
    var source = new EventSource(cfg.prefix + '/events');
    source.addEventListener('open', function () { conn.textContent = 'live'; conn.className = 'live'; soon(); });
    source.addEventListener('error', function () {
      // EventSource reconnects by itself unless the server refused (CLOSED): then try again later.
      if (source.readyState === EventSource.CLOSED) {
        conn.textContent = 'live updates unavailable'; conn.className = 'down';
        setTimeout(connect, 10000);
      } else {
        conn.textContent = 'reconnecting…'; conn.className = '';
      }
    });
    source.addEventListener('lifecycle', soon);
    // The server skipped events for us during a burst (we could not take them fast enough): re-read everything.
    source.addEventListener('resync', soon);
    source.addEventListener('progress', function (e) {
      var event = JSON.parse(e.data);
      var tr = document.querySelector('#tasks tr[data-id="' + CSS.escape(event.taskId) + '"][data-status="running"]');
      if (tr) progressBar(tr, event.value);
    });
    source.addEventListener('log', function (e) {
      if (state.selected && JSON.parse(e.data).taskId === state.selected) soon();
    });
  }
  showView(state.view);
  document.body.dataset.ready = 'true';
  refresh();
  connect();
})();
</script>
</body>
</html>
`;
