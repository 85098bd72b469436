"""Resume ids: the change stream's resume tokens, sealed.

Every ``change`` message carries an ``id`` that the client echoes back as
``?resume_after=``. The resume token behind it encodes the event's
position, namespace and ``documentKey``: fields a client may be denied (a
hidden key field, another namespace's name). So the id is the token
encrypted and authenticated with AES-SIV (``cryptography``'s ``AESSIV``):
opaque to the client, and any id not sealed by one of our keys (crafted,
foreign, tampered, recombined) is refused like a malformed one.

AES-SIV is deterministic, which is why it is used here: the same token
gives the same id in every worker and process sharing the key, and ids are
compared (the page's dedupe, the hub's history, the catch-up seam).

**Two parts.** Ciphertext does not compress, and a change message's id
was most of what a shared deflate context could not shrink. Most of a
token is the same for every event of a collection (its namespace or
collection UUID, the token's version and layout); only the position and
the document key vary. So a token whose layout is known is split in two,
each sealed on its own::

    id = b64(C_S) "." b64(C_V)
    C_S = AES-SIV(key, ad=["wsproxy resume id v2 shape"], S)
    C_V = AES-SIV(key, ad=["wsproxy resume id v2 values", S], V)

``S``, the *shape*, is a kind byte (layout, letter case of the hex) and the
token's repeated bytes; ``V``, the *values*, is the rest: the cluster time
(and SecantusDB's sequence number) and the whole document key, with its
field names and types. Since AES-SIV is deterministic, ``C_S`` is the same
text in every id of a collection and deflate's window removes it; what is
left to pay for is ``C_V``, 16 bytes of SIV and the values (SecantusDB:
34 bytes for an ObjectId key, so 67 characters, where the whole token
sealed at once was 114; the shape is 68 more, which only uncompressed and
independently compressed messages pay). Guarantees, as before:

* *Tamper-proof as a whole*: either part changed fails its SIV; ``V`` is
  authenticated with ``S`` as associated data, so values never open
  beside another shape (a recombined id is refused), and both parts must
  open under the same key. The associated data differ from the one-part
  form's and from every :meth:`Sealer.seal_bytes` purpose, so no part
  opens as anything else.
* *Opaque*: both parts are encrypted. What the split reveals beyond the
  one-part form's "same token" (and its length, which both forms show) is
  that two ids have the same ``S``: the same collection (SecantusDB's
  namespace string, MongoDB's collection UUID, which a dropped and
  re-created collection changes), the same token version and layout, and
  for MongoDB the same transaction op index. A client can already see the
  namespace of each event it is sent (``event.ns``); nothing of the
  document key is in ``S``, so equal shapes say nothing of a hidden key
  field, not even its type. Ids of events a client is not sent are never
  shown to it.
* *Valid on any worker and host sharing the keys*: nothing but the key
  goes into either part, so the same token gives the same id everywhere.

Layouts split: SecantusDB's tokens (a BSON document ``{s, t, n, k}`` in
lowercase hex: its top-level strings, i.e. the namespace, are the shape;
every other value is a value) and MongoDB's KeyString tokens (``0x82``,
the 8-byte cluster time, a short header and the collection UUID, then the
event identifier: the header and UUID are the shape; the time and the
identifier are the values). The split is checked the first time a
process seals a shape (the two parts must give the token back byte for
byte; later tokens of the shape are cut by the same steps, and the tests
round-trip a thousand layouts); any other token, or one that does not
check, is sealed whole as before:
``b64(AES-SIV(key, ad=["wsproxy resume id v1"], kind + body))``. Ids in
that one-part form, which every earlier release issued, keep opening and
are re-sealed (:meth:`Sealer.canonical`) in the current form on admission,
so a client holding one across an upgrade resumes exactly once. (A proxy
of an earlier release does not open two-part ids: during a rolling
upgrade across hosts, a client that reconnects from a new process to an
old one is refused with 400, which the bundled clients take as final; see
docs/operations.md.)

Keys come from configuration and must be the same in every proxy serving
the same clients: ``WSPROXY_SECRET_KEYS`` (a list, the current key first),
or else Flask's ``SECRET_KEY`` followed by ``SECRET_KEY_FALLBACKS``. Each
secret is stretched into an AES-SIV key with HKDF under a wsproxy-specific
label, so the key is not the one Flask signs sessions with. Sealing uses
the current key; unsealing tries the current, then the previous ones, so
keys can be rotated without cutting clients off; an id sealed with an old
key is re-sealed with the current one on admission.
"""

