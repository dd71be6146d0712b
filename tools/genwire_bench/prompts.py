"""The fixed prompt set and the requests built from it (identical for every target)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from genwire_bench.records import BenchRequest, SamplingSpec

# Short to medium prompts of varied length, so the set exercises a mix of prefill sizes.
PROMPTS: tuple[str, ...] = (
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog.",
    "In a distant galaxy, a small robot wakes up and",
    "Write a short poem about the sea at night.",
    "Explain why the sky is blue in two sentences.",
    "The recipe calls for flour, sugar, eggs and",
    "Kafka topics are partitioned logs that",
    "She opened the old wooden door and found",
    "List three reasons to learn a second language:",
    "The meeting was postponed because",
    "Translate to French: The cat sleeps on the warm windowsill.",
    "A haiku about autumn leaves:",
    "The history of the printing press begins in",
    "Dear team, thank you for all the hard work this quarter. As we plan the next",
    "def fibonacci(n):",
    "The weather forecast for tomorrow says",
    "Summarize the plot of a heist movie in one paragraph.",
    "In the beginning there was only darkness, and then",
    "The three laws of thermodynamics state that energy",
    "My favourite book is",
    "Step 1: preheat the oven. Step 2:",
    "Question: what is the capital of Australia? Answer:",
    "He looked at the map, then at the mountains, and decided to",
    "The stock market closed higher today as investors",
)

Tokenize = Callable[[str], Sequence[int]]


def build_requests(
    n: int,
    sampling: SamplingSpec,
    tokenize: Tokenize,
    offset: int = 0,
    stop_token_ids: Sequence[int] = (),
) -> list[BenchRequest]:
    """``n`` requests cycling the prompt set; request ``i`` gets seed ``sampling.seed + i``.

    The per-request seed makes sampled outputs differ between requests yet match between targets.
    """
    cache: dict[str, tuple[int, ...]] = {}
    out = []
    for i in range(offset, offset + n):
        prompt = PROMPTS[i % len(PROMPTS)]
        if prompt not in cache:
            cache[prompt] = tuple(int(t) for t in tokenize(prompt))
        out.append(
            BenchRequest(
                index=i,
                prompt=prompt,
                input_ids=cache[prompt],
                sampling=SamplingSpec(
                    max_tokens=sampling.max_tokens,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    top_k=sampling.top_k,
                    seed=sampling.seed + i,
                ),
                stop_token_ids=tuple(stop_token_ids),
            )
        )
    return out
