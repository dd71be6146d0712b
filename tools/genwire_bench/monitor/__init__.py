"""``genwire monitor-bench``: the monitor's own benchmark, and the synthetic traffic it runs on.

Tooling beside the monitor service, not part of it: ``synth`` builds realistic OTLP payloads
of genwire requests, ``simulate`` feeds them to the monitor's engine on a simulated clock,
``bench`` measures throughput and detection, ``cli`` is the command line
(``genwire monitor-bench`` or ``python -m genwire_bench.monitor``). The tests use ``synth`` and
``simulate`` too.
"""
