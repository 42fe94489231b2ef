"""Wire format of one channel message, and the errors of decoding it.

A message travels as ONE ``Connection.send_bytes`` frame::

    +--------+-------------------------+-------------------------------------------+
    | 1 byte | n bytes                 | rest of the frame                         |
    | n      | event type, utf-8       | pickle.dumps(payload without "type")      |
    +--------+-------------------------+-------------------------------------------+

Putting the type in front of the pickle lets the reader learn the event type
cheaply, before (and even when) the body fails to unpickle, so it can fail the
``listen_once`` futures waiting for that type instead of leaving them hanging.
"""

from __future__ import annotations

import pickle
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from ..errors import WorkerKitError

__all__ = [
    "CommEvent",
    "MessageDecodeError",
    "MalformedFrameError",
    "encode_frame",
    "split_frame",
    "decode_body",
]

CommEvent = Dict[str, Any]
"""A channel message: a dict whose ``"type"`` key holds the event type (a str)."""

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_MAX_TYPE_BYTES = 255
_EMPTY_BODY = pickle.dumps({}, protocol=_PROTOCOL)
# Frame tags of the event types sent so far (a program uses a handful): a send skips
# validating and encoding its type name. Bounded, for programs that make types up.
_TAGS: Dict[str, bytes] = {}
_MAX_TAGS = 1024


class MessageDecodeError(WorkerKitError):
    """A message of a known event type arrived, but its body could not be unpickled.

    ``event_type`` names the type; the unpickling error is chained as ``__cause__``.
    """

    def __init__(self, message: str, event_type: str = ""):
        super().__init__(message)
        self.event_type = event_type

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.event_type))


class MalformedFrameError(WorkerKitError):
    """A frame whose event type cannot even be read (internal: logged and dropped)."""


def _type_tag(event_type: str) -> bytes:
    """The length byte and utf-8 name that start a frame of ``event_type`` (validated)."""
    if not isinstance(event_type, str):
        raise TypeError(f"event type must be a str, not {type(event_type).__name__}")
    name = event_type.encode("utf-8")
    if len(name) > _MAX_TYPE_BYTES:
        raise ValueError(f"event type is {len(name)} bytes long in utf-8; the limit is 255")
    tag = bytes((len(name),)) + name
    if len(_TAGS) < _MAX_TAGS and type(event_type) is str:  # a str subclass may hash oddly
        _TAGS[event_type] = tag
    return tag


def encode_frame(event_type: str, data: Optional[Mapping[str, Any]]) -> bytes:
    """Build the frame for ``send(event_type, data)``; raises before anything is written."""
    tag = _TAGS.get(event_type) if type(event_type) is str else None
    if tag is None:
        tag = _type_tag(event_type)
    if data is None:
        body = _EMPTY_BODY
    else:
        if type(data) is not dict and not isinstance(data, Mapping):
            raise TypeError(f"data must be a dict (or None), not {type(data).__name__}")
        if "type" in data:
            raise ValueError('data must not contain a "type" key: the event type is sent as such')
        # Pickle errors (PicklingError, TypeError, AttributeError) surface here, at the call.
        body = pickle.dumps(data if type(data) is dict else dict(data), protocol=_PROTOCOL)
    return tag + body


def split_frame(frame: Union[bytes, bytearray]) -> Tuple[str, memoryview]:
    """The event type and the (still pickled) body of ``frame``."""
    if not frame:
        raise MalformedFrameError("empty frame")
    end = 1 + frame[0]
    if len(frame) < end:
        raise MalformedFrameError("frame shorter than its type-name length")
    try:
        event_type = frame[1:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedFrameError(f"type name is not utf-8: {exc}") from exc
    return event_type, memoryview(frame)[end:]


def decode_body(event_type: str, body: memoryview) -> CommEvent:
    """Unpickle ``body`` into the event dict ``{"type": event_type, **payload}``."""
    try:
        payload = pickle.loads(body)
    except Exception as exc:  # unpickling runs arbitrary code: anything can come out
        raise MessageDecodeError(
            f"cannot decode a {event_type!r} message: {type(exc).__name__}: {exc}", event_type
        ) from exc
    if type(payload) is not dict or "type" in payload:
        raise MessageDecodeError(
            f"cannot decode a {event_type!r} message: body is not a dict without a 'type' key",
            event_type,
        )
    event: CommEvent = {"type": event_type}
    event.update(payload)
    return event
