"""An ``EventConsumer`` of one partition over a stand-in for its Kafka client: no broker."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from pydantic import BaseModel

from genwire.kafka import EventConsumer, EventProducer

TP = TopicPartition("t", 0)


class Rec(BaseModel):
    request_id: str


def offline_consumer(handler: Any, client: object, **options: Any) -> EventConsumer[Any]:
    """An ``EventConsumer`` of ``TP`` in group ``g``, assigned ``TP``, whose client is
    ``client`` (its producer is never started)."""
    consumer: EventConsumer[Any] = EventConsumer(
        topic=TP.topic,
        group_id="g",
        model=Rec,
        handler=handler,
        producer=EventProducer("k:9092"),
        bootstrap_servers="k:9092",
        stage="test",
        **options,
    )
    consumer._consumer = client  # type: ignore[assignment]
    consumer._assigned = {TP}
    return consumer
