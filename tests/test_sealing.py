"""Two-part resume ids (wsproxy/access/sealing.py, issue 24 item 4): the
part of a token every event of a collection shares sealed on its own, so a
shared deflate context removes it; tamper-proof, opaque and deterministic
as the one-part ids were; the one-part ids that earlier releases issued
still open, and resume exactly once across the upgrade."""

import base64
import random
import urllib.parse

import pytest
from bson import BSON, ObjectId, Timestamp
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from wsproxy import ClientError
from wsproxy.access.sealing import MAX_ID_CHARS, Sealer, derive_key, from_config

from .helpers import TEST_SECRET_KEYS, WSClient, sealer_for_tests, server_env

KEY = "k" * 32
# A SecantusDB token, {s, t, n: "bench.events", k: {_id: ObjectId}} as
# lowercase hex, and a MongoDB one (KeyString, uppercase).
SECANTUS = (
    "44000000107300020000001174000a000000cdcb146b026e000d00000062656e6368"
    "2e6576656e747300036b0016000000075f6964006b14cbcdac4a54e3ced5786f0000"
)
MONGODB = (
    "825E8DB54F000000012B022C0100296E5A1004BDB3105CB8B44265BB704E58E8EA"
    "8B0446645F696400645E8DB54FF368D1BC67ABE7AE0004"
)
# What the released one-part form made of them with KEY (recorded with the
# code before the two-part form): clients hold such ids across a deploy.
RELEASED = {
    SECANTUS: "3N3QFWSexy2-0oPhr7H7q9W01Mq-zFjoIT2TMWRd74UEAionwc-5urQ2cYVm"
    "oWQnEGadFPmC7ylJqonZ7-76F6DOqA5zoMlN0G9KwKwp0RPZ5Rnang",
    MONGODB: "E_dDXml6NWlMW0VEGypFEiiJeJHlStj2mukXgxHn1DTMHDGKOm6Szi2mzHPuEZ"
    "OR6UhpB_5jiGbtBxBhWqsLoZQBvGN4CevnQQ",
}
URL_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def released_seal(secret, token):
    """The one-part form, as the released code sealed a hex token."""
    data = token["_data"]
    kind = b"\x00" if data == data.upper() else b"\x02"
    sealed = AESSIV(derive_key(secret)).encrypt(
        kind + bytes.fromhex(data), [b"wsproxy resume id v1"]
    )
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()


