"""The toy process tests/bench/data/profile_toy.collapsed.txt was recorded from.

    python tests/bench/data/profile_toy.py &
    py-spy record --pid $! --format raw --rate 100 --duration 4 --idle --full-filenames \\
        -o tests/bench/data/profile_toy.collapsed.txt

An asyncio service in miniature: tasks that validate and encode records with pydantic and
JSON and log, while a thread decodes JSON and waits; the test checks the aggregation, the
waits left out, and the buckets.
"""

import asyncio
import json
import logging
import threading
import time

from pydantic import BaseModel

log = logging.getLogger("toy")
logging.basicConfig(level=logging.INFO, handlers=[logging.NullHandler()])


class Record(BaseModel):
    request_id: str
    tokens: list[int]


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def handle(i: int) -> bytes:
    record = Record.model_validate_json(
        json.dumps({"request_id": f"r{i}", "tokens": list(range(300))})
    )
    spin(0.0005)
    log.info("handled %s", record.request_id)
    return record.model_dump_json().encode()


async def worker(n: int) -> None:
    i = 0
    while True:
        for _ in range(20):
            handle(i)
            i += 1
        await asyncio.sleep(0.002)


def background() -> None:
    tick = threading.Event()
    while True:
        json.loads(json.dumps({"x": list(range(2000))}))
        tick.wait(0.01)


async def main() -> None:
    threading.Thread(target=background, daemon=True, name="background").start()
    await asyncio.gather(*(worker(n) for n in range(3)))


if __name__ == "__main__":
    asyncio.run(main())
