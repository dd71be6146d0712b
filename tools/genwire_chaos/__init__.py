"""genwire's own fault suite: ``genwire chaos`` (and ``make chaos``).

Each scenario runs load straight into ``genwire.requests`` while a fault is injected into the
running native stack (a stage SIGKILLed, Triton killed, the broker or Redis stopped, the gateway
killed mid-stream, consumers scaled 1→3→1, a broker of a three-node cluster killed), then counts
what came back on ``genwire.results``: lost requests, error results, duplicates and inconsistent
duplicates, the longest gap without results, the recovery time, and the partitions left stuck.
The fuzz scenario produces Hypothesis-generated malformed requests and raw bytes and checks every
one gets an error result or a dead letter with a reason, and that no service restarted.

Modules: ``tracker`` (pure counting), ``kafka_io`` (load producer, topic tails, stuck
partitions), ``faults`` (fault injectors over ``genwire_stack``), ``scenarios`` (the load
scenarios), ``gateway_kill``, ``fuzz``, ``report`` (table and JSON), ``profiles`` and ``cli``.
Reliability guarantees and measured figures: docs/reliability.md.
"""
