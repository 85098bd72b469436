/* wsproxy live page: the DOM of the bundled viewer.
 *
 * The protocol (connection, backoff, resume, duplicates, close codes,
 * refusals, subscribe) is wsproxy-client.js's; rendering Extended JSON is
 * ejson.js's; this module only shows what they report. Event data is
 * untrusted: it only ever reaches the DOM through textContent and
 * attributes, never innerHTML.
 */
import { LiveDocuments, OPERATION_TYPES, WsproxyClient, normalizeSubscription }
  from './wsproxy-client.js';
import { compactValue, ejsonDate, ejsonSpecial, isObj, plural, renderEjson, truncate }
  from './ejson.js';

// ------------------------------------------------------------------ limits
const LIST_CAP = 500;          // rows kept in the DOM (newest first)
const BUFFER_CAP = 500;        // events kept while the view is paused
const RATE_WINDOW_S = 10;
const DOC_ROWS_CAP = 1000;     // document rows in the DOM; more are held, not shown
const DOC_COLS_CAP = 12;       // top-level fields shown as columns
const FLASH_MS = 1500;         // how long a changed cell stays marked
const TOKEN_KEY = 'wsproxy.token';

// ------------------------------------------------------------------ helpers
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

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


// ---------------------------------------------------------------- elements
const body = document.body;
const ui = {
  connText: $('conn-text'),
  watcherPill: $('watcher-status'),
  watcherText: $('watcher-text'),
  watcherBanner: $('watcher-banner'),
  watcherBannerTitle: $('watcher-banner-title'),
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
  subApply: $('sub-apply'),
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
const opBoxes = Array.from(ui.form.querySelectorAll('input[name="op"]'));
const ALL_CHECKS = opBoxes.map((b) => b.value);          // the page's columns
const MAIN_OPS = ALL_CHECKS.filter((c) => c !== 'other');
const OTHER_OPS = OPERATION_TYPES.filter((op) => !MAIN_OPS.includes(op));
const opClass = (op) => (MAIN_OPS.includes(op) ? op : 'other');
for (const k of [...ALL_CHECKS, 'leave', 'total']) ui.count[k] = $(`count-${k}`);
const otherBox = opBoxes.find((b) => b.value === 'other');
if (otherBox) otherBox.closest('label').title = OTHER_OPS.join(', ');

ui.fFilter.placeholder = '{"fullDocument.status": {"$in": ["open", "late"]}}';

// ------------------------------------------------------------------- state
let extraOps = [];            // unknown op names from the page URL (the server says why)
let connections = 0;          // connections that reached hello
let sinceHello = 0;           // changes received on the current connection
let resetShown = false;       // reset banner/marker already shown for this connection
let disconnectedAt = 0;
let offlineMs = null;         // how long the last gap lasted (at the last hello)
let paused = false;
let pausedBuf = [];
let pausedDropped = 0;
let pending = [];             // items waiting to be drawn
let flushScheduled = false;
let trimmedRows = 0;          // rows removed because of LIST_CAP
const counts = { total: 0, leave: 0 }; // leave: documents that left the view (not changes)
for (const k of ALL_CHECKS) counts[k] = 0;
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

// ------------------------------------------------------------ credentials
// A token from the host page (window.wsproxyToken: a string, or a function
// returning one or a promise of one), else from this page's own URL
// (?token=..., taken out of the address bar and history at once and kept
// for this tab only), else none: the server's authorizer may still use
// the session cookie.
function readToken() {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get('token');
  if (fromUrl !== null) {
    url.searchParams.delete('token');
    history.replaceState(history.state, '', url.href);
    try {
      if (fromUrl) sessionStorage.setItem(TOKEN_KEY, fromUrl);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage disabled: this load only */ }
  }
  return () => {
    const hook = window.wsproxyToken;
    if (typeof hook === 'function') return hook();
    if (typeof hook === 'string' && hook) return hook;
    try {
      return sessionStorage.getItem(TOKEN_KEY) || fromUrl || null;
    } catch (_) {
      return fromUrl || null;
    }
  };
}

// ------------------------------------------------------------ subscription
function opsFromList(list) {
  // -> {checks: Set of checkbox values, extra: [unknown op names]}
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
  const ns = splitList(ui.fNs.value);
  const checked = opBoxes.filter((b) => b.checked).map((b) => b.value);
  if (!checked.length) return { error: 'Choose at least one operation type.', field: opBoxes[0] };
  let ops = null; // null: every operation (no "ops" parameter)
  if (checked.length < ALL_CHECKS.length) {
    ops = checked.filter((c) => c !== 'other');
    if (checked.includes('other')) ops.push(...OTHER_OPS, ...extraOps);
  }
  const filter = ui.fFilter.value.trim();
  const error = filterError(filter, '{"operationType": "insert"}');
  if (error) return { error, field: ui.fFilter };
  // The filter is sent as typed (only validated): re-serialising it could
  // change big integers that JSON.parse cannot represent exactly.
  return { sub: normalizeSubscription({ ns: ns.length ? ns : null, ops, filter }) };
}

function filterError(filter, example) {
  if (!filter) return null;
  let parsed;
  try {
    parsed = JSON.parse(filter);
  } catch (e) {
    return `The filter is not valid JSON: ${e.message}`;
  }
  return isObj(parsed) ? null : `The filter must be a JSON object, e.g. ${example}.`;
}

function sameSub(a, b) {
  const list = (x) => (x === null ? null : x.join(','));
  return list(a.ns) === list(b.ns) && list(a.ops) === list(b.ops) && a.filter === b.filter;
}

function describeSub(s) {
  const parts = [s.ns ? s.ns.join(', ') : 'all namespaces'];
  if (s.ops) {
    const r = opsFromList(s.ops);
    parts.push(ALL_CHECKS.filter((c) => r.checks.has(c)).join(', '));
  } else {
    parts.push('all operations');
  }
  if (s.filter) parts.push(`filter ${truncate(s.filter.replace(/\s+/g, ' '), 60)}`);
  return parts.join(' \u00b7 ');
}

function writeLocation(sub) {
  const url = new URL(location.href);
  const q = url.searchParams;
  const set = (k, v) => (v ? q.set(k, v) : q.delete(k));
  set('ns', sub.ns ? sub.ns.join(',') : '');
  set('ops', sub.ops ? sub.ops.join(',') : '');
  set('filter', sub.filter || '');
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
  ui.subDirty.hidden = !!(r.sub && sameSub(r.sub, feed.subscription));
}

let applying = 0;
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
  const stopped = feed.state === 'stopped';
  if (sameSub(r.sub, feed.subscription) && !stopped) {
    flashNote('Already applied.');
    updateDirty();
    return;
  }
  // On an open connection the server switches the subscription in place,
  // at one point of the stream: the list keeps what it has (a marker
  // shows where the change took effect) and nothing is replayed.
  const gen = ++applying;
  const wasOpen = feed.state === 'live' || feed.state === 'waiting';
  flashNote('Applying\u2026', true);
  ui.subApply.disabled = true;
  feed.subscribe(r.sub).then((sub) => {
    if (gen !== applying) return;
    writeLocation(sub);
    renderSub();
    flashNote('Applied.');
    if (wasOpen) enqueue({ kind: 'gap', cls: 'sub-row', text: `From here on: ${describeSub(sub)}.` });
  }, (err) => {
    if (gen !== applying) return;
    flashNote('');
    showFormError(`Refused by the server: ${err.reason || err.message}. ` +
      (feed.state === 'stopped' ? 'Change the subscription and apply it to connect.'
        : 'The previous subscription stays in effect.'));
    ui.subPanel.open = true;
    updateDirty();
  }).finally(() => {
    if (gen === applying) ui.subApply.disabled = false;
  });
}

