"""Events round-trip through their Kafka encoding and name their topics."""

import pytest
from pydantic import ValidationError

from genwire.events import GenerationChunk, GenerationResult, PreparedRequest, Sampling, dump, load
from genwire.topics import TOPIC_SPECS, Topic


def test_prepared_request_round_trips_and_is_keyed_by_request_id() -> None:
    event = PreparedRequest(
        request_id="r-1", model="m", input_ids=[1, 2, 3], sampling=Sampling(seed=7, stop=["\n"])
    )
    raw = dump(event)
    assert load(PreparedRequest, raw) == event
    assert event.key() == b"r-1"
    assert event.TOPIC is Topic.PREPARED


def test_events_reject_unknown_fields() -> None:
    raw = b'{"request_id": "r", "index": 0, "surprise": 1}'
    with pytest.raises(ValidationError):
        load(GenerationChunk, raw)


def test_result_and_every_topic_has_a_spec() -> None:
    assert GenerationResult.TOPIC is Topic.RESULTS
    assert {spec.name for spec in TOPIC_SPECS} == {t.value for t in Topic}
