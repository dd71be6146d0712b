"""The model in the real Triton, through tritonclient gRPC: streaming, batching, errors,
cancellation (of the stream, and by a cancel request on a stream shared by many requests)."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from genwire_model.build import RUNTIME_DIR
from genwire_model.client import Generation, GenerationError, generate
from genwire_stack.paths import StackPaths
from tritonclient.grpc import InferResult
from tritonclient.grpc.aio import InferenceServerClient

from genwire.settings import CommonSettings
from genwire.triton_io import (
    CANCEL_ACK_PROBE,
    CANCEL_PARAMETER,
    HOLD_FIRST_RESPONSE_PARAMETER,
    RESPONSE_GAP_PARAMETER,
    Options,
    Output,
    infer_inputs,
)
from genwire.triton_stream import build_request

PROMPT = [5, 6, 7, 8, 9]


@pytest.fixture
async def client(served_model: tuple[str, str]) -> AsyncIterator[InferenceServerClient]:
    c = InferenceServerClient(served_model[0])
    try:
        yield c
    finally:
        await c.close()


async def gen(client: InferenceServerClient, name: str, **kw: object) -> Generation:
    args: dict[str, object] = {"temperature": 0.9, "top_p": 0.95, "seed": 11}
    args.update(kw)
    prompt = args.pop("prompt", PROMPT)
    max_tokens = args.pop("max_tokens", 12)
    return await generate(client, name, prompt, max_tokens, **args)  # type: ignore[arg-type]


async def test_streaming_and_single_response_agree(
    client: InferenceServerClient, served_model: tuple[str, str]
) -> None:
    name = served_model[1]
    streamed = await gen(client, name, max_tokens=10)
    single = await gen(client, name, max_tokens=10, stream=False)
    assert streamed.token_ids == single.token_ids
    # The first token alone at once, then chunks (the response budget,
    # stream_responses_per_s), every token once and in order; the final one carries the last.
    assert 2 <= streamed.responses <= len(streamed.token_ids)
    assert streamed.arrivals[0][1] == 1
    assert sum(count for _, count in streamed.arrivals) == 10
    assert single.responses == 1
    assert streamed.finish_reason == single.finish_reason == "length"
    assert streamed.completion_tokens == 10 and streamed.prompt_tokens == len(PROMPT)
    assert streamed.mean_logprob == pytest.approx(sum(streamed.logprobs) / 10, rel=1e-4)
    assert streamed.compute_ms > 0 and streamed.queue_ms >= 0
    # The first token comes before the whole generation is done, and after the request arrived.
    assert 0 < single.ttft_ms < single.queue_ms + single.compute_ms


async def test_same_seed_same_text_other_seed_other_text(
    client: InferenceServerClient, served_model: tuple[str, str]
) -> None:
    name = served_model[1]
    a = await gen(client, name, seed=1, max_tokens=16, temperature=1.0, top_p=1.0)
    b = await gen(client, name, seed=1, max_tokens=16, temperature=1.0, top_p=1.0)
    runs = [await gen(client, name, seed=s, max_tokens=16, temperature=1.0) for s in (2, 3)]
    assert a.token_ids == b.token_ids
    assert any(r.token_ids != a.token_ids for r in runs)


async def test_stop_token_and_max_tokens(
    client: InferenceServerClient, served_model: tuple[str, str]
) -> None:
    name = served_model[1]
    free = await gen(client, name, temperature=0.0, max_tokens=10)
    stop = free.token_ids[4]
    stopped = await gen(client, name, temperature=0.0, max_tokens=10, stop_token_ids=[stop])
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free.token_ids[: free.token_ids.index(stop)]
    short = await gen(client, name, temperature=0.0, max_tokens=3)
    assert short.finish_reason == "length" and short.token_ids == free.token_ids[:3]


async def test_usage_counts_the_stop_token_the_model_generated(
    client: InferenceServerClient, served_model: tuple[str, str]
) -> None:
    name = served_model[1]
    free = await gen(client, name, temperature=0.0, max_tokens=10)
    stop = free.token_ids[3]
    stopped = await gen(client, name, temperature=0.0, max_tokens=10, stop_token_ids=[stop])
    assert stopped.completion_tokens == len(stopped.token_ids) + 1


async def test_n_choices_and_top_logprobs_over_grpc(
    client: InferenceServerClient, served_model: tuple[str, str]
) -> None:
    name = served_model[1]
    single = await gen(client, name, seed=5, max_tokens=8)
    many = await gen(client, name, seed=5, max_tokens=8, options=Options(n=3, top_logprobs=2))
    assert sorted(many.choices) == [0, 1, 2]
    assert many.token_ids == single.token_ids  # choice 0 = the single request
    for choice in many.choices.values():
        assert choice.finish_reason == "length" and choice.completion_tokens == 8
        assert len(choice.top_logprobs) == len(choice.token_ids) == 8
        assert all(len(top) == 2 and top[0][1] >= top[1][1] for top in choice.top_logprobs)
    assert len({tuple(c.token_ids) for c in many.choices.values()}) > 1
    biased = await gen(
        client,
        name,
        temperature=0.0,
        max_tokens=4,
        options=Options(logit_bias={33: 100.0}, presence_penalty=0.1, min_p=0.05),
    )
    assert biased.token_ids == [33] * 4


async def test_concurrent_requests_match_one_at_a_time(
    client: InferenceServerClient, served_model: tuple[str, str]
) -> None:
    name = served_model[1]
    prompts = [PROMPT, [20, 21], [30, 31, 32, 33, 34, 35, 36], [40], [50, 51, 52]] * 2
    alone = [
        (await gen(client, name, prompt=p, seed=i, max_tokens=12)).token_ids
        for i, p in enumerate(prompts)
    ]
    together = await asyncio.gather(
        *(gen(client, name, prompt=p, seed=i, max_tokens=12) for i, p in enumerate(prompts))
    )
    assert [g.token_ids for g in together] == alone


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": list(range(1, 70))}, "longer than the context window"),
        ({"temperature": -1.0}, "temperature must be"),
        ({"top_p": 0.0}, "top_p must be"),
        ({"top_k": -3}, "top_k must be"),
        ({"max_tokens": 0}, "max_tokens must be"),
        ({"prompt": [100000]}, "input_ids out of range"),
        ({"options": Options(n=17)}, "n must be"),
        ({"options": Options(top_logprobs=30)}, "top_logprobs must be"),
        ({"options": Options(logit_bias={9999: 1.0})}, "logit_bias token id 9999"),
    ],
)
async def test_bad_requests_get_a_clear_error_and_the_model_keeps_serving(
    client: InferenceServerClient,
    served_model: tuple[str, str],
    change: dict[str, object],
    message: str,
) -> None:
    name = served_model[1]
    with pytest.raises(GenerationError, match=message):
        await gen(client, name, **change)
    assert (await gen(client, name, max_tokens=2)).finish_reason == "length"


async def test_the_models_log_lines_are_in_tritons_log(
    served_model: tuple[str, str], infra: CommonSettings
) -> None:
    """The model's INFO lines (ready, the sampler's ranking) reach the stack's Triton log
    through ``pb_utils.Logger``, each naming the instance and version that wrote it."""
    name = served_model[1]
    path = StackPaths.from_settings(infra).logs / "triton.log"
    origin = rf"{re.escape(name)}_\d+_\d+ version 1"
    wanted = [
        rf"{origin}: genwire\.model:\d+: genwire model {re.escape(name)} version 1 ready on ",
        rf"{origin}: genwire_runtime\.scheduler:\d+: sampler: a row's head ranked by ",
    ]
    missing = wanted
    for _ in range(100):  # the stub's log lines reach Triton's log asynchronously
        text = path.read_text(encoding="utf-8", errors="replace")
        missing = [pattern for pattern in wanted if not re.search(pattern, text)]
        if not missing:
            break
        await asyncio.sleep(0.1)
    assert missing == []


async def test_cancelled_stream_stops_and_the_model_keeps_serving(
    client: InferenceServerClient, served_model: tuple[str, str], infra: CommonSettings
) -> None:
    name = served_model[1]
    cancelled = await gen(client, name, max_tokens=50, cancel_after_tokens=3)
    assert cancelled.finish_reason == "cancelled" and len(cancelled.token_ids) < 50
    after = await gen(client, name, max_tokens=4)
    assert after.finish_reason == "length" and len(after.token_ids) == 4
    async with httpx.AsyncClient(timeout=5.0) as http:
        ready = await http.get(f"http://{infra.triton_http_url}/v2/models/{name}/ready")
    assert ready.status_code == 200


# -- cancel requests on one shared stream (genwire.triton_io.CANCEL_PARAMETER) --

# The tiny model's context is 64 tokens: a 5-token prompt ends with `length` after 60 tokens.
FULL = 60


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("_CANCEL_PARAMETER", CANCEL_PARAMETER),
        ("_RESPONSE_GAP_PARAMETER", RESPONSE_GAP_PARAMETER),
        ("_HOLD_FIRST_PARAMETER", HOLD_FIRST_RESPONSE_PARAMETER),
    ],
)
def test_the_triton_model_uses_the_contracts_parameters(name: str, value: str) -> None:
    tree = ast.parse((RUNTIME_DIR / "triton_model.py").read_text(encoding="utf-8"))
    literals = [
        node.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
        and isinstance(node.value, ast.Constant)
    ]
    assert literals == [value]


@dataclasses.dataclass(frozen=True)
class Reply:
    """One response on the stream, as a multiplexing client sees it."""

    outputs: int
    tokens: int
    final: bool
    error: str
    finish_reason: str


def _reply(response: Any) -> Reply:
    infer = response.infer_response
    tokens, reason = 0, ""
    if infer.outputs:
        result = InferResult(infer)
        tokens = len(result.as_numpy(Output.TOKEN_IDS))
        if Output.FINISH_REASON in {o.name for o in infer.outputs}:
            reason = result.as_numpy(Output.FINISH_REASON).reshape(-1)[0].decode()
    return Reply(
        outputs=len(infer.outputs),
        tokens=tokens,
        final=infer.parameters["triton_final_response"].bool_param,
        error=response.error_message,
        finish_reason=reason,
    )


class SharedStream:
    """One ModelStreamInfer call carrying many requests (the raw stub: response ids show)."""

    def __init__(self, client: InferenceServerClient, model: str) -> None:
        self.model = model
        self.done = asyncio.Event()
        self.outgoing: asyncio.Queue[Any] = asyncio.Queue()
        self.replies: dict[str, list[Reply]] = defaultdict(list)
        self.arrivals: list[str] = []  # the request id of every response, in stream order
        self.changed = asyncio.Condition()
        self.call = client._client_stub.ModelStreamInfer(self._requests())
        self.reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[Any]:
        # Open until the test is done: closing it would end the call for every request.
        while not self.done.is_set():
            getter = asyncio.ensure_future(self.outgoing.get())
            closer = asyncio.ensure_future(self.done.wait())
            await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
            closer.cancel()
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()

    async def _read(self) -> None:
        async for response in self.call:
            reply = _reply(response)
            async with self.changed:
                self.replies[response.infer_response.id].append(reply)
                self.arrivals.append(response.infer_response.id)
                self.changed.notify_all()

    def send(
        self,
        request_id: str,
        max_tokens: int,
        cancel: str | None = None,
        parameters: dict[str, str] | None = None,
        **options: Any,
    ) -> None:
        """A generation (ignoring eos, so it runs to ``max_tokens`` or the context), or with
        ``cancel`` a cancel request of that id (with a valid minimal generation's inputs)."""
        if cancel is not None:
            parameters = {**(parameters or {}), CANCEL_PARAMETER: cancel}
        # With empty final responses: a multiplexing client sees the completion of a request
        # whose last send is the final flag alone (cancelled).
        request = build_request(
            self.model,
            "",
            infer_inputs(
                PROMPT,
                max_tokens=max_tokens,
                temperature=0.9,
                top_p=0.95,
                top_k=0,
                seed=11,
                stream=True,
                options=Options(ignore_eos=True, **options),
            ),
            request_id,
            parameters,
            empty_final=True,
        )
        self.outgoing.put_nowait(request)

    async def until(self, condition: Callable[[], bool]) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(condition), 30.0)

    def ended(self, request_id: str) -> bool:
        replies = self.replies.get(request_id, [])
        return bool(replies) and (replies[-1].final or bool(replies[-1].error))

    def tokens(self, request_id: str) -> int:
        return sum(reply.tokens for reply in self.replies.get(request_id, []))

    async def close(self) -> None:
        self.done.set()
        await asyncio.wait_for(self.reader, 30.0)


