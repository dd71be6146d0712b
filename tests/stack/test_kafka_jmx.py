"""The broker's JMX (``GENWIRE_KAFKA_JMX_PORT``) and the census that reads it.

The JVM flags are checked on the command line; a private broker started with them is then
asked over JMX by ``genwire_bench.census`` (the JDK's ``KafkaCensus.java``) what it served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from genwire_bench.census import difference, has_compiler, read_counters
from genwire_stack import down, ensure_up
from genwire_stack.components import Kafka, kafka_nodes
from genwire_stack.errors import StackError
from genwire_stack.health import free_port
from genwire_stack.paths import StackPaths
from genwire_stack.secure import SecureStack

from genwire.settings import CommonSettings
from genwire.topics import Topic


def test_no_jmx_unless_asked(tmp_path: Path) -> None:
    settings = CommonSettings(home=tmp_path)
    node = Kafka(StackPaths.from_settings(settings), settings)
    assert not [a for a in node.command() if "jmxremote" in a]
    assert "jmx" not in node.ports()


def test_jmx_on_loopback_one_port_per_node(tmp_path: Path) -> None:
    settings = CommonSettings(home=tmp_path, kafka_jmx_port=9999)
    paths = StackPaths.from_settings(settings)
    single = Kafka(paths, settings)
    command = single.command()
    assert "-Dcom.sun.management.jmxremote.port=9999" in command
    assert "-Dcom.sun.management.jmxremote.host=127.0.0.1" in command
    assert "-Dcom.sun.management.jmxremote.authenticate=false" in command
    # RMI's second connection on the same port and address: nothing beyond loopback.
    assert "-Dcom.sun.management.jmxremote.rmi.port=9999" in command
    assert "-Djava.rmi.server.hostname=127.0.0.1" in command
    # The flags come before the main class, or the JVM would pass them to Kafka.
    assert command.index("-Dcom.sun.management.jmxremote.port=9999") < command.index("kafka.Kafka")
    assert single.ports()["jmx"] == 9999
    nodes = kafka_nodes(paths, settings, brokers=3)
    assert [n.ports()["jmx"] for n in nodes] == [9999, 10000, 10001]


def test_jmx_refused_on_a_secure_stack(tmp_path: Path) -> None:
    settings = CommonSettings(home=tmp_path, kafka_jmx_port=9999)
    paths = StackPaths.from_settings(settings)
    node = Kafka(paths, settings, security=SecureStack(paths))
    with pytest.raises(StackError, match="GENWIRE_KAFKA_JMX_PORT"):
        node.command()
    assert "jmx" not in node.ports()  # not shown as if it would be served


def test_the_storage_format_gets_no_jmx(tmp_path: Path) -> None:
    """The format tool is a JVM too: given the flags, it would hold the broker's JMX port."""
    settings = CommonSettings(home=tmp_path, kafka_jmx_port=9999)
    node = Kafka(StackPaths.from_settings(settings), settings)
    assert not [a for a in node._java_opts() if "jmxremote" in a]


@pytest.fixture
def jmx_broker(infra: CommonSettings, tmp_path: Path) -> Iterator[tuple[CommonSettings, Kafka]]:
    jmx, port, controller = (free_port() for _ in range(3))
    settings = CommonSettings(home=tmp_path, kafka_jmx_port=jmx)
    node = Kafka(StackPaths.from_settings(settings), settings, port, controller)
    node.use_installed(infra)
    yield settings, node
    down(settings=settings, catalog={node.name: node})


@pytest.mark.slow
async def test_the_census_counts_what_the_broker_served(
    jmx_broker: tuple[CommonSettings, Kafka],
) -> None:
    settings, node = jmx_broker
    if not has_compiler():
        pytest.skip("the census launches KafkaCensus.java from source: needs a JDK, not a JRE")
    await asyncio.to_thread(ensure_up, settings=settings, catalog={node.name: node}, model=False)
    assert settings.kafka_jmx_port is not None
    before = await asyncio.to_thread(read_counters, settings.kafka_jmx_port)
    producer = AIOKafkaProducer(bootstrap_servers=node.bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(Topic.REQUESTS.value, f"census-{i}".encode())
    finally:
        await producer.stop()
    after = await asyncio.to_thread(read_counters, settings.kafka_jmx_port)
    gained = difference(before, after)
    assert gained.messages == {Topic.REQUESTS.value: 5}
    assert gained.requests["Produce"] == 5  # one request per send_and_wait
    assert "Metadata" in gained.requests
