"""genwire inference service: Drives the model on Triton and publishes token chunks."""
