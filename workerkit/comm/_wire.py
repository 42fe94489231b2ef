"""Reading ``Connection`` frames with as few system calls as possible.

Two costs of ``Connection.recv_bytes`` matter for small messages, on both ends of a pipe:

* It reads the 4-byte header, then the body: two calls per message. :class:`FrameReader`
  reads up to 64 KiB at once and keeps what belongs to the next frames, so a small frame
  costs one call, and frames sent back to back (a pipelined child's replies) share one.
* A channel's readers (its reader thread, or a thread waiting on a ``listen_once`` future
  that reads for itself) must look up now and then: a future may have been cancelled, a
  timeout may have passed, a callback listener may have been registered. Polling before
  every read gives them that, but costs one more call and a slower wake-up per message
  (measured: +25-35 us per round trip on a 2-vCPU VM, most of a small message's cost).
  Instead the socket gets a receive timeout (:func:`enable_read_slices`, ``SO_RCVTIMEO``):
  a plain blocking read returns either data or, after one slice, ``EAGAIN``, and
  ``FrameReader.read_sliced()`` then returns None.

The frame format is ``multiprocessing.connection``'s, so both ends keep using
``Connection.send_bytes``: a 4-byte big-endian length (``-1`` then an 8-byte length for
frames of 2 GiB and more), then the bytes. A slice only ends a read before the first byte
of a frame; once a frame has begun it is read to its end, so a timeout never splits one.

A connection read by a :class:`FrameReader` must be read by it alone: the bytes it buffered
are invisible to ``poll()`` (check :meth:`FrameReader.buffered` first) and ``recv_bytes``.
"""

from __future__ import annotations

import os
import socket
import struct
from multiprocessing.connection import Connection
from typing import Optional, Tuple, Union

__all__ = ["Frame", "FrameReader", "enable_read_slices", "frame_header", "write_frame", "write_tagged"]

_HEADER = struct.Struct("!i")
_BIG_HEADER = struct.Struct("!Q")
_READ_SIZE = 1 << 16  # one read takes a small frame's header and body at once
_SMALL = 16384  # frames up to this size go out with their header in one write
_CHUNK = 1 << 20  # a large frame is read straight into its buffer, at most this much per call

Frame = Union[bytes, bytearray]


def enable_read_slices(conn: Connection, seconds: float) -> bool:
    """Make blocking reads on ``conn``'s socket give up after ``seconds``; False when the
    connection is not a socket (the caller then keeps polling before each read)."""
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    try:
        with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            # A socket.setdefaulttimeout() would have made the shared file non-blocking.
            sock.setblocking(True)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    except (OSError, ValueError):
        return False
    return True


def frame_header(size: int) -> bytes:
    """The length header ``Connection.send_bytes`` puts before a frame of ``size`` bytes."""
    return _HEADER.pack(size) if size <= 0x7FFFFFFF else _HEADER.pack(-1) + _BIG_HEADER.pack(size)


def write_frame(fd: int, frame: Union[bytes, bytearray, memoryview]) -> None:
    """Write one frame as ``Connection.send_bytes`` does (header, then body; one write for
    a small frame), without its per-call checks. The caller makes sure ``fd`` is open."""
    size = len(frame)
    if size <= _SMALL:
        _write_all(fd, _HEADER.pack(size) + bytes(frame))
        return
    _write_all(fd, frame_header(size))
    _write_all(fd, frame)


def write_tagged(fd: int, tag: bytes, body: Union[bytes, memoryview]) -> None:
    """Write the frame ``tag + body`` without copying ``body``: a small frame with one
    ``writev``, a large one as header then body (measured: one ``writev`` of a megabyte body
    to a Unix socket ran about 20% slower than two writes)."""
    size = len(tag) + len(body)
    head = frame_header(size) + tag
    if size > _SMALL:
        _write_all(fd, head)
        _write_all(fd, body)
        return
    sent = os.writev(fd, (head, body))
    if sent < len(head):  # rare: the socket took less than the header
        _write_all(fd, head[sent:])
        sent = len(head)
    if sent - len(head) < len(body):
        _write_all(fd, memoryview(body)[sent - len(head) :])


