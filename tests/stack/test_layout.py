"""The stack's shape: Kafka brokers and service instances (``--brokers``, ``--scale``).

Definitions only (names, ports, environment, the recorded layout, the refusals), plus one real
process standing in for a running broker; the brokers and instances themselves run in
test_cluster.py and test_scale.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from genwire_stack import StackError, StackLayout, current_layout, ensure_up, kafka_bootstrap
from genwire_stack.components import Jaeger, Kafka, Service, build_components, select_components
from genwire_stack.layout import parse_scale, read_layout, write_layout
from genwire_stack.paths import StackPaths
from genwire_stack.process import PidRecord, start_ticks, write_record

from genwire.settings import CommonSettings


def _home(tmp_path: Path) -> tuple[StackPaths, CommonSettings]:
    settings = CommonSettings(home=tmp_path)
    return StackPaths.from_settings(settings), settings


def test_the_default_layout_is_one_broker_and_one_instance_each(tmp_path: Path) -> None:
    paths, settings = _home(tmp_path)
    names = list(build_components(paths, settings))
    assert names == [
        "kafka",
        "redis",
        "triton",
        "jaeger",
        "preprocess",
        "inference",
        "postprocess",
        "monitor",
        "gateway",
    ]
    assert current_layout(settings) == StackLayout()
    assert kafka_bootstrap(settings) == "127.0.0.1:9092"


def test_three_brokers_get_their_own_ports_dirs_and_every_client_all_of_them(
    tmp_path: Path,
) -> None:
    paths, settings = _home(tmp_path)
    components = build_components(paths, settings, StackLayout(brokers=3))
    nodes = [c for c in components.values() if isinstance(c, Kafka)]
    assert [n.name for n in nodes] == ["kafka-1", "kafka-2", "kafka-3"]
    assert [n.ports() for n in nodes] == [
        {"broker": 9092, "controller": 9093},
        {"broker": 9192, "controller": 9193},
        {"broker": 9292, "controller": 9293},
    ]
    assert len({n.data_dir for n in nodes}) == 3
    assert all(n.group == "kafka" for n in nodes)
    everyone = "127.0.0.1:9092,127.0.0.1:9192,127.0.0.1:9292"
    jaeger = components["jaeger"]
    assert isinstance(jaeger, Jaeger)
    assert jaeger.environment()["JAEGER_KAFKA_BROKERS"] == everyone
    for name in ("preprocess", "gateway"):
        env = components[name].environment()
        assert env["GENWIRE_KAFKA_BOOTSTRAP_SERVERS"] == everyone
        assert env[f"GENWIRE_{name.upper()}_KAFKA_BOOTSTRAP_SERVERS"] == everyone

    # Every node is broker and controller; all three vote; topics get RF 3 and min ISR 2.
    template = (paths.deploy / "kafka" / "server.properties").read_text()
    assert "${replication_factor}" in template and "${min_insync_replicas}" in template
    assert (nodes[1].replication_factor, nodes[1].min_insync_replicas) == (3, 2)
    single = build_components(paths, settings)["kafka"]
    assert isinstance(single, Kafka)
    assert (single.replication_factor, single.min_insync_replicas) == (1, 1)


def test_the_kafka_name_means_every_node_and_kafka_n_one(tmp_path: Path) -> None:
    paths, settings = _home(tmp_path)
    cluster = build_components(paths, settings, StackLayout(brokers=3))
    assert [c.name for c in select_components(cluster, ["kafka"])] == [
        "kafka-1",
        "kafka-2",
        "kafka-3",
    ]
    assert [c.name for c in select_components(cluster, ["kafka-2"])] == ["kafka-2"]
    single = build_components(paths, settings)
    assert [c.name for c in select_components(single, ["kafka-1"])] == ["kafka"]
    with pytest.raises(StackError, match="unknown component"):
        select_components(single, ["kafka-2"])


def test_scaled_services_get_ports_a_hundred_apart_and_one_consumer_group(
    tmp_path: Path,
) -> None:
    paths, settings = _home(tmp_path)
    layout = StackLayout().changed(scale={"preprocess": 3, "gateway": 2})
    components = build_components(paths, settings, layout)
    pre = [c for c in components.values() if isinstance(c, Service) and c.short == "preprocess"]
    assert [(c.name, c.port) for c in pre] == [
        ("preprocess", 8091),
        ("preprocess-2", 8191),
        ("preprocess-3", 8291),
    ]
    for c in pre:
        env = c.environment()
        assert env["GENWIRE_PREPROCESS_PORT"] == str(c.port)
        assert "GENWIRE_PREPROCESS_SERVICE_NAME" not in env, "one consumer group for all"
        assert c.command() == [sys.executable, "-m", "genwire_preprocess"]
        assert c.log.name == f"{c.name}.log"
    gateway2 = components["gateway-2"]
    assert gateway2.ports() == {"http": 8180, "grpc": 50151}
    assert gateway2.environment()["GENWIRE_GATEWAY_GRPC_PORT"] == "50151"
    assert [c.name for c in select_components(components, ["preprocess"])] == [c.name for c in pre]
    assert [c.name for c in select_components(components, ["preprocess-1"])] == ["preprocess"]
    assert "inference-2" not in components


def test_scale_and_broker_values_are_checked() -> None:
    assert parse_scale("preprocess=3, inference=2") == {"preprocess": 3, "inference": 2}
    with pytest.raises(StackError, match="SERVICE=COUNT"):
        parse_scale("preprocess:3")
    with pytest.raises(StackError, match="the monitor needs every span"):
        StackLayout().changed(scale={"monitor": 2})
    with pytest.raises(StackError, match="choose 1 to 9"):
        StackLayout().changed(scale={"preprocess": 0})
    with pytest.raises(StackError, match="1 Kafka broker or a cluster of 3"):
        StackLayout().changed(brokers=2)
    layout = StackLayout().changed(brokers=3, scale={"inference": 3})
    assert layout.changed(scale={"inference": 1}) == StackLayout(brokers=3)
    assert layout.describe() == "3 brokers, inference×3"


def test_the_layout_is_recorded_and_survives_a_bad_file(tmp_path: Path) -> None:
    paths, _ = _home(tmp_path)
    assert read_layout(paths.run) == StackLayout()
    write_layout(paths.run, StackLayout(3, {"preprocess": 2}))
    assert read_layout(paths.run) == StackLayout(3, {"preprocess": 2})
    (paths.run / "layout.json").write_text("{not json")
    assert read_layout(paths.run) == StackLayout()


def test_another_broker_count_while_kafka_runs_is_refused_in_one_line(tmp_path: Path) -> None:
    paths, settings = _home(tmp_path)
    stand_in = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        time.sleep(0.1)
        record = PidRecord("kafka", stand_in.pid, [], "", time.time(), start_ticks(stand_in.pid))
        write_record(paths.run, record)
        with pytest.raises(StackError) as caught:
            ensure_up(["redis"], settings=settings, brokers=3, model=False)
        message = str(caught.value)
        assert "\n" not in message
        assert message == (
            "the stack runs with 1 Kafka broker (kafka running); to switch to 3, stop it first: "
            "`genwire down`, then `genwire up --brokers 3`"
        )
        assert current_layout(settings) == StackLayout(), "the layout is left as it was"
    finally:
        os.kill(stand_in.pid, signal.SIGKILL)
        stand_in.wait()


def test_the_cli_takes_brokers_and_scale() -> None:
    from genwire_cli.main import build_parser

    args = build_parser().parse_args(["up", "--brokers", "3", "--scale", "preprocess=3"])
    assert (args.brokers, parse_scale(args.scale)) == (3, {"preprocess": 3})
    args = build_parser().parse_args(["down", "--only", "kafka-2"])
    assert args.only == ["kafka-2"]


def test_make_up_passes_scale_to_genwire_up_and_defaults_to_the_remembered_layout() -> None:
    root = Path(__file__).resolve().parents[2]

    def up_line(*extra: str) -> str:
        shown = subprocess.run(
            ["make", "-s", "-n", "-C", str(root), "up", *extra],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return next(line for line in shown.splitlines() if "genwire up" in line)

    scaled = up_line("SCALE=gateway=2,preprocess=2,inference=2,postprocess=2")
    assert scaled.split("genwire up", 1)[1].split() == [
        "--scale",
        "gateway=2,preprocess=2,inference=2,postprocess=2",
    ]
    assert up_line().split("genwire up", 1)[1].split() == []


def test_the_stacks_kafka_client_reaches_every_service_unless_a_service_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GENWIRE_KAFKA_CLIENT=librdkafka make up``: each service gets it under its own prefix
    (which wins over the plain name a service also reads); a service's own variable wins."""
    monkeypatch.delenv("GENWIRE_KAFKA_CLIENT", raising=False)
    paths = StackPaths.from_settings(CommonSettings(home=tmp_path))
    settings = CommonSettings(home=tmp_path, kafka_client="librdkafka")
    components = build_components(paths, settings)
    services = [c for c in components.values() if isinstance(c, Service)]
    assert {c.short for c in services} >= {"gateway", "preprocess", "inference", "postprocess"}
    monkeypatch.setenv("GENWIRE_INFERENCE_KAFKA_CLIENT", "aiokafka")
    for c in services:
        env = c.environment()
        key = f"GENWIRE_{c.short.upper()}_KAFKA_CLIENT"
        if c.short == "inference":
            assert key not in env  # the service's own, inherited from the environment
        else:
            assert env[key] == "librdkafka"
    default = build_components(paths, CommonSettings(home=tmp_path))["preprocess"]
    assert default.environment()["GENWIRE_PREPROCESS_KAFKA_CLIENT"] == "aiokafka"
