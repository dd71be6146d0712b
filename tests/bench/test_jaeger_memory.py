"""python -m genwire_bench.jaeger_memory: bad limits refused, the heap read, the table."""

from __future__ import annotations

from typing import Any

import pytest
from genwire_bench import jaeger_memory
from genwire_bench.jaeger_memory import HEAP, Result, main, render


def test_a_limit_go_would_refuse_stops_the_run_before_any_jaeger_starts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def measure(*args: Any) -> Result:
        raise AssertionError("a Jaeger was started before every limit was checked")

    monkeypatch.setattr(jaeger_memory, "measure", measure)
    with pytest.raises(SystemExit) as exit_:
        main(["--limits", "off,1GB"])  # "off" comes first in the list
    assert exit_.value.code == 2
    assert "'1GB' is not a GOMEMLIMIT value" in capsys.readouterr().err


def test_the_heap_is_read_from_the_collectors_own_metric() -> None:
    text = (
        "# TYPE otelcol_process_runtime_heap_alloc_bytes gauge\n"
        'otelcol_process_runtime_heap_alloc_bytes{otel_scope_name="x"} 3.06117008e+08\n'
        'otelcol_process_runtime_total_alloc_bytes_total{otel_scope_name="x"} 5.6e+08\n'
    )
    match = HEAP.search(text)
    assert match is not None
    assert float(match.group(1)) == 306117008.0


def test_the_table_says_when_a_jaeger_did_not_catch_up() -> None:
    table = render(
        [
            Result("off", 15438, 98.4, 2899.0, 2620.0, 2389.0, 926.0),
            Result("512MiB", 15438, None, 1295.0, 1119.0, None, 817.0),
        ]
    ).splitlines()
    assert table[2] == ("| off | 15,438 | 98.4 s | 2,899 MiB | 2,620 MiB | 2,389 MiB | 926 MiB |")
    assert table[3] == (
        "| 512MiB | 15,438 | not in time | 1,295 MiB | 1,119 MiB | not read | 817 MiB |"
    )
