"""``genwire bench``: the running pipeline against direct Triton, side by side, per hop.

The same fixed prompt set, seed and sampling go through every entry point (gRPC unary and
streaming, the Kafka request topic) and straight to Triton in one run; the report gives each
one's throughput and latency percentiles, the pipeline's overhead over the baseline, the time
spent in each hop (from the traces in Jaeger) and the CPU and memory of each service.
"""
