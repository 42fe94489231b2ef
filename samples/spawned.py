"""The child of samples/spawner.py: doubles every request it gets (the seed's spawned.js)."""

from workerkit import ChildCommChannel


def main() -> None:
    channel = ChildCommChannel()

    def on_request(event: dict, remove: object) -> None:
        channel.send("response", {"data": event["data"] + event["data"]})  # answer with the double

    channel.listen_for("request", on_request)
    channel.send("ready")  # tell the parent we can take requests
    # Returning keeps the child alive while it has listeners, like the seed's heartbeat.