import base64
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any, cast

from bson import BSON
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import ClientError, ConfigError

MIN_SECRET_BYTES = 16
MAX_ID_CHARS = 8192
_HKDF_INFO = b"wsproxy/v1 resume-id sealing key (AES-SIV-512)"
# Bound into every seal: an AES-SIV output made for another purpose with
# the same key would not open here. One per form and part.
_ASSOCIATED = [b"wsproxy resume id v1"]
_SHAPE_AD = b"wsproxy resume id v2 shape"
_VALUES_AD = b"wsproxy resume id v2 values"
_PART = re.compile(rf"[A-Za-z0-9_-]{{22,{MAX_ID_CHARS}}}")
_SEPARATOR = "."
# One-part plaintext forms: the usual {"_data": "<hex>"} as its bytes, with
# the letters' case (MongoDB writes uppercase; other servers, e.g.
# SecantusDB, lowercase), which halves the id; anything else (mixed case,
# _typeBits) as BSON, so nothing is lost.
_HEX, _BSON, _LOWER_HEX = b"\x00", b"\x01", b"\x02"
# Two-part shapes: the layout, or'ed with _UPPER for uppercase hex.
_BSON_SPLIT, _KEYSTRING_SPLIT, _UPPER = 0x10, 0x20, 0x01
NOT_A_TOKEN = "resume_after: not a resume token"
# Sealed shapes by shape: a collection's events share a few.
_SHAPES_CACHED = 256


