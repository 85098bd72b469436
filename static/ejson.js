/* ejson.js: Extended JSON (relaxed or canonical, as bson.json_util
 * writes it) shown the way mongosh shows it: ObjectId("..."),
 * ISODate("..."), NumberDecimal("...") and the like, as DOM nodes whose
 * class names say the type. No dependency; DOM only in renderEjson.
 *
 * Event data is untrusted: it only ever reaches the DOM through
 * textContent, never innerHTML. Nothing here may throw on it either (an
 * exception would drop the event from the page): a document can hold
 * objects that only look like Extended JSON, and an object with its own
 * "toString" field makes String(), Number() and template strings throw,
 * so values are turned into text only once their type is checked.
 */

export const BIG_EVENT_CHARS = 200000; // bigger values are shown as plain text

export const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const pad = (n, w = 2) => String(n).padStart(w, '0');

export function truncate(s, n) {
  return s.length > n ? s.slice(0, n - 1) + '\u2026' : s;
}

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

// A relaxed or canonical $date value as a Date (or null).
export function ejsonDate(x) {
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
  const sub = typeof subType === 'string' ? parseInt(subType, 16) : NaN;
  const subNum = Number.isNaN(sub) ? String(JSON.stringify(subType)) : String(sub);
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
export function ejsonSpecial(v) {
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
      if (isObj(x) && typeof x.t === 'number' && typeof x.i === 'number') return ['ts', `Timestamp(${x.t}, ${x.i})`];
      return null;
    case '$uuid':
      return typeof x === 'string' ? ['bin', `UUID("${x}")`] : null;
    case '$regularExpression':
      if (isObj(x) && typeof x.pattern === 'string' && ['string', 'undefined'].includes(typeof x.options)) {
        return ['regex', `/${x.pattern}/${x.options || ''}`];
      }
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
export function compactValue(v, max = 40) {
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

export function renderEjson(value) {
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
