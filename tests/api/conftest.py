"""Fixtures of the API tests: the official ``openai`` SDK and the gRPC client against the REAL
running stack (the ``stack`` fixture), and what the served model version declares it honours."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import openai
import pytest

from genwire.apikeys import resolve_api_key
from genwire.request import MODEL_OPTIONS
from genwire.settings import CommonSettings

MODEL = "genwire-gpt"
GATEWAY_HTTP = "http://127.0.0.1:8080"
GATEWAY_GRPC = "127.0.0.1:50051"


@dataclass(frozen=True)
class Served:
    """The options every served version of the model declares (``sure``), and those only some
    declare (``maybe``: a request may land on either, so either outcome is right)."""

    sure: frozenset[str]
    maybe: frozenset[str]

    def expect(self, *options: str) -> bool | None:
        """True: must be honoured; False: must be refused; None: either (versions differ)."""
        if all(o in self.sure for o in options):
            return True
        if any(o not in self.sure and o not in self.maybe for o in options):
            return False
        return None


def served_options(settings: CommonSettings) -> Served:
    """Read the ``request_options`` of the versions Triton serves now."""
    versions = httpx.get(f"http://{settings.triton_http_url}/v2/models/{MODEL}").json()["versions"]
    declared = []
    for v in versions:
        manifest = settings.repository / MODEL / str(v) / "manifest.json"
        data = json.loads(manifest.read_text()) if manifest.is_file() else {}
        declared.append(frozenset(data.get("request_options") or ()) & frozenset(MODEL_OPTIONS))
    sure = frozenset.intersection(*declared) if declared else frozenset()
    every = frozenset.union(*declared) if declared else frozenset()
    return Served(sure, every - sure)


@pytest.fixture(scope="module")
def served(stack: CommonSettings) -> Served:
    """What the served model declares."""
    return served_options(stack)


@pytest.fixture(scope="module")
def client(stack: CommonSettings) -> openai.OpenAI:
    """The official SDK, pointed at the gateway, with the stack's API key."""
    return openai.OpenAI(
        base_url=f"{GATEWAY_HTTP}/v1", api_key=resolve_api_key() or "none", max_retries=0
    )
