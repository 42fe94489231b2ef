"""The seed's doubling child: answers each 'request' with twice its data."""

from __future__ import annotations

from workerkit.comm import ChildCommChannel


def main() -> None:
    ch = ChildCommChannel()
    ch.listen_for("request", lambda e, rm: ch.send("response", {"data": e["data"] * 2}))
    ch.send("ready")
