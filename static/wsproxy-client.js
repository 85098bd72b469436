/* wsproxy-client.js: the browser client for a wsproxy WebSocket endpoint.
 *
 * An ES module with no dependency and no build step:
 *
 *   import { WsproxyClient } from '/wsproxy-static/wsproxy-client.js';
 *   const feed = new WsproxyClient({ url: '/ws', ns: ['shop.orders'] });
 *   feed.on('change', ({ id, event }) => console.log(id, event));
 *   feed.connect();
 *
 * It holds the server's guarantees for the page: it reconnects with capped,
 * jittered backoff, resumes after the last id it received (resume_after),
 * drops duplicates by id, reports `reset`, `status` and the connection's
 * state, follows one close-code table (CLOSE_CODES), and, when a handshake
 * fails, asks the server why (the admission decision as JSON: a browser
 * cannot read the HTTP status of a refused WebSocket) and stops retrying
 * when retrying cannot help. See wsproxy-client.d.ts for the API.
 *
 * A snapshot subscription ({snapshot: true, ns: 'db.coll'}) gets the
 * collection's matching documents first, then every change after them;
 * LiveDocuments (below) turns those messages into the current documents,
 * and does the same for a plain feed with a filter (the documents it was
 * sent, until a delete or a `leave` takes them out).
 *
 * The tables below are the wire contract as the server defines it
 * (wsproxy/protocol.py, wsproxy/fanout/subscription.py); tests/test_browser_client.py
 * checks that they match.
 */

/** Every change stream operation type the server knows (its ?ops= values). */
export const OPERATION_TYPES = Object.freeze([
  'insert', 'update', 'replace', 'delete', 'drop', 'rename', 'dropDatabase',
  'invalidate', 'createIndexes', 'dropIndexes', 'create', 'modify',
  'shardCollection', 'refineCollectionShardKey', 'reshardCollection',
]);

/** The `type` of every message the server sends. */
export const MESSAGE_TYPES = Object.freeze([
  'hello', 'change', 'reset', 'status', 'pong', 'subscribed', 'error',
  'snapshot', 'snapshot_end', 'leave',
]);

/** The server's link to MongoDB, as `hello` and `status` report it. */
export const WATCHER_STATES = Object.freeze(['starting', 'connected', 'reconnecting']);

/* Close codes: what each means and what the client does about it.
 * policy: 'resume'  reconnect at once with resume_after (then with backoff
 *                   if it keeps happening),
 *         'retry'   reconnect with backoff and resume_after,
 *         'busy'    as 'retry', but wait at least BUSY_FLOOR_MS,
 *         'stop'    do not reconnect: retrying cannot help; report it.
 * `name` is the server's name for it (CloseCode in wsproxy/protocol.py);
 * entries with `local: true` are never sent by the server, only reported
 * by the browser. */
const entry = (name, label, text, policy, local = false) =>
  Object.freeze({ name, label, text, policy, local });

export const CLOSE_CODES = Object.freeze({
  1000: entry('NORMAL', 'closed', 'The server closed the connection.', 'retry'),
  1001: entry('GOING_AWAY', 'server restarting',
    'The server is restarting or being redeployed; resuming.', 'resume'),
  1003: entry('UNSUPPORTED_DATA', 'binary message refused',
    'This client sent a binary message; the server only accepts JSON text.', 'stop'),
  1005: entry('NO_STATUS', 'closed without a code',
    'The connection was closed without a status code.', 'retry', true),
  1006: entry('ABNORMAL', 'connection lost',
    'The server could not be reached, or the network dropped the connection.', 'retry'),
  1007: entry('INVALID_DATA', 'invalid text',
    'This client sent text that is not UTF-8.', 'stop'),
  1008: entry('POLICY', 'message refused',
    'This client sent a message the server does not accept, or too many messages.', 'stop'),
  1009: entry('TOO_BIG', 'message too big',
    'This client sent a message larger than the server accepts.', 'stop'),
  1011: entry('INTERNAL_ERROR', 'server error',
    'The server hit an internal error on this connection.', 'retry'),
  1013: entry('TRY_AGAIN', 'server busy',
    'The server is busy (or cannot reach the database) and asked to retry later.', 'busy'),
  1015: entry('TLS_HANDSHAKE', 'TLS failure',
    'The secure connection could not be established.', 'retry', true),
  4008: entry('SLOW_CONSUMER', 'fell behind',
    'This page fell behind the event stream; resuming.', 'resume'),
});

