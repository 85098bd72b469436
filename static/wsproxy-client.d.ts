// Type declarations for wsproxy-client.js (the browser client of wsproxy).

/** Change stream operation types the server knows. */
export declare const OPERATION_TYPES: readonly string[];
/** The `type` of every server message. */
export declare const MESSAGE_TYPES: readonly MessageType[];
export declare const WATCHER_STATES: readonly WatcherState[];

export type MessageType =
  | 'hello' | 'change' | 'reset' | 'status' | 'pong' | 'subscribed' | 'error'
  | 'snapshot' | 'snapshot_end' | 'leave';
/** The server's link to MongoDB. */
export type WatcherState = 'starting' | 'connected' | 'reconnecting';
/** What the client does after a close: see CLOSE_CODES. */
export type ClosePolicy = 'resume' | 'retry' | 'busy' | 'stop';
/** What the client does after a refused handshake: see REFUSALS. */
export type RefusalAction = 'stop' | 'signin' | 'busy' | 'retry';
/**
 * idle: not started; connecting: opening (or asking the server why a
 * handshake failed); live: open, the database connected; waiting: open, but
 * the server has lost (or not yet reached) the database; reconnecting: a
 * retry is scheduled (retryAt); stopped: close() was called, or a refusal
 * that retrying cannot help (see `refusal`).
 */
export type ClientState =
  | 'idle' | 'connecting' | 'live' | 'waiting' | 'reconnecting' | 'stopped';

export interface CloseCodeInfo {
  /** The server's name for it (CloseCode in wsproxy/protocol.py). */
  name: string | null;
  label: string;
  text: string;
  policy: ClosePolicy;
  /** Only ever reported by the browser, never sent by the server. */
  local: boolean;
}
export declare const CLOSE_CODES: Readonly<Record<number, CloseCodeInfo>>;
export declare const REFUSALS: Readonly<Record<number, { label: string; action: RefusalAction }>>;
export declare function closeInfo(code: number): CloseCodeInfo & { code: number };
export declare function refusalInfo(status: number):
  { status: number; label: string; action: RefusalAction };

/** A subscription as given: ns/ops as arrays or "a,b" strings; the filter
 * as an object or its JSON text. Omitted or null: everything granted. */
export interface SubscriptionInput {
  ns?: string[] | string | null;
  ops?: string[] | string | null;
  filter?: object | string | null;
  /** A snapshot subscription: the matching documents of one collection
   * (`ns` is exactly one "db.coll"; the filter only on `fullDocument.`
   * paths and `documentKey._id`; no `ops`), then every change after them.
   * It starts from a fresh snapshot on every connection (no resume_after
   * is sent); switching to or from one reconnects. See LiveDocuments. */
  snapshot?: boolean;
  /** With snapshot: up to 3 paths under `fullDocument.`, "-" for
   * descending, e.g. "-fullDocument.createdAt,fullDocument.name". */
  sort?: string[] | string | null;
  /** With snapshot: at most this many documents (1..WSPROXY_SNAPSHOT_MAX_DOCS). */
  limit?: number | null;
}
/** A subscription as the client keeps it (snapshot, sort and limit only
 * when given). */
export interface Subscription {
  readonly ns: string[] | null;
  readonly ops: string[] | null;
  readonly filter: string | null;
  readonly snapshot?: true;
  readonly sort?: string[];
  readonly limit?: number;
}
export declare function normalizeSubscription(sub?: SubscriptionInput): Subscription;

export type Token = string | null | (() => string | null | Promise<string | null>);

export interface ClientOptions extends SubscriptionInput {
  /** The WebSocket endpoint: a path (relative to the page) or a ws(s)/http(s) URL. Default "/ws". */
  url?: string;
  /** A bearer token, sent as the subprotocol pair ["bearer", token]. */
  token?: Token;
  /** Start after this id (else the one kept in sessionStorage, with `persist`). */
  resumeAfter?: string | null;
  /** Keep the resume position in sessionStorage across reloads: true (a key
   * from the endpoint's path) or the key to use. */
  persist?: boolean | string;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  busyFloorMs?: number;
  maxImmediate?: number;
  stableMs?: number;
  connectTimeoutMs?: number;
  decisionTimeoutMs?: number;
  /** An application ping to notice a dead network; 0 turns it off. */
  pingIntervalMs?: number;
  pongTimeoutMs?: number;
  /** How many ids are remembered to drop duplicates. */
  dedupe?: number;
  /** The server's WSPROXY_MAX_MESSAGE_SIZE: larger subscribe messages are not sent. */
  maxMessageBytes?: number;
}
export declare const DEFAULTS: Readonly<Required<Omit<ClientOptions,
  keyof SubscriptionInput | 'token' | 'resumeAfter'>>>;

