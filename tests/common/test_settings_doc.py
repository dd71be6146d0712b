"""docs/settings.md is what the settings classes say, and says something for every setting."""

from __future__ import annotations

import re
from pathlib import Path

from genwire_cli import settings_doc

DOC = Path(__file__).parents[2] / "docs" / "settings.md"


def test_the_page_is_generated_from_the_classes() -> None:
    # Regenerate with: python -m genwire_cli.settings_doc > docs/settings.md
    assert DOC.read_text() == settings_doc.render()


def test_every_setting_has_a_row_that_says_what_it_does() -> None:
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| `GENWIRE_")]
    variables = [re.match(r"\| `([^`]+)`", row).group(1) for row in rows]  # type: ignore[union-attr]
    assert len(variables) == len(set(variables))
    for short, cls in settings_doc.SERVICES.items():
        own = f"GENWIRE_{short.upper()}_"
        for name in cls.model_fields:
            shared = f"GENWIRE_{name.upper()}"
            stage = f"GENWIRE_<SERVICE>_{name.upper()}"
            assert {own + name.upper(), shared, stage} & set(variables), (short, name)
    empty = [row for row in rows if row.rstrip().endswith("|  |")]
    assert not empty, empty  # a field without a description
