"""The routing index (wsproxy.fanout.routing) only ever narrows the members a
change is offered to, never loses one: for random subscriptions and
random events, every member whose subscription decides to send something
(or that holds the document) is among the candidates, before, during and
after a subscription is replaced. And anchors are chosen best first."""

import json
import random

import pytest
from bson import ObjectId
from werkzeug.datastructures import MultiDict

from wsproxy import access
from wsproxy.fanout import subscription
from wsproxy.fanout.routing import Routes, anchor
from wsproxy.fanout.tracking import held_key
from wsproxy.transport.codec import Change

from .helpers import sealer_for_tests

SEALER = sealer_for_tests()
NAMESPACES = ["shop.orders", "shop.users", "crm.leads"]
TENANTS = ["acme", "globex", "initech", 7, 7.0, True]
STATUSES = ["open", "closed", None]


class Member:
    """What the hub indexes: a subscription, and whether it is routed."""

    routed = True

    def __init__(self, name, sub):
        self.name = name
        self.subscription = sub

    def __repr__(self):
        return f"Member({self.name})"


def _random_args(rng):
    args = MultiDict()
    if rng.random() < 0.5:
        for ns in rng.sample(NAMESPACES + ["shop"], rng.randint(1, 2)):
            args.add("ns", ns)
    if rng.random() < 0.3:
        for op in rng.sample(
            ["insert", "update", "delete", "replace"], rng.randint(1, 2)
        ):
            args.add("ops", op)
    choice = rng.random()
    if choice < 0.2:
        args["filter"] = json.dumps(
            {"fullDocument.status": rng.choice(["open", "closed"])}
        )
    elif choice < 0.3:
        args["filter"] = (
            '{"$or": [{"fullDocument.status": "open"}, {"fullDocument.n": {"$gt": 5}}]}'
        )
    elif choice < 0.4:
        args["filter"] = '{"documentKey._id": {"$in": [1, 2, 3]}}'
    elif choice < 0.5:
        args["filter"] = '{"fullDocument.tenant": {"$in": ["acme", 7]}}'
    return args


def _random_principal(rng):
    choice = rng.random()
    if choice < 0.4:
        return access.ANYONE
    if choice < 0.8:
        return access.Principal(
            "tenant", filter={"fullDocument.tenant": rng.choice(TENANTS)}
        )
    if choice < 0.9:
        return access.Principal(
            "tenants",
            filter={
                "$and": [
                    {"fullDocument.tenant": {"$in": ["acme", 7]}},
                    {"operationType": {"$in": ["insert", "update", "delete"]}},
                ]
            },
        )
    return access.Principal("one", namespaces=[rng.choice(NAMESPACES)])


def _random_subscription(rng):
    while True:
        try:
            return subscription.parse(
                _random_args(rng), scope="", principal=_random_principal(rng)
            )
        except subscription.ClientError:
            continue  # e.g. a namespace outside a principal's grant


def _document(rng, _id):
    doc = {"_id": _id, "n": rng.randint(0, 10)}
    if rng.random() < 0.9:
        doc["tenant"] = rng.choice(TENANTS)
    status = rng.choice(STATUSES)
    if status is not None:
        doc["status"] = status
    return doc


def _random_event(rng):
    db, coll = rng.choice(NAMESPACES).split(".")
    op = rng.choices(
        ["insert", "update", "replace", "delete", "drop", "invalidate"],
        [4, 4, 2, 3, 0.3, 0.2],
    )[0]
    _id = rng.choice([1, 2, 3, 4, "x"])
    raw = {
        "_id": {"_data": "82" + ObjectId().binary.hex().upper()},
        "operationType": op,
    }
    if op != "invalidate":
        raw["ns"] = {"db": db, "coll": coll}
    if op in ("insert", "update", "replace", "delete"):
        raw["documentKey"] = {"_id": _id}
    if op in ("insert", "update", "replace"):
        raw["fullDocument"] = _document(rng, _id)
    if op == "update":
        raw["updateDescription"] = {"updatedFields": {"n": 1}, "removedFields": []}
        if rng.random() < 0.2:
            raw["fullDocument"] = None  # updateLookup: already deleted
    if op in ("update", "replace", "delete") and rng.random() < 0.5:
        raw["fullDocumentBeforeChange"] = _document(rng, _id)
    return raw


