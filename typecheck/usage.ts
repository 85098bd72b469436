// The browser client as the documentation uses it, typed: the .d.ts must
// accept every example (docs/clients.md) and give its values their types.
import {
  CLOSE_CODES, DEFAULTS, LiveDocuments, MESSAGE_TYPES, OPERATION_TYPES, REFUSALS,
  RefusedError, WATCHER_STATES, WsproxyClient, closeInfo, documentKey,
  normalizeSubscription, refusalInfo,
} from 'wsproxy-client';
import type {
  ChangeEvent, ClientState, CloseDetail, Deletes, Document, Hello, MessageType,
  Refusal, ReplaceReason, Subscription, WatcherState,
} from 'wsproxy-client';

declare function redrawAll(documents: ReadonlyMap<string, Document>): void;
declare function drawRow(key: string, document: Document, previous: Document | null): void;
declare function removeRow(key: string): void;

// A feed (docs/clients.md, "In the browser").
const feed = new WsproxyClient({
  url: '/ws', ns: ['shop.orders'], ops: ['insert', 'update'],
  token: () => sessionStorage.getItem('token'),
  persist: true,
});
feed.on('change', ({ id, event }) => {
  const op: string = event.operationType;
  const key: string | null = id;
  console.log(op, key, event.fullDocument?._id);
});
feed.on('state', ({ state, previous }) => {
  const now: ClientState = state;
  console.log(now, previous);
});
feed.on('refused', (r) => console.warn(r.status, r.reason, r.action, r.retrying));
feed.on('reset', ({ lost, reason }) => console.log(lost, reason));
feed.on('status', ({ watcher, detail }) => console.log(watcher satisfies WatcherState, detail));
feed.on('hello', (hello: Hello) => console.log(hello.worker, hello.resume, hello.deletes, hello.ticket));
feed.on('close', (c: CloseDetail) => console.log(c.code, c.policy, c.wasOpen));
const off: () => void = feed.on('subscribed', ({ subscription, deletes }) => {
  const s: Subscription = subscription;
  const d: Deletes | null = deletes;
  console.log(s.ns, s.ops, s.filter, d);
});
off();
feed.on('leave', ({ documentKey: dk, reason }) => console.log(dk._id, reason));
feed.on('snapshot_end', ({ id, count, complete }) => console.log(id, count, complete));
const same: WsproxyClient = feed.connect();
async function narrow(): Promise<void> {
  try {
    const applied: Subscription = await feed.subscribe({ ops: ['delete'] });
    console.log(applied.ops);
  } catch (err) {
    if (err instanceof RefusedError) console.warn(err.reason, err.status);
  }
}
void narrow();
feed.setToken('another');
feed.token = null;
console.log(same.url, feed.lastId, feed.state, feed.watcher, feed.hello?.watch,
  feed.lastClose?.label, feed.refusal?.label, feed.retryAt, feed.stats.duplicates,
  feed.subscription.filter, feed.options.url);
feed.forgetPosition();
feed.reconnect();
feed.close();

// Live documents (docs/clients.md, "Live documents").
const snapshotFeed = new WsproxyClient({
  snapshot: true, ns: 'shop.orders',
  filter: { 'fullDocument.status': 'open' },
  sort: '-fullDocument.created', limit: 500,
});
const orders = new LiveDocuments(snapshotFeed);
orders.on('snapshot', ({ documents, reason }) => {
  const why: ReplaceReason = reason;
  console.log(why);
  redrawAll(documents);
});
orders.on('upsert', ({ key, document, previous }) => drawRow(key, document, previous));
orders.on('remove', ({ key, reason }) => {
  const r: 'delete' | 'leave' = reason;
  console.log(r);
  removeRow(key);
});
orders.on('loading', () => console.log('loading'));
snapshotFeed.connect();
const held: Document | undefined = orders.get({ $oid: '65a1b2c3d4e5f60718293a4b' });
console.log(held, orders.size, orders.loading, orders.complete, orders.deletes,
  orders.documents.get(LiveDocuments.key(7)), documentKey('a'));
orders.detach();

// The tables and helpers.
const types: readonly MessageType[] = MESSAGE_TYPES;
const states: readonly WatcherState[] = WATCHER_STATES;
const ops: readonly string[] = OPERATION_TYPES;
const info = closeInfo(4008);
console.log(types, states, ops, info.code, info.policy, CLOSE_CODES[1001]?.label,
  REFUSALS[429]?.action, refusalInfo(401).action, DEFAULTS.backoffMaxMs,
  normalizeSubscription({ ns: 'a.b,c.d' }).ns);
const refusal: Refusal = { status: 403, reason: 'no', label: 'forbidden', action: 'stop' };
const event: ChangeEvent = { operationType: 'insert', fullDocument: { _id: 1 } };
console.log(refusal, event);