let noteTimer = 0;
function flashNote(text, sticky) {
  ui.subNote.textContent = text;
  clearTimeout(noteTimer);
  if (!sticky) noteTimer = setTimeout(() => { ui.subNote.textContent = ''; }, 2500);
}

function renderSub() {
  ui.subSummary.textContent = describeSub(feed.subscription);
  updateDirty();
}

// -------------------------------------------------------------- connection
function wsPath() {
  const meta = document.querySelector('meta[name="wsproxy-ws-path"]');
  const p = meta ? meta.content.trim() : '';
  if (!p || p.includes('{{')) {
    console.warn('wsproxy: no WebSocket path in the page; using /ws');
    return '/ws';
  }
  return p;
}

// The page's own states (body[data-state], for the stylesheet and tests):
// connecting, live, waiting (connected, but the server has no database),
// reconnecting, closed.
const PAGE_STATE = { idle: 'connecting', connecting: 'connecting', live: 'live',
  waiting: 'waiting', reconnecting: 'reconnecting', stopped: 'closed' };

let countdownTimer = 0;
function renderState() {
  const s = feed.state;
  body.dataset.state = PAGE_STATE[s] || s;
  clearInterval(countdownTimer);
  countdownTimer = 0;
  switch (s) {
    case 'live':
      ui.connText.textContent = 'Live';
      break;
    case 'waiting':
      ui.connText.textContent = 'Waiting for the database';
      break;
    case 'reconnecting': {
      const tick = () => {
        const left = feed.retryAt - Date.now();
        ui.connText.textContent = left > 950 ? `Reconnecting in ${Math.ceil(left / 1000)} s` : 'Reconnecting\u2026';
      };
      tick();
      countdownTimer = setInterval(tick, 250);
      break;
    }
    case 'stopped': {
      const r = feed.refusal;
      ui.connText.textContent = r
        ? (r.action === 'signin' ? 'Sign in required' : `Refused${r.status ? ` (${r.status})` : ''}`)
        : 'Closed';
      break;
    }
    default:
      ui.connText.textContent = connections ? 'Reconnecting\u2026' : 'Connecting\u2026';
  }
  ui.reconnectBtn.hidden = !(s === 'reconnecting' || s === 'stopped');
  if (s === 'live' || s === 'waiting') {
    ui.closeBanner.hidden = true;
    delete body.dataset.refused;
  }
  renderListState();
}

