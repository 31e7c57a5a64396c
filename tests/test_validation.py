"""Unit tests of the field rules every route shares (ledger/validation.py)."""

from __future__ import annotations

import pytest

from ledger import validation
from ledger.errors import ValidationFailed


@pytest.mark.parametrize(
    "name",
    ["Al\u2028ice", "Al\u2029ice", "Al\x85ice", "Bob\u200b", "Eve\r\nBcc: x@y.z", "Tab\there", "Nul\x00"],
)
def test_names_with_controls_or_line_separators_are_refused(name: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validation.name(name)
    assert caught.value.errors == {"name": "Name must not contain control characters"}


@pytest.mark.parametrize("name", ["José Ñúñez", "李小龍", "O'Brien-Smith", "  padded  "])
def test_ordinary_names_in_any_script_are_kept_trimmed(name: str) -> None:
    assert validation.name(name) == name.strip()


@pytest.mark.parametrize("value", [{"$ne": None}, ["a"], 5, True, None])
def test_an_object_id_field_refuses_anything_but_a_hex_string(value: object) -> None:
    with pytest.raises(ValidationFailed):
        validation.object_id(value, "fromAccount")


def test_a_path_segment_that_cannot_be_an_id_maps_to_none() -> None:
    assert validation.maybe_object_id("not-an-id") is None
    assert str(validation.maybe_object_id("a" * 24)) == "a" * 24
