"""Kafka transport: the traced producer, the consumer loop, topic admin."""

from genwire.kafka.admin import ensure_topics
from genwire.kafka.consumer import EventConsumer
from genwire.kafka.producer import EventProducer

__all__ = ["EventConsumer", "EventProducer", "ensure_topics"]
