"""What signing board lines costs: µs to sign and to verify one line, and bytes per line.

Usage::

    python benchmarks/bench_board_auth.py [--lines 5000]

For each message type a peer writes often (a worker's Hello and Offer, a client's Want and
Accept), one JSON object per line:

* ``sign_us``: :meth:`~p2ppool.board.auth.BoardIdentity.sign` of the line's signed bytes
  (version, topic, body: what :func:`~p2ppool.board.protocol.encode` adds to a line), fewest of
  5 runs;
* ``verify_us``: :func:`p2ppool.board.auth.verify` of that signature (what
  :func:`~p2ppool.board.protocol.decode` adds to a line), fewest of 5 runs;
* ``decode_us``: :meth:`p2ppool.board.protocol.LineDecoder.feed` of one whole signed line
  (parse, field checks, verification, replay check), for scale;
* ``v1_bytes`` / ``v2_bytes`` / ``growth_bytes``: the line as version 1 wrote it (sender ids
  were bare names, no ``seq``, no ``sig``) and as version 2 writes it, with the same names.

Times are CPU time of this process (``time.process_time``), the fewest µs of 5 runs, so
that other load on the machine counts little.  One pure-CPU process, no network.  The last
line is a summary (``"type": "summary"``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from typing import Any, Callable, Dict, List

from p2ppool.board import protocol
from p2ppool.board.auth import BoardIdentity, signed_payload, verify
from p2ppool.board.protocol import Accept, Hello, LineDecoder, Message, Offer, Want, encode

TOPIC = "alice/friends"


def _v1_line(msg: Message, names: Dict[str, str]) -> bytes:
    """``msg`` as protocol version 1 wrote it: ids were the bare names, no seq or sig."""
    obj: Dict[str, Any] = {"v": 1, "type": msg.TYPE}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if value is None and f.default is None:
            continue
        if f.name == "client":
            continue  # new in version 2
        obj["from" if f.name == "sender" else f.name] = names.get(value, value) \
            if isinstance(value, str) else value
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _per_line_us(fn: Callable[[], None], n: int) -> float:
    runs = []
    for _ in range(5):
        started = time.process_time()  # CPU of this process: the others' load does not count
        for _ in range(n):
            fn()
        runs.append((time.process_time() - started) / n * 1e6)
    return min(runs)


def measure(lines: int) -> List[Dict[str, Any]]:
    worker = BoardIdentity("w1")
    client = BoardIdentity("client:3f2a9c1d0b7e")
    names = {worker.sender: "w1", client.sender: "client:3f2a9c1d0b7e"}
    now = time.time()
    _, pub = protocol.new_offer_keypair()
    code = protocol.seal_code("7-guitarist-revenge", pub)
    cases = [
        (worker, Hello(sender=worker.sender, ts=now, ttl=90.0, role="worker", python="3.11",
                       version="0.1.0", slots=4)),
        (worker, Offer(sender=worker.sender, ts=now, ttl=10.0, job="3f2a9c1d0b7e",
                       worker=worker.sender, slots=4, key=pub, client=client.sender)),
        (client, Want(sender=client.sender, ts=now, ttl=30.0, job="3f2a9c1d0b7e", slots=8,
                      python="3.11", session=1)),
        (client, Accept(sender=client.sender, ts=now, ttl=30.0, job="3f2a9c1d0b7e",
                        worker=worker.sender, code=code)),
    ]
    return [_row(who, msg, names, lines, now) for who, msg in cases]


def _row(who: BoardIdentity, msg: Message, names: Dict[str, str], lines: int,
         now: float) -> Dict[str, Any]:
    v2 = encode(msg, who, TOPIC)
    v1 = _v1_line(msg, names)
    body = v2[:v2.rindex(b',"sig":')] + b"}"
    payload = signed_payload(protocol.PROTOCOL_VERSION, TOPIC, body)
    signature = who.sign(payload).encode()
    assert verify(msg.sender, signature, payload)
    sign = _per_line_us(lambda: who.sign(payload), lines)
    check = _per_line_us(lambda: verify(msg.sender, signature, payload), lines)
    # One decoder, each line a new seq (encoded beforehand): the replay guard accepts all.
    decoder = LineDecoder(TOPIC)
    fresh = iter([encode(msg, who, TOPIC) for _ in range(5 * lines)])
    decode = _per_line_us(lambda: decoder.feed(next(fresh), now), lines)
    assert decoder.accepted == 5 * lines and not decoder.drops, decoder.drops
    return {"type": msg.TYPE, "sign_us": round(sign, 1), "verify_us": round(check, 1),
            "decode_us": round(decode, 1), "v1_bytes": len(v1), "v2_bytes": len(v2),
            "growth_bytes": len(v2) - len(v1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=5000, help="lines per timed run")
    args = parser.parse_args()
    rows = measure(args.lines)
    for row in rows:
        print(json.dumps(row))
    print(json.dumps({
        "type": "summary",
        "sign_us_median": statistics.median(r["sign_us"] for r in rows),
        "verify_us_median": statistics.median(r["verify_us"] for r in rows),
        "decode_us_median": statistics.median(r["decode_us"] for r in rows),
        "growth_bytes_min": min(r["growth_bytes"] for r in rows),
        "growth_bytes_max": max(r["growth_bytes"] for r in rows),
    }))


if __name__ == "__main__":
    main()
