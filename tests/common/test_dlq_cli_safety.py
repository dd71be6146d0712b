"""``genwire dlq``: the operator-facing guards, without a broker (the reader and the producer
are stand-ins)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable
from typing import Any

import pytest
from genwire_cli import dlq, dlq_cli
from genwire_cli.main import main

from genwire.kafka.failures import HEADER_DLQ_NULL_VALUE
from genwire.telemetry import semconv as sc
from genwire.topics import Topic


def _letter(
    offset: int,
    code: str = "unavailable",
    *,
    partition: int = 0,
    origin: str = "fix-dlq-origin",
    key: bytes | None = None,
    value: bytes = b"{}",
    reason: str = "because",
    null_value: bool = False,
) -> dlq.Letter:
    return dlq.Letter(
        topic=Topic.DLQ,
        partition=partition,
        offset=offset,
        key=key if key is not None else f"fix-dlq-{offset}".encode(),
        value=value,
        headers=((sc.HEADER_DLQ_CODE, code.encode()),),
        origin_topic=origin,
        code=code,
        stage="preprocess",
        reason=reason,
        **({"null_value": True} if null_value else {}),
    )


class _Reader:
    """``read_letters`` over a fixed list, honouring the selection as the real one does."""

    def __init__(self, letters: list[dlq.Letter]) -> None:
        self.letters = letters
        self.calls = 0

    async def __call__(
        self, bootstrap: str, topic: str, selection: dlq.Selection, tally: dlq.Tally | None = None
    ) -> list[dlq.Letter]:
        self.calls += 1
        out = []
        for item in self.letters:
            if tally is not None:
                tally.seen[(item.code, item.stage)] += 1
            if not selection.matches(item):
                continue
            if getattr(selection, "excludes", lambda _: False)(item):
                if tally is not None:
                    tally.permanent[item.code] += 1
                continue
            out.append(item)
        return out


class _Replayer:
    def __init__(self) -> None:
        self.sent: list[dlq.Letter] | None = None

    async def __call__(self, bootstrap: str, letters: Iterable[dlq.Letter]) -> list[dlq.Letter]:
        self.sent = list(letters)
        return self.sent


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> tuple[_Reader, _Replayer]:
    reader = _Reader(
        [
            _letter(1, "invalid_request"),
            _letter(2, "unavailable"),
            _letter(3, "invalid_json", origin="fix-dlq-other"),
            _letter(4, "inference_failed"),
        ]
    )
    replayer = _Replayer()
    monkeypatch.setattr(dlq_cli, "read_letters", reader)
    monkeypatch.setattr(dlq_cli, "replay", replayer)
    return reader, replayer


def _cli(argv: list[str]) -> int:
    return main(["dlq", *argv, "--bootstrap-servers", "fix-dlq-nowhere:9092"])


# 1: no filter, permanent codes, counts before sending


def test_replay_without_a_filter_refuses_unless_all(
    fake: tuple[_Reader, _Replayer], capsys: pytest.CaptureFixture[str]
) -> None:
    reader, replayer = fake
    assert _cli(["replay"]) == 2
    assert "--all" in capsys.readouterr().err
    assert reader.calls == 0 and replayer.sent is None
    assert _cli(["replay", "--all"]) == 0
    assert replayer.sent is not None


def test_replay_skips_the_callers_faults_unless_asked(
    fake: tuple[_Reader, _Replayer], capsys: pytest.CaptureFixture[str]
) -> None:
    _, replayer = fake
    assert _cli(["replay", "--all"]) == 0
    out = capsys.readouterr().out
    assert replayer.sent is not None
    assert [item.offset for item in replayer.sent] == [2, 4]
    assert "skipped 2 record(s) whose code is the caller's fault" in out
    assert "invalid_request=1" in out and "invalid_json=1" in out
    # counts per code and per origin topic, before sending
    assert "sending 2 record(s)" in out
    assert "by code: " in out and "unavailable=1" in out and "inference_failed=1" in out
    assert "by topic: fix-dlq-origin=2" in out
    assert _cli(["replay", "--all", "--include-permanent"]) == 0
    assert [item.offset for item in replayer.sent] == [1, 2, 3, 4]


def test_the_permanent_codes_are_the_callers_faults() -> None:
    assert {"invalid_request", "invalid_json", "context_length_exceeded"} <= dlq.PERMANENT_CODES
    assert not {"unavailable", "model_not_found", "internal", "deadline_exceeded"} & (
        dlq.PERMANENT_CODES
    )


# 3: one line per record


def test_list_prints_one_line_per_record(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reader = _Reader([_letter(1, reason="first\nsecond\r\nthird\tfourth")])
    monkeypatch.setattr(dlq_cli, "read_letters", reader)
    assert _cli(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # the record and the count
    assert "first second third fourth" in lines[0]


# 2: confirmed in order, a failure says how far it got, --after resumes


class _Producer:
    """A producer whose ``fail_at``-th send fails."""

    def __init__(self, *args: Any, fail_at: int, **kwargs: Any) -> None:
        self.fail_at = fail_at
        self.sends: list[tuple[str, bytes, bytes | None]] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Any = ()
    ) -> asyncio.Future[object]:
        self.sends.append((topic, value, key))
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if len(self.sends) == self.fail_at:
            fut.set_exception(RuntimeError("broker said no"))
        else:
            fut.set_result(None)
        return fut


def test_a_failed_send_reports_how_far_the_replay_got(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dlq, "EventProducer", lambda *a, **k: _Producer(fail_at=3))
    letters = [_letter(o, partition=p) for p, o in [(1, 5), (0, 7), (0, 3), (1, 2)]]
    with pytest.raises(dlq.ReplayError) as caught:
        asyncio.run(dlq.replay("fix-dlq-nowhere:9092", letters))
    # sent in (partition, offset) order: 0:3, 0:7, then 1:2 failed
    assert [item.where for item in caught.value.sent] == [
        f"{Topic.DLQ}:0:3",
        f"{Topic.DLQ}:0:7",
    ]
    assert "2 confirmed" in str(caught.value) and "broker said no" in str(caught.value)


def test_the_cli_names_the_resume_point_of_a_failed_replay(
    fake: tuple[_Reader, _Replayer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def failing(bootstrap: str, letters: Iterable[dlq.Letter]) -> list[dlq.Letter]:
        sent = list(letters)
        raise dlq.ReplayError(sent[:1], RuntimeError("broker said no"), sent[1])

    monkeypatch.setattr(dlq_cli, "replay", failing)
    assert _cli(["replay", "--code", "unavailable", "--code", "inference_failed"]) == 1
    err = capsys.readouterr().err
    assert "1 confirmed" in err and f"--after {Topic.DLQ}:0:2" in err
    # The record that failed is named, with how to get past one that fails every time.
    failed = err.splitlines()[-1]
    assert failed.startswith("to skip the record that failed: --after ")


def test_after_selects_the_records_past_a_resume_point() -> None:
    after = dlq.parse_after(f"{Topic.DLQ}:0:7")
    assert after == (Topic.DLQ, 0, 7)
    chosen = dlq.Selection(after=after)
    assert chosen.filtered
    assert not chosen.matches(_letter(7))
    assert not chosen.matches(_letter(3))
    assert chosen.matches(_letter(8))
    assert chosen.matches(_letter(1, partition=1))
    with pytest.raises(ValueError):
        dlq.parse_after("no-offsets")


def test_replay_after_a_resume_point(
    fake: tuple[_Reader, _Replayer], capsys: pytest.CaptureFixture[str]
) -> None:
    _, replayer = fake
    assert _cli(["replay", "--after", f"{Topic.DLQ}:0:2"]) == 0
    assert replayer.sent is not None and [item.offset for item in replayer.sent] == [4]


# 4: an empty selection says what was there; --key matches the request id in the value


def test_an_empty_selection_names_the_codes_and_stages_seen(
    fake: tuple[_Reader, _Replayer], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(["list", "--code", "no_such_code"]) == 0
    out = capsys.readouterr().out
    assert "0 record(s) selected" in out
    assert "codes seen:" in out and "invalid_request=1" in out
    assert "stages seen: preprocess=4" in out


def test_key_matches_the_request_id_in_the_value() -> None:
    """Preprocess's rule: a record's key is its id (a body's request_id does not name it); a
    keyless record's id is its body's, else ``anon-<p>-<o>`` on genwire.requests."""
    keyed = _letter(1, key=b"other", value=json.dumps({"request_id": "fix-dlq-x"}).encode())
    assert not dlq.Selection(keys=frozenset({"fix-dlq-x"})).matches(keyed)
    assert dlq.Selection(keys=frozenset({"other"})).matches(keyed)
    keyless = dlq.Letter(
        topic=Topic.DLQ,
        partition=0,
        offset=8,
        key=None,
        value=json.dumps({"request_id": "fix-dlq-x"}).encode(),
        headers=(),
        origin_topic=Topic.REQUESTS,
        code="invalid_request",
        stage="preprocess",
        reason="x",
        origin_partition=2,
        origin_offset=40,
    )
    assert dlq.Selection(keys=frozenset({"fix-dlq-x"})).matches(keyless)
    anon = dataclasses.replace(keyless, offset=9, value=b"not json", origin_offset=41)
    assert dlq.Selection(keys=frozenset({"anon-2-41"})).matches(anon)
    assert not dlq.Selection(keys=frozenset({"anon-2-42"})).matches(anon)
    elsewhere = dataclasses.replace(anon, origin_topic="fix-dlq-origin")  # ids only there
    assert not dlq.Selection(keys=frozenset({"anon-2-41"})).matches(elsewhere)
    poison = dataclasses.replace(keyless, value=b'{"request_id": ' + b"[" * 200_000)
    assert not dlq.Selection(keys=frozenset({"fix-dlq-x"})).matches(poison)  # no crash


def test_after_a_position_in_another_topic_is_refused() -> None:
    assert _cli(["replay", "--after", f"{Topic.RETRY}:0:5"]) == 2  # reads genwire.dlq


# 10: a tombstone's dead letter is not replayed as an empty value


def test_a_tombstones_dead_letter_is_not_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka.structs import ConsumerRecord

    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        topic=Topic.DLQ,
        partition=0,
        offset=1,
        timestamp=0,
        timestamp_type=0,
        key=b"fix-dlq-tomb",
        value=b"",
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=[
            (HEADER_DLQ_NULL_VALUE, b"true"),
            (sc.HEADER_DLQ_TOPIC, b"fix-dlq-origin"),
            (sc.HEADER_DLQ_CODE, b"invalid_json"),
        ],
    )
    item = dlq.letter(record)
    producer = _Producer(fail_at=0)
    monkeypatch.setattr(dlq, "EventProducer", lambda *a, **k: producer)
    assert asyncio.run(dlq.replay("fix-dlq-nowhere:9092", [item, _letter(2)])) == [_letter(2)]
    assert [key for _, _, key in producer.sends] == [b"fix-dlq-2"]