/* What a refused handshake's HTTP status (from the admission decision)
 * means: 'stop' (report; retrying cannot help), 'signin' (report: sign in
 * or give a token, then connect again), 'busy' (retry, no sooner than
 * Retry-After). Any other status: retry with backoff. */
export const REFUSALS = Object.freeze({
  400: Object.freeze({ label: 'bad request', action: 'stop' }),
  401: Object.freeze({ label: 'sign in required', action: 'signin' }),
  403: Object.freeze({ label: 'forbidden', action: 'stop' }),
  414: Object.freeze({ label: 'subscription too long', action: 'stop' }),
  429: Object.freeze({ label: 'too many connections', action: 'busy' }),
  500: Object.freeze({ label: 'server cannot hold WebSockets', action: 'stop' }),
  503: Object.freeze({ label: 'server full or restarting', action: 'busy' }),
});

export const DEFAULTS = Object.freeze({
  url: '/ws',
  backoffInitialMs: 500,   // first retry delay, before jitter
  backoffMaxMs: 30000,     // longest retry delay
  busyFloorMs: 5000,       // 'busy': wait at least this
  maxImmediate: 3,         // 'resume' reconnects in a row before backing off
  stableMs: 10000,         // a connection up this long resets the backoff
  connectTimeoutMs: 15000,
  decisionTimeoutMs: 5000,
  pingIntervalMs: 30000,   // an application ping, to notice a dead network; 0: off
  pongTimeoutMs: 10000,
  dedupe: 5000,            // ids remembered to drop duplicates
  maxMessageBytes: 4096,   // the server's WSPROXY_MAX_MESSAGE_SIZE (subscribe messages)
  persist: false,          // true or a key: keep the resume position in sessionStorage
});

/** What a close code means: the table's entry, or a generic one. */
export function closeInfo(code) {
  const known = CLOSE_CODES[code];
  if (known) return { code, ...known };
  return { code, name: null, label: 'closed', text: 'The connection was closed.',
    policy: 'retry', local: false };
}

/** What a refused handshake's HTTP status means. */
export function refusalInfo(status) {
  return { status, ...(REFUSALS[status] || { label: 'refused', action: 'retry' }) };
}

/** A subscription in the form the client keeps: arrays or null (all), the
 * filter as JSON text or null. ns/ops/sort may be given as "a,b" strings.
 * snapshot, sort and limit are only present when given, so a plain
 * subscription keeps its three fields. */
export function normalizeSubscription(sub = {}) {
  const list = (v) => {
    if (v === undefined || v === null) return null;
    const items = Array.isArray(v) ? v : String(v).split(',');
    return items.map((x) => String(x).trim()).filter(Boolean);
  };
  let filter = sub.filter;
  if (filter === undefined || filter === null) filter = null;
  else if (typeof filter !== 'string') filter = JSON.stringify(filter);
  else filter = filter.trim() || null;
  const out = { ns: list(sub.ns), ops: list(sub.ops), filter };
  if (sub.snapshot) out.snapshot = true;
  const sort = list(sub.sort);
  if (sort && sort.length) out.sort = sort;
  if (sub.limit !== undefined && sub.limit !== null) out.limit = Number(sub.limit);
  return Object.freeze(out);
}

/** Why a subscription or a connection was refused. */
export class RefusedError extends Error {
  constructor(reason, status = null) {
    super(reason);
    this.name = 'RefusedError';
    this.reason = reason;
    this.status = status;
  }
}

const OPEN = 1;
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

