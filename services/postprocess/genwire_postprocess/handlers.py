"""Pure async handlers of the postprocess service (no Kafka or HTTP imports)."""
