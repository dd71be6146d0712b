"""The gateway has no event handlers: it consumes no stage's events of its own.

Its pure logic lives in ``core`` (validate, publish, wait, cancel; no transport imports) and
``openai`` (OpenAI bodies, responses and stream chunks); ``grpc_service`` and ``http_api`` are the
thin transports, ``fanout`` the shared reader of results and tokens.
"""
