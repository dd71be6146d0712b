"""Every request parameter of the official ``openai`` SDK, for completions and chat, is either
honoured (its effect is checked) or refused with a 400 naming it, against the real stack.

The parameters come from the SDK's own ``create()`` signatures: a parameter a newer SDK adds
fails ``test_every_sdk_parameter_is_in_the_table`` until it is decided here (and in
docs/api.md), so none can slip through silently. Decode-loop options are expected honoured
exactly when the served model version declares them (``request_options`` in its manifest),
refused (``unsupported_parameter``) otherwise.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
import redis
from openai.resources.chat.completions import Completions as ChatCompletions
from openai.resources.completions import Completions
from tokenizers import Tokenizer

from genwire.events import GenerationResult
from genwire.results import result_key
from genwire.settings import CommonSettings

from .conftest import MODEL, Served

TRANSPORT = {"self", "extra_headers", "extra_query", "extra_body", "timeout"}
PROMPT = "Once upon a time"
MESSAGES = [{"role": "user", "content": "Tell me a story about a cat."}]

Check = Callable[[openai.OpenAI, Any, dict[str, Any]], None]


@dataclass(frozen=True)
class Case:
    """How one parameter is exercised."""

    kwargs: dict[str, Any]
    refused: bool = False
    """Always refused (400 unsupported_parameter naming ``param``)."""
    options: tuple[str, ...] = ()
    """Decode-loop options it needs: honoured iff the served version declares them."""
    check: Check | None = None
    """The effect, when honoured: ``check(client, response, request kwargs)``."""
    param: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# -- helpers -------------------------------------------------------------------------------


def _text(response: Any, chat: bool) -> str:
    choice = response.choices[0]
    return str(choice.message.content if chat else choice.text)


def _call(client: openai.OpenAI, chat: bool, **kwargs: Any) -> Any:
    if chat:
        return client.chat.completions.create(**kwargs)
    return client.completions.create(**kwargs)


def _is_chat(response: Any) -> bool:
    return bool(getattr(response, "object", "").startswith("chat"))


def _varied(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
    """A penalty or min_p changed what is sampled: for one of several seeds the text differs
    from the same request without it."""
    chat = _is_chat(response)
    base = {k: v for k, v in kwargs.items() if k not in _PENALTIES}
    base.update(temperature=1.0, max_tokens=24)
    base.pop("max_completion_tokens", None)
    changed = dict(base, **{k: v for k, v in kwargs.items() if k in _PENALTIES})
    for seed in range(1, 6):
        a = _text(_call(client, chat, **dict(base, seed=seed)), chat)
        b = _text(_call(client, chat, **dict(changed, seed=seed)), chat)
        if a != b:
            return
    pytest.fail(f"{sorted(set(kwargs) & _PENALTIES)} changed nothing over 5 seeds")


_PENALTIES = {"presence_penalty", "frequency_penalty", "logit_bias"}


def _same_seed_same_text(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
    chat = _is_chat(response)
    again = _call(client, chat, **kwargs)
    assert _text(again, chat) == _text(response, chat)


def _greedy_ignores_seed(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
    chat = _is_chat(response)
    other = _call(client, chat, **dict(kwargs, seed=kwargs.get("seed", 0) + 1))
    assert _text(other, chat) == _text(response, chat)


def _tiny_top_p_is_greedy(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
    chat = _is_chat(response)
    greedy = _call(client, chat, **dict(kwargs, temperature=0.0, top_p=1.0))
    assert _text(response, chat) == _text(greedy, chat)


def _at_most(n: int) -> Check:
    def check(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
        assert 0 < response.usage.completion_tokens <= n

    return check


def _n_choices(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
    assert [c.index for c in response.choices] == list(range(kwargs["n"]))


def _echoed(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
    assert response.choices[0].text.startswith(kwargs["prompt"])


def _completion_logprobs(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
    choice = response.choices[0]
    lp = choice.logprobs
    assert lp is not None and lp.tokens and len(lp.tokens) == len(lp.token_logprobs)
    assert "".join(lp.tokens).startswith(choice.text) or choice.text.startswith("".join(lp.tokens))
    assert all(x <= 0.0 for x in lp.token_logprobs)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    # The legacy API's: the most likely ``logprobs`` and the sampled token (up to one more).
    assert all(len(top) <= kwargs["logprobs"] + 1 for top in lp.top_logprobs)


def _chat_logprobs(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
    content = response.choices[0].logprobs.content
    assert content and all(t.logprob <= 0.0 for t in content)
    assert "".join(t.token for t in content).startswith(response.choices[0].message.content)
    top = kwargs.get("top_logprobs", 0)
    assert all(len(t.top_logprobs) <= top for t in content)
    if top:
        assert all(t.top_logprobs for t in content)


def _stop_cuts(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
    chat = _is_chat(response)
    stop = kwargs["stop"][0]
    assert stop not in _text(response, chat)
    assert response.choices[0].finish_reason == "stop"


def _streamed(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
    chat = "messages" in kwargs
    pieces = list(response)
    whole = _call(client, chat, **{k: v for k, v in kwargs.items() if k not in _STREAM})
    if chat:
        text = "".join(p.choices[0].delta.content or "" for p in pieces if p.choices)
    else:
        text = "".join(p.choices[0].text for p in pieces if p.choices)
    assert text == _text(whole, chat)
    reasons = [p.choices[0].finish_reason for p in pieces if p.choices]
    assert reasons[-1] is not None
    if kwargs.get("stream_options", {}).get("include_usage"):
        assert pieces[-1].choices == [] and pieces[-1].usage.total_tokens > 0


_STREAM = {"stream", "stream_options"}


def _json(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
    text = response.choices[0].message.content
    if response.choices[0].finish_reason == "stop":
        json.loads(text)
    else:
        assert text.lstrip().startswith("{")


def _model(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
    assert response.model == MODEL


def _answered(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
    assert response.usage.prompt_tokens > 0 and response.choices


def _labelled(**labels: str) -> Check:
    """The labels reached the stored result's metadata (OpenAI's response has no place for
    them: read it from Redis by the response's request id)."""

    def check(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
        assert response.choices
        request_id = response.id.split("-", 1)[1]
        raw = redis.Redis.from_url(CommonSettings().redis_url).get(result_key(request_id))
        assert raw is not None, f"no stored result for {request_id}"
        stored = GenerationResult.model_validate_json(raw)
        assert labels.items() <= stored.metadata.items(), stored.metadata

    return check


def _biased(client: openai.OpenAI, response: Any, kwargs: dict[str, Any]) -> None:
    chat = _is_chat(response)
    (token_id,) = [int(k) for k in kwargs["logit_bias"]]
    piece = _TOKENIZER["tokenizer"].decode([token_id])
    text = _text(response, chat)
    assert text and text == piece * (len(text) // len(piece)), (text, piece)


_TOKENIZER: dict[str, Tokenizer] = {}
_BIAS_TOKEN = " the"


# -- the tables ----------------------------------------------------------------------------


def _completions() -> dict[str, Case]:
    return {
        "model": Case({}, check=_model),
        "prompt": Case({}, check=_answered),
        "best_of": Case({"best_of": 3}, refused=True),
        "echo": Case({"echo": True}, check=_echoed),
        "frequency_penalty": Case(
            {"frequency_penalty": 2.0}, options=("frequency_penalty",), check=_varied
        ),
        "presence_penalty": Case(
            {"presence_penalty": 2.0}, options=("presence_penalty",), check=_varied
        ),
        "logit_bias": Case({"logit_bias": {}}, options=("logit_bias",), check=_biased),
        "logprobs": Case(
            {"logprobs": 2}, options=("logprobs", "top_logprobs"), check=_completion_logprobs
        ),
        "max_tokens": Case({"max_tokens": 3, "temperature": 1.0, "seed": 3}, check=_at_most(3)),
        "n": Case({"n": 2, "temperature": 1.0}, options=("n",), check=_n_choices),
        "seed": Case({"seed": 11, "temperature": 1.0}, check=_same_seed_same_text),
        "stop": Case({"stop": ["STOP"]}, check=_stop_cuts),
        "stream": Case({"stream": True, "seed": 4, "temperature": 1.0}, check=_streamed),
        "stream_options": Case(
            {"stream": True, "stream_options": {"include_usage": True}}, check=_streamed
        ),
        "suffix": Case({"suffix": "The end."}, refused=True),
        "temperature": Case({"temperature": 0.0, "seed": 1}, check=_greedy_ignores_seed),
        "top_p": Case({"top_p": 1e-9, "temperature": 1.0, "seed": 9}, check=_tiny_top_p_is_greedy),
        "user": Case({"user": "alice"}, check=_labelled(user="alice")),
    }


def _chat() -> dict[str, Case]:
    return {
        "messages": Case({}, check=_answered),
        "model": Case({}, check=_model),
        "audio": Case({"audio": {"voice": "alloy", "format": "wav"}}, refused=True),
        "frequency_penalty": Case(
            {"frequency_penalty": 2.0}, options=("frequency_penalty",), check=_varied
        ),
        "presence_penalty": Case(
            {"presence_penalty": 2.0}, options=("presence_penalty",), check=_varied
        ),
        "function_call": Case({"function_call": "auto"}, refused=True),
        "functions": Case({"functions": [{"name": "f", "parameters": {}}]}, refused=True),
        "logit_bias": Case({"logit_bias": {}}, options=("logit_bias",), check=_biased),
        "logprobs": Case({"logprobs": True}, options=("logprobs",), check=_chat_logprobs),
        "top_logprobs": Case(
            {"logprobs": True, "top_logprobs": 2},
            options=("logprobs", "top_logprobs"),
            check=_chat_logprobs,
        ),
        "max_completion_tokens": Case(
            {"max_completion_tokens": 3, "temperature": 1.0, "seed": 3}, check=_at_most(3)
        ),
        "max_tokens": Case({"max_tokens": 3, "temperature": 1.0, "seed": 3}, check=_at_most(3)),
        "metadata": Case({"metadata": {"team": "api"}}, check=_labelled(team="api")),
        "modalities": Case({"modalities": ["text", "audio"]}, refused=True),
        "moderation": Case({"moderation": {"model": "omni-moderation-latest"}}, refused=True),
        "n": Case({"n": 2, "temperature": 1.0}, options=("n",), check=_n_choices),
        "parallel_tool_calls": Case({"parallel_tool_calls": True}, refused=True),
        "prediction": Case({"prediction": {"type": "content", "content": "x"}}, refused=True),
        "prompt_cache_key": Case({"prompt_cache_key": "k"}, refused=True),
        "prompt_cache_options": Case({"prompt_cache_options": {}}, refused=True),
        "prompt_cache_retention": Case({"prompt_cache_retention": "24h"}, refused=True),
        "reasoning_effort": Case({"reasoning_effort": "low"}, refused=True),
        "response_format": Case(
            {"response_format": {"type": "json_object"}, "max_completion_tokens": 64},
            options=("guided",),
            check=_json,
        ),
        "safety_identifier": Case(
            {"safety_identifier": "u-1"}, check=_labelled(safety_identifier="u-1")
        ),
        "seed": Case({"seed": 11, "temperature": 1.0}, check=_same_seed_same_text),
        "service_tier": Case({"service_tier": "flex"}, refused=True),
        "stop": Case({"stop": ["STOP"]}, check=_stop_cuts),
        "store": Case({"store": True}, refused=True),
        "stream": Case({"stream": True, "seed": 4, "temperature": 1.0}, check=_streamed),
        "stream_options": Case(
            {"stream": True, "stream_options": {"include_usage": True}}, check=_streamed
        ),
        "temperature": Case({"temperature": 0.0, "seed": 1}, check=_greedy_ignores_seed),
        "tool_choice": Case({"tool_choice": "auto"}, refused=True),
        "tools": Case(
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            refused=True,
        ),
        "top_p": Case({"top_p": 1e-9, "temperature": 1.0, "seed": 9}, check=_tiny_top_p_is_greedy),
        "user": Case({"user": "alice"}, check=_labelled(user="alice")),
        "verbosity": Case({"verbosity": "low"}, refused=True),
        "web_search_options": Case({"web_search_options": {}}, refused=True),
    }


TABLES: dict[str, tuple[dict[str, Case], Any]] = {
    "completions": (_completions(), Completions),
    "chat": (_chat(), ChatCompletions),
}


@pytest.mark.parametrize("endpoint", sorted(TABLES))
def test_every_sdk_parameter_is_in_the_table(endpoint: str) -> None:
    table, resource = TABLES[endpoint]
    params = set(inspect.signature(resource.create).parameters) - TRANSPORT
    missing = sorted(params - set(table))
    assert not missing, f"new SDK parameter(s) {missing}: decide (honour or refuse), add them here"
    assert not set(table) - params, "the table names parameters the SDK does not have"


def _ids(endpoint: str) -> list[tuple[str, str]]:
    return [(endpoint, name) for name in sorted(TABLES[endpoint][0])]


@pytest.fixture(scope="module")
def tokenizer(stack: CommonSettings) -> Tokenizer:
    versions = sorted((stack.repository / MODEL).glob("[0-9]*/tokenizer.json"))
    _TOKENIZER["tokenizer"] = Tokenizer.from_file(str(versions[-1]))
    return _TOKENIZER["tokenizer"]


@pytest.mark.parametrize(("endpoint", "name"), [*_ids("completions"), *_ids("chat")])
def test_each_parameter_is_honoured_or_refused_by_name(
    client: openai.OpenAI, served: Served, tokenizer: Tokenizer, endpoint: str, name: str
) -> None:
    chat = endpoint == "chat"
    case = TABLES[endpoint][0][name]
    kwargs: dict[str, Any] = {"model": MODEL, "temperature": 0.0}
    if chat:
        kwargs.update(messages=MESSAGES, max_completion_tokens=12)
    else:
        kwargs.update(prompt=PROMPT, max_tokens=12)
    kwargs.update(case.kwargs)
    if name == "logit_bias":
        token_id = tokenizer.encode(_BIAS_TOKEN).ids[0]
        kwargs["logit_bias"] = {str(token_id): 100}
    if name == "stop":  # a stop string the text really contains: cut before it
        for seed in range(5, 25):
            base = _text(
                _call(client, chat, **dict(kwargs, stop=None, temperature=1.0, seed=seed)), chat
            )
            if len(base.strip()) >= 4:
                break
        assert len(base.strip()) >= 4, f"the model said too little to test stop: {base!r}"
        kwargs.update(stop=[base.strip()[2:4]], temperature=1.0, seed=seed)
    if "max_completion_tokens" in kwargs and "max_tokens" in case.kwargs:
        del kwargs["max_completion_tokens"]
    expect: bool | None = not case.refused
    if case.options:
        expect = served.expect(*case.options)
    try:
        response = _call(client, chat, **kwargs)
    except openai.BadRequestError as exc:
        assert expect is not True, f"{name} must be honoured, got {exc}"
        assert exc.code == "unsupported_parameter", exc.body
        named = (*case.options, name)  # the option, or the field that asked for it
        assert exc.param in named, (exc.param, named)
        assert str(exc.param) in str(exc.message)
        return
    assert expect is not False, f"{name} must be refused (it was answered)"
    assert case.check is not None
    case.check(client, response, kwargs)


# -- vLLM's extra sampling parameters (``extra_body``): not in the SDK's signatures ----------


def _eos(stack: CommonSettings) -> int:
    versions = sorted(
        (stack.repository / MODEL).glob("[0-9]*/manifest.json"), key=lambda p: int(p.parent.name)
    )
    return int(json.loads(versions[-1].read_text())["eos_token_ids"][0])


def _completion(client: openai.OpenAI, max_tokens: int, **extra: Any) -> Any:
    return client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=max_tokens, temperature=1.0, seed=7, extra_body=extra
    )


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("ignore_eos", ("ignore_eos", "logit_bias")),
        ("min_tokens", ("min_tokens", "logit_bias")),
        ("stop_token_ids", ("logit_bias",)),
        ("top_k", ()),
        ("min_p", ("min_p",)),
        ("repetition_penalty", ("repetition_penalty",)),
    ],
)
def test_each_vllm_extra_is_honoured(
    client: openai.OpenAI,
    served: Served,
    stack: CommonSettings,
    tokenizer: Tokenizer,
    name: str,
    options: tuple[str, ...],
) -> None:
    """Each extra changes what is generated as it says (an EOS made certain by logit_bias shows
    ignore_eos and min_tokens; a forced token shows stop_token_ids)."""
    if options and served.expect(*options) is not True:
        pytest.skip(f"the served version does not declare {options} (refusal: the table tests)")
    eos = _eos(stack)
    forced = {str(eos): 100}
    if name == "ignore_eos":
        assert _completion(client, 6, logit_bias=forced).usage.completion_tokens == 1
        kept = _completion(client, 6, logit_bias=forced, ignore_eos=True)
        assert kept.usage.completion_tokens == 6 and kept.choices[0].finish_reason == "length"
    elif name == "min_tokens":
        held = _completion(client, 8, logit_bias=forced, min_tokens=4)
        assert held.usage.completion_tokens == 5 and held.choices[0].finish_reason == "stop"
    elif name == "stop_token_ids":
        token_id = tokenizer.encode(_BIAS_TOKEN).ids[0]
        stopped = _completion(client, 8, logit_bias={str(token_id): 100}, stop_token_ids=[token_id])
        assert stopped.usage.completion_tokens == 1 and stopped.choices[0].finish_reason == "stop"
        assert stopped.choices[0].text == ""
    elif name in ("top_k", "min_p"):  # top_k 1 and min_p 1 keep only the likeliest token
        greedy = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
        value = 1 if name == "top_k" else 1.0
        for seed in (1, 2, 3):
            sampled = client.completions.create(
                model=MODEL,
                prompt=PROMPT,
                max_tokens=12,
                temperature=1.0,
                seed=seed,
                extra_body={name: value},
            )
            assert sampled.choices[0].text == greedy.choices[0].text
    else:
        for seed in range(1, 6):
            kwargs: dict[str, Any] = dict(
                model=MODEL, prompt=PROMPT, max_tokens=24, temperature=1.0, seed=seed
            )
            plain = client.completions.create(**kwargs).choices[0].text
            kwargs["extra_body"] = {name: 2.0}
            if client.completions.create(**kwargs).choices[0].text != plain:
                return
        pytest.fail(f"{name} changed nothing over 5 seeds")
