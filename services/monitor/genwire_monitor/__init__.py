"""genwire monitor service: Reads spans from otlp_spans and raises latency and drift alerts."""
