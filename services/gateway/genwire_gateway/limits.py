"""Per-key rate limits and quotas, enforced atomically in Redis across every gateway.

Requests per minute, tokens per minute and tokens per UTC day, checked together by one Lua
script (one round trip): either every limit has room and all three are charged, or nothing is
charged and the caller learns which limit refused it and when it will have room. A batch of
prompts (``admit_all``) is one admission too: all its requests and tokens are charged, or none.

Why a Lua script and not the ``limits`` library: a request must pass three limits at once
(all or nothing: a request refused by its tokens must not use up a request slot), its token
charge is an estimate corrected when it completes (``limits`` has no way to give back part of
a hit), the wait it reports must be exact (``Retry-After``), and the clock must be Redis's own
(``TIME``) so gateways whose clocks differ agree. That is ~60 lines of Lua run atomically by
Redis; the library would still need a script around it.

Windows: per minute is a sliding window of one-second buckets (a Redis hash per key and limit:
bucket start → count); a request is admitted when the current bucket and the 60 before it plus
its cost stay within the limit. A charge thus counts for 60 to 61 s: no span of 60 s, wherever
it starts, ever holds more than the limit, and a client that keeps asking gets the limit every
60.5 s on average (under 1/60 below the nominal rate). Per day is a counter per UTC day.

Token charge: at admission, the prompt's estimated tokens (its UTF-8 bytes / 3, rounded up:
above what the tokenizer counts for English text) plus ``max_tokens`` × ``n``; at completion
the charge is corrected to the real prompt + completion tokens (``adjust``), in the bucket it
was made in when that is still in the window, else in the current one. A request that never
completes (the caller left) keeps its estimate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from genwire.apikeys import KeyRecord
from genwire_gateway.errors import QUOTA_EXCEEDED, RATE_LIMITED

WINDOW_MS = 60_000
BUCKET_MS = 1_000
KEY_PREFIX = "genwire:limit:"
MAX_BLOCKED = 10_000
"""Most keys remembered as over their requests per minute (then the memory starts over)."""


_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local bucket = tonumber(ARGV[2])
local rpm = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
local tpd = tonumber(ARGV[5])
local cost = tonumber(ARGV[6])
local n = tonumber(ARGV[7])
local cur = now - (now % bucket)
local oldest = cur - window
local day = math.floor(now / 86400000)
local day_key = KEYS[3] .. day

local function state(key)
  local flat = redis.call('HGETALL', key)
  local total = 0
  local items = {}
  local stale = {}
  for i = 1, #flat, 2 do
    local b = tonumber(flat[i])
    local v = tonumber(flat[i + 1])
    if b < oldest then
      table.insert(stale, flat[i])
    else
      total = total + v
      table.insert(items, {b, v})
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  table.sort(items, function(x, y) return x[1] < y[1] end)
  return total, items
end

local function wait_ms(items, total, need, limit)
  local excess = total + need - limit
  local freed = 0
  for _, it in ipairs(items) do
    freed = freed + it[2]
    if freed >= excess then return it[1] + bucket + window - now end
  end
  return window
end

if rpm > 0 then
  if n > rpm then return {0, 'rpm_too_large', 0, 0} end
  local total, items = state(KEYS[1])
  if total + n > rpm then return {0, 'rpm', wait_ms(items, total, n, rpm), total} end
end
if tpm > 0 then
  if cost > tpm then return {0, 'tpm_too_large', 0, 0} end
  local total, items = state(KEYS[2])
  if total + cost > tpm then return {0, 'tpm', wait_ms(items, total, cost, tpm), total} end
end
if tpd > 0 then
  if cost > tpd then return {0, 'tpd_too_large', 0, 0} end
  local used = tonumber(redis.call('GET', day_key) or '0')
  if used + cost > tpd then return {0, 'tpd', (day + 1) * 86400000 - now, used} end
end
if rpm > 0 then
  redis.call('HINCRBY', KEYS[1], cur, n)
  redis.call('PEXPIRE', KEYS[1], window + 2 * bucket)
end
if tpm > 0 then
  redis.call('HINCRBY', KEYS[2], cur, cost)
  redis.call('PEXPIRE', KEYS[2], window + 2 * bucket)
end
if tpd > 0 then
  redis.call('INCRBY', day_key, cost)
  redis.call('PEXPIREAT', day_key, (day + 2) * 86400000)
end
return {1, 'ok', cur, day}
"""

_ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local bucket = tonumber(ARGV[2])
local at = tonumber(ARGV[3])
local day = tonumber(ARGV[4])
local delta = tonumber(ARGV[5])
local use_tpm = tonumber(ARGV[6])
local use_tpd = tonumber(ARGV[7])
local cur = now - (now % bucket)
if use_tpm > 0 then
  local field = at
  if at < cur - window then field = cur end
  if field == at or delta > 0 then
    local left = redis.call('HINCRBY', KEYS[1], field, delta)
    if left < 0 then redis.call('HSET', KEYS[1], field, 0) end
    redis.call('PEXPIRE', KEYS[1], window + 2 * bucket)
  end
end
if use_tpd > 0 then
  local day_key = KEYS[2] .. day
  if redis.call('EXISTS', day_key) == 1 or delta > 0 then
    local left = redis.call('INCRBY', day_key, delta)
    if left < 0 then redis.call('SET', day_key, 0) end
    redis.call('PEXPIREAT', day_key, (day + 2) * 86400000)
  end
end
return 1
"""


def _waiting(message: str, wait_s: float) -> str:
    """An rpm refusal's message with its wait (docs/security.md: the limit and the wait)."""
    return f"{message}; retry after {wait_s:.1f} s"


class LimitExceeded(Exception):
    """A request a limit refused: which limit, the code, and when it will have room."""

    def __init__(self, code: str, limit: str, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.code = code
        self.limit = limit
        self.message = message
        self.retry_after_s = retry_after_s


class TooLarge(Exception):
    """A request whose token charge alone is above a per-minute or per-day limit: it can never
    pass (an input error, not a wait)."""


@dataclass(frozen=True)
class Ticket:
    """An admitted request's charge, for ``Limiter.adjust`` at completion."""

    key_id: str
    tokens: int
    bucket_ms: int
    day: int
    tpm: bool
    tpd: bool


def prompt_estimate(prompt: str | None, messages: list[Any] | None) -> int:
    """Tokens budgeted for a prompt before the tokenizer has seen it (bytes / 3, rounded up,
    plus a few per chat turn for the template)."""
    size = len(prompt.encode()) if prompt else 0
    turns = 0
    for message in messages or ():
        content = getattr(message, "content", None)
        if content is None and isinstance(message, dict):
            content = message.get("content")
        size += len(str(content or "").encode())
        turns += 1
    return math.ceil(size / 3) + 4 * turns + 1


def limit_keys(key_id: str) -> list[str]:
    return [f"{KEY_PREFIX}{key_id}:rpm", f"{KEY_PREFIX}{key_id}:tpm", f"{KEY_PREFIX}{key_id}:tpd:"]


class Limiter:
    """Runs the scripts (``redis.asyncio`` client)."""

    def __init__(
        self, redis: Any, *, window_ms: int = WINDOW_MS, bucket_ms: int = BUCKET_MS
    ) -> None:
        self.redis = redis
        self.window_ms = window_ms
        self.bucket_ms = bucket_ms
        self._admit = redis.register_script(_ADMIT)
        self._adjust = redis.register_script(_ADJUST)
        self._blocked: dict[str, tuple[float, str]] = {}
        """key id -> (monotonic time, message): a key over its requests per minute is refused
        here, without Redis, until the wait Redis gave has passed. Exact for rpm: only time
        frees request slots (token charges are also given back at completion, so tpm and
        per-day refusals always ask Redis)."""

    def refusal(self, record: KeyRecord) -> LimitExceeded | None:
        """The remembered rpm refusal of ``record`` (its wait updated), if it still holds."""
        held = self._blocked.get(record.id)
        if held is None:
            return None
        until, message = held
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[record.id]
            return None
        # A new exception each time: re-raising one object would grow its traceback forever.
        return LimitExceeded(RATE_LIMITED, "rpm", _waiting(message, left), left)

    async def admit(self, record: KeyRecord, tokens: int) -> Ticket | None:
        """Charge one request of ``tokens`` to ``record``'s limits; None when it has none.

        Raises ``LimitExceeded`` (nothing charged) or ``TooLarge``; Redis errors propagate.
        """
        tickets = await self.admit_all(record, [tokens])
        return tickets[0] if tickets is not None else None

    async def admit_all(self, record: KeyRecord, budgets: list[int]) -> list[Ticket] | None:
        """Charge a batch, one request per entry of ``budgets`` (its tokens), all or nothing:
        one ticket each, or ``LimitExceeded`` / ``TooLarge`` with nothing charged (a batch
        larger than the key's rpm, or budgeted above its tpm or day, can never pass). None
        when the key has no limits; Redis errors propagate."""
        if not record.limited:
            return None
        held = self.refusal(record)
        if held is not None:
            raise held
        rpm, tpm, tpd = record.rpm or 0, record.tpm or 0, record.tokens_per_day or 0
        count, tokens = len(budgets), sum(budgets)
        raw = await self._admit(
            keys=limit_keys(record.id),
            args=[self.window_ms, self.bucket_ms, rpm, tpm, tpd, tokens, count],
        )
        ok, which, a, b = int(raw[0]), _text(raw[1]), int(raw[2]), int(raw[3])
        if ok:
            return [Ticket(record.id, t, a, b, tpm > 0, tpd > 0) for t in budgets]
        raise self._refused(record, which, a / 1000.0, b, count, tokens)

    def _refused(
        self, record: KeyRecord, which: str, wait: float, used: int, count: int, tokens: int
    ) -> LimitExceeded | TooLarge:
        """The error of a refused admission (``which``: the script's verdict)."""
        name = record.name
        rpm, tpm, tpd = record.rpm or 0, record.tpm or 0, record.tokens_per_day or 0
        what = f"this batch of {count} prompts is" if count > 1 else "this request is"
        if which == "rpm_too_large":
            return TooLarge(
                f"this batch has {count} prompts, each one request: above the key {name!r}'s "
                f"limit of {rpm} requests per minute: send at most {rpm} prompts per call"
            )
        if which == "tpm_too_large":
            return TooLarge(
                f"{what} budgeted {tokens} tokens (prompt estimate + max_tokens x n), above "
                f"the key {name!r}'s limit of {tpm} tokens per minute: lower max_tokens"
            )
        if which == "tpd_too_large":
            return TooLarge(
                f"{what} budgeted {tokens} tokens, above the key {name!r}'s {tpd} tokens per "
                "day: lower max_tokens"
            )
        if which == "rpm":
            return self._rpm_refused(record, wait, used, count)
        if which == "tpm":
            return LimitExceeded(
                RATE_LIMITED,
                "tpm",
                f"rate limit reached for the key {name!r}: {tpm} tokens per minute ({used} "
                f"used, {what} budgeted {tokens}); retry after {wait:.1f} s",
                wait,
            )
        return LimitExceeded(
            QUOTA_EXCEEDED,
            "tokens_per_day",
            f"the key {name!r} has used its {tpd} tokens for today (UTC) ({used} used, "
            f"{what} budgeted {tokens}); retry after {wait:.0f} s",
            wait,
        )

    def _rpm_refused(self, record: KeyRecord, wait: float, used: int, count: int) -> LimitExceeded:
        rpm = record.rpm or 0
        message = f"rate limit reached for the key {record.name!r}: {rpm} requests per minute"
        if count > 1:
            message += f" (this batch needs {count} requests, {max(0, rpm - used)} are left)"
        refusal = LimitExceeded(RATE_LIMITED, "rpm", _waiting(message, wait), wait)
        # Remembered for single requests only: a batch's wait is for all its slots, and a
        # single request may fit before it.
        if count == 1:
            if len(self._blocked) >= MAX_BLOCKED:
                self._blocked.clear()
            self._blocked[record.id] = (time.monotonic() + wait, message)
        return refusal

    async def adjust(self, ticket: Ticket, actual_tokens: int) -> None:
        """Correct an admitted request's token charge to what it really used."""
        delta = actual_tokens - ticket.tokens
        if delta == 0 or not (ticket.tpm or ticket.tpd):
            return
        keys = limit_keys(ticket.key_id)
        await self._adjust(
            keys=[keys[1], keys[2]],
            args=[
                self.window_ms,
                self.bucket_ms,
                ticket.bucket_ms,
                ticket.day,
                delta,
                int(ticket.tpm),
                int(ticket.tpd),
            ],
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
