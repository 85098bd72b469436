/* wsproxy live page: streams MongoDB change events from the wsproxy
 * WebSocket endpoint and shows them as rows.
 *
 * Plain ES2020, no dependencies. Event data is untrusted: it only ever
 * reaches the DOM through textContent / attributes, never innerHTML.
 */
'use strict';

(() => {
  // ---------------------------------------------------------------- limits
  const LIST_CAP = 500;          // rows kept in the DOM (newest first)
  const BUFFER_CAP = 500;        // events kept while the view is paused
  const BACKOFF_BASE_MS = 500;   // first retry delay (before jitter)
  const BACKOFF_CAP_MS = 30000;  // longest retry delay
  const STABLE_MS = 10000;       // a connection up this long resets the backoff
  const CONNECT_TIMEOUT_MS = 15000;
  const BUSY_MIN_MS = 5000;      // 1013 "try again later": wait at least this
  const MAX_IMMEDIATE = 3;       // immediate reconnects in a row before backing off
  const RATE_WINDOW_S = 10;
  const SEEN_CAP = 5000;         // ids remembered to drop duplicates
  const BIG_EVENT_CHARS = 200000; // bigger events are shown as plain text

  const MAIN_OPS = ['insert', 'update', 'replace', 'delete'];
  const OTHER_OPS = ['drop', 'rename', 'dropDatabase', 'invalidate'];
  const ALL_CHECKS = [...MAIN_OPS, 'other'];

  // Close codes: [short label, what it means for the user, policy].
  // policy: "immediate" reconnect, "backoff", "busy" (backoff, long floor),
  // "stop" (do not reconnect until the user acts).
  const CLOSE_CODES = {
    1000: ['normal closure', 'The server closed the connection normally.', 'backoff'],
    1001: ['server going away', 'The server is restarting or being redeployed.', 'immediate'],
    1005: ['no status', 'The connection was closed without a status code.', 'backoff'],
    1006: ['connection failed', 'The server could not be reached, refused the connection, or the network dropped.', 'backoff'],
    1008: ['subscription rejected', 'The server rejected this subscription (policy violation). Fix the namespaces, operations or filter and apply it to reconnect.', 'stop'],
    1009: ['message too big', 'An event was larger than the server\u2019s message limit. Narrowing the subscription may help.', 'backoff'],
    1011: ['server error', 'The server hit an internal error.', 'backoff'],
    1012: ['server restarting', 'The server is restarting.', 'immediate'],
    1013: ['server busy', 'The server is full; trying again later.', 'busy'],
    4008: ['slow consumer', 'This page fell behind the event stream; reconnecting and resuming.', 'immediate'],
    4401: ['not authorised', 'You are not signed in or your session expired. Sign in again, then reconnect.', 'stop'],
    4403: ['forbidden', 'You are not allowed to watch this. Sign in with another account or change the subscription.', 'stop'],
  };

  // ---------------------------------------------------------------- helpers
  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
  const opClass = (op) => (MAIN_OPS.includes(op) ? op : 'other');
  const pad = (n, w = 2) => String(n).padStart(w, '0');

  function truncate(s, n) {
    return s.length > n ? s.slice(0, n - 1) + '\u2026' : s;
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? '' : 's'}`;
  }

  function fmtDuration(ms) {
    if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function fmtClock(d, withMs) {
    const t = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withMs ? `${t}.${pad(d.getMilliseconds(), 3)}` : t;
  }

  function sameDay(a, b) {
    return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() &&
      a.getDate() === b.getDate();
  }

  function nsString(ns) {
    if (!isObj(ns)) return '';
    const db = typeof ns.db === 'string' ? ns.db : '';
    const coll = typeof ns.coll === 'string' ? ns.coll : '';
    return coll ? `${db}.${coll}` : db;
  }

  // ------------------------------------------------------- Extended JSON
  // Parse a relaxed/canonical EJSON $date value into a Date (or null).
  function ejsonDate(x) {
    let d = null;
    if (typeof x === 'string') d = new Date(x);
    else if (typeof x === 'number') d = new Date(x);
    else if (isObj(x) && typeof x.$numberLong === 'string') d = new Date(Number(x.$numberLong));
    return d && !Number.isNaN(d.getTime()) ? d : null;
  }

  function b64ToBytes(b64) {
    try {
      const bin = atob(b64);
      const out = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
      return out;
    } catch (_) {
      return null;
    }
  }

  function bytesToUuid(bytes) {
    const h = Array.from(bytes, (b) => pad(b.toString(16))).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function binaryText(b64, subType) {
    const sub = parseInt(subType, 16);
    const subNum = Number.isNaN(sub) ? JSON.stringify(String(subType)) : String(sub);
    if ((sub === 4 || sub === 3) && typeof b64 === 'string') {
      const bytes = b64ToBytes(b64);
      if (bytes && bytes.length === 16 && sub === 4) return `UUID("${bytesToUuid(bytes)}")`;
    }
    const s = String(b64);
    if (s.length > 96) {
      const bytes = Math.floor((s.length * 3) / 4) - (s.endsWith('==') ? 2 : s.endsWith('=') ? 1 : 0);
      return `Binary("${s.slice(0, 64)}\u2026", ${subNum}) /* ${bytes} bytes */`;
    }
    return `Binary("${s}", ${subNum})`;
  }

  // If v is an Extended JSON type wrapper, return [kind, shell-style text].
  function ejsonSpecial(v) {
    const keys = Object.keys(v);
    if (keys.length === 2 && typeof v.$binary === 'string' && typeof v.$type === 'string') {
      return ['bin', binaryText(v.$binary, v.$type)]; // legacy binary form
    }
    if (keys.length !== 1) return null;
    const k = keys[0];
    const x = v[k];
    switch (k) {
      case '$oid':
        return typeof x === 'string' ? ['oid', `ObjectId("${x}")`] : null;
      case '$date': {
        const d = ejsonDate(x);
        if (d) return ['date', `ISODate("${d.toISOString()}")`];
        if (isObj(x) && typeof x.$numberLong === 'string') return ['date', `Date(${x.$numberLong})`];
        return null;
      }
      case '$numberDecimal':
        return typeof x === 'string' ? ['num-type', `NumberDecimal("${x}")`] : null;
      case '$numberLong':
        if (typeof x !== 'string') return null;
        return ['num-type', /^-?\d+$/.test(x) ? `NumberLong(${x})` : `NumberLong(${JSON.stringify(x)})`];
      case '$numberInt':
        return typeof x === 'string' ? ['num', x] : null;
      case '$numberDouble':
        return typeof x === 'string' ? ['num', x] : null;
      case '$binary':
        if (isObj(x) && typeof x.base64 === 'string') return ['bin', binaryText(x.base64, x.subType)];
        return null;
      case '$timestamp':
        if (isObj(x) && 't' in x && 'i' in x) return ['ts', `Timestamp(${Number(x.t)}, ${Number(x.i)})`];
        return null;
      case '$uuid':
        return typeof x === 'string' ? ['bin', `UUID("${x}")`] : null;
      case '$regularExpression':
        if (isObj(x) && typeof x.pattern === 'string') return ['regex', `/${x.pattern}/${x.options || ''}`];
        return null;
      case '$minKey':
        return ['misc', 'MinKey()'];
      case '$maxKey':
        return ['misc', 'MaxKey()'];
      case '$symbol':
        return typeof x === 'string' ? ['misc', `Symbol(${JSON.stringify(x)})`] : null;
      case '$code':
        return typeof x === 'string' ? ['misc', `Code(${JSON.stringify(x)})`] : null;
      case '$undefined':
        return ['misc', 'undefined'];
      default:
        return null;
    }
  }

  // Short one-line text for a value (summaries, keys).
  function compactValue(v, max = 40) {
    if (v === null) return 'null';
    if (typeof v === 'string') return truncate(JSON.stringify(v), max);
    if (typeof v !== 'object') return String(v);
    if (Array.isArray(v)) return v.length ? `[${plural(v.length, 'item')}]` : '[]';
    const sp = ejsonSpecial(v);
    if (sp) return truncate(sp[1], max);
    const n = Object.keys(v).length;
    return n ? `{${plural(n, 'field')}}` : '{}';
  }

  // Pretty-print a value as DOM nodes (mongosh-like, EJSON types styled).
  const IDENT = /^[A-Za-z_$][\w$]*$/;
  const INDENT = '  ';

  function renderEjson(value) {
    const pre = el('pre', 'ejson');
    let text = null;
    try {
      text = JSON.stringify(value);
    } catch (_) { /* cyclic: cannot happen with parsed JSON */ }
    if (text && text.length > BIG_EVENT_CHARS) {
      // Huge event: plain text is much cheaper than thousands of spans.
      pre.textContent = JSON.stringify(value, null, 2);
      pre.classList.add('ejson-plain');
      return pre;
    }
    const frag = document.createDocumentFragment();
    walk(value, 0, frag);
    pre.append(frag);
    return pre;
  }

  function punct(s) {
    return el('span', 'j-p', s);
  }

  function walk(v, depth, out) {
    if (v === null) { out.append(el('span', 'j-null', 'null')); return; }
    switch (typeof v) {
      case 'string': out.append(el('span', 'j-str', JSON.stringify(v))); return;
      case 'number': out.append(el('span', 'j-num', String(v))); return;
      case 'boolean': out.append(el('span', 'j-bool', String(v))); return;
      case 'object': break;
      default: out.append(el('span', 'j-null', String(v))); return;
    }
    const pad1 = '\n' + INDENT.repeat(depth + 1);
    const pad0 = '\n' + INDENT.repeat(depth);
    if (Array.isArray(v)) {
      if (!v.length) { out.append(punct('[]')); return; }
      out.append(punct('['));
      v.forEach((x, i) => {
        out.append(pad1);
        walk(x, depth + 1, out);
        if (i < v.length - 1) out.append(punct(','));
      });
      out.append(pad0, punct(']'));
      return;
    }
    const sp = ejsonSpecial(v);
    if (sp) {
      const cls = sp[0] === 'num' ? 'j-num' : `j-ejson j-${sp[0]}`;
      out.append(el('span', cls, sp[1]));
      return;
    }
    const keys = Object.keys(v);
    if (!keys.length) { out.append(punct('{}')); return; }
    out.append(punct('{'));
    keys.forEach((k, i) => {
      out.append(pad1, el('span', 'j-key', IDENT.test(k) ? k : JSON.stringify(k)), punct(': '));
      walk(v[k], depth + 1, out);
      if (i < keys.length - 1) out.append(punct(','));
    });
    out.append(pad0, punct('}'));
  }

  // ---------------------------------------------------------- summaries
  function fieldsPreview(doc, max = 4) {
    if (!isObj(doc)) return '';
    const keys = Object.keys(doc).filter((k) => k !== '_id');
    const parts = keys.slice(0, max).map((k) => `${k}: ${compactValue(doc[k], 32)}`);
    if (keys.length > max) parts.push(`+${keys.length - max} more`);
    return parts.join(', ');
  }

  function summarize(ev) {
    const op = ev.operationType;
    switch (op) {
      case 'insert':
        return fieldsPreview(ev.fullDocument) || 'document inserted';
      case 'replace':
        return fieldsPreview(ev.fullDocument) || 'document replaced';
      case 'update': {
        const ud = isObj(ev.updateDescription) ? ev.updateDescription : {};
        const parts = [];
        const set = isObj(ud.updatedFields) ? ud.updatedFields : {};
        const setKeys = Object.keys(set);
        if (setKeys.length) {
          const shown = setKeys.slice(0, 5).map((k) => `${k} \u2192 ${compactValue(set[k], 24)}`);
          if (setKeys.length > 5) shown.push(`+${setKeys.length - 5} more`);
          parts.push(shown.join(', '));
        }
        const removed = Array.isArray(ud.removedFields) ? ud.removedFields.map(String) : [];
        if (removed.length) parts.push(`unset ${removed.join(', ')}`);
        const trunc = Array.isArray(ud.truncatedArrays)
          ? ud.truncatedArrays.map((t) => (isObj(t) ? t.field : t)).filter(Boolean) : [];
        if (trunc.length) parts.push(`truncated ${trunc.join(', ')}`);
        return parts.join(' \u00b7 ') || 'no field changes';
      }
      case 'delete': {
        const before = fieldsPreview(ev.fullDocumentBeforeChange);
        return before ? `was ${before}` : 'document deleted';
      }
      case 'drop': return 'collection dropped';
      case 'rename': return `renamed to ${nsString(ev.to) || '?'}`;
      case 'dropDatabase': return 'database dropped';
      case 'invalidate': return 'change stream invalidated';
      default: return typeof op === 'string' ? op : 'event';
    }
  }

  function eventTime(ev) {
    const w = ev.wallTime;
    if (isObj(w) && '$date' in w) {
      const d = ejsonDate(w.$date);
      if (d) return { d, ms: true, source: 'wallTime' };
    } else if (typeof w === 'string') {
      const d = ejsonDate(w);
      if (d) return { d, ms: true, source: 'wallTime' };
    }
    const ct = isObj(ev.clusterTime) ? ev.clusterTime.$timestamp : null;
    if (isObj(ct) && typeof ct.t === 'number') {
      return { d: new Date(ct.t * 1000), ms: false, source: 'clusterTime' };
    }
    return null;
  }

  // ------------------------------------------------------------- elements
  const body = document.body;
  const ui = {
    connText: $('conn-text'),
    watcherPill: $('watcher-status'),
    watcherText: $('watcher-text'),
    watcherBanner: $('watcher-banner'),
    watcherBannerText: $('watcher-banner-text'),
    reconnectBtn: $('reconnect-btn'),
    watch: $('watch-target'),
    subPanel: $('sub-panel'),
    subSummary: $('sub-summary'),
    subDirty: $('sub-dirty'),
    form: $('sub-form'),
    fNs: $('f-ns'),
    fFilter: $('f-filter'),
    subError: $('sub-error'),
    subNote: $('sub-note'),
    defaults: $('sub-defaults'),
    closeBanner: $('close-banner'),
    closeTitle: $('close-title'),
    closeText: $('close-text'),
    resetBanner: $('reset-banner'),
    resetText: $('reset-text'),
    resumeNote: $('resume-note'),
    resumeText: $('resume-text'),
    dropNote: $('drop-note'),
    dropText: $('drop-text'),
    pauseBtn: $('pause-btn'),
    pauseLabel: $('pause-label'),
    pausedCount: $('paused-count'),
    clearBtn: $('clear-btn'),
    list: $('events'),
    empty: $('empty'),
    listFoot: $('list-foot'),
    foot: $('foot-text'),
    rate: $('rate'),
    count: {},
  };
  for (const k of [...ALL_CHECKS, 'total']) ui.count[k] = $(`count-${k}`);
  const opBoxes = Array.from(ui.form.querySelectorAll('input[name="op"]'));

  ui.fFilter.placeholder = '{"fullDocument.status": {"$in": ["open", "late"]}}';

  // ---------------------------------------------------------------- state
  let ws = null;                // current socket (null while disconnected)
  let state = 'connecting';
  let lastId = null;            // id of the last change received
  let sub = { ns: '', ops: null, filter: '' }; // applied subscription
  let extraOps = [];            // unknown op names from the page URL, kept under "other"
  let attempt = 0;              // backoff exponent
  let immediateStreak = 0;
  let reconnectTimer = 0;
  let countdownTimer = 0;
  let connectTimer = 0;
  let reconnectAt = 0;
  let openedAt = 0;
  let disconnectedAt = 0;
  let connections = 0;          // sockets that reached "open"
  let lastClose = null;         // {code, reason, at}
  let sinceHello = 0;           // changes received on the current connection
  let helloInfo = null;
  let resetShown = false;       // reset banner/marker already shown for this connection
  let paused = false;
  let pausedBuf = [];
  let pausedDropped = 0;
  let pending = [];             // items waiting to be drawn
  let flushScheduled = false;
  let trimmedRows = 0;          // rows removed because of LIST_CAP
  const counts = { insert: 0, update: 0, replace: 0, delete: 0, other: 0, total: 0 };
  const seen = new Set();
  const seenOrder = [];
  const rowData = new WeakMap(); // row element -> {id, event}

  // events/s: one bucket per second over a sliding window
  const buckets = new Array(RATE_WINDOW_S).fill(0);
  let bucketSec = Math.floor(Date.now() / 1000);
  let rateStart = Date.now();

  function advanceBuckets(nowSec) {
    const gap = nowSec - bucketSec;
    if (gap <= 0) return;
    for (let i = 1; i <= Math.min(gap, RATE_WINDOW_S); i++) {
      buckets[(bucketSec + i) % RATE_WINDOW_S] = 0;
    }
    bucketSec = nowSec;
  }

  function noteRate() {
    const s = Math.floor(Date.now() / 1000);
    advanceBuckets(s);
    buckets[s % RATE_WINDOW_S]++;
  }

  function currentRate() {
    const now = Date.now();
    advanceBuckets(Math.floor(now / 1000));
    const sum = buckets.reduce((a, b) => a + b, 0);
    const window = Math.min(RATE_WINDOW_S - 1 + (now % 1000) / 1000, (now - rateStart) / 1000);
    return sum / Math.max(window, 1);
  }

  // ------------------------------------------------------ debugging hook
  window.wsproxy = {
    get socket() { return ws; },
    get lastId() { return lastId; },
    counts,
    get state() { return state; },
    get subscription() { return { ...sub }; },
    get paused() { return paused; },
    reconnect: () => reconnectNow(),
  };

  // --------------------------------------------------------- subscription
  function opsFromList(list) {
    // -> {checks:Set of checkbox values, extra:[unknown op names]}
    const checks = new Set();
    const extra = [];
    for (const op of list) {
      if (MAIN_OPS.includes(op)) checks.add(op);
      else if (op === 'other' || OTHER_OPS.includes(op)) checks.add('other');
      else if (op) { checks.add('other'); extra.push(op); }
    }
    return { checks, extra };
  }

  function splitList(s) {
    return String(s || '').split(',').map((x) => x.trim()).filter(Boolean);
  }

  function readLocation() {
    const q = new URLSearchParams(location.search);
    const ns = splitList(q.get('ns')).join(',');
    const filter = (q.get('filter') || '').trim();
    let checks = new Set(ALL_CHECKS);
    const opsRaw = q.get('ops');
    if (opsRaw !== null && splitList(opsRaw).length) {
      const r = opsFromList(splitList(opsRaw));
      checks = r.checks;
      extraOps = r.extra;
    }
    ui.fNs.value = ns;
    ui.fFilter.value = filter;
    for (const b of opBoxes) b.checked = checks.has(b.value);
  }

  // Read the form. Returns {sub} or {error, field}.
  function formSubscription() {
    const ns = splitList(ui.fNs.value).join(',');
    const checked = opBoxes.filter((b) => b.checked).map((b) => b.value);
    if (!checked.length) return { error: 'Choose at least one operation type.', field: opBoxes[0] };
    let ops = null; // null: every operation (no "ops" parameter)
    if (checked.length < ALL_CHECKS.length) {
      ops = checked.filter((c) => c !== 'other');
      if (checked.includes('other')) ops.push(...OTHER_OPS, ...extraOps);
    }
    const filter = ui.fFilter.value.trim();
    if (filter) {
      let parsed;
      try {
        parsed = JSON.parse(filter);
      } catch (e) {
        return { error: `The filter is not valid JSON: ${e.message}`, field: ui.fFilter };
      }
      if (!isObj(parsed)) return { error: 'The filter must be a JSON object, e.g. {"operationType": "insert"}.', field: ui.fFilter };
    }
    // The filter is sent as typed (only validated): re-serialising it
    // could change big integers that JSON.parse cannot represent exactly.
    return { sub: { ns, ops, filter } };
  }

  function sameSub(a, b) {
    return a.ns === b.ns && a.filter === b.filter &&
      (a.ops || []).join(',') === (b.ops || []).join(',') && !a.ops === !b.ops;
  }

  function describeSub(s) {
    const parts = [s.ns ? s.ns.split(',').join(', ') : 'all namespaces'];
    if (s.ops) {
      const r = opsFromList(s.ops);
      parts.push(ALL_CHECKS.filter((c) => r.checks.has(c)).join(', '));
    } else {
      parts.push('all operations');
    }
    if (s.filter) parts.push(`filter ${truncate(s.filter.replace(/\s+/g, ' '), 60)}`);
    return parts.join(' \u00b7 ');
  }

  function writeLocation() {
    const url = new URL(location.href);
    const q = url.searchParams;
    const set = (k, v) => (v ? q.set(k, v) : q.delete(k));
    set('ns', sub.ns);
    set('ops', sub.ops ? sub.ops.join(',') : '');
    set('filter', sub.filter);
    // Commas need no escaping in a query string: keep "ops=insert,update" readable.
    url.search = q.toString().replace(/%2C/gi, ',');
    if (url.href !== location.href) history.replaceState(history.state, '', url.href);
  }

  function showFormError(msg) {
    ui.subError.textContent = msg || '';
    ui.subError.hidden = !msg;
  }

  function updateDirty() {
    const r = formSubscription();
    ui.subDirty.hidden = !!(r.sub && sameSub(r.sub, sub));
  }

  function applyForm(ev) {
    if (ev) ev.preventDefault();
    const r = formSubscription();
    if (r.error) {
      showFormError(r.error);
      ui.subPanel.open = true;
      if (r.field) r.field.focus();
      return;
    }
    showFormError('');
    if (sameSub(r.sub, sub) && state !== 'closed') {
      flashNote('Already applied.');
      updateDirty();
      return;
    }
    // A new subscription starts afresh: the last id was a position in the
    // *old* stream, so resuming from it would replay events from the past
    // under the new filter (a partial, confusing history) or be rejected.
    // The list and counters are cleared so that what is shown always
    // matches the subscription in the form. (Re-applying the same
    // subscription after a stop keeps the list and resumes.)
    if (!sameSub(r.sub, sub)) {
      sub = r.sub;
      lastId = null;
      clearView();
      ui.resetBanner.hidden = true;
      ui.resumeNote.hidden = true;
      writeLocation();
      flashNote('Applied.');
    }
    renderSub();
    attempt = 0;
    immediateStreak = 0;
    closeSocket('subscription changed');
    connect();
  }

  let noteTimer = 0;
  function flashNote(text) {
    ui.subNote.textContent = text;
    clearTimeout(noteTimer);
    noteTimer = setTimeout(() => { ui.subNote.textContent = ''; }, 2500);
  }

  function renderSub() {
    ui.subSummary.textContent = describeSub(sub);
    updateDirty();
  }

  // ------------------------------------------------------------ connection
  function wsPath() {
    const meta = document.querySelector('meta[name="wsproxy-ws-path"]');
    const p = meta ? meta.content.trim() : '';
    if (!p || p.includes('{{')) {
      console.warn('wsproxy: no WebSocket path in the page; using /ws');
      return '/ws';
    }
    return p;
  }

  function buildUrl() {
    const u = new URL(wsPath(), location.href);
    u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    u.hash = '';
    const q = u.searchParams;
    if (sub.ns) q.set('ns', sub.ns);
    if (sub.ops) q.set('ops', sub.ops.join(','));
    if (sub.filter) q.set('filter', sub.filter);
    // Always resume after the last change seen, so nothing is lost or
    // shown twice across reconnects.
    if (lastId) q.set('resume_after', lastId);
    return u.href;
  }

  function setState(s, text) {
    state = s;
    body.dataset.state = s;
    if (text !== undefined) ui.connText.textContent = text;
    ui.reconnectBtn.hidden = !(s === 'reconnecting' || s === 'closed');
    if (s === 'live') {
      ui.closeBanner.hidden = true;
      delete body.dataset.refused;
    }
    renderListState();
  }

  function closeSocket(reason) {
    const s = ws;
    ws = null;
    clearTimeout(connectTimer);
    if (!s) return;
    s.onopen = s.onmessage = s.onclose = s.onerror = null;
    try {
      s.close(1000, reason);
    } catch (_) { /* already closing */ }
  }

  function clearReconnect() {
    clearTimeout(reconnectTimer);
    clearInterval(countdownTimer);
    reconnectTimer = countdownTimer = 0;
  }

  function connect() {
    clearReconnect();
    closeSocket('reconnecting');
    let sock;
    try {
      sock = new WebSocket(buildUrl());
    } catch (e) {
      showClosed('Cannot connect', `Invalid WebSocket address: ${e.message}`);
      return;
    }
    ws = sock;
    sinceHello = 0;
    helloInfo = null;
    resetShown = false;
    setState('connecting', connections ? 'Reconnecting\u2026' : 'Connecting\u2026');
    connectTimer = setTimeout(() => {
      if (ws === sock && sock.readyState === WebSocket.CONNECTING) sock.close();
    }, CONNECT_TIMEOUT_MS);
    sock.onopen = () => {
      if (ws !== sock) return;
      clearTimeout(connectTimer);
      openedAt = Date.now();
      connections++;
      ui.connText.textContent = 'Connected, waiting for the server\u2026';
    };
    sock.onmessage = (e) => {
      if (ws === sock) onMessage(e.data);
    };
    sock.onclose = (e) => onClose(sock, e);
    sock.onerror = () => { /* a close event always follows */ };
  }

  function reconnectNow() {
    attempt = Math.max(0, attempt - 1); // a manual retry should not grow the backoff
    connect();
  }

  function backoffDelay() {
    // Exponential with "equal jitter": half fixed, half random.
    const d = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
    attempt = Math.min(attempt + 1, 16);
    return d / 2 + Math.random() * (d / 2);
  }

  function closeInfo(code) {
    const known = CLOSE_CODES[code];
    if (known) return { label: known[0], text: known[1], policy: known[2] };
    if (code >= 4000) return { label: 'application close', text: 'The server closed the connection.', policy: 'backoff' };
    return { label: 'closed', text: 'The connection was closed.', policy: 'backoff' };
  }

  function closeSummary(c) {
    const info = closeInfo(c.code);
    const reason = c.reason && c.reason.toLowerCase() !== info.label ? ` \u2014 \u201c${c.reason}\u201d` : '';
    return `${c.code} ${info.label}${reason}`;
  }

  function onClose(sock, e) {
    if (sock !== ws) return;
    ws = null;
    clearTimeout(connectTimer);
    const upFor = openedAt ? Date.now() - openedAt : 0;
    const wasOpen = openedAt > 0;
    if (wasOpen && upFor > STABLE_MS) {
      attempt = 0;
      immediateStreak = 0;
    }
    openedAt = 0;
    disconnectedAt = Date.now();
    lastClose = { code: e.code, reason: e.reason || '', at: disconnectedAt };
    setWatcher(null);
    const info = closeInfo(e.code);
    let text = info.text;
    if (e.code === 1006 && !wasOpen) checkRefusal();
    ui.closeTitle.textContent = `Connection closed: ${closeSummary(lastClose)}.`;
    ui.closeText.textContent = text;
    setCloseBannerSeverity(info.policy === 'stop');
    ui.closeBanner.hidden = false;
    // The resume note described the previous reconnection; the next hello
    // brings a new one.
    ui.resumeNote.hidden = true;

    if (info.policy === 'stop') {
      showClosed(null, null);
      if (e.code === 1008) {
        showFormError(`Rejected by the server: ${e.reason || 'invalid subscription'}. Change the subscription and apply it to reconnect.`);
        ui.subPanel.open = true;
      }
      return;
    }
    let delay;
    if (info.policy === 'immediate' && immediateStreak < MAX_IMMEDIATE) {
      immediateStreak++;
      delay = Math.random() * 250; // tiny jitter: spread a server restart's herd
    } else {
      delay = backoffDelay();
      if (info.policy === 'busy') delay = Math.max(delay, BUSY_MIN_MS + Math.random() * 2000);
    }
    scheduleReconnect(delay);
  }

  function setCloseBannerSeverity(fatal) {
    ui.closeBanner.classList.toggle('banner-error', fatal);
    ui.closeBanner.classList.toggle('banner-warn', !fatal);
  }

  // Browsers report an HTTP refusal of the upgrade (e.g. 400 for an invalid
  // filter, 401/403, 503) only as a failed connection (1006) and hide the
  // status. If the page's own URL still answers, the server is up, so the
  // failure was most likely such a refusal: say so, and keep backing off.
  let refusalCheck = 0;
  function checkRefusal() {
    const gen = ++refusalCheck;
    const ctrl = typeof AbortController === 'function' ? new AbortController() : null;
    const timer = setTimeout(() => ctrl && ctrl.abort(), 4000);
    fetch(location.href, { method: 'HEAD', cache: 'no-store', credentials: 'same-origin', signal: ctrl ? ctrl.signal : undefined })
      .then((r) => {
        if (gen !== refusalCheck || state !== 'reconnecting' || r.status >= 500) return;
        ui.closeText.textContent = 'The server is reachable but refused the WebSocket connection: ' +
          'the subscription (namespaces, operations or filter) may be invalid, you may not be ' +
          'authorised, or the server may be full. Retrying with backoff; check the subscription.';
        body.dataset.refused = 'true';
      })
      .catch(() => { /* server down or network gone: the generic text stands */ })
      .finally(() => clearTimeout(timer));
  }

  function showClosed(title, text) {
    clearReconnect();
    setCloseBannerSeverity(true);
    if (title) {
      ui.closeTitle.textContent = title;
      ui.closeText.textContent = text || '';
      ui.closeBanner.hidden = false;
    }
    const why = lastClose ? ` (${closeInfo(lastClose.code).label})` : '';
    setState('closed', `Closed${why}`);
  }

  function scheduleReconnect(delay) {
    clearReconnect();
    reconnectAt = Date.now() + delay;
    const tick = () => {
      const left = reconnectAt - Date.now();
      ui.connText.textContent = left > 950
        ? `Reconnecting in ${Math.ceil(left / 1000)} s`
        : 'Reconnecting\u2026';
    };
    setState('reconnecting');
    tick();
    countdownTimer = setInterval(tick, 250);
    reconnectTimer = setTimeout(connect, delay);
  }

  // -------------------------------------------------------------- messages
  function onMessage(data) {
    if (typeof data !== 'string') return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (_) {
      console.warn('wsproxy: ignoring a frame that is not JSON');
      return;
    }
    if (!isObj(msg)) return;
    switch (msg.type) {
      case 'hello': onHello(msg); break;
      case 'change': onChange(msg); break;
      case 'reset': onReset(msg); break;
      case 'status': onStatus(msg); break;
      default: break; // unknown types: ignored (forward compatible)
    }
  }

  function goLive() {
    if (state !== 'live') setState('live', 'Live');
  }

  function onHello(msg) {
    helloInfo = msg;
    sinceHello = 0;
    goLive();
    const watch = typeof msg.watch === 'string' ? msg.watch : '';
    ui.watch.textContent = watch ? `watching ${watch}` : 'watching the whole deployment';
    const mode = typeof msg.resume === 'string' ? msg.resume : 'none';
    body.dataset.resume = mode;
    // A "reset" hello is normally followed by a reset message; show the
    // warning now anyway, so it cannot be missed.
    if (mode === 'reset') onReset({ lost: true });
    const bits = [];
    if (msg.worker !== undefined) bits.push(`worker ${msg.worker}`);
    bits.push(`${connections} connection${connections === 1 ? '' : 's'} this session`);
    ui.foot.textContent = `${bits.join(' \u00b7 ')} \u00b7 newest first, up to ${LIST_CAP} rows \u00b7 click a row for the full event`;
    updateResumeNote();
  }

  function updateResumeNote() {
    const mode = helloInfo && typeof helloInfo.resume === 'string' ? helloInfo.resume : 'none';
    const reconnect = connections > 1;
    if (mode === 'none' && !reconnect) {
      ui.resumeNote.hidden = true;
      return;
    }
    const gap = lastClose && disconnectedAt ? fmtDuration(Math.max(0, (openedAt || Date.now()) - disconnectedAt)) : null;
    const after = lastClose ? ` after ${gap} offline (${closeSummary(lastClose)})` : '';
    let text;
    switch (mode) {
      case 'history':
        text = `Resumed from the server\u2019s event history${after}.`;
        break;
      case 'catch-up':
        text = `Resumed by catching up on the change stream${after}.`;
        break;
      case 'reset':
        text = `Reconnected${after}, but could not resume: see the warning above.`;
        break;
      case 'none':
        text = `Reconnected${after} without a resume position (no event had been received yet), so changes made during the gap are not replayed.`;
        break;
      default:
        text = `Reconnected${after} (resume: ${mode}).`;
    }
    if (mode !== 'none' && mode !== 'reset') {
      text += ` ${plural(sinceHello, 'event')} received since.`;
    }
    ui.resumeText.textContent = text;
    ui.resumeNote.dataset.mode = mode;
    ui.resumeNote.hidden = false;
  }

  function remember(id) {
    seen.add(id);
    seenOrder.push(id);
    if (seenOrder.length > SEEN_CAP) seen.delete(seenOrder.shift());
  }

  function onChange(msg) {
    const event = isObj(msg.event) ? msg.event : null;
    if (!event) return;
    const id = typeof msg.id === 'string' ? msg.id : (msg.id !== undefined ? JSON.stringify(msg.id) : '');
    if (id) {
      if (seen.has(id)) return; // defensive: never show the same change twice
      remember(id);
      lastId = id;
    }
    goLive();
    sinceHello++;
    const cls = opClass(event.operationType);
    counts[cls]++;
    counts.total++;
    noteRate();
    enqueue({ kind: 'change', id, event, at: Date.now() });
    if (helloInfo && !ui.resumeNote.hidden && sinceHello <= 1000) updateResumeNote();
  }

  function onReset(msg) {
    goLive();
    const reason = typeof msg.reason === 'string' && msg.reason ? msg.reason : 'the resume position was no longer available';
    const lost = msg.lost !== false;
    const first = !resetShown;
    resetShown = true;
    const when = fmtClock(new Date(), true);
    ui.resetText.textContent = lost
      ? `At ${when} the server could not resume from the last event received (${reason}). Changes made while disconnected may be missing; a marker in the list shows where.`
      : `At ${when} the server restarted the stream (${reason}).`;
    $('reset-title').textContent = lost
      ? 'Events were lost while disconnected; the list restarted live.'
      : 'The server restarted the event stream.';
    ui.resetBanner.hidden = false;
    body.dataset.reset = 'true';
    if (first) {
      enqueue({ kind: 'gap', text: lost ? 'Events may be missing here: the server could not resume.' : 'The server restarted the stream here.' });
    }
  }

  function setWatcher(w, detail) {
    if (!w) {
      ui.watcherPill.hidden = true;
      ui.watcherBanner.hidden = true;
      delete body.dataset.watcher;
      return;
    }
    body.dataset.watcher = w;
    ui.watcherPill.hidden = false;
    ui.watcherPill.dataset.watcher = w;
    ui.watcherText.textContent = w === 'connected' ? 'MongoDB connected' : `MongoDB ${w}`;
    ui.watcherPill.title = detail || '';
    const bad = w !== 'connected';
    ui.watcherBanner.hidden = !bad;
    if (bad) ui.watcherBannerText.textContent = detail ? `(${detail}) Events will continue when it is back.` : 'Events will continue when it is back.';
  }

  function onStatus(msg) {
    if (typeof msg.watcher !== 'string') return;
    setWatcher(msg.watcher, typeof msg.detail === 'string' ? msg.detail : '');
  }

  // ------------------------------------------------------------------ view
  function enqueue(item) {
    if (paused) {
      pausedBuf.push(item);
      if (pausedBuf.length > BUFFER_CAP) {
        const dropped = pausedBuf.shift();
        if (dropped.kind === 'change') pausedDropped++;
      }
    } else {
      pending.push(item);
      // Anything beyond the list cap would be trimmed right after drawing.
      if (pending.length > LIST_CAP) {
        const dropped = pending.shift();
        if (dropped.kind === 'change') trimmedRows++;
      }
    }
    scheduleFlush();
  }

  function scheduleFlush() {
    if (flushScheduled) return;
    flushScheduled = true;
    // rAF batches bursts into one layout; the timeout keeps a background
    // tab (no animation frames) up to date too.
    const t = setTimeout(run, 100);
    const r = requestAnimationFrame(run);
    function run() {
      clearTimeout(t);
      cancelAnimationFrame(r);
      if (flushScheduled) flush();
    }
  }

  function flush() {
    flushScheduled = false;
    if (pending.length) {
      const frag = document.createDocumentFragment();
      for (let i = pending.length - 1; i >= 0; i--) {
        const it = pending[i];
        frag.append(it.kind === 'gap' ? buildGap(it.text) : buildRow(it));
      }
      pending = [];
      ui.list.prepend(frag);
      let extra = ui.list.children.length - LIST_CAP;
      while (extra-- > 0) {
        const last = ui.list.lastElementChild;
        if (last.classList.contains('event-row')) trimmedRows++;
        last.remove();
      }
    }
    renderCounts();
    renderListState();
  }

  function renderCounts() {
    for (const k of Object.keys(ui.count)) ui.count[k].textContent = counts[k].toLocaleString();
    ui.pausedCount.hidden = !paused;
    ui.pausedCount.textContent = pausedBuf.filter((x) => x.kind === 'change').length.toLocaleString() + ' new';
    if (paused) {
      ui.pauseBtn.title = pausedDropped
        ? `${pausedDropped} older events were dropped from the paused buffer (counters include them)`
        : 'Show the events that arrived while paused';
    }
  }

  function renderRate() {
    const r = currentRate();
    ui.rate.textContent = r === 0 ? '0' : r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString();
  }

  function renderListState() {
    const n = ui.list.children.length;
    ui.empty.hidden = n > 0;
    if (!n) {
      ui.empty.textContent = paused
        ? 'Paused. New events are buffered until you resume.'
        : state === 'live' ? 'Live. Waiting for changes that match this subscription\u2026'
          : state === 'closed' ? 'Not connected.' : 'Waiting for changes\u2026';
    }
    ui.listFoot.hidden = trimmedRows === 0;
    if (trimmedRows) {
      ui.listFoot.textContent = `Showing the newest ${LIST_CAP} rows; ${trimmedRows.toLocaleString()} older rows were removed from the view (the counters include them).`;
    }
  }

  function buildGap(text) {
    const li = el('li', 'gap-row');
    li.setAttribute('role', 'note');
    li.append(el('span', 'gap-text', text));
    return li;
  }

  function buildRow(item) {
    const ev = item.event;
    const op = typeof ev.operationType === 'string' ? ev.operationType : 'unknown';
    const cls = opClass(op);
    const ns = nsString(ev.ns);
    const dk = isObj(ev.documentKey) ? ev.documentKey : null;
    const hasKey = dk && Object.prototype.hasOwnProperty.call(dk, '_id');
    const key = hasKey ? dk._id : undefined;

    const li = el('li', `event-row op-${cls}`);
    li.dataset.id = item.id;
    li.dataset.op = op;
    li.dataset.ns = ns;
    li.dataset.key = hasKey ? JSON.stringify(key) : '';
    li.tabIndex = 0;
    li.setAttribute('aria-expanded', 'false');

    const main = el('div', 'row-main');

    const t = eventTime(ev);
    const time = el('time', 'c-time');
    if (t) {
      time.dateTime = t.d.toISOString();
      const today = sameDay(t.d, new Date());
      time.textContent = (today ? '' : `${t.d.getFullYear()}-${pad(t.d.getMonth() + 1)}-${pad(t.d.getDate())} `) + fmtClock(t.d, t.ms);
      time.title = `${t.d.toString()}\n${t.d.toISOString()} (${t.source})`;
      if (!today) time.classList.add('other-day');
    } else {
      const d = new Date(item.at);
      time.textContent = fmtClock(d, true);
      time.title = 'No wallTime in the event: time received';
      time.classList.add('approx');
    }

    const opEl = el('span', `c-op op-badge op-${cls}`, op);
    const nsEl = el('span', 'c-ns', ns || '\u2014');
    nsEl.title = ns;

    const rest = el('span', 'c-rest');
    let keyText = '\u2014';
    if (hasKey) {
      keyText = isObj(key) && typeof key.$oid === 'string' && Object.keys(key).length === 1
        ? key.$oid : JSON.stringify(key);
    }
    const keyEl = el('span', 'c-key', truncate(keyText, 48));
    keyEl.title = dk ? `documentKey: ${JSON.stringify(dk)}` : 'no documentKey';
    const summary = summarize(ev);
    const sumEl = el('span', 'c-sum', summary);
    sumEl.title = summary;
    rest.append(keyEl, sumEl);

    main.append(time, opEl, nsEl, rest);
    li.append(main);
    rowData.set(li, item);
    return li;
  }

  function buildDetail(row) {
    const item = rowData.get(row);
    const det = el('div', 'row-detail');
    const bar = el('div', 'detail-bar');
    const idEl = el('span', 'detail-id', item && item.id ? `id ${truncate(item.id, 40)}` : 'no id');
    if (item && item.id) idEl.title = `Resume token: ${item.id}`;
    const copy = el('button', 'btn btn-small copy-btn', 'Copy JSON');
    copy.type = 'button';
    bar.append(idEl, copy);
    det.append(bar, renderEjson(item ? item.event : null));
    return det;
  }

  function toggleRow(row, force) {
    const open = force !== undefined ? force : row.getAttribute('aria-expanded') !== 'true';
    let det = row.querySelector(':scope > .row-detail');
    if (open && !det) {
      det = buildDetail(row);
      row.append(det);
    }
    if (det) det.hidden = !open;
    row.setAttribute('aria-expanded', String(open));
    row.classList.toggle('expanded', open);
  }

  async function copyRow(row, btn) {
    const item = rowData.get(row);
    const text = JSON.stringify(item ? item.event : null, null, 2);
    let ok = false;
    try {
      await navigator.clipboard.writeText(text);
      ok = true;
    } catch (_) {
      // Fallback (no clipboard API outside secure contexts): select the text.
      const pre = row.querySelector('pre.ejson');
      if (pre) {
        const range = document.createRange();
        range.selectNodeContents(pre);
        const sel = getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        try { ok = document.execCommand('copy'); } catch (__) { ok = false; }
      }
    }
    btn.textContent = ok ? 'Copied' : 'Selected: press Ctrl+C';
    setTimeout(() => { btn.textContent = 'Copy JSON'; }, 1800);
  }

  function clearView() {
    ui.list.textContent = '';
    pending = [];
    pausedBuf = [];
    pausedDropped = 0;
    trimmedRows = 0;
    for (const k of Object.keys(counts)) counts[k] = 0;
    buckets.fill(0);
    rateStart = Date.now();
    ui.dropNote.hidden = true;
    renderCounts();
    renderRate();
    renderListState();
  }

  function setPaused(p) {
    if (p === paused) return;
    paused = p;
    body.dataset.paused = String(p);
    ui.pauseBtn.setAttribute('aria-pressed', String(p));
    ui.pauseLabel.textContent = p ? 'Resume' : 'Pause';
    ui.pauseBtn.classList.toggle('btn-active', p);
    if (!p) {
      const items = pausedBuf;
      pausedBuf = [];
      if (pausedDropped) {
        const n = pausedDropped;
        items.unshift({ kind: 'gap', text: `${plural(n, 'event')} not shown here: the pause buffer keeps the newest ${BUFFER_CAP}.` });
        ui.dropText.textContent = `While paused, ${plural(n, 'older event')} did not fit in the buffer (${BUFFER_CAP}) and were left out of the list; the counters include them.`;
        ui.dropNote.hidden = false;
        pausedDropped = 0;
      }
      for (const it of items) enqueue(it);
      ui.pauseBtn.title = '';
    }
    renderCounts();
    renderListState();
    scheduleFlush();
  }

  // ---------------------------------------------------------------- wiring
  ui.form.addEventListener('submit', applyForm);
  ui.form.addEventListener('input', () => { showFormError(''); updateDirty(); });
  ui.form.addEventListener('change', updateDirty);
  ui.fFilter.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) applyForm(e);
  });
  ui.defaults.addEventListener('click', () => {
    ui.fNs.value = '';
    ui.fFilter.value = '';
    extraOps = [];
    for (const b of opBoxes) b.checked = true;
    showFormError('');
    updateDirty();
  });

  ui.reconnectBtn.addEventListener('click', reconnectNow);
  ui.pauseBtn.addEventListener('click', () => setPaused(!paused));
  ui.clearBtn.addEventListener('click', () => {
    clearView();
    flashNote('');
  });

  document.addEventListener('click', (e) => {
    const t = e.target;
    if (!(t instanceof Element)) return;
    const dismiss = t.closest('[data-dismiss]');
    if (dismiss) {
      const target = $(dismiss.dataset.dismiss);
      if (target) target.hidden = true;
    }
  });

  ui.list.addEventListener('click', (e) => {
    const t = e.target;
    if (!(t instanceof Element)) return;
    const row = t.closest('.event-row');
    if (!row) return;
    const copy = t.closest('.copy-btn');
    if (copy) { copyRow(row, copy); return; }
    if (t.closest('.row-detail')) return; // let people select text in the JSON
    const sel = getSelection();
    if (sel && !sel.isCollapsed && row.contains(sel.anchorNode)) return; // selecting, not clicking
    toggleRow(row);
  });

  ui.list.addEventListener('keydown', (e) => {
    const row = e.target;
    if (!(row instanceof Element) || !row.classList.contains('event-row')) return;
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      toggleRow(row);
    } else if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      let next = e.key === 'ArrowDown' ? row.nextElementSibling : row.previousElementSibling;
      while (next && !next.classList.contains('event-row')) {
        next = e.key === 'ArrowDown' ? next.nextElementSibling : next.previousElementSibling;
      }
      if (next) {
        e.preventDefault();
        next.focus();
      }
    } else if (e.key === 'Escape' && row.getAttribute('aria-expanded') === 'true') {
      toggleRow(row, false);
    }
  });

  window.addEventListener('online', () => {
    if (state === 'reconnecting') reconnectNow();
  });

  setInterval(renderRate, 1000);

  // ------------------------------------------------------------------ start
  readLocation();
  const initial = formSubscription();
  if (initial.sub) {
    sub = initial.sub;
  } else {
    // A bad link (e.g. malformed filter in ?filter=): show it, start unfiltered.
    showFormError(`${initial.error} The link's subscription was not applied.`);
    sub = { ns: '', ops: null, filter: '' };
  }
  // The panel remembers whether the user collapsed it; on phones it starts
  // collapsed (the summary line still shows the subscription).
  const PANEL_KEY = 'wsproxy.subPanelOpen';
  let panelPref = null;
  try { panelPref = localStorage.getItem(PANEL_KEY); } catch (_) { /* storage disabled */ }
  if (initial.error) {
    ui.subPanel.open = true;
  } else if (panelPref !== null) {
    ui.subPanel.open = panelPref === '1';
  } else if (window.matchMedia && window.matchMedia('(max-width: 640px)').matches) {
    ui.subPanel.open = false;
  }
  ui.subPanel.querySelector('summary').addEventListener('click', () => {
    // runs before the toggle: store the state it is about to get
    try { localStorage.setItem(PANEL_KEY, ui.subPanel.open ? '0' : '1'); } catch (_) { /* ignore */ }
  });
  renderSub();
  renderCounts();
  renderListState();
  connect();
})();
