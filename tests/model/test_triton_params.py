"""The request parameters' parsing in ``triton_model.py`` off the stack (a stand-in
``triton_python_backend_utils``, as in test_triton_model_execute.py): a boolean
``genwire_hold_first_response`` reaches the scheduler's request; anything else is refused with
an error naming the parameter, and the rest of the batch goes on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from genwire.triton_io import HOLD_FIRST_RESPONSE_PARAMETER, RESPONSE_GAP_PARAMETER
from tests.model.test_triton_model_execute import (
    FakeRequest,
    Queued,
    _instance,
    model_module,
    refusal_prefix,
)

__all__ = ["model_module"]  # the fixture, shared


class WithParameters(FakeRequest):
    def __init__(self, rid: str, parameters: dict[str, Any]) -> None:
        super().__init__(rid)
        self.raw = json.dumps(parameters)

    def parameters(self) -> str:
        return self.raw


@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_hold_first_reaches_the_request(model_module: Any, value: bool) -> None:
    asked = WithParameters(
        "held", {RESPONSE_GAP_PARAMETER: "50", HOLD_FIRST_RESPONSE_PARAMETER: value}
    )
    plain = FakeRequest("plain")
    scheduler = Queued()
    instance = _instance(model_module, scheduler, None)
    try:
        instance.execute([asked, plain])
        by_id = {r.sink.request_id: r for r in scheduler.submitted}
        assert by_id["held"].hold_first is value and by_id["held"].min_gap_s == 0.05
        assert by_id["plain"].hold_first is False
    finally:
        instance.outbox.close()


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, None, [True]])
def test_a_hold_first_that_is_no_boolean_is_refused(model_module: Any, value: Any) -> None:
    bad = WithParameters("bad", {HOLD_FIRST_RESPONSE_PARAMETER: value})
    good = FakeRequest("good")
    scheduler = Queued()
    instance = _instance(model_module, scheduler, None)
    try:
        instance.execute([bad, good])
        assert bad.sender.final.wait(10.0)
        assert bad.sender.error == (
            f"{refusal_prefix()}parameter {HOLD_FIRST_RESPONSE_PARAMETER} must be a boolean, "
            f"got {value!r}"
        )
        assert [r.sink.request_id for r in scheduler.submitted] == ["good"]
    finally:
        instance.outbox.close()