function setCloseBanner(title, text, fatal) {
  ui.closeTitle.textContent = title;
  ui.closeText.textContent = text;
  ui.closeBanner.classList.toggle('banner-error', fatal);
  ui.closeBanner.classList.toggle('banner-warn', !fatal);
  ui.closeBanner.hidden = false;
}

function closeSummary(c) {
  const reason = c.reason && c.reason.toLowerCase() !== c.label ? ` \u2014 \u201c${c.reason}\u201d` : '';
  return `${c.code} ${c.label}${reason}`;
}

function onClose(c) {
  disconnectedAt = c.at;
  setWatcher(null);
  // The resume note described the previous connection; the next hello
  // brings a new one.
  ui.resumeNote.hidden = true;
  if (!c.wasOpen && c.code === 1006) {
    // The client now asks the server why; a refusal replaces this (onRefused).
    setCloseBanner('Could not connect.', c.text, false);
    return;
  }
  setCloseBanner(`Connection closed: ${closeSummary(c)}.`, c.text, c.policy === 'stop');
}

let formShowsRefusal = false;
function onRefused(r) {
  body.dataset.refused = String(r.status || r.code || 'true');
  const what = r.status ? `${r.status} ${r.label}` : r.label;
  if (r.retrying) {
    setCloseBanner(`The server turned the connection down for now (${what}).`,
      `${r.reason || ''} Trying again shortly.`.trim(), false);
    return;
  }
  if (r.action === 'signin') {
    setCloseBanner('Sign in required.',
      `${r.reason || 'The server needs credentials.'} Sign in (or open this page with a token), then reconnect.`, true);
    return;
  }
  setCloseBanner(`Refused by the server (${what}): ${r.reason || 'no reason given'}.`,
    r.status === 400 || r.status === 403
      ? 'Retrying cannot help: change the subscription and apply it, or use another account.'
      : 'Retrying cannot help until this is fixed.', true);
  if (r.status === 400 || r.status === 403 || r.code === 1008) {
    showFormError(`Refused by the server: ${r.reason}. Change the subscription and apply it to connect.`);
    formShowsRefusal = true;
    ui.subPanel.open = true;
  }
}

// ---------------------------------------------------------------- messages
function onHello(msg) {
  connections++;
  offlineMs = disconnectedAt ? Math.max(0, Date.now() - disconnectedAt) : null;
  sinceHello = 0;
  resetShown = false;
  const watch = typeof msg.watch === 'string' ? msg.watch : '';
  ui.watch.textContent = watch ? `watching ${watch}` : 'watching the whole deployment';
  noteWatchScope(watch);
  const mode = typeof msg.resume === 'string' ? msg.resume : 'none';
  body.dataset.resume = mode;
  const bits = [];
  if (msg.worker !== undefined) bits.push(`worker ${msg.worker}`);
  bits.push(`${connections} connection${connections === 1 ? '' : 's'} this session`);
  ui.foot.textContent = `${bits.join(' \u00b7 ')} \u00b7 newest first, up to ${LIST_CAP} rows \u00b7 click a row for the full event`;
  setWatcher(msg.watcher);
  renderSub();
  if (formShowsRefusal) showFormError('');
  formShowsRefusal = false;
  updateResumeNote();
}

