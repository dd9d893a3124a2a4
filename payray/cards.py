"""Spotting a raw card number (PAN) in a string, so it can be refused before it is stored or forwarded.

A PAN is 13 to 19 digits whose last is a Luhn check digit; people write it grouped by spaces or dashes. A
digit run longer than 19 is not a PAN (an order number, say) and is left alone; one of 13-19 digits that fails
the Luhn check is taken for something else too (nine in ten random runs fail it).
"""

from __future__ import annotations

import re

#: Digits, single spaces or dashes between them allowed: ``4242 4242 4242 4242``, ``4000-0566-5566-5556``.
_DIGIT_RUN = re.compile(r"[0-9](?:[ -]?[0-9])*")
PAN_LENGTHS = range(13, 20)


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check: from the right, every second digit doubled (less 9 over 9), sum ≡ 0."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def contains_card_number(text: str) -> bool:
    """True when ``text`` holds a run of 13-19 digits (grouping allowed) that passes the Luhn check."""
    for run in _DIGIT_RUN.findall(text):
        digits = run.replace(" ", "").replace("-", "")
        if len(digits) in PAN_LENGTHS and luhn_valid(digits):
            return True
    return False