export class WsproxyClient extends EventTarget {
  constructor(options = {}) {
    super();
    this.options = { ...DEFAULTS, ...options };
    this.subscription = normalizeSubscription(options);
    this.token = options.token ?? null;
    this.state = 'idle';         // idle connecting live waiting reconnecting stopped
    this.watcher = null;         // the server's link to MongoDB, when open
    this._toldWatcher = null;    // the watcher state the last `status` event (or first hello) gave
    this.hello = null;           // the current connection's hello
    this._ticket = null;         // the last hello's reconnect ticket, sent on reconnects
    this.lastClose = null;       // {code, reason, label, text, policy, wasOpen, at}
    this.refusal = null;         // {status, reason, label, action} of the last refusal
    this.retryAt = 0;            // when a scheduled reconnect happens (ms epoch)
    this.stats = { connections: 0, changes: 0, duplicates: 0, resets: 0 };
    this._ws = null;
    this._gen = 0;               // bumps on every (re)connect/close: stale work stops
    this._usedToken = null;      // the credential of the current attempt
    this._stopped = true;
    this._attempt = 0;
    this._immediate = 0;
    this._openedAt = 0;
    this._timers = {};
    this._pending = [];          // subscribe messages awaiting their answer, in order
    this._waiters = [];          // subscribe() calls waiting for the next hello
    this._seen = new Set();
    this._seenOrder = [];
    this._persistTimer = 0;
    this.lastId = options.resumeAfter ?? this._readPosition();
    this._onPageHide = () => this._writePosition();
    this._onOnline = () => { if (this.state === 'reconnecting') this.reconnect(); };
  }

  // ------------------------------------------------------------ public API

  /** Listen to an event; returns a function that stops listening. */
  on(type, listener) {
    const wrapped = (e) => listener(e.detail, e);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  /** Open the connection (and keep it open until close()). */
  connect() {
    if (!this._stopped && this._ws) return this;
    this._stopped = false;
    this.refusal = null;
    if (globalThis.addEventListener) {
      globalThis.addEventListener('pagehide', this._onPageHide);
      globalThis.addEventListener('online', this._onOnline);
    }
    this._open();
    return this;
  }

  /** Reconnect now (e.g. a "Reconnect now" button), resuming. */
  reconnect() {
    this._attempt = Math.max(0, this._attempt - 1);
    this._stopped = false;
    this.refusal = null;
    this._drop(null);
    this._open();
  }

  /** Close for good (until connect()). */
  close() {
    this._stopped = true;
    this._gen++;
    this._clearTimers();
    this._drop(null);
    this._writePosition();
    if (globalThis.removeEventListener) {
      globalThis.removeEventListener('pagehide', this._onPageHide);
      globalThis.removeEventListener('online', this._onOnline);
    }
    this._failWaiters('closed');
    this._setState('stopped', { reason: 'closed' });
  }

  /** Replace the subscription. On an open connection it is sent as a
   * subscribe message (no reconnect): resolves once the server applied
   * it, rejects with a RefusedError (the connection keeps the old one).
   * Otherwise the next connection asks for it in its URL. */
  subscribe(sub) {
    const next = normalizeSubscription(sub);
    const ws = this._ws;
    // A snapshot is only taken when a connection opens: switching to or
    // from one means a new connection, not a subscribe message.
    const snapshot = next.snapshot || this.subscription.snapshot;
    if (ws && ws.readyState === OPEN && !snapshot) {
      const text = JSON.stringify({ type: 'subscribe', ns: next.ns, ops: next.ops,
        filter: next.filter });
      const size = new TextEncoder().encode(text).length;
      if (size > this.options.maxMessageBytes) {
        // The server would close the connection (1009) for it.
        return Promise.reject(new RefusedError(
          `subscription too large to send (${size} bytes > ${this.options.maxMessageBytes})`));
      }
      return new Promise((resolve, reject) => {
        this._pending.push({ subscription: next, resolve, reject });
        ws.send(text);
      });
    }
    // Not open: the next connection asks for it in its URL (one that is
    // opening now would still use the old one, so it starts again).
    this.subscription = next;
    const promise = new Promise((resolve, reject) => {
      this._waiters.push({ subscription: next, resolve, reject });
    });
    if (this.state === 'connecting' || this.state === 'reconnecting'
        || (this.state === 'stopped' && this.refusal) || (ws && snapshot)) {
      this.reconnect();
    }
    return promise;
  }

  /** Change the credential (string, or a function returning one or a
   * promise of one); it is used from the next connection on. */
  setToken(token) {
    this.token = token;
  }

  /** Forget the resume position (here and in sessionStorage). */
  forgetPosition() {
    this.lastId = null;
    const key = this._persistKey();
    if (key) {
      try { globalThis.sessionStorage.removeItem(key); } catch (_) { /* disabled */ }
    }
  }

  /** The WebSocket URL the next connection uses. */
  get url() {
    return this._url('ws');
  }

  // --------------------------------------------------------------- internals

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, detail = {}) {
    const previous = this.state;
    this.state = state;
    if (state !== previous || detail.force) {
      this._emit('state', { state, previous, ...detail });
    }
  }