@pytest.fixture
async def shared(
    client: InferenceServerClient, served_model: tuple[str, str]
) -> AsyncIterator[SharedStream]:
    stream = SharedStream(client, served_model[1])
    try:
        yield stream
    finally:
        await stream.close()


def assert_acknowledged(stream: SharedStream, cancel_id: str) -> None:
    """The cancel got one response: empty (no outputs, no error) and final."""
    assert stream.replies[cancel_id] == [
        Reply(outputs=0, tokens=0, final=True, error="", finish_reason="")
    ]


def assert_completed(stream: SharedStream, request_id: str, tokens: int) -> None:
    replies = stream.replies[request_id]
    assert not any(reply.error for reply in replies)
    assert stream.tokens(request_id) == tokens
    assert replies[-1].final and replies[-1].finish_reason == "length"
    assert not any(reply.final for reply in replies[:-1])


async def cancel_after_first_token(stream: SharedStream, target: str) -> bool:
    """Start ``target``, cancel it once its first token arrived; False when it ended on its own
    before the cancel reached the model (its last response came before the cancel's: this
    client saw the first token ~100 ms late, starved of CPU), which proves nothing either way."""
    stream.send(target, max_tokens=200)
    await stream.until(lambda: stream.tokens(target) > 0)
    stream.send(f"cancel-{target}", max_tokens=1, cancel=target)
    await stream.until(lambda: stream.ended(target) and stream.ended(f"cancel-{target}"))
    assert_acknowledged(stream, f"cancel-{target}")
    last = len(stream.arrivals) - 1 - stream.arrivals[::-1].index(target)
    return not (
        stream.replies[target][-1].finish_reason
        and last < stream.arrivals.index(f"cancel-{target}")
    )


