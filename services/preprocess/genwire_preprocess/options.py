"""The checks of a request's decode-loop options that need the model (pure logic).

``genwire.request`` checks shapes and ranges; what depends on the model version is checked
here, before anything reaches Triton: an option the version does not declare
(``ModelAssets.options``) is refused naming the field (``unsupported_parameter``), token ids
(prompt, ``logit_bias``, ``stop_token_ids``) must be in its vocabulary, ``n × max_tokens``
must fit the configured budget, so must the logprob entries of the result
(``n × max_tokens × (1 + top_logprobs)``), and ``top_p`` / ``repetition_penalty`` must survive
the model's float32 inputs (``FP32_SMALLEST``).
"""

from __future__ import annotations

from genwire.errors import PermanentError
from genwire.events import Sampling
from genwire.request import MODEL_OPTIONS, ErrorCode, GenerationRequest
from genwire.tokenization import ModelAssets

FP32_SMALLEST = 2.0**-126
"""The smallest normal float32 (about 1.18e-38): ``top_p`` and ``repetition_penalty`` go to the
model as FP32 (``genwire.triton_io``), where a value > 0 below it (1e-46, say) becomes 0.0 or a
subnormal, which the model refuses (0) as an error of its own, not the caller's."""
FP32_PARAMS = ("top_p", "repetition_penalty")
"""The request's fields bounded only by ``gt=0`` that the model reads as FP32."""


DEFAULT_MAX_LOGPROB_ENTRIES = 16_384
"""Default budget of logprob entries per result (``PreprocessSettings.max_logprob_entries``)."""


def check_options(
    request: GenerationRequest,
    assets: ModelAssets,
    *,
    max_generation_tokens: int,
    max_logprob_entries: int = DEFAULT_MAX_LOGPROB_ENTRIES,
) -> None:
    """Raise ``PermanentError`` (naming the field) for an option this model version cannot take."""
    for option in request.model_options():
        if option not in assets.options:
            raise PermanentError(
                f"'{option}' ({MODEL_OPTIONS[option]}) is not supported by "
                f"{assets.name} version {assets.version}",
                code=ErrorCode.UNSUPPORTED_PARAMETER,
                param=option,
            )
    for name in FP32_PARAMS:
        value = getattr(request, name)
        if 0.0 < value < FP32_SMALLEST:
            raise PermanentError(
                f"'{name}' must be at least {FP32_SMALLEST:.4g} (the smallest the model's "
                f"float32 input holds), got {value:g}",
                code=ErrorCode.OUT_OF_RANGE,
                param=name,
            )
    total = request.n * request.max_tokens
    if total > max_generation_tokens:
        raise PermanentError(
            f"n ({request.n}) × {_max_tokens(request)} = {total} tokens exceeds the "
            f"budget of {max_generation_tokens} tokens per request",
            code=ErrorCode.OUT_OF_RANGE,
            param="n" if request.n > 1 else "max_tokens",
        )
    check_logprob_entries(request, max_logprob_entries)
    vocab = assets.vocab_size
    for field, ids in (
        ("prompt_token_ids", request.prompt_token_ids or []),
        ("logit_bias", list(request.logit_bias_ids())),
        ("stop_token_ids", request.stop_token_ids),
    ):
        unknown = [i for i in ids if i >= vocab]
        if unknown:
            raise PermanentError(
                f"'{field}' names token id {unknown[0]}, not in the vocabulary of "
                f"{assets.name} (ids 0..{vocab - 1})",
                code=ErrorCode.OUT_OF_RANGE,
                param=field,
            )


def _max_tokens(request: GenerationRequest) -> str:
    """``max_tokens`` as a budget refusal names it: a default the caller never sent says so."""
    if request.max_tokens_sent():
        return f"max_tokens ({request.max_tokens})"
    return f"max_tokens ({request.max_tokens}, the default)"


def logprob_entries(request: GenerationRequest) -> int:
    """How many logprob entries the request's result may hold: one per generated token and
    one per alternative of it (``top_logprobs``), for each of the ``n`` choices; 0 without
    ``logprobs``. (Postprocess also repeats choice 0's at the top of an ``n > 1`` result: at
    most 1.5 times this, which the default budget allows for.)"""
    if not request.logprobs:
        return 0
    return request.n * request.max_tokens * (1 + request.top_logprobs)


def check_logprob_entries(request: GenerationRequest, max_logprob_entries: int) -> None:
    """Refuse a request whose result could hold more than ``max_logprob_entries`` logprob
    entries (out_of_range): each is ~100 B of result JSON, so an unbounded one can outgrow
    Kafka's record limit and fill Redis. Names ``top_logprobs`` when it multiplies the count
    (fewer alternatives are the usual fix), else ``logprobs``."""
    entries = logprob_entries(request)
    if entries <= max_logprob_entries:
        return
    raise PermanentError(
        f"n ({request.n}) × {_max_tokens(request)} × (1 + top_logprobs "
        f"({request.top_logprobs})) = {entries} logprob entries exceeds the budget of "
        f"{max_logprob_entries} per request",
        code=ErrorCode.OUT_OF_RANGE,
        param="top_logprobs" if request.top_logprobs > 0 else "logprobs",
    )


def shadow_sampling(
    request: GenerationRequest,
    assets: ModelAssets,
    sampling: Sampling,
    *,
    max_generation_tokens: int,
    max_logprob_entries: int = DEFAULT_MAX_LOGPROB_ENTRIES,
) -> Sampling:
    """The ``Sampling`` of a shadow copy on another version (``assets``): the same options,
    checked against that version (``PermanentError`` when it cannot take them: no copy), with
    its EOS ids and the caller's stop ids as ``sampling_of`` makes them."""
    check_options(
        request,
        assets,
        max_generation_tokens=max_generation_tokens,
        max_logprob_entries=max_logprob_entries,
    )
    stop_ids = sampling_of(request, assets, sampling.seed or 0).stop_token_ids
    return sampling.model_copy(update={"stop_token_ids": stop_ids})


def sampling_of(
    request: GenerationRequest, assets: ModelAssets, seed: int, *, max_tokens: int | None = None
) -> Sampling:
    """The ``Sampling`` of a validated request: every option carried to the model.

    ``stop_token_ids`` are the model's EOS ids and the caller's; with ``ignore_eos`` only the
    caller's (the model stops on any id it is given, so an EOS id there would end the text).
    ``max_tokens``: the request's fitted to its prompt (``handlers.fit_max_tokens``).
    """
    stop_ids = [] if request.ignore_eos else list(assets.eos_token_ids)
    stop_ids += [i for i in request.stop_token_ids if i not in stop_ids]
    return Sampling(
        max_tokens=request.max_tokens if max_tokens is None else max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        seed=seed,
        stop=request.stop_list(),
        stop_token_ids=stop_ids,
        n=request.n,
        logprobs=request.logprobs,
        top_logprobs=request.top_logprobs,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        repetition_penalty=request.repetition_penalty,
        min_p=request.min_p,
        logit_bias=request.logit_bias_ids(),
        min_tokens=request.min_tokens,
        ignore_eos=request.ignore_eos,
        guided=request.guided,
    )
