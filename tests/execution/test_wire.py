"""The framed pipe messages between an engine and its task processes (real pipes)."""

from __future__ import annotations

import os
import threading
from typing import Iterator, Tuple

import pytest

from p2ppool.execution import wire


@pytest.fixture
def pipe() -> Iterator[Tuple[int, int]]:
    """A pipe's two ends; a test that closes the writing end does it with
    :func:`close_writer` (never closed twice: the number may be someone else's by then)."""
    rx, tx = os.pipe()
    yield rx, tx
    os.close(rx)
    if tx not in CLOSED:
        os.close(tx)
    CLOSED.discard(tx)


CLOSED: set[int] = set()


def close_writer(fd: int) -> None:
    CLOSED.add(fd)
    os.close(fd)


def write_in_thread(fd: int, messages: list[bytes]) -> threading.Thread:
    def write() -> None:
        for message in messages:
            wire.write_message(fd, message)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("size", [0, 1, wire.INLINE_MAX, wire.INLINE_MAX + 1, 5_000_000])
def test_a_message_arrives_whole_and_in_order(pipe: Tuple[int, int], size: int) -> None:
    rx, tx = pipe
    first = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    writer = write_in_thread(tx, [first, b"after"])  # 5 MB: many times the pipe's capacity
    got = wire.recv_message(rx)
    assert len(got) == size and got == first
    assert wire.recv_message(rx) == b"after"
    writer.join(10)


def test_a_large_message_is_read_into_one_buffer(pipe: Tuple[int, int]) -> None:
    rx, tx = pipe
    writer = write_in_thread(tx, [b"z" * (wire.INLINE_MAX + 1)])
    got = wire.recv_message(rx)
    assert isinstance(got, bytearray)  # no join of pieces: what pickle and send_parts take
    writer.join(10)


@pytest.mark.parametrize("size", [100, 3_000_000])
def test_a_message_cut_short_by_the_writer_closing_is_eof(pipe: Tuple[int, int],
                                                          size: int) -> None:
    rx, tx = pipe
    header = (size).to_bytes(4, "big")

    def write_half() -> None:
        wire.write_all(tx, memoryview(header + b"h" * (size // 2)))
        close_writer(tx)

    writer = threading.Thread(target=write_half, daemon=True)
    writer.start()
    with pytest.raises(EOFError):
        wire.recv_message(rx)
    writer.join(10)
