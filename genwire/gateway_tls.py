"""How a client (the ``genwire`` CLI, ``genwire bench``, the demo, the Python client) reaches a
gateway that serves TLS, and mTLS.

:func:`resolve` decides once per client, from the ``GENWIRE_GATEWAY_*`` client settings
(:class:`genwire.settings.CommonSettings`, docs/security.md):

1. ``GENWIRE_GATEWAY_TLS=off``: plaintext, whatever else is set;
2. ``GENWIRE_GATEWAY_CA_FILE`` (and, for mTLS, ``GENWIRE_GATEWAY_CLIENT_CERTFILE`` +
   ``GENWIRE_GATEWAY_CLIENT_KEYFILE``) or ``GENWIRE_GATEWAY_TLS=on``: TLS with exactly those
   files (no CA file: the system's trust store); nothing is taken from the home;
3. otherwise (``auto``, the default) the stack of ``GENWIRE_HOME``: when ``genwire up --secure``
   recorded a secure mode (``<home>/run/layout.json``), TLS trusting ``<home>/secure/ca.pem``, and
   with ``mtls`` presenting ``<home>/secure/client.pem`` — so the first-run experience against a
   secure stack stays ``genwire up --secure`` then ``genwire generate``;
4. else plaintext.

Only the standard library is needed here; grpc is imported when a channel is made.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from genwire.settings import CommonSettings
from genwire.tls import client_context

if TYPE_CHECKING:
    import grpc

SECURE_DIR = "secure"
"""``<GENWIRE_HOME>/secure``: the material ``genwire up --secure`` makes (genwire_stack.secure)."""
CA_FILE = "ca.pem"
CLIENT_CERT_FILE = "client.pem"
CLIENT_KEY_FILE = "client-key.pem"
LAYOUT_FILE = "run/layout.json"
"""Where ``genwire up`` records the stack's shape, ``"secure": "tls" | "mtls"`` included
(genwire_stack.layout)."""


class GatewayTLSError(ValueError):
    """The gateway client's TLS settings are incomplete or point at missing files."""


@dataclass(frozen=True)
class GatewayTLS:
    """The files a client uses to reach a TLS gateway."""

    ca_file: Path | None
    """CA the gateway's certificate is checked against (None: the system's trust store)."""
    cert_file: Path | None = None
    """Client certificate presented during the handshake (mTLS), with ``key_file``."""
    key_file: Path | None = None
    origin: str = "settings"
    """``settings`` (GENWIRE_GATEWAY_*) or the secure home it came from: for messages."""

    @property
    def mutual(self) -> bool:
        """Whether a client certificate is presented."""
        return self.cert_file is not None

    def ssl_context(self) -> ssl.SSLContext:
        """A client context: the gateway's certificate and host name checked, TLS 1.2+, the
        client certificate loaded when there is one (httpx ``verify=``, urllib ``context=``)."""
        return client_context(self.ca_file, self.cert_file, self.key_file)

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials with the same files."""
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file is not None else None,
            private_key=self.key_file.read_bytes() if self.key_file is not None else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file is not None else None,
        )


def secure_mode(home: Path) -> str:
    """``tls`` / ``mtls`` when the stack of ``home`` was brought up with ``--secure``, else ""."""
    try:
        raw = json.loads((home / LAYOUT_FILE).read_text())
        mode = str(raw.get("secure", "")) if isinstance(raw, dict) else ""
    except (OSError, ValueError):
        return ""
    return mode if mode in ("tls", "mtls") else ""


def resolve(settings: CommonSettings | None = None) -> GatewayTLS | None:
    """The TLS a gateway client uses, or None for plaintext (see the module's docstring)."""
    cfg = settings or CommonSettings()
    if cfg.gateway_tls == "off":
        return None
    explicit = (
        cfg.gateway_ca_file is not None
        or cfg.gateway_client_certfile is not None
        or cfg.gateway_client_keyfile is not None
    )
    if explicit or cfg.gateway_tls == "on":
        if (cfg.gateway_client_certfile is None) != (cfg.gateway_client_keyfile is None):
            raise GatewayTLSError(
                "GENWIRE_GATEWAY_CLIENT_CERTFILE and GENWIRE_GATEWAY_CLIENT_KEYFILE go together"
            )
        found = GatewayTLS(
            cfg.gateway_ca_file, cfg.gateway_client_certfile, cfg.gateway_client_keyfile
        )
        for path in (found.ca_file, found.cert_file, found.key_file):
            if path is not None and not path.is_file():
                raise GatewayTLSError(f"gateway TLS: {path} does not exist")
        return found
    home = cfg.home.expanduser()
    mode = secure_mode(home)
    if not mode:
        return None
    root = home / SECURE_DIR
    if not (root / CA_FILE).is_file():
        raise GatewayTLSError(
            f"the stack in {home} is secure ({mode}) but {root / CA_FILE} is missing: "
            "`genwire up --secure` makes it"
        )
    if mode == "mtls":
        return GatewayTLS(
            root / CA_FILE, root / CLIENT_CERT_FILE, root / CLIENT_KEY_FILE, origin=str(root)
        )
    return GatewayTLS(root / CA_FILE, origin=str(root))


def http_url(url: str, tls: GatewayTLS | None) -> str:
    """``url`` with ``https://`` when the gateway serves TLS (``http://…`` is upgraded: a TLS
    gateway has no plaintext port), unchanged otherwise."""
    if tls is not None and url.startswith("http://"):
        return "https://" + url[len("http://") :]
    return url


def grpc_channel(target: str, tls: GatewayTLS | None = None) -> grpc.aio.Channel:
    """An asyncio gRPC channel to the gateway: TLS with ``tls``, plaintext without."""
    import grpc

    if tls is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, tls.grpc_credentials())