async def test_a_cancel_request_stops_its_target_and_the_stream_keeps_serving(
    shared: SharedStream,
) -> None:
    tried: list[str] = []
    for attempt in ("A", "A2", "A3"):
        tried.append(attempt)
        if await cancel_after_first_token(shared, attempt):
            break
    a = shared.replies[attempt]
    # Stopped before the context's 60 tokens (a dozen or two here: the cancel lands within a
    # few steps), ended by the final flag alone: a natural end would carry finish_reason.
    assert shared.tokens(attempt) < FULL, shared.tokens(attempt)
    assert a[-1] == Reply(outputs=0, tokens=0, final=True, error="", finish_reason="")
    assert not any(reply.final or reply.error for reply in a[:-1])
    # The same stream still serves.
    shared.send("B", max_tokens=8)
    await shared.until(lambda: shared.ended("B"))
    assert_completed(shared, "B", 8)
    assert set(shared.replies) == {"B", *tried, *(f"cancel-{t}" for t in tried)}


async def test_a_requests_least_response_gap_holds_its_streamed_responses(
    shared: SharedStream,
) -> None:
    """``genwire_min_response_gap_ms``: with a gap longer than the generation, the first token
    and the final response only; a value that is not a finite number >= 0 is an error naming
    the parameter, and the stream keeps serving."""
    shared.send("spaced", max_tokens=FULL, parameters={RESPONSE_GAP_PARAMETER: "60000"})
    bad = {"word": "soon", "negative": "-1", "infinite": "inf"}
    for rid, value in bad.items():
        shared.send(rid, max_tokens=4, parameters={RESPONSE_GAP_PARAMETER: value})
    await shared.until(lambda: all(shared.ended(r) for r in ("spaced", *bad)))
    assert_completed(shared, "spaced", FULL)
    assert [reply.tokens for reply in shared.replies["spaced"]] == [1, FULL - 1]
    for rid, value in bad.items():
        (reply,) = shared.replies[rid]
        assert f"parameter {RESPONSE_GAP_PARAMETER} must be a finite number" in reply.error
        assert repr(value) in reply.error
    shared.send("after", max_tokens=3, parameters={RESPONSE_GAP_PARAMETER: "0"})
    await shared.until(lambda: shared.ended("after"))
    assert_completed(shared, "after", 3)


