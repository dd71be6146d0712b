"""Redaction and the bounded key labels, without the stack."""

from __future__ import annotations

import pytest
from genwire_gateway.limits import prompt_estimate
from genwire_gateway.usage import METRIC_KEY_TOKENS, OTHER_KEYS, UsageMetrics
from prometheus_client import CollectorRegistry, generate_latest

from genwire.events import ChatMessage
from genwire.redaction import Redactor, load_hook, luhn_ok, parse_patterns


def shout(text: str) -> str:
    return text.upper()


def test_default_patterns_mask_emails_and_real_card_numbers_only() -> None:
    redact = Redactor()
    assert redact("write to a.b+c@mail.example.org now") == "write to [REDACTED:email] now"
    assert redact("card 4111-1111-1111-1111.") == "card [REDACTED:card]."
    assert redact("card 5500 0000 0000 0004") == "card [REDACTED:card]"
    assert redact("order 1234 5678 9012 3456") == "order 1234 5678 9012 3456"  # not Luhn-valid
    assert redact("year 2024, 3 apples") == "year 2024, 3 apples"
    # The pattern is greedy: digits next to a card join its match, which then fails Luhn.
    assert redact("card 4111 1111 1111 1111 12/25") == "card [REDACTED:card] 12/25"
    assert redact("ref 12 4111 1111 1111 1111") == "ref 12 [REDACTED:card]"
    assert redact("4111111111111111 5") == "[REDACTED:card] 5"
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


def test_configured_patterns_and_the_hook() -> None:
    redact = Redactor(["ticket=TCK-\\d+"], load_hook(f"{__name__}:shout"))
    assert redact("see TCK-42, ada@example.com") == "SEE [REDACTED:TICKET], ADA@EXAMPLE.COM"
    for bad in (["no-equals"], ["x=("]):
        with pytest.raises(ValueError):
            parse_patterns(bad)
    for bad_hook in ("nocolon", "genwire.nope:f", f"{__name__}:missing"):
        with pytest.raises(ValueError):
            load_hook(bad_hook)
    assert load_hook("") is None


def test_key_labels_are_bounded() -> None:
    registry = CollectorRegistry()
    metrics = UsageMetrics(registry, max_keys=2)
    for name in ("a", "b", "c", "d", "a"):
        metrics.add_tokens(name, 1, 2)
    text = generate_latest(registry).decode()
    series = [line for line in text.splitlines() if line.startswith(METRIC_KEY_TOKENS + "{")]
    assert {line.split('key="')[1].split('"')[0] for line in series} == {"a", "b", OTHER_KEYS}
    assert f'{METRIC_KEY_TOKENS}{{key="{OTHER_KEYS}",kind="completion"}} 4.0' in text
    assert f'{METRIC_KEY_TOKENS}{{key="a",kind="prompt"}} 2.0' in text


def test_prompt_estimates_stay_above_what_a_bpe_tokenizer_counts_for_text() -> None:
    assert prompt_estimate("hi", None) == 2
    assert prompt_estimate(None, [ChatMessage(role="user", content="x" * 30)]) == 10 + 4 + 1
    assert prompt_estimate("Once upon a time there was a cat.", None) >= 9
