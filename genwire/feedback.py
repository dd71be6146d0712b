"""Caller feedback on a generation: the record of ``genwire.feedback`` (keyed by request id).

A caller sends a request id plus a rating and/or a label and/or a correction (``POST
/v1/feedback``, the gRPC ``FeedbackService.Feedback`` call); the gateway checks the shape,
looks the request up (its stored result: model, version, arm) and publishes a
``FeedbackEvent``. Feedback for a request id the gateway cannot find (unknown, or its result
expired) is accepted and published with ``known=False``. ``genwire feedback export`` joins the
events with the requests' prompts and completions into a JSONL data set; the monitor counts
them per model version.
"""

from __future__ import annotations

import time
import uuid
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from genwire.events import Event
from genwire.topics import Topic

MAX_LABEL = 64
MAX_CORRECTION = 32 * 1024
MAX_COMMENT = 4096
MAX_REQUEST_ID = 256
RATING_MIN, RATING_MAX = -1.0, 5.0


class FeedbackBody(BaseModel):
    """What a caller sends (HTTP JSON body; the gRPC message has the same fields)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    request_id: str = Field(min_length=1, max_length=MAX_REQUEST_ID)
    """The id of the request the feedback is about: ``x-request-id``, or the OpenAI response's
    ``id`` (``cmpl-``/``chatcmpl-`` and the request id; the gateway looks up the id inside it;
    of a batch of prompts, prompt 0's, as ``x-request-id``)."""
    rating: float | None = Field(None, ge=RATING_MIN, le=RATING_MAX)
    """A score: thumbs (-1 down, 1 up) or stars (1..5); the unit is the caller's convention."""
    label: str | None = Field(None, min_length=1, max_length=MAX_LABEL)
    """A short category (``helpful``, ``wrong``, ``harmful``...)."""
    correction: str | None = Field(None, max_length=MAX_CORRECTION)
    """The completion the caller would have wanted (for fine-tuning)."""
    comment: str | None = Field(None, max_length=MAX_COMMENT)
    """Free text."""

    @model_validator(mode="after")
    def _something(self) -> FeedbackBody:
        if self.rating is None and not self.label and self.correction is None:
            raise ValueError("feedback needs a rating, a label or a correction")
        return self


class FeedbackEvent(Event):
    """One piece of feedback on ``genwire.feedback`` (key: the request id)."""

    TOPIC: ClassVar[Topic] = Topic.FEEDBACK
    feedback_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    received_ms: float = Field(default_factory=lambda: time.time() * 1000.0)
    rating: float | None = None
    label: str | None = None
    correction: str | None = None
    comment: str | None = None
    known: bool = False
    """The gateway found the request (its stored result): model and version are its."""
    model: str = ""
    model_version: str = ""
    arm: str = ""
    principal: str = ""
    """Who sent the feedback (the API key's name), when known."""
    entrypoint: str = ""
    """``http`` or ``grpc``."""

    @classmethod
    def of(cls, body: FeedbackBody, **server: object) -> FeedbackEvent:
        """The event of a caller's body plus what the gateway adds (``known``, model...)."""
        return cls.model_validate({**body.model_dump(), **server})