def _write_all(fd: int, data: Union[bytes, bytearray, memoryview]) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class FrameReader:
    """Reads the frames arriving on ``fd``, buffering bytes read ahead of the next one."""

    __slots__ = ("_fd", "_buf", "_pos", "_partial")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = b""
        self._pos = 0
        # A large frame being read straight into its buffer, and how much of it arrived:
        # kept here, so a read interrupted (a signal, Ctrl-C) resumes instead of losing it.
        self._partial: Optional[Tuple[bytearray, int]] = None

    def buffered(self) -> bool:
        """Whether bytes of a next frame were already read (a poll would not see them)."""
        return self._pos < len(self._buf)

    def read(self) -> Frame:
        """The next frame, waiting as long as it takes; ``EOFError`` at EOF."""
        if self._partial is None and self._pos == len(self._buf):  # nothing read ahead
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:  # a slice passed: the general path waits on
                data = b""
            else:
                if not data:
                    raise EOFError("the peer closed the connection")
            whole = self._whole(data)
            if whole is not None:
                return whole
        frame = self._read(sliced=False)
        assert frame is not None
        return frame

    def read_sliced(self) -> Optional[Frame]:
        """The next frame, or None when a read slice passed before it began."""
        if self._partial is None and self._pos == len(self._buf):  # nothing read ahead
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return None
            if not data:
                raise EOFError("the peer closed the connection")
            whole = self._whole(data)
            if whole is not None:
                return whole
        return self._read(sliced=True)

    def _whole(self, data: bytes) -> Optional[bytes]:
        """The frame ``data`` holds when it is exactly one whole small frame (the common
        case: returned without buffering); else keep ``data`` buffered and return None."""
        if len(data) > 4 and _HEADER.unpack_from(data)[0] == len(data) - 4:
            return data[4:]
        if data:
            self._buf, self._pos = data, 0
        return None

    def _read(self, sliced: bool) -> Optional[Frame]:
        if self._partial is None:
            if not self._want(4, sliced):
                return None
            (size,) = _HEADER.unpack_from(self._buf, self._pos)
            header = 4
            if size == -1:  # consumed only once whole: an interrupted read loses nothing
                self._want(12)
                (size,) = _BIG_HEADER.unpack_from(self._buf, self._pos + 4)
                header = 12
            start = self._pos + header
            if len(self._buf) - start >= size:
                frame = self._buf[start : start + size]
                self._pos = start + size
                if self._pos == len(self._buf):  # all consumed: keep no reference to the buffer
                    self._buf, self._pos = b"", 0
                return frame
            out = bytearray(size)
            have = len(self._buf) - start
            out[:have] = memoryview(self._buf)[start:]
            self._buf, self._pos = b"", 0
            self._partial = (out, have)
        out, have = self._partial
        view = memoryview(out)
        while have < len(out):
            try:
                got = os.readv(self._fd, [view[have : have + _CHUNK]])
            except BlockingIOError:
                continue  # a slice passed mid-frame: the rest is on its way
            if not got:
                raise EOFError("the peer closed the connection in the middle of a message")
            have += got
            self._partial = (out, have)
        self._partial = None
        return out

    def _want(self, count: int, sliced: bool = False) -> bool:
        """At least ``count`` unread bytes in the buffer; False (``sliced``, nothing of a
        frame read yet) when a slice passed first."""
        while len(self._buf) - self._pos < count:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                if sliced and not self.buffered():
                    return False
                continue  # a slice passed mid-frame: the rest is on its way
            if not data:
                if self.buffered():
                    raise EOFError("the peer closed the connection in the middle of a message")
                raise EOFError("the peer closed the connection")
            rest = self._buf[self._pos :]
            self._buf, self._pos = (rest + data if rest else data), 0
        return True