def _deciders(members, raw, subs=None):
    change = Change(raw, SEALER)
    subs = subs or {m: [m.subscription] for m in members}
    return {m for m in members if any(s.decide(change) is not None for s in subs[m])}


@pytest.mark.parametrize("seed", range(5))
def test_every_member_a_change_concerns_is_a_candidate(seed):
    rng = random.Random(seed)
    routes = Routes()
    members = [Member(i, _random_subscription(rng)) for i in range(60)]
    for member in members:
        routes.add(member)
    narrowed = 0
    for _ in range(400):
        raw = _random_event(rng)
        candidates = routes.candidates(raw)
        missing = _deciders(members, raw) - candidates
        assert not missing, (raw, [m.subscription.key for m in missing])
        narrowed += len(candidates) < len(members)
    # The index does narrow (it is not everyone, every time).
    assert narrowed > 100


@pytest.mark.parametrize("seed", range(5))
def test_replacing_subscriptions_never_drops_a_member(seed):
    """widen (both old and new subscription reach the member), then settle
    (the new one alone), with events judged at each step."""
    rng = random.Random(100 + seed)
    routes = Routes()
    members = [Member(i, _random_subscription(rng)) for i in range(40)]
    for member in members:
        routes.add(member)
    for _ in range(60):
        member = rng.choice(members)
        old, new = member.subscription, _random_subscription(rng)
        routes.widen(member, new)
        both = {m: [m.subscription] for m in members}
        both[member] = [old, new]
        for _ in range(10):
            raw = _random_event(rng)
            assert not _deciders(members, raw, both) - routes.candidates(raw)
        member.subscription = new
        routes.settle(member)
        assert len(routes) == len(members)
        for _ in range(10):
            raw = _random_event(rng)
            assert not _deciders(members, raw) - routes.candidates(raw)
    # Removing a member takes it out of every index.
    for member in members:
        routes.remove(member)
    assert len(routes) == 0
    assert not routes._index and not routes._scan


def test_settle_keeps_what_the_old_and_new_anchor_share():
    routes = Routes()
    principal = access.Principal("t", filter={"fullDocument.tenant": "acme"})
    member = Member("m", subscription.parse(MultiDict(), scope="", principal=principal))
    routes.add(member)
    both = access.Principal(
        "t", filter={"fullDocument.tenant": {"$in": ["acme", "globex"]}}
    )
    member.subscription = subscription.parse(MultiDict(), scope="", principal=both)
    routes.widen(member, member.subscription)
    routes.settle(member)
    event = {
        "_id": {"_data": "82AA"},
        "operationType": "insert",
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": 1},
        "fullDocument": {"_id": 1, "tenant": "acme"},
    }
    assert member in routes.candidates(event)
    event["fullDocument"]["tenant"] = "globex"
    assert member in routes.candidates(event)
    event["fullDocument"]["tenant"] = "initech"
    assert member not in routes.candidates(event)


def test_a_member_holding_a_document_gets_its_changes_whatever_its_anchor():
    routes = Routes()
    principal = access.Principal("t", filter={"fullDocument.tenant": "acme"})
    member = Member("m", subscription.parse(MultiDict(), scope="", principal=principal))
    routes.add(member)
    delete = {
        "_id": {"_data": "82AA"},
        "operationType": "delete",
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": 1},
    }
    assert member not in routes.candidates(delete)
    routes.holders.hold(held_key(delete), member)
    assert member in routes.candidates(delete)
    routes.holders.forget(held_key(delete), member)
    assert member not in routes.candidates(delete)
    assert len(routes.holders) == 0


def test_a_document_leaving_a_filter_reaches_the_members_it_leaves():
    """Anchored on a document field, a member is found by the pre-image
    too: the update that takes the document away from its tenant."""
    routes = Routes()
    principal = access.Principal("t", filter={"fullDocument.tenant": "acme"})
    member = Member("m", subscription.parse(MultiDict(), scope="", principal=principal))
    routes.add(member)
    moved = {
        "_id": {"_data": "82AA"},
        "operationType": "update",
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": 1},
        "updateDescription": {
            "updatedFields": {"tenant": "globex"},
            "removedFields": [],
        },
        "fullDocument": {"_id": 1, "tenant": "globex"},
        "fullDocumentBeforeChange": {"_id": 1, "tenant": "acme"},
    }
    assert member in routes.candidates(moved)