function updateResumeNote() {
  const hello = feed.hello;
  const mode = hello && typeof hello.resume === 'string' ? hello.resume : 'none';
  const close = feed.lastClose;
  if (mode === 'none' && connections <= 1) {
    ui.resumeNote.hidden = true;
    return;
  }
  const after = close && offlineMs !== null
    ? ` after ${fmtDuration(offlineMs)} offline (${closeSummary(close)})` : '';
  let text;
  switch (mode) {
    case 'history':
      text = `Resumed from the server\u2019s event history${after}.`;
      break;
    case 'catch-up':
      text = `Resumed by catching up on the change stream${after}.`;
      break;
    case 'none':
      text = `Reconnected${after} without a resume position (no event had been received yet), so changes made during the gap are not replayed.`;
      break;
    default:
      text = `Reconnected${after} (resume: ${mode}).`;
  }
  if (mode !== 'none') text += ` ${plural(sinceHello, 'event')} received since.`;
  ui.resumeText.textContent = text;
  ui.resumeNote.dataset.mode = mode;
  ui.resumeNote.hidden = false;
}

function onChange({ id, event }) {
  if (!isObj(event)) return;
  sinceHello++;
  counts[opClass(event.operationType)]++;
  counts.total++;
  noteRate();
  enqueue({ kind: 'change', id: id || '', event, at: Date.now() });
  if (!ui.resumeNote.hidden && sinceHello <= 1000) updateResumeNote();
}

// A document this feed was sent left what it shows: a change took it out
// of the filter (its new content is not sent), or the server stopped
// following it. Shown as a row of its own, counted apart from changes.
function onLeave({ id, documentKey, reason }) {
  counts.leave++;
  enqueue({ kind: 'leave', id: id || '', event: { type: 'leave', documentKey, reason }, at: Date.now() });
}

const LEAVE_TEXT = {
  filter: 'left the filter',
  untracked: 'no longer followed by the server (over its limit): dropped',
};

function onReset({ lost, reason }) {
  const why = reason || 'the resume position was no longer available';
  const first = !resetShown;
  resetShown = true;
  const when = fmtClock(new Date(), true);
  ui.resetText.textContent = lost
    ? `At ${when} the server could not resume from the last event received (${why}). Changes made while disconnected may be missing; a marker in the list shows where.`
    : `At ${when} the server restarted the stream (${why}).`;
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
  if (bad) {
    ui.watcherBannerTitle.textContent = w === 'starting'
      ? 'The server is still connecting to MongoDB.'
      : 'The server lost its link to MongoDB and is reconnecting.';
    ui.watcherBannerText.textContent = detail ? `(${detail}) Events will flow when it is back; none are lost.` : 'Events will flow when it is back; none are lost.';
  }
}

