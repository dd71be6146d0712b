"""genwire gateway service: gRPC and OpenAI-style HTTP entry points."""
