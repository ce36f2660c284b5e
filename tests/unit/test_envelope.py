"""Authenticated envelopes as tables: what a receiver accepts, and why it refuses the rest (DESIGN I11)."""
import pytest

from processhub.transport import envelope as e

NOW = 1_800_000_000.0
CH = b"hub.node.abc.framed"


def sealed(payload=b'{"t":"call"}', channel=CH, keys=None, now=NOW, sealer=None):
    return (sealer or e.Sealer(keys or e.Keys("secret"))).seal(channel, payload, now)


def test_a_sealed_message_opens_to_its_payload():
    keys = e.Keys("secret")
    opener = e.Opener(keys, 30)
    assert opener.open(CH, sealed(keys=keys), NOW + 0.5) == b'{"t":"call"}'


def tamper(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


@pytest.mark.parametrize("make, reason", [
    (lambda: b'{"t":"call","r":"x","id":"1"}', "unsigned"),  # wire version 1, or a raw publish
    (lambda: b"", "unsigned"),
    (lambda: e.MAGIC + b"short", "malformed"),
    (lambda: sealed(keys=e.Keys("other secret")), "unknown key"),  # a node with a wrong secret
    (lambda: tamper(sealed(), len(sealed()) - 1), "bad signature"),  # payload changed
    (lambda: tamper(sealed(), 20), "bad signature"),  # counter changed
    (lambda: tamper(sealed(), e.HEADER_SIZE - 1), "bad signature"),  # MAC changed
    (lambda: sealed(channel=b"hub.node.other.framed"), "bad signature"),  # sent to another channel
    (lambda: sealed(now=NOW - 31), "stale"),
    (lambda: sealed(now=NOW + 31), "stale"),  # from the future: a clock far off, or forged
])
def test_refusals(make, reason):
    with pytest.raises(e.EnvelopeRefused) as info:
        e.Opener(e.Keys("secret"), 30).open(CH, make(), NOW)
    assert info.value.reason == reason


def test_replays_are_refused_and_order_per_sender_and_channel_is_kept():
    keys = e.Keys("secret")
    opener, sealer = e.Opener(keys, 30), e.Sealer(keys)
    first, second = sealed(sealer=sealer), sealed(sealer=sealer)
    other_channel = sealer.seal(b"hub.events", b"{}", NOW)
    assert opener.open(CH, first, NOW)
    with pytest.raises(e.EnvelopeRefused, match="replayed"):
        opener.open(CH, first, NOW)
    assert opener.open(CH, second, NOW)
    with pytest.raises(e.EnvelopeRefused, match="replayed"):
        opener.open(CH, first, NOW)  # older than what was accepted
    assert opener.open(b"hub.events", other_channel, NOW)  # counters are per (sender, channel)
    assert opener.open(CH, sealed(keys=keys), NOW)  # another sender has counters of its own


def test_senders_are_forgotten_only_when_their_messages_would_be_stale():
    keys = e.Keys("secret")
    opener, sealer = e.Opener(keys, 30), e.Sealer(keys)
    old = sealer.seal(CH, b"{}", NOW)
    opener.open(CH, old, NOW)
    opener.open(CH, sealed(keys=keys, now=NOW + 61), NOW + 61)  # a sweep forgets the first sender
    assert opener.senders() == 1
    with pytest.raises(e.EnvelopeRefused, match="stale"):
        opener.open(CH, old, NOW + 61)


def test_key_rotation_accepts_the_fallback_and_signs_with_the_new_key():
    old, new = e.Keys("old"), e.Keys("new", fallbacks=["old"])
    assert e.Opener(new, 30).open(CH, sealed(keys=old), NOW)  # an old sender during the deploy
    assert e.Opener(e.Keys("old", fallbacks=["new"]), 30).open(CH, sealed(keys=new), NOW)
    with pytest.raises(e.EnvelopeRefused, match="unknown key"):
        e.Opener(e.Keys("old"), 30).open(CH, sealed(keys=new), NOW)  # without the fallback: refused


def test_keys_are_derived_with_a_purpose():
    assert e.derive_key("s") != b"s" and len(e.derive_key("s")) == 32
    assert e.derive_key("s") == e.derive_key(b"s") != e.derive_key("t")


@pytest.mark.parametrize("data, expected", [
    (b'{"t":"call","r":"reply.1","id":"7"}', ("reply.1", "7")),
    (b'{"t":"cast"}', None),
    (b"\xa2....", None),
    (b"{not json", None),
])
def test_legacy_requests_get_an_answer_naming_both_versions(data, expected):
    assert e.legacy_request(data) == expected
    assert b"wire version 2" in e.legacy_refusal("7") and b'"id": "7"' in e.legacy_refusal("7")


@pytest.mark.parametrize("key", [b"", b"k", bytes(range(32)), bytes(range(64)), bytes(range(200)) * 2])
@pytest.mark.parametrize("payload", [b"", b"{}", bytes(range(256)) * 5])
def test_the_precomputed_mac_is_hmac_sha256_truncated(key, payload):
    # Senders and receivers of other releases compute the MAC with hmac.digest: the pads absorbed once
    # must give the very same bytes, for any key length (longer than a block: hashed first) and payload.
    fields, channel = bytes(range(1, 29)), b"hub.reply.xyz.framed"
    assert e._Mac(key)(fields, channel, payload) == e._mac(key, fields, channel, payload)
    assert len(e._Mac(key)(fields, channel, payload)) == e.MAC_SIZE


def test_a_sealed_message_is_the_documented_layout():
    keys = e.Keys("secret")
    sealer = e.Sealer(keys)
    data = sealer.seal(CH, b'{"t":"call"}', NOW)
    fields = data[1:1 + e._FIELDS.size]
    assert data[:1] == e.MAGIC and data[e.HEADER_SIZE:] == b'{"t":"call"}'
    assert e._FIELDS.unpack(fields) == (keys.current_id, sealer.sender, 1, int(NOW * 1000))
    assert data[1 + e._FIELDS.size:e.HEADER_SIZE] == e._mac(keys.current, fields, CH, b'{"t":"call"}')


def test_threads_may_share_a_sealer_and_an_opener_key():
    import threading

    keys = e.Keys("secret")
    sealer = e.Sealer(keys)
    out: list[bytes] = []

    def seal_many():
        out.extend(sealer.seal(CH, b"{}", NOW) for _ in range(2000))

    threads = [threading.Thread(target=seal_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    opener = e.Opener(keys, 30)
    counters = sorted(e._FIELDS.unpack(d[1:1 + e._FIELDS.size])[2] for d in out)
    assert counters == list(range(1, 8001))  # every counter once
    for d in sorted(out, key=lambda d: e._FIELDS.unpack(d[1:1 + e._FIELDS.size])[2]):
        assert opener.open(CH, d, NOW) == b"{}"  # and every MAC right