async def test_the_cancel_ack_probe_gets_one_empty_final_response(shared: SharedStream) -> None:
    shared.send("probe", max_tokens=1, cancel=CANCEL_ACK_PROBE)
    await shared.until(lambda: shared.ended("probe"))
    assert_acknowledged(shared, "probe")
    # Unknown, finished, or no id at all: nothing to cancel, the same acknowledgement.
    shared.send("done", max_tokens=2)
    await shared.until(lambda: shared.ended("done"))
    shared.send("late", max_tokens=1, cancel="done")
    shared.send("nobody", max_tokens=1, cancel="")
    await shared.until(lambda: shared.ended("late") and shared.ended("nobody"))
    assert_acknowledged(shared, "late")
    assert_acknowledged(shared, "nobody")
    assert_completed(shared, "done", 2)


async def test_a_cancel_stops_only_the_requests_with_its_id(shared: SharedStream) -> None:
    shared.send("C", max_tokens=200)
    shared.send("", max_tokens=200)  # no id: no cancel request can name it
    await shared.until(lambda: shared.tokens("C") > 0 and shared.tokens("") > 0)
    # Two live requests with one id: a cancel of it stops both. Sent right behind them on the
    # stream, so it reaches the model within a step or two whatever this client's delays.
    shared.send("D", max_tokens=200)
    shared.send("D", max_tokens=200)
    shared.send("cancel-D", max_tokens=1, cancel="D")
    shared.send("cancel-none", max_tokens=1, cancel="")
    await shared.until(lambda: all(shared.ended(i) for i in ("C", "", "cancel-D", "cancel-none")))
    await shared.until(lambda: sum(r.final for r in shared.replies["D"]) == 2)
    assert_acknowledged(shared, "cancel-D")
    assert_acknowledged(shared, "cancel-none")
    assert_completed(shared, "C", FULL)
    assert_completed(shared, "", FULL)
    d = shared.replies["D"]
    assert [r for r in d if r.final] == [Reply(0, 0, True, "", "")] * 2
    assert shared.tokens("D") < FULL, shared.tokens("D")
    assert not any(reply.error or reply.finish_reason for reply in d)
