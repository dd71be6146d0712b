"""``python -m genwire_bench.rejoin``: a librdkafka group after a Kafka outage, on a private
broker; what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from genwire_bench import rejoin

from genwire.settings import CommonSettings

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--variants", "plain,static"], "--variants"),
        (["--variants", ","], "--variants"),
        (["--outage-s", "5", "--session-ms", "10000"], "must outlast"),
    ],
)
def test_what_it_refuses(argv: list[str], why: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        rejoin.main(argv)
    assert exit_.value.code == 2 and why in capsys.readouterr().err


def test_genwires_consumer_leaves_its_lost_member_after_an_outage(
    infra: CommonSettings, tmp_path: Path
) -> None:
    """The outage outlasts the session, so librdkafka rejoins with a new member id; genwire's
    RdConsumer has the coordinator drop the old one itself (it answers ``left``: it still held
    it) and reads again."""
    out = tmp_path / "rejoin.json"
    argv = ["--variants", "genwire", "--outage-s", "8", "--session-ms", "6000", "--settle-s", "8"]
    assert rejoin.main([*argv, "--home", str(tmp_path), "--json", str(out)]) == 0
    (round_,) = json.loads(out.read_text())
    assert round_["variant"] == "genwire" and round_["member_reset"] is True
    assert round_["leave"] == "left" and round_["leave_s"] is not None
    assert round_["assigned_s"] is not None and round_["first_record_s"] is not None


def test_an_assignment_before_the_start_call_returned_is_counted() -> None:
    """On a loaded machine the group may rejoin before ``ensure_up`` saw the broker answer:
    that assignment is reported (negative), not missing; one from before the restart is not
    this round's."""
    restarted, back = 100.0, 103.0
    assert rejoin.assigned_since([99.0, 102.5, 104.0], restarted, back) == -0.5
    assert rejoin.assigned_since([99.0, 104.0], restarted, back) == 1.0
    assert rejoin.assigned_since([99.0], restarted, back) is None
