"""``python -m genwire_bench.monitor``: the same as ``genwire monitor-bench``."""

from genwire_bench.monitor.cli import main

main()
