"""The seed's spawning pool: each worker is a child process that doubles what it is sent.

Run it:  python samples/spawner.py
Prints:  Sent 1 Received 2 ... Sent 5 Received 10
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # find spawned.py as a module

from workerkit import IterableInputSource, ParentCommChannel, WorkPool, WorkUtil  # noqa: E402


def init(channel: ParentCommChannel) -> object:
    return channel.listen_once("ready")  # wait for the child to say it is ready


def execute(channel: ParentCommChannel, inp: int) -> None:
    response = channel.listen_once("response")  # register the response listener first
    channel.send("request", {"data": inp})  # then send the request
    data = response.result()["data"]
    print("Sent", inp, "Received", data, flush=True)
    if inp + inp != data:  # make sure the answer is double the input
        raise ValueError("Didn't get the double")


def main() -> None:
    # One worker keeps the lines in input order, as in the seed's output.
    pool: WorkPool[int, None] = WorkPool(
        lambda: WorkUtil.spawned_worker("spawned:main", init=init, execute=execute),
        max_workers=1,
    )
    with pool:
        pool.process(IterableInputSource([1, 2, 3, 4, 5]))


if __name__ == "__main__":
    main()
