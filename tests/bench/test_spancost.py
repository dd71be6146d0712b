"""``genwire_bench.spancost`` prints a span's CPU and refuses to if the encoders disagree."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
from genwire_bench import spancost
from opentelemetry.sdk.trace import ReadableSpan


def test_prints_each_step_per_span(capsys: pytest.CaptureFixture[str]) -> None:
    assert spancost.main(["-n", "40", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "spans: 80 (40 records)" in out
    figures = re.findall(
        r"^(make and end|encode, the SDK's|encode, genwire's).*?([\d.]+) µs", out, re.M
    )
    assert [name for name, _ in figures] == [
        "make and end",
        "encode, the SDK's",
        "encode, genwire's",
    ]
    assert all(float(value) > 0 for _, value in figures)


def test_an_encoder_that_differs_from_the_sdk_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def drops_the_last_span(spans: Sequence[ReadableSpan]) -> bytes:
        from genwire.telemetry.otlp_wire import encode_spans

        return encode_spans(spans[:-1])

    monkeypatch.setattr(spancost, "encode_spans", drops_the_last_span)
    assert spancost.main(["-n", "5", "--repeat", "1"]) == 1
    assert "differ" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["-n", "0"], ["--repeat", "0"]])
def test_nothing_to_measure_is_refused(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        spancost.main(args)
    assert exit_.value.code == 2
