"""Postprocess: a shadow copy's result goes to genwire.shadow only; the caller's is untouched."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord
from genwire_postprocess.app import failure_outputs
from genwire_postprocess.handlers import Postprocessor
from stages.test_postprocess import TEXT, FakeStore, _chunks
from tokenizers import Tokenizer

from genwire.errors import PermanentError
from genwire.events import GenerationResult, ShadowResult, dump
from genwire.tokenization import AssetStore
from genwire.topics import Topic


async def test_shadow_result_is_kept_apart(assets: AssetStore, tokenizer: Tokenizer) -> None:
    store = FakeStore()
    counted: list[GenerationResult] = []
    post = Postprocessor(assets, store, on_result=counted.append)
    ids = tokenizer.encode(TEXT).ids
    caller = [c.model_copy(update={"arm": "champion"}) for c in _chunks(ids, "r", stream=True)]
    shadow = [
        c.model_copy(update={"arm": "shadow", "shadow": True, "model_version": "1"})
        for c in _chunks(ids, "r", stream=True)
    ]
    out_shadow = [e for c in shadow for e in await post.handle(c)]
    out_caller = [e for c in caller for e in await post.handle(c)]
    (result,) = out_shadow  # no token events, one result
    assert type(result) is ShadowResult and result.TOPIC == Topic.SHADOW
    assert (result.request_id, result.arm, result.model_version) == ("r", "shadow", "1")
    assert result.text == TEXT
    stored = store.data["r"]
    assert type(stored) is GenerationResult and stored.arm == "champion"
    assert stored.model_version == "2"
    assert counted == [stored]  # only the caller's result counts
    assert out_caller[-1] is stored


def test_a_failed_shadow_chunk_owes_nobody_an_answer() -> None:
    (final,) = _chunks([1, 2], "r", stream=False)
    err = PermanentError("boom", code="internal")

    def record(chunk_shadow: bool) -> ConsumerRecord[bytes, bytes]:
        value = dump(final.model_copy(update={"shadow": chunk_shadow}))
        return ConsumerRecord(
            Topic.GENERATIONS, 0, 0, 0, 0, b"r", value, None, len(b"r"), len(value), []
        )

    assert failure_outputs(record(True), err) == []
    assert failure_outputs(record(False), err)  # the caller's own chunk does
