"""Control characters in parameters: none in names, only tab, LF and CR in free text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payray.text import describe, forbidden_character


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x1f", "\x7f", "\x85", "\x9f", "\ud800", "\udfff"])
def test_control_characters_are_refused_everywhere(char: str) -> None:
    assert forbidden_character(f"a{char}b", free_text=True) == char
    assert forbidden_character(f"a{char}b", free_text=False) == char


@pytest.mark.parametrize("char", ["\t", "\n", "\r"])
def test_whitespace_controls_are_free_text_only(char: str) -> None:
    assert forbidden_character(f"a{char}b", free_text=True) is None
    assert forbidden_character(f"a{char}b", free_text=False) == char


@given(st.text(st.characters(exclude_categories=("Cc", "Cs"))))
def test_printable_text_passes(value: str) -> None:
    assert forbidden_character(value, free_text=False) is None


@given(st.text(st.characters(categories=("Cc",)), min_size=1))
def test_every_control_character_is_seen_in_names(value: str) -> None:
    assert forbidden_character(value, free_text=False) == value[0]


def test_a_character_is_named_without_printing_it() -> None:
    assert describe("\x00") == "U+0000" and describe("\x1b") == "U+001B"
