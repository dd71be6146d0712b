"""Pure async handlers of the inference service (no Kafka or HTTP imports)."""
