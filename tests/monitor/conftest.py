"""The monitor's Kafka tests need the broker only: ``kafka`` brings up just that (through the
same ``genwire_stack.ensure_up`` as ``make up``), so a Triton or Jaeger problem elsewhere does
not stop them. The pipeline test uses the shared ``stack`` fixture."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from genwire_stack import StackError, ensure_up

from genwire.settings import CommonSettings
from tests.common.support import deleting_new_test_topics

log = logging.getLogger("genwire_stack.tests")


@pytest.fixture(scope="session")
def kafka() -> Iterator[CommonSettings]:
    """The broker up and healthy; yields the settings that reach it. The ``test.`` topics made
    meanwhile are deleted at the end (``deleting_new_test_topics``)."""
    settings = CommonSettings()
    try:
        ensure_up(["kafka"], model=False, settings=settings, out=log.info)
    except StackError as exc:
        pytest.fail(f"Kafka could not start: {exc}", pytrace=False)
    with deleting_new_test_topics(settings):
        yield settings
