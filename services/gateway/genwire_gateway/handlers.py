"""Pure async handlers of the gateway service (no Kafka or HTTP imports)."""
