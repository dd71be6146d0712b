"""The one client-side TLS context every genwire client builds (Kafka, the gateway's callers,
the supervisor's probe, the stack's own checks): certificate and host name verified, TLS 1.2+."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_context(
    cafile: str | Path | None = None,
    certfile: str | Path | None = None,
    keyfile: str | Path | None = None,
) -> ssl.SSLContext:
    """Trust ``cafile`` (None: the system's CAs), check the server's certificate and host name,
    refuse anything older than TLS 1.2, present ``certfile``/``keyfile`` when given."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile is not None:
        context.load_cert_chain(str(certfile), str(keyfile) if keyfile is not None else None)
    return context
