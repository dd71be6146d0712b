"""The model kept decoding beside a floor run (``python -m genwire_bench.floor --beside-model``).

At concurrency 1 the pipeline's hops and stages share the machine with a model decoding one
request at a time; on two cores that takes one of them. The floor measured with the model idle
leaves that out. This keeps the served model busy the same way, in its own process (so the
floor's client CPU is not its): direct Triton requests one after another, greedy, a fixed
32-token prompt, ``--max-tokens`` each, until it is told to stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from genwire.service import loop as event_loop

PROMPT_IDS = list(range(10, 42))
"""Token ids every model with a vocabulary of 42 or more accepts; the text does not matter."""
READY = "ready"


@dataclass
class ModelLoad:
    """What the background model served while the floor ran (filled in at the end)."""

    model: str
    requests: int = 0


async def _serve(url: str, model: str, max_tokens: int, stop: asyncio.Event) -> int:
    from genwire_model.client import generate
    from tritonclient.grpc import aio as grpcaio

    client = grpcaio.InferenceServerClient(url)
    done = 0
    try:
        while not stop.is_set():
            await generate(client, model, PROMPT_IDS, max_tokens)
            done += 1
            if done == 1:
                print(READY, flush=True)
    finally:
        await client.close()
    return done


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    done = await _serve(args.url, args.model, args.max_tokens, stop)
    print(done, flush=True)


@contextlib.contextmanager
def beside_model(
    url: str, model: str, *, max_tokens: int = 32, start_timeout_s: float = 60.0
) -> Iterator[ModelLoad]:
    """Run the model load for the block's length; its request count once the block ends.

    Entered once the model has answered a first request (it is warm and decoding); a model
    that cannot answer ends the run with ``RuntimeError``, the child's message included."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "genwire_bench.floor_model", url, model, str(max_tokens)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    load = ModelLoad(model)
    try:
        assert proc.stdout is not None
        first = _readline(proc, start_timeout_s)
        if first != READY:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            reason = (err.strip().splitlines() or ["no output"])[-1]  # the exception's line
            raise RuntimeError(f"--beside-model: {model} at {url} did not answer: {reason}")
        yield load
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        last = out.strip().splitlines()[-1:] if out else []
        if last and last[0].isdigit():
            load.requests = int(last[0])


def _readline(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The child's first line of output ("" when it ended or stayed silent that long)."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline().strip() if readable else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url", help="Triton's gRPC host:port")
    p.add_argument("model")
    p.add_argument("max_tokens", type=int)
    event_loop.run(_main(p.parse_args(argv)), "auto")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
