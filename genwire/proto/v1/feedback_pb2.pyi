from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class FeedbackRequest(_message.Message):
    __slots__ = ("request_id", "rating", "label", "correction", "comment")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    rating: float
    label: str
    correction: str
    comment: str
    def __init__(self, request_id: _Optional[str] = ..., rating: _Optional[float] = ..., label: _Optional[str] = ..., correction: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class FeedbackReply(_message.Message):
    __slots__ = ("feedback_id", "request_id", "known", "model", "model_version")
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    request_id: str
    known: bool
    model: str
    model_version: str
    def __init__(self, feedback_id: _Optional[str] = ..., request_id: _Optional[str] = ..., known: _Optional[bool] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...
