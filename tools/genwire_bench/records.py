"""What one benchmark request measured, and the request it sent."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingSpec:
    """Sampling sent identically to every target, so outputs (and their lengths) match."""

    max_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0


@dataclass(frozen=True)
class BenchRequest:
    """One request of the fixed set: the prompt, its token ids and its sampling."""

    index: int
    prompt: str
    input_ids: tuple[int, ...]
    sampling: SamplingSpec
    stop_token_ids: tuple[int, ...] = ()
    """The model's end-of-sequence ids, as preprocess passes them to inference."""


MODEL_MS = "model_ms"
"""``RequestRecord.extra`` key: the model's own time for the request (ms), from its Python code
taking the request in to its decode loop producing the final response (the final response's
``queue_ms`` + ``compute_ms``), where the answer carries them: direct Triton, the Kafka and
gRPC answers' ``timings``, and the unstreamed HTTP answers' ``Server-Timing`` header."""


@dataclass
class RequestRecord:
    """Timings (``time.perf_counter`` seconds) and outcome of one request to one target."""

    target: str
    index: int
    request_id: str
    start: float
    end: float = 0.0
    scheduled: float | None = None
    """Open loop: when the request was due; latency counts from here (no coordinated omission)."""
    first_token: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    chunks: int = 0
    trace_id: str | None = None
    error: str | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the request completed without an error."""
        return self.error is None

    @property
    def origin(self) -> float:
        """Where latency is measured from: the due time in an open loop, else the send time."""
        return self.scheduled if self.scheduled is not None else self.start

    @property
    def e2e_ms(self) -> float:
        """End-to-end latency in milliseconds."""
        return (self.end - self.origin) * 1000.0

    @property
    def ttft_ms(self) -> float | None:
        """Time to first token (streaming targets only)."""
        if self.first_token is None:
            return None
        return (self.first_token - self.origin) * 1000.0

    @property
    def tpot_ms(self) -> float | None:
        """Time per output token after the first (streaming targets with ≥ 2 tokens)."""
        if self.first_token is None or self.output_tokens < 2:
            return None
        return (self.end - self.first_token) * 1000.0 / (self.output_tokens - 1)
