"""The fuzz cases: Hypothesis draws them, ids make them traceable, and the verdict is right."""

from __future__ import annotations

import json
import re

from genwire_chaos.fuzz import _Seen, _unanswered
from genwire_chaos.fuzz_cases import (
    CASE_HEADER,
    HUGE_SIZES,
    ID_MODES,
    Draft,
    FuzzCase,
    build_case,
    generate_drafts,
)
from genwire_chaos.tracker import Outcome

from genwire.events import REQUEST_ID_PATTERN
from genwire.request import request_id_hint
from genwire.telemetry import semconv as sc


def test_hypothesis_draws_the_requested_number_of_varied_cases() -> None:
    drafts = generate_drafts(300, seed_value=1)
    assert len(drafts) == 300
    kinds = {d.kind for d in drafts}
    assert {"json", "bytes", "invalid-utf8", "empty", "null", "huge"} <= kinds
    assert {d.id_mode for d in drafts} == set(ID_MODES)
    # Same seed and count, same cases: a failing run can be replayed.
    assert generate_drafts(40, seed_value=3) == generate_drafts(40, seed_value=3)


def test_huge_values_exceed_the_default_request_limit() -> None:
    drafts = [d for d in generate_drafts(300, seed_value=2) if d.kind == "huge"]
    assert drafts
    for draft in drafts:
        assert draft.raw is not None
        assert len(draft.raw) > min(HUGE_SIZES) - 1


def test_ids_follow_the_mode_and_required_ids_are_valid() -> None:
    body = {"prompt": "hi", "max_tokens": 2}
    cases = {
        mode: build_case(Draft("json", mode, body, None, "bad", b"\xfe"), i, "run")
        for i, mode in enumerate(ID_MODES)
    }
    assert cases["key"].key == b"run-00000" and cases["key"].required_id == "run-00000"
    assert json.loads(cases["json"].value or b"")["request_id"] == "run-00001"
    assert cases["json"].key is None and cases["json"].required_id == "run-00001"
    assert cases["both-different"].required_id == "run-00003"  # the key wins
    assert cases["none"].required_id is None and cases["none"].key is None
    assert cases["empty-key"].key == b"" and cases["empty-key"].required_id == "run-00005"
    assert cases["bad-key"].required_id is None
    assert cases["bad-utf8-key"].required_id is None
    assert cases["bad-json-id"].required_id is None
    for case in cases.values():
        if case.required_id is not None:
            assert re.fullmatch(REQUEST_ID_PATTERN, case.required_id)
            # The pipeline addresses its error result by the same id the case expects.
            assert request_id_hint(case.value or b"", case.key) == case.required_id


def test_raw_cases_with_a_json_id_mode_require_nothing_they_cannot_carry() -> None:
    case = build_case(Draft("bytes", "json", None, b"\xff\x00"), 7, "run")
    assert case.value == b"\xff\x00" and case.key is None and case.required_id is None


def _case(required: str | None, match: list[str], index: int = 0) -> FuzzCase:
    return FuzzCase(index, "json", "key", None, b"{}", required, match)


def test_a_case_is_answered_by_a_result_or_a_dead_letter_with_a_reason() -> None:
    seen = _Seen()
    by_result = _case(None, ["anon-0-5"], 0)
    by_letter = _case(None, ["x"], 1)
    unanswered = _case(None, ["y"], 2)
    letter_without_reason = _case(None, ["z"], 3)
    seen.results["anon-0-5"] = [Outcome(error_code="invalid_request")]
    seen.dlq["run:1"] = [{CASE_HEADER: "run:1", sc.HEADER_DLQ_REASON: "bad"}]
    seen.dlq["run:3"] = [{CASE_HEADER: "run:3", sc.HEADER_DLQ_CODE: "invalid_json"}]
    missing = _unanswered([by_result, by_letter, unanswered, letter_without_reason], seen, "run")
    assert [c.index for c in missing] == [2, 3]


def test_a_case_with_a_request_id_needs_its_result_even_with_a_dead_letter() -> None:
    seen = _Seen()
    case = _case("run-00000", ["run-00000"])
    seen.dlq["run:0"] = [{sc.HEADER_DLQ_REASON: "bad"}]
    assert _unanswered([case], seen, "run") == [case]
    seen.results["run-00000"] = [Outcome(error_code="invalid_request")]
    assert _unanswered([case], seen, "run") == []


def test_every_case_can_be_produced() -> None:
    # Kafka needs a key or a value: a null value without a key gets an empty key.
    case = build_case(Draft("null", "none", None, None), 0, "run")
    assert case.key == b"" and case.value is None
    for i, draft in enumerate(generate_drafts(200, seed_value=4)):
        built = build_case(draft, i, "run")
        assert built.key is not None or built.value is not None


def test_an_internal_error_is_a_handler_bug() -> None:
    from genwire_chaos.fuzz import _internal_errors

    seen = _Seen()
    case = _case(None, ["id-1"], 4)
    seen.dlq["run:4"] = [{sc.HEADER_DLQ_CODE: "internal", sc.HEADER_DLQ_REASON: "boom"}]
    assert _internal_errors([case], seen, "run") == ["#4 json/key: boom"]
    seen.dlq["run:4"] = [{sc.HEADER_DLQ_CODE: "invalid_request", sc.HEADER_DLQ_REASON: "bad"}]
    assert _internal_errors([case], seen, "run") == []
