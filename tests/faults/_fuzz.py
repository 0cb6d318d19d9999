"""A seeded generator of hostile board lines: mutated valid messages and garbage.

:func:`lines` yields byte strings, each ending in ``\\n`` except the deliberate partial
lines.  The mix (per 1,000 lines, roughly): 250 valid messages of every type with one field
mutated (wrong type, out of range, missing, huge, unicode, NaN...), 150 with the header
mutated (version, type, timestamps), 100 truncated or byte-flipped valid lines, 100
addressed to the running job (forged Accept/Offer/Want/Withdraw/Done from strangers), 200
random bytes, 100 random JSON values, 50 deep nestings and 50 oversized lines, a few
partial lines (no newline: the next line is glued to them).

Lines are signed (protocol version 2): each sender name has a fuzz identity (a name
such as ``w1`` becomes ``w1~<the fuzzer's key>``, never a real worker's id, which nobody
but that worker can sign for), and most mutated objects are signed after the mutation, so
that the field checks behind the signature check are what refuses them.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any, Dict, Iterator, List

from p2ppool import protocol
from p2ppool.board_auth import BoardIdentity, signed_payload
from p2ppool.protocol import encode

#: The topic lines are signed for unless told (the pure decoder tests use it).
TOPIC = "alice/local"
_IDENTITIES: Dict[str, BoardIdentity] = {}


def identity(name: str) -> BoardIdentity:
    """The fuzzer's identity for a sender name (one per name per process)."""
    found = _IDENTITIES.get(name)
    if found is None:
        found = _IDENTITIES[name] = BoardIdentity(name)
    return found


def identity_of(sender: str) -> BoardIdentity:
    """The fuzz identity whose id is ``sender``."""
    return identity(sender.rpartition("~")[0])


def _signed(obj: Any, topic: str) -> bytes:
    """``obj`` as a line signed by the identity of its ``from`` (mallory's if that is not a
    fuzz identity), with a fresh ``seq`` unless the object brings one."""
    if not isinstance(obj, dict):
        return _dump(obj)
    sender = obj.get("from")
    who = (identity_of(sender) if isinstance(sender, str) and "~" in sender
           and sender.rpartition("~")[0] in _IDENTITIES else identity("mallory"))
    obj = dict(obj)
    obj.pop("sig", None)
    obj.setdefault("seq", who.next_seq())
    body = _dump(obj)[:-1]
    sig = who.sign(signed_payload(protocol.PROTOCOL_VERSION, topic, body))
    return body[:-1] + b',"sig":"' + sig.encode() + b'"}\n'

_WEIRD: List[Any] = [
    None, True, False, 0, -1, 1e308, -1e308, 2**70, "", "x" * 300, "\u202e\u0000\ud7ff",
    [], {}, [1, 2], {"a": {"b": None}}, "NaN", "Infinity", 1.5, "../../etc/passwd",
    "alice/local", "'; DROP TABLE", "\x1b[2J", "ééé",
]


def _valid(rng: random.Random, now: float, job: str, worker: str) -> Dict[str, Any]:
    key = base64.b64encode(bytes(rng.getrandbits(8) for _ in range(32))).decode()
    sealed = base64.b64encode(bytes(rng.getrandbits(8) for _ in range(rng.choice(
        [48, 80, 120])))).decode()
    sender = identity(rng.choice(["mallory", "eve", worker, f"client:{job}", "w1", "w2"])
                      ).sender
    kinds = [
        protocol.Hello(sender=sender, ts=now, ttl=60, role=rng.choice(protocol.ROLES),
                       python=rng.choice(["3.11", "3.9", "2.7"]), version="0.1.0",
                       slots=rng.randrange(0, 64)),
        protocol.Bye(sender=sender, ts=now, ttl=60, role="worker"),
        protocol.Want(sender=sender, ts=now, ttl=30, job=job, slots=rng.randrange(1, 99),
                      python="3.11", session=rng.randrange(1, 5)),
        protocol.Offer(sender=sender, ts=now, ttl=10, job=job, worker=sender,
                       slots=rng.randrange(1, 99), key=key,
                       client=identity(f"client:{job}").sender),
        protocol.Accept(sender=sender, ts=now, ttl=10, job=job, worker=worker, code=sealed),
        protocol.Withdraw(sender=sender, ts=now, ttl=30, job=job),
        protocol.Withdraw(sender=sender, ts=now, ttl=30, worker=worker),
        protocol.Done(sender=sender, ts=now, ttl=30, job=job),
        protocol.Cluster(sender=sender, ts=now, ttl=60, name="alice/local", expires=now + 9),
    ]
    msg = rng.choice(kinds)
    obj: Dict[str, Any] = json.loads(encode(msg, identity_of(msg.sender), TOPIC))
    del obj["sig"], obj["seq"]  # signed again (or not) by lines(), after any mutation
    return obj


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass") + b"\n"