  _url(kind) {
    const base = globalThis.location ? globalThis.location.href : undefined;
    const u = new URL(this.options.url, base);
    const secure = u.protocol === 'https:' || u.protocol === 'wss:';
    u.protocol = kind === 'ws' ? (secure ? 'wss:' : 'ws:') : (secure ? 'https:' : 'http:');
    u.hash = '';
    const q = u.searchParams;
    const sub = this.subscription;
    if (sub.ns) q.set('ns', sub.ns.join(','));
    if (sub.ops) q.set('ops', sub.ops.join(','));
    if (sub.filter) q.set('filter', sub.filter);
    if (sub.snapshot) q.set('snapshot', '1');
    if (sub.sort) q.set('sort', sub.sort.join(','));
    if (sub.limit !== undefined) q.set('limit', String(sub.limit));
    // A snapshot subscription starts from a fresh snapshot: the server
    // would ignore the position, so it is not sent.
    if (this.lastId && !sub.snapshot) q.set('resume_after', this.lastId);
    // The last hello's reconnect ticket: a returning client, not a new one.
    if (this._ticket) q.set('ticket', this._ticket);
    return u.href;
  }

  async _token() {
    const t = typeof this.token === 'function' ? await this.token() : this.token;
    return t ? String(t) : null;
  }

  _clearTimers() {
    for (const t of Object.values(this._timers)) clearTimeout(t);
    this._timers = {};
  }

  _timer(name, ms, fn) {
    clearTimeout(this._timers[name]);
    this._timers[name] = setTimeout(() => { delete this._timers[name]; fn(); }, ms);
  }

  async _open() {
    this._clearTimers();
    const gen = ++this._gen;
    this._setState('connecting', { attempt: this._attempt });
    let token;
    try {
      token = await this._token();
    } catch (e) {
      if (gen === this._gen) this._refused({ status: null, reason: `no credential: ${e.message}` }, 'stop');
      return;
    }
    if (gen !== this._gen) return;
    this._usedToken = token;
    let ws;
    try {
      ws = token ? new WebSocket(this._url('ws'), ['bearer', token])
        : new WebSocket(this._url('ws'));
    } catch (e) {
      // e.g. a token with characters a subprotocol cannot carry.
      this._refused({ status: null, reason: `cannot connect: ${e.message}` }, 'stop');
      return;
    }
    this._ws = ws;
    this._openedAt = 0;
    this.hello = null;
    this._timer('connect', this.options.connectTimeoutMs, () => {
      if (this._ws === ws && ws.readyState !== OPEN) this._lost(ws, 1006, 'connection timed out', false);
    });
    ws.onopen = () => {
      if (this._ws !== ws) return;
      clearTimeout(this._timers.connect);
      this._openedAt = Date.now();
      this.stats.connections++;
      this._schedulePing(ws);
    };
    ws.onmessage = (e) => { if (this._ws === ws) this._onMessage(ws, e.data); };
    ws.onclose = (e) => {
      if (this._ws === ws) this._lost(ws, e.code, e.reason || '', this._openedAt > 0);
    };
    ws.onerror = () => { /* a close event follows */ };
  }

