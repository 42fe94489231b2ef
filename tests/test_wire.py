"""Frames read in time slices (workerkit/comm/_wire.py): a slice passing never splits or
loses a frame, EOF is reported, and channels built on it keep big payloads and timeouts."""

from __future__ import annotations

import multiprocessing
import os
import struct
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Iterator, List, Tuple

import pytest

from tests.children import behaviours
from workerkit import ParentCommChannel
from workerkit.comm._wire import FrameReader, enable_read_slices

SLICE = 0.02


@pytest.fixture
def pipe() -> Iterator[Tuple[multiprocessing.connection.Connection, multiprocessing.connection.Connection]]:
    reader, writer = multiprocessing.Pipe()
    assert enable_read_slices(reader, SLICE)
    yield reader, writer
    reader.close()
    writer.close()


def _write_slowly(fd: int, data: bytes, pieces: List[int], pause: float) -> threading.Thread:
    """Write ``data`` to ``fd`` cut at ``pieces`` offsets, pausing longer than a slice."""

    def run() -> None:
        start = 0
        for cut in [*pieces, len(data)]:
            time.sleep(pause)
            os.write(fd, data[start:cut])
            start = cut

    thread = threading.Thread(target=run, name="test-slow-writer")
    thread.start()
    return thread


def test_an_empty_slice_reads_nothing(pipe) -> None:
    reader, _writer = pipe
    started = time.monotonic()
    assert FrameReader(reader.fileno()).read_sliced() is None
    assert time.monotonic() - started < 5.0  # returned after about one slice, did not hang


def test_a_frame_cut_into_pieces_slower_than_a_slice_arrives_whole(pipe) -> None:
    reader, writer = pipe
    body = bytes(range(256)) * 40
    frame = struct.pack("!i", len(body)) + body
    # Cut inside the header, right after it and twice inside the body.
    thread = _write_slowly(writer.fileno(), frame, [2, 4, 1000, 7000], pause=3 * SLICE)
    frames = FrameReader(reader.fileno())
    got = None
    deadline = time.monotonic() + 10
    while got is None and time.monotonic() < deadline:
        got = frames.read_sliced()  # None only while the frame has not begun
    thread.join()
    assert got is not None and bytes(got) == body
    writer.send_bytes(b"next")
    assert frames.read_sliced() == b"next"  # framing intact afterwards


def test_frames_sent_back_to_back_stay_separate(pipe) -> None:
    reader, writer = pipe
    payloads = [b"", b"a", os.urandom(70_000), b"z" * 3]
    thread = threading.Thread(target=lambda: [writer.send_bytes(p) for p in payloads])
    thread.start()
    frames = FrameReader(reader.fileno())
    got = []
    while len(got) < len(payloads):
        frame = frames.read_sliced()
        if frame is not None:
            got.append(bytes(frame))
    thread.join()
    assert got == payloads


def test_eof_before_and_inside_a_frame(pipe) -> None:
    reader, writer = pipe
    os.write(writer.fileno(), struct.pack("!i", 100) + b"only ten b")
    writer.close()
    with pytest.raises(EOFError):
        FrameReader(reader.fileno()).read_sliced()
    other_reader, other_writer = multiprocessing.Pipe()
    enable_read_slices(other_reader, SLICE)
    other_writer.close()
    with pytest.raises(EOFError):
        FrameReader(other_reader.fileno()).read_sliced()
    other_reader.close()


def test_a_channel_carries_a_payload_bigger_than_the_socket_buffer(start_method: str) -> None:
    channel = ParentCommChannel.spawn(behaviours.echo, start_method=start_method)
    try:
        channel.listen_once("ready").result(30)
        blob = os.urandom(5_000_000)
        for n in range(3):
            reply = channel.listen_once("echo")
            channel.send("msg", {"blob": blob, "n": n})
            event = reply.result(30)
            assert event["n"] == n and event["blob"] == blob
    finally:
        channel.destroy()


def test_result_timeout_shorter_and_longer_than_a_slice_then_channel_still_works() -> None:
    channel = ParentCommChannel.spawn(behaviours.echo)
    try:
        channel.listen_once("ready").result(30)
        for timeout in (0.01, 0.3):
            never = channel.listen_once("never-sent")
            started = time.monotonic()
            with pytest.raises(FutureTimeout):
                never.result(timeout)
            waited = time.monotonic() - started
            assert timeout <= waited + 0.005 and waited < timeout + 5.0
            never.cancel()
        reply = channel.listen_once("echo")
        channel.send("msg", {"n": 1})
        assert reply.result(30)["n"] == 1
    finally:
        channel.destroy()


def test_waiter_and_reader_take_turns_without_losing_a_message() -> None:
    """Futures waited on by result() (the waiter reads) and by add_done_callback (the
    reader thread reads), interleaved: every reply arrives exactly once, in order."""
    channel = ParentCommChannel.spawn(behaviours.echo)
    try:
        channel.listen_once("ready").result(30)
        seen: List[int] = []
        done = threading.Event()
        for n in range(200):
            reply = channel.listen_once("echo")
            channel.send("msg", {"n": n})
            if n % 3 == 0:
                done.clear()
                reply.add_done_callback(lambda f: (seen.append(f.result()["n"]), done.set()))
                assert done.wait(30)
            else:
                seen.append(reply.result(30)["n"])
        assert seen == list(range(200))
    finally:
        channel.destroy()


def test_frame_reader_splits_frames_that_arrive_in_one_read(pipe) -> None:
    reader, writer = pipe
    payloads = [b"first", b"", os.urandom(100), b"x" * 70_000, os.urandom(3_000_000), b"last"]
    thread = threading.Thread(target=lambda: [writer.send_bytes(p) for p in payloads])
    thread.start()
    frames = FrameReader(reader.fileno())
    got = [bytes(frames.read()) for _ in payloads]
    thread.join()
    assert got == payloads
    assert not frames.buffered()


def test_frame_reader_keeps_a_frame_cut_anywhere_and_reports_eof(pipe) -> None:
    reader, writer = pipe
    one = struct.pack("!i", 5) + b"hello"
    two = struct.pack("!i", 3) + b"abc"
    data = one + two
    thread = _write_slowly(writer.fileno(), data, [1, 7, 10], pause=0.01)
    frames = FrameReader(reader.fileno())
    assert frames.read() == b"hello"
    assert frames.read() == b"abc"
    thread.join()
    os.write(writer.fileno(), struct.pack("!i", 10) + b"abc")
    writer.close()
    with pytest.raises(EOFError):
        frames.read()