def lines(count: int, seed: int, now: float, job: str = "job", worker: str = "w1",
          topic: str = TOPIC) -> Iterator[bytes]:
    """``count`` hostile lines (deterministic for a seed but for keys and signatures);
    ``job``/``worker`` are the names of a real job and worker, so that some forged messages
    are addressed to them; signed lines are signed for ``topic``."""
    rng = random.Random(seed)

    def sign(obj: Any) -> bytes:
        # 80% signed (the field checks refuse them), the rest unsigned.
        return _signed(obj, topic) if rng.random() < 0.8 else _dump(obj)

    for _ in range(count):
        roll = rng.random()
        if roll < 0.25:  # one field mutated
            obj = _valid(rng, now, job, worker)
            field = rng.choice([k for k in obj if k not in ("v", "type")] or ["from"])
            if rng.random() < 0.2:
                obj.pop(field, None)
            else:
                obj[field] = rng.choice(_WEIRD)
            yield sign(obj)
        elif roll < 0.40:  # header mutated
            obj = _valid(rng, now, job, worker)
            choice = rng.randrange(6)
            if choice == 0:
                obj["v"] = rng.choice([0, 1, 99, "2", None, 2.0000001])
            elif choice == 1:
                obj["type"] = rng.choice(["HELLO", "result", "task", "", 7, None, "accept "])
            elif choice == 2:
                obj["ts"] = now + rng.choice([-1e6, 1e6, 86400 * 365, -now, 1e18])
            elif choice == 3:
                obj["ttl"] = rng.choice([-5, 0, 1e12, "60", None])
            elif choice == 4:
                obj = {k: v for k, v in obj.items() if k != rng.choice(list(obj))}
            else:
                obj["extra"] = "y" * rng.randrange(0, 3000)
            yield sign(obj)
        elif roll < 0.50:  # truncated or a byte flipped
            line = bytearray(encode(protocol.Hello(
                sender=identity("mallory").sender, ts=now, ttl=60, role="worker",
                python="3.11", version="0.1.0", slots=3), identity("mallory"), topic)
                if rng.random() < 0.3 else _signed(_valid(rng, now, job, worker), topic))
            if rng.random() < 0.5:
                line = line[: rng.randrange(1, len(line) - 1)] + b"\n"
            else:
                line[rng.randrange(len(line) - 1)] = rng.randrange(256)
                if b"\n" in line[:-1]:
                    line = line.replace(b"\n", b" ")[:-1] + b"\n"
            yield bytes(line)
        elif roll < 0.60:  # well-formed forgeries aimed at the running job
            yield _signed(_valid(rng, now, job, worker), topic)
        elif roll < 0.80:  # random bytes
            raw = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
            yield raw.replace(b"\n", b"") + b"\n"
        elif roll < 0.90:  # random JSON values
            yield _dump(rng.choice(_WEIRD + [[rng.random()] * 10, {"type": "hello"}]))
        elif roll < 0.95:  # deep nesting
            depth = rng.randrange(100, 2000)
            opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
            yield (opener * depth + "1" + closer * depth).encode() + b"\n"
        elif roll < 0.995:  # oversized
            yield b'{"v":1,"type":"hello","pad":"' + b"A" * rng.randrange(4097, 70000) + \
                b'"}\n'
        else:  # a partial line: whatever comes next is glued to it
            yield b'{"v":1,"type":"accept","from":"mallory","job":"' + job.encode()