def derive_key(secret: str | bytes) -> bytes:
    """A 64-byte AES-SIV key from one configured secret (str or bytes)."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    return HKDF(
        algorithm=hashes.SHA256(), length=64, salt=None, info=_HKDF_INFO
    ).derive(secret)


def _b64(sealed: bytes) -> str:
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """The bytes of one sealed part, or None if it is not one."""
    if not _PART.fullmatch(text):
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None


class Sealer:
    """Seals resume tokens into ids and opens them; thread-safe (AESSIV
    objects hold no per-call state; the shape cache is a dict that is only
    filled and cleared, each in one step)."""

    def __init__(self, secrets: Sequence[str | bytes], two_part: bool = True) -> None:
        if not secrets:
            raise ConfigError("no secret key to seal resume ids with")
        self._ciphers = [AESSIV(derive_key(s)) for s in secrets]
        # False while a release that opens only one-part ids still serves
        # the same clients (WSPROXY_RESUME_IDS="one-part").
        self._two_part = two_part
        self._shapes: dict[bytes, str] = {}  # S -> b64(C_S) under the current key

    def seal(self, token: Mapping[str, Any]) -> str:
        """Resume token document -> the opaque id clients echo back."""
        data = token.get("_data") if len(token) == 1 else None
        if isinstance(data, str) and _is_hex(data, _UPPER_DIGITS):
            raw, upper = bytes.fromhex(data), True
        elif isinstance(data, str) and _is_hex(data, _LOWER_DIGITS):
            raw, upper = bytes.fromhex(data), False
        else:
            return self._seal_whole(_BSON + BSON.encode(token))
        split = _split(raw, upper) if self._two_part else None
        if split is None:
            return self._seal_whole((_HEX if upper else _LOWER_HEX) + raw)
        shape, values = split
        cipher = self._ciphers[0]
        sealed_shape = self._shapes.get(shape)
        if sealed_shape is None:
            # A shape not seen yet: check that the parts give the token
            # back (a shape's later tokens are split by the same steps).
            if _join(shape, values) != token:
                return self._seal_whole((_HEX if upper else _LOWER_HEX) + raw)
            sealed_shape = _b64(cipher.encrypt(shape, [_SHAPE_AD]))
            if len(self._shapes) >= _SHAPES_CACHED:
                self._shapes.clear()
            self._shapes[shape] = sealed_shape
        sealed_values = _b64(cipher.encrypt(values, [_VALUES_AD, shape]))
        return sealed_shape + _SEPARATOR + sealed_values

    def _seal_whole(self, plain: bytes) -> str:
        return _b64(self._ciphers[0].encrypt(plain, _ASSOCIATED))

    def unseal(self, text: object) -> dict[str, Any]:
        """The token inside an id; ClientError (400) for anything that is
        not an id sealed with one of the configured keys."""
        if not isinstance(text, str) or len(text) > MAX_ID_CHARS:
            raise ClientError(NOT_A_TOKEN)
        parts = [_unb64(part) for part in text.split(_SEPARATOR)]
        if None in parts:
            raise ClientError(NOT_A_TOKEN)
        sealed = cast("list[bytes]", parts)  # None is not among them
        if len(sealed) == 1:
            token = self._open_whole(sealed[0])
        elif len(sealed) == 2:
            token = self._open_split(*sealed)
        else:
            token = None
        if token is None:
            raise ClientError(NOT_A_TOKEN)
        return token

    def _open_whole(self, sealed: bytes) -> dict[str, Any] | None:
        for cipher in self._ciphers:
            try:
                plain = cipher.decrypt(sealed, _ASSOCIATED)
            except (InvalidTag, ValueError):
                continue
            return _decode(plain)
        return None

    def _open_split(
        self, sealed_shape: bytes, sealed_values: bytes
    ) -> dict[str, Any] | None:
        for cipher in self._ciphers:
            try:
                shape = cipher.decrypt(sealed_shape, [_SHAPE_AD])
                values = cipher.decrypt(sealed_values, [_VALUES_AD, shape])
            except (InvalidTag, ValueError):
                continue
            return _join(shape, values)
        return None

    def seal_bytes(self, plain: bytes, purpose: bytes) -> str:
        """Any other secret a client holds for us (a reconnect ticket), as
        url-safe text; ``purpose`` (bytes) is bound into the seal, so one
        kind never opens as another."""
        return _b64(self._ciphers[0].encrypt(plain, [purpose]))

    def open_bytes(self, text: object, purpose: bytes) -> bytes:
        """What :meth:`seal_bytes` sealed for ``purpose``; ClientError for
        anything else."""
        sealed = _unb64(text) if isinstance(text, str) else None
        if sealed is None:
            raise ClientError("not sealed by this deployment")
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(sealed, [purpose])
            except (InvalidTag, ValueError):
                continue
        raise ClientError("not sealed by this deployment")

    def canonical(self, text: object) -> str:
        """The id as the current key and form seal it (ids sealed with a
        previous key or in the one-part form are found in the history
        too); ClientError if not an id."""
        return self.seal(self.unseal(text))


_UPPER_DIGITS = frozenset("0123456789ABCDEF")
_LOWER_DIGITS = frozenset("0123456789abcdef")


def _is_hex(text: str, digits: frozenset[str]) -> bool:
    return bool(text) and len(text) % 2 == 0 and digits.issuperset(text)


def _decode(plain: bytes) -> dict[str, Any] | None:
    kind, body = plain[:1], plain[1:]
    if kind == _HEX and body:
        return {"_data": body.hex().upper()}
    if kind == _LOWER_HEX and body:
        return {"_data": body.hex()}
    if kind == _BSON:
        try:
            token = BSON(body).decode()
        except Exception:  # noqa: BLE001 - authentic but unreadable: refuse
            token = None
        if isinstance(token, dict):
            return token
    return None


# -- The two-part form's layouts ---------------------------------------------

# BSON element types whose value has a fixed size.
_FIXED = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}
_STRING, _DOCUMENT, _ARRAY, _BINARY = 0x02, 0x03, 0x04, 0x05
_KEYSTRING_TIME = b"\x82"  # KeyString's CType for a Timestamp, then 8 bytes
_UUID_MARK = b"\x5a\x10\x04"  # KeyString BinData, 16 bytes, subtype UUID
_UUID_WITHIN = 24  # how far after the time the UUID may start


def _split(raw: bytes, upper: bool) -> tuple[bytes, bytes] | None:
    """``(shape, values)`` of a token's bytes, or None if its layout is not
    one this module splits."""
    case = _UPPER if upper else 0
    if raw[:1] == _KEYSTRING_TIME:
        found = raw.find(_UUID_MARK, 9, 9 + _UUID_WITHIN)
        end = found + len(_UUID_MARK) + 16
        if found >= 0 and end <= len(raw):
            shape = bytes([_KEYSTRING_SPLIT | case]) + raw[9:end]
            return shape, raw[1:9] + raw[end:]
    cut = _bson_cut(raw)
    if cut is None:
        return None
    return bytes([_BSON_SPLIT | case]) + cut[0], cut[1]


def _bson_cut(raw: bytes) -> tuple[bytes, bytes] | None:
    """A BSON document's bytes as (everything but the top-level values that
    are not strings, those values); None if it is not one this reads."""
    last = len(raw) - 1
    if last < 4 or raw[last] or int.from_bytes(raw[:4], "little") != last + 1:
        return None
    shape, values, at = [raw[:4]], [], 4
    while at < last:
        start = raw.find(b"\x00", at + 1) + 1
        if not start:
            return None
        kind = raw[at]
        size = _FIXED.get(kind) or _value_size(kind, raw, start)
        if size is None or start + size > last:
            return None
        end = start + size
        if kind == _STRING:
            shape.append(raw[at:end])
        else:
            shape.append(raw[at:start])
            values.append(raw[start:end])
        at = end
    shape.append(b"\x00")
    return b"".join(shape), b"".join(values)


def _value_size(kind: int, raw: bytes, at: int) -> int | None:
    """How many bytes the value of a ``kind`` element at ``raw[at:]`` takes;
    None for kinds this does not read, or a truncated value."""
    if kind in _FIXED:
        return _FIXED[kind]
    if len(raw) < at + 4:
        return None
    length = struct.unpack_from("<i", raw, at)[0]
    if kind == _STRING:
        size = 4 + length
    elif kind in (_DOCUMENT, _ARRAY):
        size = length
    elif kind == _BINARY:
        size = 5 + length
    else:
        return None
    return size if length >= 0 and size >= 4 else None


def _join(shape: bytes, values: bytes) -> dict[str, Any] | None:
    """The token a two-part id's opened parts make; None if they do not
    make one (never for parts this module sealed)."""
    kind, body = shape[:1], shape[1:]
    if not kind:
        return None
    layout, upper = kind[0] & ~_UPPER, bool(kind[0] & _UPPER)
    if layout == _KEYSTRING_SPLIT and len(values) >= 8:
        raw: bytes | None = _KEYSTRING_TIME + values[:8] + body + values[8:]
    elif layout == _BSON_SPLIT:
        raw = _bson_fill(body, values)
    else:
        raw = None
    if raw is None:
        return None
    return {"_data": raw.hex().upper() if upper else raw.hex()}


def _bson_fill(body: bytes, values: bytes) -> bytes | None:
    """:func:`_bson_cut` undone: the document with its values put back."""
    if len(body) < 5:
        return None
    out, at, taken = [body[:4]], 4, 0
    while at < len(body) - 1:
        kind = body[at]
        name_end = body.find(b"\x00", at + 1)
        if name_end < 0:
            return None
        out.append(body[at : name_end + 1])
        at = name_end + 1
        if kind == _STRING:
            size = _value_size(kind, body, at)
            if size is None:
                return None
            out.append(body[at : at + size])
            at += size
        else:
            size = _value_size(kind, values, taken)
            if size is None or taken + size > len(values):
                return None
            out.append(values[taken : taken + size])
            taken += size
    if at != len(body) - 1 or body[at] or taken != len(values):
        return None
    out.append(b"\x00")
    return b"".join(out)


def _secrets(config: Mapping[str, Any]) -> tuple[list[Any], str | None]:
    """The configured secrets, current first, and where they came from."""
    keys = config.get("WSPROXY_SECRET_KEYS")
    if keys is not None:
        if isinstance(keys, (str, bytes)):
            keys = [keys]
        return list(keys), "WSPROXY_SECRET_KEYS"
    secret = config.get("SECRET_KEY")
    if not secret:
        return [], None
    fallbacks = config.get("SECRET_KEY_FALLBACKS") or []
    return [secret, *fallbacks], "SECRET_KEY"


def from_config(config: Mapping[str, Any]) -> Sealer:
    """The Sealer for an app's config; ConfigError (fail closed) without a
    usable key."""
    secrets, source = _secrets(config)
    if not secrets:
        raise ConfigError(
            "wsproxy seals resume ids with a secret key and has none: set "
            "WSPROXY_SECRET_KEYS (a list of secrets, the current one first; "
            "the same in every proxy serving the same clients, e.g. "
            "WSPROXY_SECRET_KEYS=$(python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')) or the Flask app's "
            "SECRET_KEY"
        )
    for secret in secrets:
        if not isinstance(secret, (str, bytes)):
            raise ConfigError(f"{source}: every key must be a string")
        size = len(secret.encode("utf-8") if isinstance(secret, str) else secret)
        if size < MIN_SECRET_BYTES:
            raise ConfigError(
                f"{source}: every key must be at least {MIN_SECRET_BYTES} bytes long"
            )
    return Sealer(secrets, two_part=config.get("WSPROXY_RESUME_IDS") != "one-part")