  /** Detach and close the current socket without reporting it. */
  _drop(code) {
    const ws = this._ws;
    this._ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(code || 1000); } catch (_) { /* already closing */ }
    this._failPending('connection closed');
  }

  _schedulePing(ws) {
    const every = this.options.pingIntervalMs;
    if (!every) return;
    this._timer('ping', every, () => {
      if (this._ws !== ws || ws.readyState !== OPEN) return;
      try { ws.send('{"type":"ping"}'); } catch (_) { return; }
      this._timer('pong', this.options.pongTimeoutMs, () => {
        if (this._ws === ws) this._lost(ws, 1006, 'no answer to ping', true);
      });
    });
  }

  _lost(ws, code, reason, wasOpen) {
    this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(); } catch (_) { /* already closed */ }
    for (const name of ['connect', 'ping', 'pong']) clearTimeout(this._timers[name]);
    const upFor = wasOpen ? Date.now() - this._openedAt : 0;
    if (upFor > this.options.stableMs) {
      this._attempt = 0;
      this._immediate = 0;
    }
    this._openedAt = 0;
    this.watcher = null;
    this._failPending('connection closed');
    const info = closeInfo(code);
    this.lastClose = { ...info, reason, wasOpen, at: Date.now() };
    this._emit('close', this.lastClose);
    if (this._stopped) return;
    if (!wasOpen && code === 1006) {
      // The handshake failed: the browser hides why. Ask the server.
      this._askWhy(this._usedToken);
      return;
    }
    if (info.policy === 'stop') {
      this._refused({ status: null, code, reason: reason || info.text }, 'stop');
      return;
    }
    this._retry(info.policy);
  }

  async _askWhy(token) {
    const gen = this._gen;
    let decision = null;
    const ctrl = typeof AbortController === 'function' ? new AbortController() : null;
    const timer = setTimeout(() => ctrl && ctrl.abort(), this.options.decisionTimeoutMs);
    try {
      const headers = { Accept: 'application/json' };
      if (token) headers.Authorization = `Bearer ${token}`;
      const r = await fetch(this._url('http'), {
        headers, credentials: 'include', cache: 'no-store',
        signal: ctrl ? ctrl.signal : undefined,
      });
      const body = await r.json().catch(() => null);
      if (body && (body.ok === true || typeof body.error === 'string')) {
        decision = { status: r.status, ok: body.ok === true, reason: body.error || null,
          retryAfter: Number(r.headers.get('Retry-After')) || 0 };
      } else if ([400, 403, 414].includes(r.status)) {
        // Not wsproxy's JSON, but a status retrying cannot fix (e.g. 414:
        // gunicorn's limit on the request line).
        decision = { status: r.status, ok: false, reason: `HTTP ${r.status}`, retryAfter: 0 };
      }
    } catch (_) {
      // Unreachable (or an origin the server does not answer): retry.
    } finally {
      clearTimeout(timer);
    }
    if (gen !== this._gen || this._stopped) return;
    if (!decision || decision.ok) {
      this._retry('retry');
      return;
    }
    const info = refusalInfo(decision.status);
    const refusal = { ...info, reason: decision.reason };
    if (info.action === 'stop' || info.action === 'signin') {
      this._refused(refusal, info.action);
      return;
    }
    this.refusal = refusal;
    this._emit('refused', { ...refusal, retrying: true });
    this._retry(info.action === 'busy' ? 'busy' : 'retry', decision.retryAfter * 1000);
  }

  _refused(refusal, action) {
    this.refusal = { label: 'refused', ...refusal, action };
    this._clearTimers();
    this._emit('refused', { ...this.refusal, retrying: false });
    this._failWaiters(this.refusal.reason, this.refusal.status);
    this._setState('stopped', { refusal: this.refusal, reason: this.refusal.reason });
  }

  _backoff() {
    // Exponential with "equal jitter": half fixed, half random.
    const { backoffInitialMs: base, backoffMaxMs: cap } = this.options;
    const d = Math.min(cap, base * 2 ** this._attempt);
    this._attempt = Math.min(this._attempt + 1, 30);
    return d / 2 + Math.random() * (d / 2);
  }

  _retry(policy, floorMs = 0) {
    let delay;
    if (policy === 'resume' && this._immediate < this.options.maxImmediate) {
      this._immediate++;
      delay = Math.random() * 250; // spread a restarting server's herd a little
    } else {
      delay = this._backoff();
      if (policy === 'busy') delay = Math.max(delay, this.options.busyFloorMs * (1 + Math.random() / 2));
    }
    delay = Math.max(delay, floorMs);
    this.retryAt = Date.now() + delay;
    this._setState('reconnecting', { delay, retryAt: this.retryAt, close: this.lastClose, force: true });
    this._timer('retry', delay, () => this._open());
  }

  _onMessage(ws, data) {
    if (typeof data !== 'string') return;
    let msg;
    try { msg = JSON.parse(data); } catch (_) { return; }
    if (!msg || typeof msg !== 'object' || Array.isArray(msg)) return;
    // Any message shows the connection is alive.
    if (this._timers.pong) {
      clearTimeout(this._timers.pong);
      delete this._timers.pong;
      this._schedulePing(ws);
    }
    switch (msg.type) {
      case 'hello': this._onHello(msg); break;
      case 'change': this._onChange(msg); break;
      case 'snapshot':
        if (Array.isArray(msg.docs)) this._emit('snapshot', { docs: msg.docs });
        break;
      case 'snapshot_end':
        this._emit('snapshot_end', {
          id: typeof msg.id === 'string' ? msg.id : null,
          count: typeof msg.count === 'number' ? msg.count : 0,
          complete: msg.complete !== false,
        });
        break;
      case 'leave':
        if (isObject(msg.documentKey)) {
          this._emit('leave', { id: typeof msg.id === 'string' ? msg.id : null,
            documentKey: msg.documentKey,
            reason: typeof msg.reason === 'string' ? msg.reason : 'filter' });
        }
        break;
      case 'reset':
        this.stats.resets++;
        this._emit('reset', { lost: msg.lost !== false,
          reason: typeof msg.reason === 'string' ? msg.reason : '' });
        break;
      case 'status':
        this._setWatcher(msg.watcher, typeof msg.detail === 'string' ? msg.detail : '');
        break;
      case 'subscribed': {
        const p = this._pending.shift();
        if (p) {
          this.subscription = p.subscription;
          this._emit('subscribed', { subscription: p.subscription,
            deletes: typeof msg.deletes === 'string' ? msg.deletes : null });
          p.resolve(p.subscription);
        }
        break;
      }
      case 'error': {
        const p = this._pending.shift();
        const reason = typeof msg.reason === 'string' ? msg.reason : 'refused';
        this._emit('subscriptionerror', { reason, subscription: p ? p.subscription : null });
        if (p) p.reject(new RefusedError(reason, 400));
        break;
      }
      default: break; // pong, and types a newer server may add
    }
  }

  _onHello(msg) {
    this.hello = msg;
    if (typeof msg.ticket === 'string') this._ticket = msg.ticket;
    this.refusal = null;
    this._emit('hello', msg);
    this._setWatcher(typeof msg.watcher === 'string' ? msg.watcher : 'connected', '', true);
    const waiters = this._waiters;
    this._waiters = [];
    for (const w of waiters) w.resolve(w.subscription);
  }

  _setWatcher(watcher, detail, fromHello = false) {
    if (typeof watcher !== 'string') return;
    this.watcher = watcher;
    // A `status` event for every change, however it was learned: a change
    // while this client was away (or whose status message a close dropped)
    // arrives only in the next hello. Repeats are not news. The first
    // hello is the starting point, news only if it is not "connected".
    const told = this._toldWatcher ?? 'connected';
    this._toldWatcher = watcher;
    if (watcher !== told) this._emit('status', { watcher, detail });
    if (!this.hello) return;
    this._setState(watcher === 'connected' ? 'live' : 'waiting', { watcher, detail });
  }

  _onChange(msg) {
    if (!msg.event || typeof msg.event !== 'object') return;
    const id = typeof msg.id === 'string' ? msg.id : null;
    if (id) {
      if (this._seen.has(id)) {
        this.stats.duplicates++;
        return;
      }
      this._seen.add(id);
      this._seenOrder.push(id);
      if (this._seenOrder.length > this.options.dedupe) this._seen.delete(this._seenOrder.shift());
      this.lastId = id;
      this._schedulePositionWrite();
    }
    this.stats.changes++;
    this._emit('change', { id, event: msg.event });
  }

  _failPending(reason) {
    const pending = this._pending;
    this._pending = [];
    for (const p of pending) p.reject(new RefusedError(reason));
  }

  _failWaiters(reason, status = null) {
    const waiters = this._waiters;
    this._waiters = [];
    for (const w of waiters) w.reject(new RefusedError(reason, status));
  }

  // ------------------------------------------------ resume across reloads

  _persistKey() {
    const p = this.options.persist;
    if (!p) return null;
    if (typeof p === 'string') return p;
    try {
      const base = globalThis.location ? globalThis.location.href : undefined;
      return `wsproxy:resume:${new URL(this.options.url, base).pathname}`;
    } catch (_) {
      return 'wsproxy:resume';
    }
  }

  _readPosition() {
    const key = this._persistKey();
    if (!key) return null;
    try {
      const saved = JSON.parse(globalThis.sessionStorage.getItem(key) || 'null');
      return saved && typeof saved.lastId === 'string' ? saved.lastId : null;
    } catch (_) {
      return null;
    }
  }

  _schedulePositionWrite() {
    if (!this.options.persist || this._persistTimer) return;
    this._persistTimer = setTimeout(() => this._writePosition(), 250);
  }

  _writePosition() {
    clearTimeout(this._persistTimer);
    this._persistTimer = 0;
    const key = this._persistKey();
    if (!key || !this.lastId) return;
    try {
      globalThis.sessionStorage.setItem(key, JSON.stringify({ lastId: this.lastId }));
    } catch (_) { /* storage full or disabled */ }
  }
}

