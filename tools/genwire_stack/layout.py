"""How many Kafka brokers and service instances this home's stack runs (``layout.json``).

``genwire up --brokers 3`` and ``genwire up --scale preprocess=3`` record their choice in
``<GENWIRE_HOME>/run/layout.json``; ``genwire status``, ``genwire down`` and later ``genwire up``
runs read it, so they keep the same shape until asked otherwise (``--brokers 1``,
``--scale preprocess=1``). Without the file: one broker, one instance of each service.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from genwire_stack.errors import StackError

SecureMode = Literal["", "tls", "mtls"]
SECURE_MODES: tuple[str, ...] = ("tls", "mtls")
"""``tls``: TLS + SASL/SCRAM + ACLs on Kafka, TLS + password on Redis, TLS on the gateway;
``mtls``: the same, and the gateway also requires a client certificate signed by the local CA."""
LAYOUT_FILE = "layout.json"
BROKER_COUNTS = (1, 3)
"""A single node, or a three-node KRaft cluster (three controller voters, RF 3, min ISR 2)."""
SCALABLE = ("preprocess", "inference", "postprocess", "gateway")
"""Services that may run several instances: the consumer stages share their consumer group, the
gateways the reply partitions (group ``genwire-gateway-replies``). All share the one Triton
(README: why Triton is not scaled). The monitor may not: its SLO windows need every span."""
MAX_INSTANCES = 9
INSTANCE_PORT_STEP = 100
"""Instance ``n`` of a service listens on its base ports + 100·(n−1): preprocess-2 on 8191."""


@dataclass(frozen=True)
class StackLayout:
    """Brokers and instances per service."""

    brokers: int = 1
    scale: Mapping[str, int] = field(default_factory=dict)
    """Instances per scalable service, only those above 1."""
    secure: SecureMode = ""
    """``genwire up --secure``: "" plaintext, ``tls`` or ``mtls`` (genwire_stack.secure)."""

    def instances(self, service: str) -> int:
        """How many instances of ``service`` run (1 unless scaled)."""
        return int(self.scale.get(service, 1))

    def replication_factor(self) -> int:
        """Replication factor of genwire's topics: every broker holds a copy."""
        return self.brokers

    def min_insync_replicas(self) -> int:
        """``min.insync.replicas``: 2 of 3 (one broker may be lost), 1 on a single node."""
        return 2 if self.brokers >= 3 else 1

    def changed(
        self,
        brokers: int | None = None,
        scale: Mapping[str, int] | None = None,
        secure: str | None = None,
    ) -> StackLayout:
        """This layout with ``brokers``, the services of ``scale`` and ``secure`` ("off":
        plaintext) replaced (validated)."""
        new_brokers = self.brokers if brokers is None else brokers
        if new_brokers not in BROKER_COUNTS:
            raise StackError(
                f"--brokers {new_brokers}: genwire runs 1 Kafka broker or a cluster of 3"
            )
        merged = dict(self.scale)
        for service, count in (scale or {}).items():
            if service not in SCALABLE:
                raise StackError(
                    f"--scale {service}={count}: only {', '.join(SCALABLE)} can run several "
                    "instances (the monitor needs every span in one process)"
                )
            if not 1 <= count <= MAX_INSTANCES:
                raise StackError(f"--scale {service}={count}: choose 1 to {MAX_INSTANCES}")
            merged[service] = count
        new_secure = self.secure if secure is None else ("" if secure == "off" else secure)
        if new_secure not in ("", *SECURE_MODES):
            raise StackError(f"--secure {secure}: choose tls, mtls or off")
        return StackLayout(
            new_brokers,
            {k: v for k, v in sorted(merged.items()) if v > 1},
            cast(SecureMode, new_secure),
        )

    def describe(self) -> str:
        """``1 broker`` / ``3 brokers, preprocess×3``: for messages."""
        parts = [f"{self.brokers} broker{'s' if self.brokers > 1 else ''}"]
        parts += [f"{svc}×{n}" for svc, n in self.scale.items()]
        if self.secure:
            parts.append(f"secure ({self.secure})")
        return ", ".join(parts)


def read_layout(run_dir: Path) -> StackLayout:
    """The recorded layout, or the default (1 broker, 1 instance each) when none is."""
    try:
        raw = json.loads((run_dir / LAYOUT_FILE).read_text())
        brokers = int(raw.get("brokers", 1))
        scale = {str(k): int(v) for k, v in dict(raw.get("scale", {})).items()}
        secure = str(raw.get("secure", ""))
    except (OSError, ValueError, TypeError, AttributeError):
        return StackLayout()
    if brokers not in BROKER_COUNTS:
        brokers = 1
    return StackLayout(
        brokers,
        {k: v for k, v in scale.items() if k in SCALABLE and v > 1},
        cast(SecureMode, secure if secure in SECURE_MODES else ""),
    )


def write_layout(run_dir: Path, layout: StackLayout) -> None:
    """Record ``layout`` atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LAYOUT_FILE
    tmp = path.with_name(f".{LAYOUT_FILE}.{os.getpid()}.tmp")
    record: dict[str, object] = {"brokers": layout.brokers, "scale": dict(layout.scale)}
    if layout.secure:
        record["secure"] = layout.secure
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def parse_scale(text: str) -> dict[str, int]:
    """``preprocess=3,inference=2`` → ``{"preprocess": 3, "inference": 2}``."""
    result: dict[str, int] = {}
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        service, sep, count = part.partition("=")
        if not sep or not count.strip().isdigit():
            raise StackError(f"--scale {part!r}: write SERVICE=COUNT, e.g. preprocess=3")
        result[service.strip()] = int(count)
    return result


def instance_name(service: str, index: int) -> str:
    """``preprocess`` for the first instance (its files keep their names), ``preprocess-2``…"""
    return service if index == 1 else f"{service}-{index}"


def instance_port(base: int, index: int) -> int:
    """Instance ``index``'s port for a service whose first instance uses ``base``."""
    return base + INSTANCE_PORT_STEP * (index - 1)
