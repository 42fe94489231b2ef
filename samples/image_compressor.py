"""The seed's image-compressing pool: a WorkPool subclass fed through a DynamicIterator.

Each worker runs a real external command (``gzip -9``) on real image files (PPM images
drawn here, in a temporary directory). Images are queued from another thread while the
pool is already running, as an event-driven application would.

Run it:  python samples/image_compressor.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from typing import List, Optional

from workerkit import DynamicIterator, IterableInputSource, ProcessSummary, Worker, WorkPool


class ImageProcessor(Worker[str, str]):
    """Compresses one image per execute by running gzip in a subprocess."""

    def __init__(self) -> None:
        super().__init__()
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def execute(self, path: str) -> str:
        target = path + ".gz"
        with open(target, "wb") as out:
            self.proc = subprocess.Popen(["gzip", "-9", "-c", path], stdout=out)
            if self.proc.wait() != 0:
                raise RuntimeError(f"gzip failed on {path}")
        before, after = os.path.getsize(path), os.path.getsize(target)
        return f"compressed {os.path.basename(path)}: {before} -> {after} bytes"

    def destroy(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class ImageCompressor(WorkPool[str, str]):
    """Converts images on demand, queuing them as needed, with a fixed pool size."""

    def __init__(self) -> None:
        super().__init__(ImageProcessor, max_workers=2)
        self.pending_images: DynamicIterator[str] = DynamicIterator()

    def begin(self) -> Future[ProcessSummary]:
        return self.start(
            IterableInputSource(self.pending_images),
            # One write per line: callbacks run on several pool threads at once.
            on_complete=lambda outcome: sys.stdout.write(f"{outcome.value}\n"),
        )

    def convert(self, *images: str) -> None:
        self.pending_images.extend(images)


def draw_image(path: str, size: int, seed: int) -> None:
    """Write a size x size colour gradient as a binary PPM image."""
    rows = bytearray()
    for y in range(size):
        for x in range(size):
            rows += bytes(((x * 255) // size, (y * 255) // size, (seed * 40) % 256))
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (size, size))
        f.write(rows)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths: List[str] = [os.path.join(tmp, f"image-{i}.ppm") for i in range(6)]
        with ImageCompressor() as compressor:
            done = compressor.begin()

            def producer() -> None:  # images arrive over time, from another thread
                for i, path in enumerate(paths):
                    draw_image(path, 96 + 16 * i, i)
                    compressor.convert(path)
                compressor.pending_images.close()

            thread = threading.Thread(target=producer)
            thread.start()
            thread.join()
            summary = done.result()
        print(f"{summary.completed} of {summary.submitted} images compressed")


if __name__ == "__main__":
    main()