// ------------------------------------------------------ live documents

/** The key LiveDocuments holds a document under: JSON.stringify of its
 * _id, as parsed from the server's relaxed Extended JSON (so 1 and 1.0 are
 * one document, 1 and "1" two). The Python client's key is the same text
 * for the same _id (wsproxy/liverules.py). */
export function documentKey(id) {
  return JSON.stringify(id);
}

/* The rules (docs/live-documents.md): what one change or leave does to
 * the documents. wsproxy/liverules.py states them for Python (the server's
 * snapshot merge and the Python client); tests/test_live_agreement.py runs
 * the same cases through both. An effect: {action: 'upsert' | 'remove' |
 * 'clear', id, document, reason, detail}, or null for nothing. */
const DOCUMENT_OPS = new Set(['insert', 'replace', 'update']);
const CLEARING_OPS = new Set(['drop', 'rename', 'dropDatabase', 'invalidate']);

function changeEffect(event) {
  const op = event.operationType;
  if (CLEARING_OPS.has(op)) return { action: 'clear', reason: 'clear', detail: op };
  if (!DOCUMENT_OPS.has(op) && op !== 'delete') return null;
  const dk = event.documentKey;
  if (!isObject(dk) || !('_id' in dk)) return null;
  // null (deleted since: updateLookup found nothing) removes it too.
  const document = op === 'delete' ? null : event.fullDocument;
  if (isObject(document)) return { action: 'upsert', id: dk._id, document, detail: op };
  return { action: 'remove', id: dk._id, reason: 'delete', detail: op };
}

