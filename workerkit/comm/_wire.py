"""Reading ``Connection`` frames in time slices, with no ``poll()`` before each read.

A channel's readers (its reader thread, or a thread waiting on a ``listen_once`` future
that reads for itself) must look up now and then: a future may have been cancelled, a
timeout may have passed, a callback listener may have been registered. Polling before
every read gives them that, but costs a second system call and a slower wake-up on every
message (measured: +25-35 µs per round trip on a 2-vCPU VM, most of a small message's
cost). Instead the socket gets a receive timeout (``SO_RCVTIMEO``): a plain blocking read
returns either data or, after one slice, ``EAGAIN``.

The frame format is ``multiprocessing.connection``'s, so both ends keep using
``Connection.send_bytes``: a 4-byte big-endian length (``-1`` then an 8-byte length for
frames of 2 GiB and more), then the bytes. A slice that ends before the first byte of a
frame returns None; once a frame has begun it is read to its end, so a timeout can never
split a frame.

Only endpoints that read through this module get the timeout; a function worker's
connection, read directly with ``recv_bytes``, never does.
"""

from __future__ import annotations

import os
import socket
import struct
from multiprocessing.connection import Connection
from typing import Optional, Union

__all__ = ["FrameReader", "enable_read_slices", "read_frame"]

_HEADER = struct.Struct("!i")
_BIG_HEADER = struct.Struct("!Q")
_CHUNK = 1 << 20  # large frames are read into one buffer, at most this much per call
_READ_SIZE = 1 << 16  # FrameReader: one read takes a small frame's header and body at once

Frame = Union[bytes, bytearray]


def enable_read_slices(conn: Connection, seconds: float) -> bool:
    """Make blocking reads on ``conn``'s socket give up after ``seconds``; False when the
    connection is not a socket (the caller then keeps polling before each read)."""
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    try:
        with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    except (OSError, ValueError):
        return False
    return True


def read_frame(fd: int) -> Optional[Frame]:
    """One whole frame from ``fd``; None if a slice passed before it began.

    Raises ``EOFError`` when the peer closed its end (also in the middle of a frame).
    """
    try:
        head = os.read(fd, 4)
    except BlockingIOError:
        return None
    if not head:
        raise EOFError("the peer closed the connection")
    if len(head) < 4:
        head += _read_exact(fd, 4 - len(head))
    (size,) = _HEADER.unpack(head)
    if size == -1:
        (size,) = _BIG_HEADER.unpack(_read_exact(fd, 8))
    return _read_exact(fd, size)


def _read_exact(fd: int, size: int) -> Frame:
    """Exactly ``size`` bytes of a frame that has begun; slices passing do not matter."""
    first = _read_some(fd, min(size, _CHUNK))
    if len(first) == size:
        return first
    buf = bytearray(size)
    buf[: len(first)] = first
    view = memoryview(buf)
    done = len(first)
    while done < size:
        got = _read_some(fd, min(size - done, _CHUNK))
        view[done : done + len(got)] = got
        done += len(got)
    return buf


def _read_some(fd: int, limit: int) -> bytes:
    """At least one byte (at most ``limit``), waiting as long as it takes."""
    if limit == 0:
        return b""
    while True:
        try:
            data = os.read(fd, limit)
        except BlockingIOError:
            continue  # a slice passed mid-frame: the rest is on its way
        if not data:
            raise EOFError("the peer closed the connection in the middle of a message")
        return data


class FrameReader:
    """Reads frames from a blocking ``fd`` with one ``read`` per small frame.

    ``Connection.recv_bytes`` reads the 4-byte header, then the body: two system calls per
    message. This reads up to 64 KiB at once and keeps what belongs to the next frames, so
    frames sent back to back (a pipelined child's replies) cost one call between them. A
    frame larger than what has arrived is read straight into one buffer of its size.

    Only for a connection read by this object alone: bytes it buffered are invisible to
    ``poll()`` and to ``recv_bytes``.
    """

    __slots__ = ("_fd", "_buf", "_pos")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = b""
        self._pos = 0

    def buffered(self) -> bool:
        """Whether bytes of a next frame were already read (a poll would not see them)."""
        return self._pos < len(self._buf)

    def read(self) -> Frame:
        """The next frame, waiting as long as it takes; ``EOFError`` at EOF."""
        self._want(4)
        (size,) = _HEADER.unpack_from(self._buf, self._pos)
        self._pos += 4
        if size == -1:
            self._want(8)
            (size,) = _BIG_HEADER.unpack_from(self._buf, self._pos)
            self._pos += 8
        start = self._pos
        if len(self._buf) - start >= size:
            self._pos = start + size
            return self._buf[start : start + size]
        out = bytearray(size)
        have = len(self._buf) - start
        out[:have] = memoryview(self._buf)[start:]
        self._buf, self._pos = b"", 0
        view = memoryview(out)
        while have < size:
            got = os.readv(self._fd, [view[have : have + _CHUNK]])
            if not got:
                raise EOFError("the peer closed the connection in the middle of a message")
            have += got
        return out

    def _want(self, count: int) -> None:
        """At least ``count`` unread bytes in the buffer."""
        while len(self._buf) - self._pos < count:
            data = os.read(self._fd, _READ_SIZE)
            if not data:
                raise EOFError("the peer closed the connection")
            rest = self._buf[self._pos :]
            self._buf, self._pos = (rest + data if rest else data), 0
