"""The codec: change event -> one JSON text and one frame, shared by all."""

import datetime
import json
import uuid

import pytest
from bson import Binary, Decimal128, Int64, ObjectId, Timestamp
from wsproto.frame_protocol import FrameProtocol

from wsproxy.transport import codec

from .helpers import sealer_for_tests

OID = ObjectId("65a1b2c3d4e5f60718293a4b")
SEALER = sealer_for_tests()
WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9, 123000)


def _raw(**doc):
    return {
        "_id": {"_data": "82ABCDEF"},
        "operationType": "insert",
        "clusterTime": Timestamp(1700000000, 3),
        "wallTime": WHEN,
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": OID},
        "fullDocument": {"_id": OID, **doc},
    }


@pytest.mark.parametrize(
    "value, expected",
    [
        (OID, {"$oid": "65a1b2c3d4e5f60718293a4b"}),
        (WHEN, {"$date": "2024-05-06T07:08:09.123Z"}),
        (Decimal128("12.50"), {"$numberDecimal": "12.50"}),
        (Int64(7), 7),
        (b"\x00\x01", {"$binary": {"base64": "AAE=", "subType": "00"}}),
        (
            Binary(uuid.UUID(int=1).bytes, 4),
            {"$binary": {"base64": "AAAAAAAAAAAAAAAAAAAAAQ==", "subType": "04"}},
        ),
        ({"a": [1, {"b": OID}]}, {"a": [1, {"b": {"$oid": str(OID)}}]}),
        (None, None),
        (1.5, 1.5),
    ],
)
def test_values_survive_as_relaxed_extended_json(value, expected):
    message = json.loads(codec.Change(_raw(v=value), SEALER).text)
    assert message["event"]["fullDocument"]["v"] == expected


def test_message_envelope_and_event_fields():
    change = codec.Change(_raw(n=1), SEALER)
    message = json.loads(change.text)
    assert message["type"] == "change"
    assert message["id"] == SEALER.seal({"_data": "82ABCDEF"})
    event = message["event"]
    assert "_id" not in event
    assert event["clusterTime"] == {"$timestamp": {"t": 1700000000, "i": 3}}
    assert event["wallTime"] == {"$date": "2024-05-06T07:08:09.123Z"}
    assert event["documentKey"] == {"_id": {"$oid": str(OID)}}


def test_frame_is_a_valid_unmasked_text_frame_of_the_text():
    change = codec.Change(_raw(big="x" * 70000), SEALER)  # 64-bit length form
    parser = FrameProtocol(client=True, extensions=[])
    parser.receive_bytes(change.frame)
    frames = list(parser.received_frames())
    assert len(frames) == 1
    assert frames[0].payload == change.text and frames[0].frame_finished
    assert change.frame[0] == 0x81 and not change.frame[1] & 0x80  # no mask
