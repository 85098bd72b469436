"""Resume ids: the change stream's resume tokens, sealed.

Every ``change`` message carries an ``id`` that the client echoes back as
``?resume_after=``. The resume token behind it encodes the event's
position, namespace and ``documentKey``: fields a client may be denied (a
hidden key field, another namespace's name). So the id is the token
encrypted and authenticated with AES-SIV (``cryptography``'s ``AESSIV``):
opaque to the client, and any id not sealed by one of our keys (crafted,
foreign, tampered) is refused like a malformed one.

AES-SIV is deterministic, which is why it is used here: the same token
gives the same id in every worker and process sharing the key, and ids are
compared (the page's dedupe, the hub's history, the catch-up seam). All it
reveals is that two ids are the same token, i.e. the same event.

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
from collections.abc import Iterable, Mapping
from typing import Any

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
# the same key would not open here.
_ASSOCIATED = [b"wsproxy resume id v1"]
_ID = re.compile(rf"[A-Za-z0-9_-]{{22,{MAX_ID_CHARS}}}")
# Plaintext forms: the usual {"_data": "<hex>"} as its bytes, with the
# letters' case (MongoDB writes uppercase; other servers, e.g. SecantusDB,
# lowercase), which halves the id; anything else (mixed case, _typeBits) as
# BSON, so nothing is lost.
_HEX, _BSON, _LOWER_HEX = b"\x00", b"\x01", b"\x02"
NOT_A_TOKEN = "resume_after: not a resume token"


def derive_key(secret: str | bytes) -> bytes:
    """A 64-byte AES-SIV key from one configured secret (str or bytes)."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    return HKDF(
        algorithm=hashes.SHA256(), length=64, salt=None, info=_HKDF_INFO
    ).derive(secret)


class Sealer:
    """Seals resume tokens into ids and opens them; thread-safe (AESSIV
    objects hold no per-call state)."""

    def __init__(self, secrets: Iterable[str | bytes]) -> None:
        if not secrets:
            raise ConfigError("no secret key to seal resume ids with")
        self._ciphers = [AESSIV(derive_key(s)) for s in secrets]

    def seal(self, token: Mapping[str, Any]) -> str:
        """Resume token document -> the opaque id clients echo back."""
        data = token.get("_data") if len(token) == 1 else None
        if isinstance(data, str) and _is_hex(data, _UPPER_DIGITS):
            plain = _HEX + bytes.fromhex(data)
        elif isinstance(data, str) and _is_hex(data, _LOWER_DIGITS):
            plain = _LOWER_HEX + bytes.fromhex(data)
        else:
            plain = _BSON + BSON.encode(token)
        sealed = self._ciphers[0].encrypt(plain, _ASSOCIATED)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def unseal(self, text: object) -> dict[str, Any]:
        """The token inside an id; ClientError (400) for anything that is
        not an id sealed with one of the configured keys."""
        if not isinstance(text, str) or not _ID.fullmatch(text):
            raise ClientError(NOT_A_TOKEN)
        try:
            sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            raise ClientError(NOT_A_TOKEN) from None
        for cipher in self._ciphers:
            try:
                plain = cipher.decrypt(sealed, _ASSOCIATED)
            except (InvalidTag, ValueError):
                continue
            return _decode(plain)
        raise ClientError(NOT_A_TOKEN)

    def seal_bytes(self, plain: bytes, purpose: bytes) -> str:
        """Any other secret a client holds for us (a reconnect ticket), as
        url-safe text; ``purpose`` (bytes) is bound into the seal, so one
        kind never opens as another."""
        sealed = self._ciphers[0].encrypt(plain, [purpose])
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open_bytes(self, text: object, purpose: bytes) -> bytes:
        """What :meth:`seal_bytes` sealed for ``purpose``; ClientError for
        anything else."""
        if not isinstance(text, str) or not _ID.fullmatch(text):
            raise ClientError("not sealed by this deployment")
        try:
            sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            raise ClientError("not sealed by this deployment") from None
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(sealed, [purpose])
            except (InvalidTag, ValueError):
                continue
        raise ClientError("not sealed by this deployment")

    def canonical(self, text: object) -> str:
        """The id as the current key seals it (ids sealed with a previous
        key are found in the history too); ClientError if not an id."""
        return self.seal(self.unseal(text))


_UPPER_DIGITS = frozenset("0123456789ABCDEF")
_LOWER_DIGITS = frozenset("0123456789abcdef")


def _is_hex(text: str, digits: frozenset[str]) -> bool:
    return bool(text) and len(text) % 2 == 0 and digits.issuperset(text)


def _decode(plain: bytes) -> dict[str, Any]:
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
    raise ClientError(NOT_A_TOKEN)


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
    return Sealer(secrets)