function leaveEffect(dk, reason) {
  if (!isObject(dk) || !('_id' in dk)) return null;
  return { action: 'remove', id: dk._id, reason: 'leave', detail: reason ?? null };
}

const LIVE_EVENTS = Object.freeze(['loading', 'snapshot', 'upsert', 'remove']);

/** The documents a subscription shows, kept current: `new
 * LiveDocuments(feed)` before feed.connect(). The Python client's
 * LiveDocuments has the same names and rules.
 *
 * On a snapshot subscription: the snapshot, then every change after it.
 * On a plain feed: the documents it was sent, until a delete or a `leave`
 * takes them out (with a filter on document fields the server sends both;
 * docs/live-documents.md, "Filtered feeds").
 *
 * `documents`: key (documentKey(_id)) -> document, in order. `loading`:
 * true until they are current (snapshot: from a hello or reset until the
 * snapshot ends, the old documents staying meanwhile; feed: until the
 * first hello). `complete`: false when more documents may match than are
 * held (a snapshot cut by its limit; a feed). `deletes`: what the last
 * hello or subscribed said ('exact' or 'tracked').
 *
 * Events (listen with on()): `loading` {} (a fresh snapshot began);
 * `snapshot` {documents, complete, reason, detail} (replaced whole: reason
 * 'snapshot', 'clear' (detail: drop, rename, dropDatabase or invalidate),
 * 'subscribed', 'reset' (a feed may have missed events) or 'reconnect' (a
 * feed's new connection cannot report deletes of what it holds: deletes
 * is not 'exact')); `upsert` {key, document, previous, detail}; `remove`
 * {key, previous, reason: 'delete' | 'leave', detail: the operation, or
 * the leave's own reason 'filter' | 'untracked'}. */