/** A change event in relaxed Extended JSON. */
export interface ChangeEvent {
  operationType: string;
  ns?: { db: string; coll?: string };
  documentKey?: Record<string, unknown>;
  fullDocument?: Record<string, unknown>;
  fullDocumentBeforeChange?: Record<string, unknown>;
  updateDescription?: Record<string, unknown>;
  clusterTime?: unknown;
  wallTime?: unknown;
  [field: string]: unknown;
}
/** How deletes and documents leaving a filter reach a feed: "exact" (every
 * one, decided by pre-images, or no filter on document fields), "tracked"
 * (only for documents this connection was sent). */
export type Deletes = 'exact' | 'tracked';
export interface Hello {
  type: 'hello';
  worker: number;
  watch: string;
  resume: 'none' | 'history' | 'catch-up' | 'snapshot' | string;
  watcher: WatcherState;
  deletes?: Deletes;
  /** Sealed reconnect ticket: the client sends the last one as `ticket`
   * when it reconnects (a returning client, not a new one). */
  ticket?: string;
}
export interface CloseDetail extends CloseCodeInfo {
  code: number;
  reason: string;
  wasOpen: boolean;
  at: number;
}
export interface Refusal {
  /** The HTTP status of the refused handshake (null: a close code or a local failure). */
  status: number | null;
  code?: number;
  reason: string | null;
  label: string;
  action: RefusalAction;
}

export interface ClientEvents {
  change: { id: string | null; event: ChangeEvent };
  /** Events may have been missed (the resume position was too old). */
  reset: { lost: boolean; reason: string };
  /** The server's link to MongoDB changed: from a `status` message, or
   * from the `hello` of a new connection (detail ""), so a change while
   * the client was away is reported too. Once per change; a first hello
   * saying "connected" is not one. */
  status: { watcher: WatcherState; detail: string };
  hello: Hello;
  state: { state: ClientState; previous: ClientState; [key: string]: unknown };
  close: CloseDetail;
  /** retrying: false when the client stopped (see `refusal`). */
  refused: Refusal & { retrying: boolean };
  /** The server applied a subscribe: changes after this match the new
   * subscription, and the server starts afresh (a client keeping the
   * documents it was sent drops them). */
  subscribed: { subscription: Subscription; deletes: Deletes | null };
  subscriptionerror: { reason: string; subscription: Subscription | null };
  /** Snapshot subscriptions: some of the current documents, in sort order
   * (after a hello or a reset, before snapshot_end). */
  snapshot: { docs: Document[] };
  /** The snapshot is complete; changes follow. count: documents sent;
   * complete: false when more matched than the limit allowed. */
  snapshot_end: { id: string | null; count: number; complete: boolean };
  /** A document the client was sent left what it is shown: drop it. reason
   * "filter": a change took it out of the filter (its new content is not
   * sent); "untracked": the server stopped following it (over its limit),
   * so it would not hear of its delete. id: the change that caused it. */
  leave: { id: string | null; documentKey: Record<string, unknown> & { _id: unknown };
    reason: 'filter' | 'untracked' | string };
}

/** A document in relaxed Extended JSON. */
export type Document = Record<string, unknown> & { _id: unknown };

export declare class RefusedError extends Error {
  constructor(reason: string, status?: number | null);
  readonly reason: string;
  readonly status: number | null;
}

export declare class WsproxyClient extends EventTarget {
  constructor(options?: ClientOptions);
  readonly options: Readonly<ClientOptions>;
  /** The subscription the server applies (the last one it confirmed). */
  readonly subscription: Subscription;
  readonly state: ClientState;
  readonly watcher: WatcherState | null;
  readonly hello: Hello | null;
  /** The id of the last change received: where a reconnect resumes. */
  readonly lastId: string | null;
  readonly lastClose: CloseDetail | null;
  readonly refusal: Refusal | null;
  /** When the scheduled reconnect happens (ms since the epoch). */
  readonly retryAt: number;
  readonly stats: { connections: number; changes: number; duplicates: number; resets: number };
  /** The URL the next connection uses. */
  readonly url: string;
  token: Token;

