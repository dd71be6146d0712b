"""Pure async handlers of the preprocess service (no Kafka or HTTP imports)."""
