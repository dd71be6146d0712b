"""genwire's shared library: events, topics, the Kafka wrapper, telemetry and settings."""

__version__ = "0.1.0"