  /** Listen; the listener gets the event's detail. Returns an unsubscribe function. */
  on<K extends keyof ClientEvents>(type: K, listener: (detail: ClientEvents[K], event: CustomEvent) => void): () => void;
  connect(): this;
  reconnect(): void;
  close(): void;
  /** Replace the subscription: on an open connection without reconnecting
   * (rejects with a RefusedError, keeping the old one, if the server
   * refuses it); otherwise for the next connection. */
  subscribe(sub: SubscriptionInput): Promise<Subscription>;
  setToken(token: Token): void;
  forgetPosition(): void;
}

/** The key LiveDocuments holds a document under: JSON.stringify of its
 * _id (relaxed Extended JSON), e.g. '{"$oid":"65a1b2c3d4e5f60718293a4b"}';
 * 1 and 1.0 are one key, 1 and "1" two. The Python client's
 * LiveDocuments.key gives the same text. */
export declare function documentKey(id: unknown): string;

/** Why documents were replaced whole (a `snapshot` event). */
export type ReplaceReason = 'snapshot' | 'clear' | 'subscribed' | 'reset' | 'reconnect';

export interface LiveDocumentsEvents {
  /** A fresh snapshot began (hello or reset); the old documents stay until it ends. */
  loading: Record<string, never>;
  /** The documents were replaced whole. reason "snapshot": a snapshot
   * ended; "clear": a drop, rename, dropDatabase or invalidate (detail
   * says which); "subscribed": the feed's subscription changed (the server
   * starts afresh); "reset": a plain feed may have missed events;
   * "reconnect": a plain feed's new connection cannot report deletes of
   * the documents held (its `deletes` is not "exact"). */
  snapshot: { documents: ReadonlyMap<string, Document>; complete: boolean;
    reason: ReplaceReason; detail: string | null;
    /** @deprecated the old name of `documents`. */
    docs: ReadonlyMap<string, Document> };
  /** A document was added or replaced whole (previous: null when new;
   * detail: the operation). */
  upsert: { key: string; document: Document; previous: Document | null; detail: string;
    /** @deprecated the old name of `document`. */
    doc: Document };
  /** A document went. reason "delete": deleted (or a change whose
   * fullDocument is null: deleted since), detail the operation; "leave":
   * detail the server's reason, "filter" or "untracked". */
  remove: { key: string; previous: Document; reason: 'delete' | 'leave';
    detail: string | null };
}

/** The documents a subscription shows, kept current by the protocol's
 * rules: on a snapshot subscription the snapshot and every change after
 * it; on a plain feed the documents it was sent, until a delete or a
 * leave takes them out. Create it before feed.connect(). */
export declare class LiveDocuments extends EventTarget {
  constructor(feed: WsproxyClient);
  /** The key of an _id (see documentKey). */
  static key(id: unknown): string;
  /** key (see documentKey) -> document, in the snapshot's sort order, then
   * new documents in the order they came. */
  readonly documents: ReadonlyMap<string, Document>;
  /** @deprecated the old name of `documents`. */
  readonly docs: ReadonlyMap<string, Document>;
  readonly size: number;
  /** True until the documents are current: on a snapshot subscription
   * until the snapshot ends, and again from a reset or a reconnect until
   * the fresh one ends; on a feed until its first hello. */
  readonly loading: boolean;
  /** False when more documents may match than are held: a snapshot the
   * limit cut short, or a plain feed (it holds only what it was sent). */
  readonly complete: boolean;
  /** What the last hello or subscribed said (null: not said). */
  readonly deletes: Deletes | null;
  /** The document with this _id (relaxed Extended JSON value), if held. */
  get(id: unknown): Document | undefined;
  /** Throws a TypeError for an event it does not have. */
  on<K extends keyof LiveDocumentsEvents>(type: K, listener: (detail: LiveDocumentsEvents[K], event: CustomEvent) => void): () => void;
  /** Stop following the feed; the documents stay as they are. */
  detach(): void;
}
