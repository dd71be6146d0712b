"""Pure async handlers of the monitor service (no Kafka or HTTP imports)."""
