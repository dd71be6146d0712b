"""``genwire bench --profile``: the collapsed-stack aggregation, the buckets and the files, on a
real py-spy recording of a toy process (tests/bench/data/profile_toy.py says how it was made)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from genwire_bench.profile import (
    BUCKETS,
    OTHER,
    Stack,
    aggregate,
    bucket_of,
    frame_name,
    module_path,
    parse_collapsed,
    phase_folder,
    render_profiles,
    summarise_phase,
    write_outputs,
)

DATA = Path(__file__).parent / "data" / "profile_toy.collapsed.txt"
SITE = "/root/.cache/genwire/venv/lib/python3.11/site-packages"
STDLIB = "/root/.pyenv/versions/3.11.7/lib/python3.11"


def _stacks() -> Counter[Stack]:
    return parse_collapsed(DATA.read_text())


def _loop(*frames: str) -> Stack:
    """A task's frames under the event loop's dispatch, as py-spy writes them."""
    return (
        f"run ({STDLIB}/asyncio/runners.py:190)",
        f"BaseEventLoop._run_once ({STDLIB}/asyncio/base_events.py:1922)",
        f"Handle._run ({STDLIB}/asyncio/events.py:80)",
        *frames,
    )


def test_parse_reads_every_sample_of_the_recording() -> None:
    stacks = _stacks()
    lines = [line for line in DATA.read_text().splitlines() if line.strip()]
    assert sum(stacks.values()) == sum(int(line.rsplit(" ", 1)[1]) for line in lines)
    assert len(stacks) == len({line.rsplit(" ", 1)[0] for line in lines})
    # Root first: the main thread's module, or the background thread's bootstrap.
    roots = {stack[0].split(" (")[0] for stack in stacks}
    assert roots == {"<module>", "Thread._bootstrap"}


def test_aggregation_of_the_recording() -> None:
    stacks = _stacks()
    total = sum(stacks.values())
    profile = aggregate(stacks, "toy", "toy c=1", rate_hz=100, requests=10)
    # py-spy --idle samples both threads; the background thread's waits (leaf Condition.wait)
    # and the event loop's (leaf EpollSelector.select) are counted apart; the rest is busy.
    waits = sum(
        n
        for s, n in stacks.items()
        if s[-1].startswith(("Condition.wait (", "Event.wait (", "EpollSelector.select ("))
    )
    assert waits > 0
    assert profile.waiting == waits
    assert profile.samples == total - waits
    busy = profile.samples
    assert sum(b.samples for b in profile.buckets) == busy
    assert [b.samples for b in profile.buckets] == sorted(
        (b.samples for b in profile.buckets), reverse=True
    )
    shares = {b.name: b.samples for b in profile.buckets}
    # The toy's own spin loop is not a library: unmatched; its pydantic and JSON work is
    # encode/decode, its log calls logging.
    assert profile.top_self[0].name == "spin (profile_toy.py)"
    assert shares[OTHER] >= profile.top_self[0].samples
    encode = sum(
        n
        for stack, n in stacks.items()
        if any("/json/" in f or "/pydantic" in f for f in stack)
        and not any("/logging/" in f for f in stack)
    )
    assert encode > 0
    assert shares["encode/decode (JSON, pydantic, protobuf)"] == encode
    logging_samples = sum(n for s, n in stacks.items() if any("/logging/" in f for f in s))
    assert shares["logging"] == logging_samples > 0
    # Total time: a frame counts once per sample, and is at least its self time.
    self_of = {f.name: f.samples for f in profile.top_self}
    totals = {f.name: f.samples for f in profile.top_total}
    assert totals["handle (profile_toy.py)"] >= self_of["spin (profile_toy.py)"]
    assert all(n <= busy for n in totals.values())
    assert not any(name.startswith(("<module>", "Handle._run")) for name in totals)
    # 100 Hz: a sample is 10 ms of CPU; per request over 10 requests.
    assert profile.profiled_core_ms_per_request == busy * 10.0 / 10


def test_a_thread_in_uvloops_c_loop_is_waiting() -> None:
    """On uvloop the event loop is C below ``Runner.run``: a sample with no Python frame above
    it is the loop waiting in epoll (py-spy without --native sees only ``Runner.run``), and a
    callback the loop runs is busy, charged as usual."""
    main = (
        "<module> (/work/main/services/preprocess/genwire_preprocess/__main__.py:7)",
        "run (/work/main/genwire/service/loop.py:46)",
        f"Runner.run ({STDLIB}/asyncio/runners.py:118)",
    )
    handler = (*main, f"Fetcher._proc_fetch_request ({SITE}/aiokafka/consumer/fetcher.py:900)")
    profile = aggregate(
        Counter({main: 90, handler: 10}), "preprocess", "kafka c=8", rate_hz=100, requests=1
    )
    assert (profile.waiting, profile.samples) == (90, 10)
    assert [(b.name, b.samples) for b in profile.buckets] == [("Kafka client (aiokafka)", 10)]


def test_module_paths() -> None:
    assert module_path(f"{SITE}/aiokafka/consumer/fetcher.py") == "aiokafka/consumer/fetcher.py"
    assert module_path(f"{STDLIB}/asyncio/base_events.py") == "asyncio/base_events.py"
    assert module_path("/work/main/genwire/kafka/consumer.py") == "genwire/kafka/consumer.py"
    assert (
        module_path("/work/main/services/gateway/genwire_gateway/app.py")
        == "genwire_gateway/app.py"
    )
    assert (
        module_path("/root/.cache/genwire/models/repository/genwire-gpt/31/scheduler.py")
        == "model/scheduler.py"
    )
    assert module_path("<frozen runpy>") == "<frozen runpy>"
    assert frame_name(f"Fetcher._fetch ({SITE}/aiokafka/consumer/fetcher.py:512)") == (
        "Fetcher._fetch (aiokafka/consumer/fetcher.py)"
    )


def test_bucket_rules() -> None:
    aiokafka_future = _loop(
        "Consumer.poll (/work/main/genwire/kafka/consumer.py:200)",
        f"AIOKafkaConsumer.getmany ({SITE}/aiokafka/consumer/consumer.py:1200)",
        f"BaseEventLoop.create_future ({STDLIB}/asyncio/base_events.py:425)",
    )
    # The nearest specific frame to the leaf wins; asyncio inside aiokafka is aiokafka's.
    assert bucket_of(aiokafka_future) == "Kafka client (aiokafka)"
    decode = _loop(
        "Consumer.poll (/work/main/genwire/kafka/consumer.py:210)",
        f"BaseModel.model_validate_json ({SITE}/pydantic/main.py:625)",
    )
    assert bucket_of(decode) == "encode/decode (JSON, pydantic, protobuf)"
    wrapper = _loop("Consumer.poll (/work/main/genwire/kafka/consumer.py:220)")
    assert bucket_of(wrapper) == "genwire Kafka wrappers (genwire.kafka)"
    # Nothing specific in the task: the loop's own work, even though genwire's runner is
    # further down the stack, below the dispatch frames.
    bare = (
        "serve (/work/main/genwire/service/http.py:97)",
        *_loop()[:2],
    )
    assert bucket_of(bare) == "asyncio event loop (scheduling, polling)"
    # Tracing claims everything it calls, protobuf and the exporter's Kafka producer included.
    export = (
        f"Thread.run ({STDLIB}/threading.py:982)",
        "KafkaSpanExporter.export (/work/main/genwire/telemetry/kafka_exporter.py:80)",
        f"encode_spans ({SITE}/opentelemetry/exporter/otlp/proto/common/trace_encoder.py:40)",
        f"Message.SerializeToString ({SITE}/google/protobuf/message.py:100)",
    )
    assert bucket_of(export) == "tracing (OpenTelemetry, span export)"
    handler = _loop(
        "handle (/work/main/services/preprocess/genwire_preprocess/handlers.py:50)",
        f"Tokenizer.encode ({SITE}/tokenizers/implementations/base_tokenizer.py:10)",
    )
    assert bucket_of(handler) == "tokenizer (tokenizers, transformers)"
    assert bucket_of(("mystery (/opt/x/thing.py:1)",)) == OTHER


def test_files_and_summary(tmp_path: Path) -> None:
    stacks = _stacks()
    folder = phase_folder(tmp_path, "kafka c=8")
    assert folder.name == "kafka_c8"
    files = write_outputs(stacks, folder, "toy", "toy during kafka c=8", 100)
    collapsed, svg, scope = files
    assert parse_collapsed(collapsed.read_text()) == stacks  # the raw file round-trips
    text = svg.read_text()
    assert text.startswith("<svg") and "spin (profile_toy.py)" in text
    data = json.loads(scope.read_text())
    profile = data["profiles"][0]
    assert profile["type"] == "sampled"
    assert sum(profile["weights"]) == sum(stacks.values())
    assert all(0 <= i < len(data["shared"]["frames"]) for s in profile["samples"] for i in s)

    # Two rounds of two instances of one service merge into one profile; a service py-spy
    # could not attach to is reported with its reason.
    rounds_dir = tmp_path / "raw"
    rounds_dir.mkdir()
    rounds = []
    for r in range(2):
        one: dict[str, Path | str] = {}
        for name in ("gateway", "gateway-2"):
            path = rounds_dir / f"{name}.{r}.raw"
            path.write_text(DATA.read_text())
            one[name] = path
        one["monitor"] = "Error: Permission denied"
        rounds.append(one)
    profiles, missing = summarise_phase(
        "grpc c=8", rounds, tmp_path / "grpc_c8", 100, 20, {"gateway": 3.5}
    )
    assert [p.service for p in profiles] == ["gateway"]
    assert profiles[0].samples + profiles[0].waiting == 4 * sum(stacks.values())
    assert profiles[0].measured_core_ms_per_request == 3.5
    # The measured core-ms per request is split between the buckets by their shares.
    per_bucket = [b.core_ms_per_request for b in profiles[0].buckets]
    assert all(x is not None for x in per_bucket)
    assert abs(sum(x for x in per_bucket if x is not None) - 3.5) < 1e-9
    assert missing == {"monitor": "Error: Permission denied"}
    assert (tmp_path / "grpc_c8" / "gateway.svg").exists()
    table = render_profiles({"grpc c=8": profiles}, {"grpc c=8": missing}, tmp_path)
    assert "gateway" in table and "not profiled: Error: Permission denied" in table
    assert "spin (profile_toy.py)" in table


def test_buckets_are_distinct_and_ordered() -> None:
    names = [b.name for b in BUCKETS]
    assert len(names) == len(set(names))
    kinds = [b.kind for b in BUCKETS]
    # claims first, then specific, then generic: the precedence the docs describe
    assert kinds == sorted(kinds, key=["claim", "specific", "generic"].index)
