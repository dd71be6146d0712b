"""``python -m genwire_model.bench_versions``: two versions' loops in alternated rounds."""

from __future__ import annotations

from typing import Any

import pytest
from genwire_model import bench_versions
from genwire_model.repository import ModelVersion


def test_rounds_alternate_which_version_goes_first(
    tiny_version: ModelVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[tuple[int, Any]] = []
    real = bench_versions.run_in_process_level

    def recorded(scheduler: Any, prompts: Any, level: int, *rest: Any) -> Any:
        order.append((level, scheduler))
        return real(scheduler, prompts, level, *rest)

    monkeypatch.setattr(bench_versions, "run_in_process_level", recorded)
    versions = {"before": tiny_version, "after": tiny_version}
    results = bench_versions.measure(versions, [1, 2], rounds=2, requests=4, max_tokens=4)
    assert list(results) == ["before", "after"]
    for per_level in results.values():
        assert list(per_level) == [1, 2]
        for rows in per_level.values():
            assert len(rows) == 2  # one per round
            for row in rows:
                assert row["errors"] == 0 and row["output_tokens_per_s"] > 0
                assert row["pass_ms"] > 0 and row["static_ms_per_step"] > 0
    # Each loop warmed up first (two requests); then per level the two versions' schedulers
    # in turn, the first one first in round 1 only.
    assert len(order) == 2 + 8 and order[0][1] is not order[1][1]
    order = order[2:]
    first_round, second_round = order[:4], order[4:]
    assert [level for level, _ in order] == [1, 1, 2, 2, 1, 1, 2, 2]
    assert first_round[0][1] is not first_round[1][1]
    assert second_round[0][1] is first_round[1][1] and second_round[1][1] is first_round[0][1]
    lines = bench_versions.table(results)
    assert len(lines) == 1 + 2 * 2 and lines[1].split()[:2] == ["1", "before"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["3", "3"], "two different versions"),
        (["3", "4", "--rounds", "0"], "at least 1"),
        (["3", "4", "--concurrency", "8", "0"], "at least 1"),
    ],
)
def test_nonsense_is_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        bench_versions.main(argv)
    assert message in capsys.readouterr().err


def test_a_version_built_with_other_runtime_code_is_named(tiny_version: ModelVersion) -> None:
    """Both versions run this checkout's runtime: the report says which were built with other
    code (their own copy, which Triton runs, is not what is measured)."""
    import dataclasses

    assert bench_versions.runtime_notes({"now": tiny_version}) == {}
    build = {**tiny_version.manifest["build"], "runtime_sha256": "0123456789abcdef"}
    older = dataclasses.replace(tiny_version, manifest={**tiny_version.manifest, "build": build})
    notes = bench_versions.runtime_notes({"now": tiny_version, "older": older})
    assert list(notes) == ["older"] and "runtime_sha256 0123456789ab" in notes["older"]
