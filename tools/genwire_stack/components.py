"""The native stack's components: the catalogue assembled into one component object each.

What the stack is made of (names, pinned versions, ports) is in :mod:`genwire_stack.catalog`;
what every component offers (ports, install, start, probes) in :mod:`genwire_stack.component`;
how each is installed and started in :mod:`genwire_stack.kafka_node` (Kafka) and
:mod:`genwire_stack.servers` (Redis, Triton, Jaeger, the services). This module builds the
stack's components from the recorded layout; the names stay importable from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from genwire.settings import CommonSettings
from genwire_stack.catalog import (
    GATEWAY_GRPC_PORT,
    INFRA,
    JAEGER_HEALTH_PORT,
    JAEGER_METRICS_PORT,
    JAEGER_MODULE,
    JAEGER_MODULE_VERSION,
    JAEGER_OTLP_GRPC_PORT,
    JAEGER_OTLP_HTTP_PORT,
    JAEGER_QUERY_GRPC_PORT,
    JAEGER_UI_PORT,
    JAEGER_VERSION,
    KAFKA_CONTROLLER_PORT,
    KAFKA_PORT,
    KAFKA_VERSION,
    PYTRITON_WHEEL,
    REDIS_PORT,
    SERVICE_PORTS,
    SERVICES,
    STUB_SITE_PACKAGES_ENV,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    TRITON_NGC_TAG,
    TRITON_SERVER_VERSION,
)
from genwire_stack.component import Component, Readiness, one_line, readyz
from genwire_stack.errors import StackError
from genwire_stack.kafka_node import Kafka, kafka_nodes
from genwire_stack.layout import StackLayout, instance_port, read_layout
from genwire_stack.paths import StackPaths
from genwire_stack.secure import SecureStack
from genwire_stack.servers import Jaeger, Redis, Service, Triton


def build_components(
    paths: StackPaths, settings: CommonSettings, layout: StackLayout | None = None
) -> dict[str, Component]:
    """Every component of the stack by name, in start order.

    ``layout`` (default: the one recorded in the run dir, see :mod:`genwire_stack.layout`) says
    how many Kafka nodes and service instances there are.
    """
    shape = layout if layout is not None else read_layout(paths.run)
    security = SecureStack(paths, shape.secure) if shape.secure else None
    nodes = kafka_nodes(paths, settings, shape.brokers, security=security)
    bootstrap = nodes[0].bootstrap
    redis = Redis(paths, settings, security=security)
    components: list[Component] = [
        *nodes,
        redis,
        Triton(paths, settings, security=security),
        Jaeger(paths, settings, kafka_bootstrap=bootstrap, security=security),
    ]
    for short, port in SERVICE_PORTS.items():
        for index in range(1, shape.instances(short) + 1):
            extra = (
                {"grpc": instance_port(GATEWAY_GRPC_PORT, index)} if short == "gateway" else None
            )
            components.append(
                Service(
                    paths,
                    settings,
                    short,
                    instance_port(port, index),
                    extra,
                    index=index,
                    kafka_bootstrap=bootstrap,
                    security=security,
                    redis_url=redis.url if security is not None else None,
                )
            )
    return {c.name: c for c in components}


def select_components(
    all_components: Mapping[str, Component], names: Iterable[str] | None
) -> list[Component]:
    """The components ``names`` mean: a group (``kafka``: every node, ``preprocess``: every
    instance), a name (``kafka-2``, ``preprocess-3``) or an alias (``preprocess-1``)."""
    if names is None:
        return list(all_components.values())
    chosen: set[str] = set()
    unknown: list[str] = []
    for wanted in dict.fromkeys(names):
        members = [c.name for c in all_components.values() if c.group == wanted]
        members = members or [
            c.name for c in all_components.values() if wanted in (c.name, *c.aliases)
        ]
        if not members:
            unknown.append(wanted)
        chosen.update(members)
    if unknown:
        choices = dict.fromkeys(
            [c.group for c in all_components.values() if c.group] + list(all_components)
        )
        raise StackError(
            f"unknown component(s) {', '.join(unknown)}: choose from {', '.join(choices)}"
        )
    return [c for name, c in all_components.items() if name in chosen]


__all__ = [
    "GATEWAY_GRPC_PORT",
    "INFRA",
    "JAEGER_HEALTH_PORT",
    "JAEGER_METRICS_PORT",
    "JAEGER_MODULE",
    "JAEGER_MODULE_VERSION",
    "JAEGER_OTLP_GRPC_PORT",
    "JAEGER_OTLP_HTTP_PORT",
    "JAEGER_QUERY_GRPC_PORT",
    "JAEGER_UI_PORT",
    "JAEGER_VERSION",
    "KAFKA_CONTROLLER_PORT",
    "KAFKA_PORT",
    "KAFKA_VERSION",
    "PYTRITON_WHEEL",
    "REDIS_PORT",
    "SERVICES",
    "SERVICE_PORTS",
    "STUB_SITE_PACKAGES_ENV",
    "TRITON_GRPC_PORT",
    "TRITON_HTTP_PORT",
    "TRITON_METRICS_PORT",
    "TRITON_NGC_TAG",
    "TRITON_SERVER_VERSION",
    "Component",
    "Jaeger",
    "Kafka",
    "Readiness",
    "Redis",
    "Service",
    "Triton",
    "build_components",
    "kafka_nodes",
    "one_line",
    "readyz",
    "select_components",
]
