"""The model kept decoding beside a floor run (``python -m genwire_bench.floor --beside-model``).

At concurrency 1 the pipeline's hops and stages share the machine with a model decoding one
request at a time; on two cores that takes one of them. The floor measured with the model idle
leaves that out. This keeps the served model busy the same way, in a process of its own (so the
floor's client CPU is not its): direct Triton requests one after another, greedy, a fixed
32-token prompt, 32 new tokens each (the child's third argument), until its stdin closes — as
the floor's relays stop, so a floor that dies leaves no model load running behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import IO

from genwire.service import loop as event_loop

READY = "ready"
"""The line a floor child prints once it works (the relays, the front, the model load)."""
PROMPT_IDS = list(range(10, 42))
"""Token ids every model with a vocabulary of 42 or more accepts; the text does not matter."""
REQUEST_TIMEOUT_S = 30.0
RETRY_PAUSE_S = 0.5


@dataclass
class ModelLoad:
    """What the model load did while the floor ran (filled in once it stopped)."""

    model: str
    requests: int = 0
    """Requests answered in full."""
    failed: int = 0
    """Requests that failed or timed out after the first answered one (each then retried)."""
    error: str = ""
    """The last failure, or why the child ended badly."""

    def trouble(self) -> str:
        """What went wrong, empty when the model decoded throughout (else the floor's
        figures are not those beside a busy model)."""
        if self.error or self.failed:
            return f"{self.failed} request(s) failed, the last: {self.error}"
        if not self.requests:
            return "no request answered"
        return ""


async def _serve(url: str, model: str, max_tokens: int, load: ModelLoad) -> None:
    # The benchmark's own direct-Triton driver: the same request the `triton` target sends.
    from genwire_bench.drivers.base import new_trace
    from genwire_bench.drivers.triton import TritonDriver
    from genwire_bench.records import BenchRequest, SamplingSpec

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stdin = sys.stdin.fileno()

    def closed() -> None:  # stdin is readable at EOF: the parent closed it
        loop.remove_reader(stdin)  # once: it stays readable
        stop.set()

    loop.add_reader(stdin, closed)
    driver = TritonDriver(url, model, stream=False, timeout_s=REQUEST_TIMEOUT_S)
    request = BenchRequest(
        index=0,
        prompt="",
        input_ids=tuple(PROMPT_IDS),
        sampling=SamplingSpec(max_tokens=max_tokens, temperature=0.0),
    )
    try:
        await driver.start()  # a model Triton does not serve: its error, for the parent
        while not stop.is_set():
            sent = load.requests + load.failed
            record = await driver.send(request, f"floor-model-{sent}", new_trace(sampled=False))
            if record.error is None:
                load.requests += 1
                if load.requests == 1:
                    print(READY, flush=True)
                continue
            if not load.requests:
                raise RuntimeError(record.error)  # never answered: the parent reports why
            load.failed += 1
            load.error = record.error
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY_PAUSE_S):
                    await stop.wait()
    finally:
        loop.remove_reader(stdin)
        await driver.close()


def child_main(argv: list[str]) -> int:
    """``python -m genwire_bench.floor_model URL MODEL MAX_TOKENS``: the load, until stdin
    closes; its last line of output is the ``ModelLoad`` as JSON."""
    url, model, max_tokens = argv[0], argv[1], int(argv[2])
    load = ModelLoad(model)
    try:
        event_loop.run(_serve(url, model, max_tokens, load), "auto")
    finally:
        print(json.dumps(asdict(load)), flush=True)
    return 0


@contextlib.contextmanager
def beside_model(
    url: str, model: str, *, max_tokens: int = 32, start_timeout_s: float = 60.0
) -> Iterator[ModelLoad]:
    """Run the model load for the block's length; what it did is filled in once the block
    ends (``ModelLoad.trouble`` says whether it decoded throughout).

    Entered once the model has answered a first request (it is warm and decoding); a model
    that cannot answer raises ``RuntimeError`` with the child's reason."""
    # stderr to a file, not a pipe: a chatty child must never block on it
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "genwire_bench.floor_model", url, model, str(max_tokens)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert proc.stdin is not None and proc.stdout is not None
        load = ModelLoad(model)
        try:
            readable, _, _ = select.select([proc.stdout], [], [], start_timeout_s)
            if not readable or proc.stdout.readline().strip() != READY.encode():
                proc.stdin.close()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)  # its traceback reaches stderr after its last stdout line
                raise RuntimeError(
                    f"--beside-model: {model} at {url} did not answer: {_last_line(errors)}"
                )
            yield load
        finally:
            proc.stdin.close()  # the child stops after the request in flight
            try:
                proc.wait(REQUEST_TIMEOUT_S + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            lines = proc.stdout.read().decode(errors="replace").strip().splitlines()
            with contextlib.suppress(ValueError, IndexError, TypeError, KeyError):
                reported = json.loads(lines[-1])
                load.requests, load.failed, load.error = (
                    reported["requests"],
                    reported["failed"],
                    reported["error"],
                )
            if proc.returncode and not load.error:
                load.error = f"exit status {proc.returncode}: {_last_line(errors)}"


def _last_line(errors: IO[bytes]) -> str:
    """The child's last line on stderr (a traceback's: the exception)."""
    errors.seek(0)
    lines = errors.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


if __name__ == "__main__":
    raise SystemExit(child_main(sys.argv[1:]))
