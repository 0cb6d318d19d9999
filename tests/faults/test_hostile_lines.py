"""100,000 hostile board lines against the protocol decoder (fast, pure): no exception, no
hang, bounded buffering, only valid messages come out, and every line is either delivered or
counted as dropped by reason."""

from __future__ import annotations

import time

from p2ppool import defaults
from p2ppool.board import protocol
from p2ppool.board.protocol import LineDecoder, encode
from tests.fixtures.fuzz import TOPIC, identity_of, lines

NOW = 1_800_000_000.0


def test_100000_fuzzed_lines_never_break_the_decoder() -> None:
    decoder = LineDecoder(TOPIC)
    out = []
    fed = 0
    started = time.monotonic()
    cpu_started = time.process_time()  # this process's CPU: other load does not count
    stream = b"".join(lines(100_000, seed=1, now=NOW))
    # Any split: feed in pieces of varying size, as SSH delivers them.
    position, size = 0, 1
    while position < len(stream):
        piece = stream[position: position + size]
        out += decoder.feed(piece, NOW)
        assert decoder.pending_bytes <= defaults.MAX_LINE_BYTES
        position += len(piece)
        fed += 1
        size = (size * 7 + 13) % 70_000 + 1
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    lines_in = sum(1 for line in stream.split(b"\n")[:-1] if line.lstrip(b"\x00").strip())
    blank = stream.count(b"\n") - lines_in  # empty lines are skipped, as the protocol says
    dropped = sum(decoder.drops.values())
    assert all(isinstance(m, protocol.Message) for m in out)
    # Every delivered message is valid by construction: it re-encodes and decodes to itself.
    for msg in out[:2000]:
        line = encode(msg, identity_of(msg.sender), TOPIC)
        assert protocol.decode(line, NOW, TOPIC) == msg
    # Each line (glued partial lines count once) is delivered or dropped with a reason.
    assert len(out) + dropped == lines_in
    print(f"\ndecoder: {lines_in} lines (+{blank} blank) in {fed} pieces, {len(out)} valid, "
          f"dropped by reason {dict(sorted(decoder.drops.items()))}, {elapsed:.1f} s")
    assert set(decoder.drops) <= {protocol.OVERSIZED, protocol.MALFORMED, protocol.TEXT,
                                  protocol.UNKNOWN_TYPE, protocol.VERSION, protocol.EXPIRED,
                                  protocol.FUTURE, protocol.UNSIGNED, protocol.SIGNATURE,
                                  protocol.REPLAYED}
    assert cpu < 30, f"{cpu:.1f} s of CPU for 100,000 lines"