def secantus_token(seq, ns="bench.events", key=None):
    """A token as SecantusDB writes one (lowercase hex of BSON)."""
    doc = {
        "s": seq,
        "t": Timestamp(1_700_000_000 + seq // 7, seq + 8),
        "n": ns,
        "k": {"_id": ObjectId() if key is None else key},
    }
    return {"_data": BSON.encode(doc).hex()}


def mongodb_token(seq, uuid=b"\x11" * 16, oid=None):
    """A KeyString token shaped as MongoDB writes them (uppercase hex)."""
    oid = (oid or ObjectId()).binary
    raw = (
        b"\x82"
        + (1_700_000_000).to_bytes(4, "big")
        + seq.to_bytes(4, "big")
        + bytes.fromhex("2B022C0100296E5A1004")
        + uuid
        + bytes.fromhex("46645F69640064")
        + oid
        + b"\x00\x04"
    )
    return {"_data": raw.hex().upper()}


def test_the_released_ids_are_what_the_released_code_made():
    for data, text in RELEASED.items():
        assert released_seal(KEY, {"_data": data}) == text


@pytest.mark.parametrize("data", [SECANTUS, MONGODB])
def test_released_one_part_ids_still_open_and_are_resealed_in_two_parts(data):
    sealer = Sealer([KEY])
    token = {"_data": data}
    assert sealer.unseal(RELEASED[data]) == token
    current = sealer.canonical(RELEASED[data])
    assert current == sealer.seal(token) != RELEASED[data]
    assert current.count(".") == 1 and sealer.canonical(current) == current
    # ...and under a previous key too (rotation and upgrade at once).
    rotated = Sealer(["n" * 32, KEY])
    assert rotated.canonical(RELEASED[data]) == Sealer(["n" * 32]).seal(token)


@pytest.mark.parametrize("data", [SECANTUS, MONGODB])
def test_one_part_ids_for_a_rollout_beside_an_earlier_release(data):
    """WSPROXY_RESUME_IDS="one-part": ids an earlier release can open (the
    released form, byte for byte), while two-part ids still open."""
    token = {"_data": data}
    one_part = sealer_from_config({"WSPROXY_RESUME_IDS": "one-part"})
    assert one_part.seal(token) == RELEASED[data]
    assert one_part.canonical(RELEASED[data]) == RELEASED[data]
    two_part = sealer_from_config({})
    assert "." in two_part.seal(token)
    assert one_part.unseal(two_part.seal(token)) == token
    assert one_part.canonical(two_part.seal(token)) == RELEASED[data]


def sealer_from_config(settings):
    return from_config({"WSPROXY_SECRET_KEYS": [KEY], **settings})


@pytest.mark.parametrize("make", [secantus_token, mongodb_token])
def test_a_collections_ids_share_their_first_part(make):
    one, other = Sealer([KEY]), Sealer([KEY])
    tokens = [make(seq) for seq in range(20)]
    ids = [one.seal(t) for t in tokens]
    assert [other.seal(t) for t in tokens] == ids  # deterministic
    assert [other.unseal(i) for i in ids] == tokens
    shapes = {i.split(".")[0] for i in ids}
    assert len(shapes) == 1 and len({i.split(".")[1] for i in ids}) == 20
    assert all(set(i) <= URL_SAFE for i in ids)
    assert Sealer(["j" * 32]).seal(tokens[0]).split(".")[0] not in shapes
    # What varies is sealed in 16 bytes of SIV and the values: 8 bytes of
    # time, 4 of sequence for SecantusDB, the document key.
    values = ids[0].split(".")[1]
    assert len(values) < 70 < len(RELEASED[SECANTUS])


def test_another_collection_has_another_first_part():
    sealer = Sealer([KEY])
    first = {
        sealer.seal(secantus_token(1, "db.a")).split(".")[0],
        sealer.seal(secantus_token(2, "db.b")).split(".")[0],
        sealer.seal(mongodb_token(1, uuid=b"\x22" * 16)).split(".")[0],
        sealer.seal(mongodb_token(2, uuid=b"\x33" * 16)).split(".")[0],
    }
    assert len(first) == 4


def test_a_two_part_id_reveals_nothing_of_the_token():
    secret = "ada@secret.example"
    token = secantus_token(5, ns="secret.orders", key=secret)
    sealed = Sealer([KEY]).seal(token)
    assert "." in sealed
    for fragment in (secret, "secret.orders", token["_data"][:12]):
        for form in (
            fragment,
            fragment.encode().hex(),
            base64.urlsafe_b64encode(fragment.encode()).decode()[:8],
        ):
            assert form not in sealed
    # The document key is all values, its types too: a string key gives the
    # first part an ObjectId key of the same size gives.
    a = Sealer([KEY]).seal(secantus_token(6, key="z" * 7))
    b = Sealer([KEY]).seal(secantus_token(7))
    assert a.split(".")[0] == b.split(".")[0]


def _flip(text, at):
    swap = "A" if text[at] != "A" else "B"
    return text[:at] + swap + text[at + 1 :]


def test_crafted_tampered_foreign_and_recombined_ids_are_refused():
    sealer = Sealer([KEY])
    good = sealer.seal(secantus_token(1, "db.a"))
    shape, values = good.split(".")
    other_shape, other_values = sealer.seal(secantus_token(2, "db.b")).split(".")
    foreign = Sealer(["f" * 32]).seal(secantus_token(1, "db.a"))
    mongo_shape, mongo_values = sealer.seal(mongodb_token(1)).split(".")
    bad = [
        shape,
        values,
        values + "." + shape,  # a part, swapped
        shape + "." + other_values,
        other_shape + "." + values,  # recombined
        shape + "." + mongo_values,
        mongo_shape + "." + values,
        foreign,
        foreign.split(".")[0] + "." + values,  # another key
        shape + "." + foreign.split(".")[1],
        good + "." + values,
        good + ".",
        "." + good,
        good.replace(".", ".."),
        good.replace(".", "_"),
        good.replace(".", "=."),
        _flip(good, 0),
        _flip(good, len(shape) - 2),
        _flip(good, len(shape) + 1),
        _flip(good, -2),
        good[:-1],
        good + "A",
        shape + "." + values[:21],
        "A" * 30 + "." + "A" * 30,
        "x" * (MAX_ID_CHARS - 30) + "." + "x" * 40,
    ]
    for text in bad:
        with pytest.raises(ClientError) as info:
            sealer.unseal(text)
        assert info.value.reason == "resume_after: not a resume token", text
        assert info.value.status == 400


def test_the_parts_of_an_id_never_open_as_one_part_ids_or_tickets():
    from wsproxy.limits import tickets

    sealer = Sealer([KEY])
    shape, values = sealer.seal(mongodb_token(3)).split(".")
    for part in (shape, values):
        with pytest.raises(ClientError):
            sealer.unseal(part)
        with pytest.raises(ClientError):
            sealer.open_bytes(part, tickets._PURPOSE)


def test_key_rotation_opens_two_part_ids_and_reseals_them():
    old, new = "o" * 32, "n" * 32
    token = secantus_token(9)
    before = Sealer([old]).seal(token)
    rotated = Sealer([new, old])
    assert rotated.unseal(before) == token
    assert rotated.canonical(before) == Sealer([new]).seal(token) != before
    with pytest.raises(ClientError):
        Sealer([new]).unseal(before)
    # Both parts must open under the same key.
    mixed = before.split(".")[0] + "." + Sealer([new]).seal(token).split(".")[1]
    with pytest.raises(ClientError):
        rotated.unseal(mixed)


def _random_bson_token(rng):
    values = [
        rng.randrange(-(2**31), 2**31),
        rng.random(),
        "",
        "k" * rng.randrange(40),
        ObjectId(),
        Timestamp(rng.randrange(2**31), rng.randrange(2**31)),
        {"_id": rng.randrange(10**12), "tenant": "t" * rng.randrange(9)},
        [1, "two", {"three": 3}],
        b"\x00\x01" * rng.randrange(5),
        True,
        None,
        2**40,
    ]
    names = rng.sample("stnkxyz", rng.randrange(1, 7))
    doc = {name: rng.choice(values) for name in names}
    return {"_data": BSON.encode(doc).hex()}


def test_every_token_round_trips_whatever_its_layout():
    rng = random.Random(24)
    sealer = Sealer([KEY])
    tokens = [_random_bson_token(rng) for _ in range(400)]
    tokens += [mongodb_token(seq) for seq in range(20)]
    for n in range(200):  # bytes that look like KeyString, or like nothing
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
        if n % 2:
            raw = b"\x82" + raw[:8] + b"\x5a\x10\x04" + raw[8:]
        tokens.append({"_data": raw.hex()})
        tokens.append({"_data": raw.hex().upper()})
    tokens.append({"_data": "82AB", "_typeBits": b"\x01"})
    for token in tokens:
        sealed = sealer.seal(token)
        assert sealer.unseal(sealed) == token, token
        assert Sealer([KEY]).seal(token) == sealed


def _changes(client, count):
    got = []
    while len(got) < count:
        message = client.recv(timeout=10)
        if message["type"] == "reset":
            raise AssertionError(f"unexpected reset: {message}")
        if message["type"] == "change":
            got.append(message)
    return got


def _connect(server, resume_after):
    query = urllib.parse.urlencode({"resume_after": resume_after})
    client = WSClient(server.ws_url() + "?" + query)
    hello = client.recv()
    assert hello["type"] == "hello"
    return client, hello["resume"]


def test_an_id_of_the_released_form_resumes_exactly_once_after_the_upgrade(
    mongo, mongo_client, namespace, gunicorn
):
    """A client that got its last id from a proxy of the released version
    (one-part form) resumes from it on this one: from the history, and from
    MongoDB when the history does not have it (a restarted worker)."""
    db, coll = namespace
    env = server_env(mongo.uri, db, coll)
    server = gunicorn(env)
    first = WSClient(server.ws_url())
    assert first.recv()["type"] == "hello"
    items = mongo_client[db][coll]
    items.insert_many([{"_id": i, "seq": i} for i in range(10)])
    got = _changes(first, 10)
    first.close()
    assert all(m["id"].count(".") == 1 for m in got)
    sealer = sealer_for_tests()

    def released(message):
        return released_seal(TEST_SECRET_KEYS, sealer.unseal(message["id"]))

    held = released(got[4])
    assert "." not in held
    client, mode = _connect(server, held)
    assert mode == "history"
    items.insert_many([{"_id": i, "seq": i} for i in range(10, 13)])
    resumed = _changes(client, 8)
    assert [m["event"]["fullDocument"]["seq"] for m in resumed] == list(range(5, 13))
    assert [m["id"] for m in resumed[:5]] == [m["id"] for m in got[5:]]
    client.close()

    server.stop()
    restarted = gunicorn(env)
    client, mode = _connect(restarted, released(resumed[-1]))
    assert mode == "catch-up"
    items.insert_many([{"_id": i, "seq": i} for i in range(13, 16)])
    assert [m["event"]["fullDocument"]["seq"] for m in _changes(client, 3)] == [
        13,
        14,
        15,
    ]
    client.close()
