"""preprocess's model checks of a request's options (``genwire_preprocess.options``): values the
request model accepts (``gt=0``) that the model's float32 inputs cannot carry."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from genwire_preprocess.options import FP32_SMALLEST, check_options

from genwire.errors import PermanentError
from genwire.request import MODEL_OPTIONS, ErrorCode, GenerationRequest


def _assets() -> Any:
    """What check_options reads of a model version: every option honoured, 512 tokens."""
    return SimpleNamespace(
        name="genwire-gpt", version="2", vocab_size=512, options=frozenset(MODEL_OPTIONS)
    )


def _check(**fields: Any) -> None:
    request = GenerationRequest(prompt="hi", schema_version=2, **fields)
    check_options(request, _assets(), max_generation_tokens=100_000)


@pytest.mark.parametrize("name", ["top_p", "repetition_penalty"])
@pytest.mark.parametrize("value", [1e-46, 1e-45, 1e-40, 1.1e-38])
def test_a_value_float32_cannot_carry_is_out_of_range(name: str, value: float) -> None:
    """1e-46 passed ``gt=0`` and reached the model as 0.0 (FP32), which refused it: a model
    error (inference_failed) for a caller's value."""
    assert np.float32(value) == 0 or np.float32(value) < np.finfo(np.float32).tiny
    with pytest.raises(PermanentError) as caught:
        _check(**{name: value})
    err = caught.value
    assert err.code == ErrorCode.OUT_OF_RANGE and err.param == name
    assert name in err.message


@pytest.mark.parametrize("name", ["top_p", "repetition_penalty"])
@pytest.mark.parametrize("value", [FP32_SMALLEST, 1e-30, 0.5, 1.0])
def test_small_values_float32_carries_pass(name: str, value: float) -> None:
    assert np.float32(value) > 0
    _check(**{name: value})


def test_the_floor_is_float32s_smallest_normal() -> None:
    assert np.float32(FP32_SMALLEST) == np.finfo(np.float32).tiny
