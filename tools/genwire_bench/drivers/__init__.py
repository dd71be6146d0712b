"""One driver per entry point: direct Triton (the baseline), the gateway's gRPC, Kafka."""