// ------------------------------------------------------------------ view
function enqueue(item) {
  if (paused) {
    pausedBuf.push(item);
    if (pausedBuf.length > BUFFER_CAP) {
      const dropped = pausedBuf.shift();
      if (dropped.kind !== 'gap') pausedDropped++;
    }
  } else {
    pending.push(item);
    // Anything beyond the list cap would be trimmed right after drawing.
    if (pending.length > LIST_CAP) {
      const dropped = pending.shift();
      if (dropped.kind !== 'gap') trimmedRows++;
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
      frag.append(it.kind === 'gap' ? buildGap(it.text, it.cls) : buildRow(it));
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
  ui.pausedCount.textContent = pausedBuf.filter((x) => x.kind !== 'gap').length.toLocaleString() + ' new';
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
      : feed.state === 'live' ? 'Live. Waiting for changes that match this subscription\u2026'
        : feed.state === 'waiting' ? 'Waiting for the database\u2026'
          : feed.state === 'stopped' ? 'Not connected.' : 'Waiting for changes\u2026';
  }
  ui.listFoot.hidden = trimmedRows === 0;
  if (trimmedRows) {
    ui.listFoot.textContent = `Showing the newest ${LIST_CAP} rows; ${trimmedRows.toLocaleString()} older rows were removed from the view (the counters include them).`;
  }
}

function buildGap(text, cls) {
  const li = el('li', cls ? `gap-row ${cls}` : 'gap-row');
  li.setAttribute('role', 'note');
  li.append(el('span', 'gap-text', text));
  return li;
}

function buildRow(item) {
  const ev = item.event;
  const leave = item.kind === 'leave';
  const op = leave ? 'leave' : typeof ev.operationType === 'string' ? ev.operationType : 'unknown';
  const cls = leave ? 'leave' : opClass(op);
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
  const summary = leave
    ? LEAVE_TEXT[ev.reason] || `left (${ev.reason || 'no reason given'})` : summarize(ev);
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

// ------------------------------------------------------------- documents
// The Documents view: a second connection with a snapshot subscription
// (the current documents of one collection, then their changes), kept
// by LiveDocuments; this only draws what it reports.
const docsUi = {
  panel: $('documents'),
  form: $('docs-form'),
  ns: $('d-ns'),
  filter: $('d-filter'),
  stop: $('docs-stop'),
  error: $('docs-error'),
  summary: $('docs-summary'),
  bar: $('docs-bar'),
  count: $('documents-count'),
  label: $('documents-label'),
  status: $('docs-status'),
  scroll: $('docs-scroll'),
  head: $('docs-head'),
  rows: $('docs-rows'),
  foot: $('docs-foot'),
};
docsUi.filter.placeholder = '{"fullDocument.status": "open"}';
const DOCS_SUMMARY = docsUi.summary.textContent;

let docsFeed = null;          // the view's WsproxyClient (null: the view is off)
let liveDocs = null;          // its LiveDocuments
let docsNs = '';
let docColumns = [];          // field names shown, in the order first seen
let docFieldsLeftOut = false; // some documents have fields beyond DOC_COLS_CAP
let docsCleared = '';         // the operation that last emptied the state
const docRows = new Map();    // key -> <tr> of the documents shown
const rowDoc = new WeakMap(); // <tr> -> the document it shows
let docsNsTyped = false;      // the user chose a collection: hello no longer fills it in

function showDocsError(msg) {
  docsUi.error.textContent = msg || '';
  docsUi.error.hidden = !msg;
}

function docsFormSubscription() {
  const ns = docsUi.ns.value.trim();
  if (!/^[^.\s,]+\.[^\s,]+$/.test(ns)) {
    return { error: 'Name one collection, as db.coll.', field: docsUi.ns };
  }
  const filter = docsUi.filter.value.trim();
  const error = filterError(filter, '{"fullDocument.status": "open"}');
  if (error) return { error, field: docsUi.filter };
  return { sub: { snapshot: true, ns: [ns], filter: filter || null } };
}

function writeDocsLocation(ns, filter) {
  const url = new URL(location.href);
  const q = url.searchParams;
  const set = (k, v) => (v ? q.set(k, v) : q.delete(k));
  set('docs', ns);
  set('docs_filter', filter);
  url.search = q.toString().replace(/%2C/gi, ',');
  if (url.href !== location.href) history.replaceState(history.state, '', url.href);
}

function openDocuments(ev) {
  if (ev) ev.preventDefault();
  const r = docsFormSubscription();
  if (r.error) {
    showDocsError(r.error);
    docsUi.panel.open = true;
    r.field.focus();
    return;
  }
  showDocsError('');
  stopDocuments();
  docsNs = r.sub.ns[0];
  docsFeed = new WsproxyClient({ url: wsPath(), token, ...r.sub });
  liveDocs = new LiveDocuments(docsFeed);
  liveDocs.on('loading', renderDocsState);
  liveDocs.on('snapshot', drawAllDocs);
  liveDocs.on('upsert', upsertDocRow);
  liveDocs.on('remove', removeDocRow);
  docsFeed.on('state', renderDocsState);
  docsFeed.on('refused', (refusal) => {
    if (!refusal.retrying) showDocsError(`Refused by the server: ${refusal.reason || refusal.label}.`);
  });
  writeDocsLocation(docsNs, r.sub.filter);
  docsFeed.connect();
  renderDocsState();
}

function stopDocuments() {
  if (docsFeed) {
    liveDocs.detach();
    docsFeed.close();
  }
  docsFeed = null;
  liveDocs = null;
  docColumns = [];
  docFieldsLeftOut = false;
  docsCleared = '';
  docRows.clear();
  docsUi.head.textContent = '';
  docsUi.rows.textContent = '';
  renderDocsState();
}

function docsStateName() {
  if (!docsFeed) return 'off';
  const s = docsFeed.state;
  if ((s === 'live' || s === 'waiting') && liveDocs.loading) return 'loading';
  return PAGE_STATE[s] || s;
}

const DOCS_STATUS = {
  connecting: 'Connecting\u2026',
  loading: 'Loading the documents\u2026',
  live: 'Live',
  waiting: 'Waiting for the database',
  reconnecting: 'Reconnecting\u2026',
  closed: 'Stopped',
};

function renderDocsState() {
  const state = docsStateName();
  docsUi.panel.dataset.state = state;
  const on = state !== 'off';
  docsUi.stop.hidden = !on;
  docsUi.bar.hidden = !on;
  docsUi.scroll.hidden = !on || docRows.size === 0;
  let status = DOCS_STATUS[state] || '';
  // Until a fresh snapshot ends, the table shows the documents as they were.
  if ((state === 'loading' || state === 'reconnecting') && docRows.size) status += ' (showing the last known documents)';
  docsUi.status.textContent = status;
  docsUi.summary.textContent = on
    ? `${docsNs} \u00b7 ${plural(liveDocs.size, 'document')} \u00b7 ${status}` : DOCS_SUMMARY;
  renderDocsFoot();
}

function renderDocsCount() {
  const n = liveDocs ? liveDocs.size : 0;
  docsUi.count.textContent = n.toLocaleString();
  docsUi.label.textContent = n === 1 ? 'document' : 'documents';
  renderDocsState();
}

function renderDocsFoot() {
  const notes = [];
  if (liveDocs) {
    if (liveDocs.size > docRows.size) {
      notes.push(`Showing ${docRows.size.toLocaleString()} of ${liveDocs.size.toLocaleString()} documents held.`);
    }
    if (!liveDocs.complete) notes.push('More documents match than the server sends in a snapshot (its limit); only those it sent are held.');
    if (docFieldsLeftOut) notes.push(`Only the first ${DOC_COLS_CAP} fields seen are shown as columns.`);
    if (docsCleared && !liveDocs.size) notes.push(`Emptied by a change: ${docsCleared}.`);
    if (!liveDocs.loading && !liveDocs.size && !docsCleared) notes.push('No document matches.');
  }
  docsUi.foot.textContent = notes.join(' ');
  docsUi.foot.hidden = !notes.length;
}

// Adds the fields of doc not seen yet (up to DOC_COLS_CAP); returns how
// many columns there were before.
function noteColumns(doc) {
  const before = docColumns.length;
  for (const k of Object.keys(doc)) {
    if (docColumns.includes(k)) continue;
    if (docColumns.length < DOC_COLS_CAP) docColumns.push(k);
    else docFieldsLeftOut = true;
  }
  return before;
}

function valueClass(v) {
  if (v === null) return 'j-null';
  switch (typeof v) {
    case 'string': return 'j-str';
    case 'number': return 'j-num';
    case 'boolean': return 'j-bool';
    default: break;
  }
  const sp = isObj(v) ? ejsonSpecial(v) : null;
  if (!sp) return '';
  return sp[0] === 'num' ? 'j-num' : `j-ejson j-${sp[0]}`;
}

function fillCell(td, field, doc) {
  td.textContent = '';
  td.title = '';
  if (!Object.prototype.hasOwnProperty.call(doc, field)) return;
  const v = doc[field];
  td.append(el('span', valueClass(v), compactValue(v, 60)));
  td.title = truncate(JSON.stringify(v), 1000);
}

const flashTimers = new WeakMap();
function flash(node, cls) {
  node.classList.remove(cls);
  void node.offsetWidth; // restart the animation when it is still running
  node.classList.add(cls);
  clearTimeout(flashTimers.get(node));
  flashTimers.set(node, setTimeout(() => node.classList.remove(cls), FLASH_MS));
}

function buildDocRow(key, doc) {
  const tr = el('tr', 'doc-row');
  tr.dataset.key = key;
  for (const field of docColumns) {
    const td = el('td');
    td.dataset.field = field;
    fillCell(td, field, doc);
    tr.append(td);
  }
  rowDoc.set(tr, doc);
  return tr;
}

function drawHead() {
  docsUi.head.textContent = '';
  for (const field of docColumns) {
    const th = el('th', null, field);
    th.scope = 'col';
    docsUi.head.append(th);
  }
}

// The columns grew: existing rows get the new cells.
function addColumns(from) {
  drawHead();
  for (const tr of docRows.values()) {
    const doc = rowDoc.get(tr);
    for (const field of docColumns.slice(from)) {
      const td = el('td');
      td.dataset.field = field;
      fillCell(td, field, doc);
      tr.append(td);
    }
  }
}

function showDocRow(key, doc) {
  const tr = buildDocRow(key, doc);
  docRows.set(key, tr);
  docsUi.rows.append(tr);
  return tr;
}

function drawAllDocs({ documents, reason, detail }) {
  // Emptied by a change (drop, rename...): say which.
  docsCleared = reason === 'snapshot' ? '' : detail || reason;
  docColumns = [];
  docFieldsLeftOut = false;
  for (const doc of documents.values()) noteColumns(doc);
  drawHead();
  docRows.clear();
  docsUi.rows.textContent = '';
  for (const [key, doc] of documents) {
    if (docRows.size >= DOC_ROWS_CAP) break;
    showDocRow(key, doc);
  }
  renderDocsCount();
}

function upsertDocRow({ key, document: doc }) {
  const from = noteColumns(doc);
  if (docColumns.length > from) addColumns(from);
  const tr = docRows.get(key);
  if (tr) {
    const old = rowDoc.get(tr);
    rowDoc.set(tr, doc);
    for (const td of tr.children) {
      const field = td.dataset.field;
      if (JSON.stringify(old[field]) === JSON.stringify(doc[field])) continue;
      fillCell(td, field, doc);
      flash(td, 'flash');
    }
  } else if (docRows.size < DOC_ROWS_CAP) {
    flash(showDocRow(key, doc), 'row-new');
  }
  renderDocsCount();
}

function removeDocRow({ key }) {
  const tr = docRows.get(key);
  if (tr) {
    tr.remove();
    docRows.delete(key);
    // A document held but not shown takes the free row.
    if (liveDocs.size > docRows.size) {
      for (const [k, doc] of liveDocs.documents) {
        if (!docRows.has(k)) {
          showDocRow(k, doc);
          break;
        }
      }
    }
  }
  renderDocsCount();
}

function noteWatchScope(watch) {
  // A server that watches one collection: that is the one to show.
  if (!docsNsTyped && !docsFeed && /^[^.\s,]+\.[^\s,]+$/.test(watch)) docsUi.ns.value = watch;
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

docsUi.form.addEventListener('submit', openDocuments);
docsUi.form.addEventListener('input', () => showDocsError(''));
docsUi.ns.addEventListener('input', () => { docsNsTyped = true; });
docsUi.stop.addEventListener('click', () => {
  stopDocuments();
  writeDocsLocation('', '');
});

ui.reconnectBtn.addEventListener('click', () => feed.reconnect());
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


setInterval(renderRate, 1000);

// ------------------------------------------------------------------- start
readLocation();
const initial = formSubscription();
if (initial.error) {
  // A bad link (e.g. a malformed filter in ?filter=): show it, start unfiltered.
  showFormError(`${initial.error} The link's subscription was not applied.`);
}
const token = readToken();
const feed = new WsproxyClient({
  url: wsPath(),
  token,
  // A reload resumes where this tab left off (sessionStorage).
  persist: true,
  ...(initial.sub || {}),
});
feed.on('state', renderState);
feed.on('hello', onHello);
feed.on('change', onChange);
feed.on('reset', onReset);
feed.on('leave', onLeave);
feed.on('status', ({ watcher, detail }) => setWatcher(watcher, detail));
feed.on('close', onClose);
feed.on('refused', onRefused);

// ------------------------------------------------------- debugging hook
window.wsproxy = {
  feed,
  counts,
  get state() { return body.dataset.state; },
  get lastId() { return feed.lastId; },
  get subscription() { return feed.subscription; },
  get paused() { return paused; },
  get documents() { return liveDocs; },
  get documentsFeed() { return docsFeed; },
  reconnect: () => feed.reconnect(),
};

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
feed.connect();

// A link can open the Documents view: ?docs=db.coll[&docs_filter=...].
const linked = new URLSearchParams(location.search);
if (linked.get('docs')) {
  docsUi.ns.value = linked.get('docs');
  docsUi.filter.value = linked.get('docs_filter') || '';
  docsNsTyped = true;
  docsUi.panel.open = true;
  openDocuments();
}