def _anchor(args=None, principal=access.ANYONE):
    return anchor(
        subscription.parse(MultiDict(args or {}), scope="", principal=principal)
    )


def test_anchors_are_chosen_best_first():
    tenant = access.Principal("t", filter={"fullDocument.tenant": "acme"})
    # A document field beats a namespace, which beats an operation type.
    assert _anchor({"ns": "shop.orders", "ops": "insert"}, tenant) == (
        "fullDocument.tenant",
        frozenset(_anchor(principal=tenant)[1]),
    )
    assert _anchor({"ns": "shop.orders", "ops": "insert"})[0] == "ns"
    assert _anchor({"ops": "insert"})[0] == "operationType"
    # Between two of one kind, the one that lets fewer values through.
    path, keys = _anchor(
        {"filter": '{"fullDocument.status": {"$in": ["a", "b"]}}'}, tenant
    )
    assert path == "fullDocument.tenant" and len(keys) == 1
    # Nothing to anchor on: the scan list.
    assert _anchor() is None
    assert (
        _anchor({"filter": '{"$or": [{"fullDocument.a": 1}, {"fullDocument.b": 2}]}'})
        is None
    )
    # null, embedded documents and ranges are not anchors.
    assert _anchor({"filter": '{"fullDocument.a": null}'}) is None
    assert _anchor({"filter": '{"fullDocument.a": {"b": 1}}'}) is None
    assert _anchor({"filter": '{"fullDocument.a": {"$gt": 1}}'}) is None


@pytest.mark.parametrize("op", ["drop", "rename", "dropDatabase", "invalidate"])
def test_a_change_that_clears_documents_is_offered_to_everyone(op):
    """What a member holds goes with a dropped collection or database,
    whatever its anchor or its subscription's say about the event."""
    routes = Routes()
    tenant = access.Principal("t", filter={"fullDocument.tenant": "acme"})
    members = [
        Member(name, subscription.parse(MultiDict(args), scope="", principal=principal))
        for name, args, principal in [
            ("tenant", {}, tenant),
            ("users", {"ns": "shop.users"}, access.ANYONE),
            ("inserts", {"ops": "insert"}, access.ANYONE),
        ]
    ]
    for member in members:
        routes.add(member)
    event = {"_id": {"_data": "82AA"}, "operationType": op}
    if op != "invalidate":
        event["ns"] = {"db": "shop", "coll": "orders"}
    assert routes.candidates(event) == set(members)


def test_a_batch_of_several_documents_reaches_a_tracking_member_whole():
    """A batch (changes that came together) about several documents, some
    for a member anchored on its tenant that tracks what it is sent: it
    gets exactly its tenant's, in order, and the others are not lost."""
    from wsproxy.fanout.hub import Hub
    from wsproxy.fanout.tracking import Held
    from wsproxy.transport import codec

    from .test_hub import FakeClient

    class TrackingClient(FakeClient):
        routed = True

        def __init__(self, subscription):
            super().__init__(subscription)
            self.held = Held(100)

    def insert(i, tenant):
        return Change(
            {
                "_id": {"_data": f"{i:08X}"},
                "operationType": "insert",
                "ns": {"db": "shop", "coll": "orders"},
                "documentKey": {"_id": i},
                "fullDocument": {"_id": i, "tenant": tenant},
            },
            SEALER,
        )

    def tenant(name):
        return subscription.parse(
            MultiDict(),
            scope="",
            principal=(access.Principal(name, filter={"fullDocument.tenant": name})),
        )

    hub = Hub()
    acme, globex = TrackingClient(tenant("acme")), TrackingClient(tenant("globex"))
    for client in (acme, globex):
        hub.register(
            client, None, lambda mode: codec.control_message("hello", resume=mode)
        )
    batch = [insert(i, "acme" if i % 3 else "globex") for i in range(12)]
    hub._publish(batch)
    for client, name in ((acme, "acme"), (globex, "globex")):
        wanted = [c.frame for c in batch if c.raw["fullDocument"]["tenant"] == name]
        assert client.frames[1:] == wanted