export class LiveDocuments extends EventTarget {
  constructor(feed) {
    super();
    this.documents = new Map();
    this.loading = true;
    this.complete = false;
    this.deletes = null;
    this._feed = feed;
    this._snapshots = !!feed.subscription.snapshot;
    this._hellos = 0;
    this._pending = null;      // the snapshot being received
    const on = (type, fn) => feed.on(type, fn);
    this._off = [
      on('hello', (hello) => this._hello(hello)),
      on('reset', () => this._reset()),
      on('snapshot', ({ docs }) => this._add(docs)),
      on('snapshot_end', ({ complete }) => this._end(complete)),
      on('change', ({ event }) => this._effect(changeEffect(event))),
      on('leave', ({ documentKey: dk, reason }) => this._effect(leaveEffect(dk, reason))),
      on('subscribed', ({ deletes }) => {
        this.deletes = deletes ?? null;
        this._replace(new Map(), 'subscribed');
      }),
    ];
  }

  /** The key a document with this _id is held under (see documentKey). */
  static key(id) {
    return documentKey(id);
  }

  /** Listen to an event; returns a function that stops listening. */
  on(type, listener) {
    if (!LIVE_EVENTS.includes(type)) {
      throw new TypeError(`no '${type}' event: one of ${LIVE_EVENTS.join(', ')}`);
    }
    const wrapped = (e) => listener(e.detail, e);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  /** The old name of `documents`. */
  get docs() {
    return this.documents;
  }

  get size() {
    return this.documents.size;
  }

  /** The document with this _id (its relaxed Extended JSON value), if held. */
  get(id) {
    return this.documents.get(documentKey(id));
  }

  /** Stop following the feed (the documents stay as they are). */
  detach() {
    for (const off of this._off) off();
    this._off = [];
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _hello(hello) {
    this._hellos++;
    this.deletes = typeof hello.deletes === 'string' ? hello.deletes : null;
    this._snapshots = !!this._feed.subscription.snapshot;
    if (this._snapshots) {
      this._begin();
      return;
    }
    this.loading = false;
    // A new connection knows nothing of what the last one sent: without
    // pre-images it could not say when those documents go.
    if (this._hellos > 1 && this.deletes !== 'exact') this._replace(new Map(), 'reconnect');
  }

  _reset() {
    if (this._snapshots) this._begin(); // a fresh snapshot follows
    else this._replace(new Map(), 'reset');
  }

  _begin() {
    // The old documents stay until snapshot_end: a view does not blank out
    // on a reconnect.
    this._pending = null;
    this.loading = true;
    this._emit('loading', {});
  }

  _add(docs) {
    if (!this._pending) this._pending = new Map();
    for (const doc of docs) {
      if (isObject(doc) && '_id' in doc) this._pending.set(documentKey(doc._id), doc);
    }
  }

  _end(complete) {
    const documents = this._pending || new Map();
    this._pending = null;
    this.loading = false;
    this._replace(documents, 'snapshot', null, complete);
  }

  _replace(documents, reason, detail = null, complete = false) {
    this.documents = documents;
    this.complete = complete;
    // `docs`: the old name of `documents`.
    this._emit('snapshot', { documents, docs: documents, complete, reason, detail });
  }

  _effect(effect) {
    if (!effect) return;
    if (effect.action === 'clear') {
      this._replace(new Map(), effect.reason, effect.detail, this.complete);
      return;
    }
    const key = documentKey(effect.id);
    const previous = this.documents.get(key) ?? null;
    if (effect.action === 'upsert') {
      this.documents.set(key, effect.document);
      // `doc`: the old name of `document`.
      this._emit('upsert', { key, document: effect.document, doc: effect.document,
        previous, detail: effect.detail });
    } else if (previous !== null) {
      this.documents.delete(key);
      this._emit('remove', { key, previous, reason: effect.reason, detail: effect.detail });
    }
  }
}
