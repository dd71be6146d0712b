"""What the native stack is made of: its components' names, pinned versions and ports.

Versions are pinned here and nowhere else; ``deploy/compose/compose.yaml`` uses the same ones
(``tests/stack/test_compose.py`` checks). How each component is installed and started lives in
:mod:`genwire_stack.kafka_node` and :mod:`genwire_stack.servers`.
"""

from __future__ import annotations

from genwire_stack.layout import BROKER_COUNTS, MAX_INSTANCES, SCALABLE

KAFKA_VERSION = "3.9.1"
"""Apache Kafka broker (KRaft). 3.9 is the last line that still accepts the older protocol
versions; aiokafka 0.14.0 is tested against it here. Kafka 4.x would also work (see README)."""
KAFKA_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093

REDIS_PORT = 6379

PYTRITON_WHEEL = "nvidia-pytriton==0.7.0"
"""Carries Triton Inference Server 2.51.0 (``tritonserver``, the Python backend, its stubs)."""
TRITON_SERVER_VERSION = "2.51.0"
TRITON_NGC_TAG = "24.10"
"""NGC's container release with the same Triton (compose: nvcr.io/nvidia/tritonserver:24.10-py3)."""
TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
STUB_SITE_PACKAGES_ENV = "GENWIRE_STUB_SITE_PACKAGES"
"""Set on tritonserver (and so on its Python stubs): the venv's site-packages, which a model's
``model.py`` puts on ``sys.path`` before importing numpy, onnxruntime or tokenizers."""

JAEGER_MODULE = "github.com/jaegertracing/jaeger"
JAEGER_MODULE_VERSION = "v1.76.0"
"""Jaeger's Go module has no /v2 suffix: module v1.76.0 is the release tagged Jaeger v2.13.0."""
JAEGER_VERSION = "2.13.0"
JAEGER_UI_PORT = 16686
JAEGER_QUERY_GRPC_PORT = 16685
JAEGER_OTLP_GRPC_PORT = 4317
JAEGER_OTLP_HTTP_PORT = 4318
JAEGER_HEALTH_PORT = 13133
JAEGER_METRICS_PORT = 8888

SERVICE_PORTS: dict[str, int] = {
    "preprocess": 8091,
    "inference": 8092,
    "postprocess": 8093,
    "monitor": 8090,
    "gateway": 8080,
}
"""Health/metrics HTTP port of each service's first instance (the gateway's also serves the
OpenAI-style API); instance n adds 100·(n−1) (:func:`genwire_stack.layout.instance_port`)."""
GATEWAY_GRPC_PORT = 50051

INFRA = ("kafka", "redis", "triton", "jaeger")
SERVICES = tuple(SERVICE_PORTS)

COMPONENT_GROUPS = (*INFRA, *SERVICES)
"""What ``--only`` takes: each names a component, or all of its Kafka nodes or instances."""


def is_component_name(name: str) -> bool:
    """Whether ``--only`` knows ``name``: a component, a Kafka node of a cluster (``kafka-2``)
    or an instance of a service (``preprocess-1`` is the first, ``preprocess-3`` a scaled one)."""
    if name in COMPONENT_GROUPS:
        return True
    group, sep, index = name.rpartition("-")
    if not sep or not index.isdigit():
        return False
    number = int(index)
    if group == "kafka":
        return 1 <= number <= max(BROKER_COUNTS)
    if group in SCALABLE:
        return 1 <= number <= MAX_INSTANCES
    return group in SERVICES and number == 1
