"""Exact money: parsing wire amounts, minor units, rendering for JSON, messages and emails."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import money
from ledger.money import InvalidAmount, UnsupportedCurrency

TWO_DECIMAL = [c for c, e in money.CURRENCY_EXPONENTS.items() if e == 2]
ZERO_DECIMAL = [c for c, e in money.CURRENCY_EXPONENTS.items() if e == 0]


# ------------------------------------------------------------------------------------------ currencies


@pytest.mark.parametrize(("raw", "code"), [("INR", "INR"), ("usd", "USD"), (" eur ", "EUR"), ("Jpy", "JPY")])
def test_supported_currency_codes_are_normalized_to_upper_case(raw, code):
    assert money.normalize_currency(raw) == code


@pytest.mark.parametrize("raw", ["", "US", "USDT", "12A", "XXX", "ZZZ", 840, None, ["USD"], {"$ne": "USD"}])
def test_unknown_or_malformed_currencies_are_refused(raw):
    with pytest.raises(UnsupportedCurrency):
        money.normalize_currency(raw)


def test_the_default_currency_is_inr_with_two_decimals():
    assert money.DEFAULT_CURRENCY == "INR"
    assert money.CURRENCY_EXPONENTS["INR"] == 2
    assert money.CURRENCY_EXPONENTS["JPY"] == 0


# ------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("raw", "expected"), [
    (1, Decimal(1)),
    (1000, Decimal(1000)),
    (Decimal("10.5"), Decimal("10.5")),
    (Decimal("0.01"), Decimal("0.01")),
    (Decimal("10.50"), Decimal("10.5")),
    (Decimal("1.000"), Decimal(1)),  # trailing zeros are not extra decimals
    (Decimal("1E+2"), Decimal(100)),
    (1_000_000_000_000, Decimal(1_000_000_000_000)),
    (Decimal("999999999999.99"), Decimal("999999999999.99")),
    (Decimal("1." + "0" * 40), Decimal(1)),  # more digits than the decimal context, all of them zeros
])
def test_valid_amounts_parse_to_the_exact_decimal(raw, expected):
    assert money.parse_amount(raw) == expected


@pytest.mark.parametrize("raw", [
    0, -1, Decimal(0), Decimal("-0"), Decimal("-0.01"), Decimal("0E-10"),
    10.5,  # a float never reaches a balance: the request parser yields Decimal, anything else is a bug
    "10", "10.5", True, False, None, [1], {"amount": 1},
    Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity"),
    Decimal("1E+400"), Decimal("1E-400"), Decimal("1.005"), Decimal("0.001"),
    # more significant digits than the 28 of the decimal context: must not be rounded to 0.10 or 12.34
    Decimal("0.1000000000000000000000000000001"), Decimal("12.340000000000000000000000000000000001"),
    1_000_000_000_001, Decimal("1000000000000.01"), 10**30,
])
def test_invalid_amounts_are_refused(raw):
    with pytest.raises(InvalidAmount):
        money.parse_amount(raw)


# ----------------------------------------------------------------------------------- minor units


@pytest.mark.parametrize(("amount", "currency", "minor"), [
    (Decimal("10.5"), "INR", 1050),
    (Decimal("0.01"), "USD", 1),
    (Decimal("0.1"), "EUR", 10),
    (Decimal(1_000_000_000_000), "INR", 100_000_000_000_000),
    (Decimal(150), "JPY", 150),
    (Decimal("1E+2"), "JPY", 100),
    (Decimal("999999999999.99" + "0" * 30), "INR", 99_999_999_999_999),
])
def test_amounts_convert_to_integer_minor_units_exactly(amount, currency, minor):
    result = money.to_minor(amount, currency)
    assert result == minor
    assert type(result) is int


@pytest.mark.parametrize(("amount", "currency"), [(Decimal("1.5"), "JPY"), (Decimal("0.01"), "KRW")])
def test_decimals_beyond_the_currency_exponent_are_refused(amount, currency):
    with pytest.raises(InvalidAmount, match=currency):
        money.to_minor(amount, currency)


@pytest.mark.parametrize(("minor", "currency", "major"), [
    (1050, "INR", Decimal("10.5")),
    (1, "USD", Decimal("0.01")),
    (100, "INR", 1),
    (0, "INR", 0),
    (-1050, "INR", Decimal("-10.5")),
    (-1000, "INR", -10),
    (150, "JPY", 150),
    (100_000_000_000_000, "INR", 1_000_000_000_000),
])
def test_minor_units_render_as_exact_major_units(minor, currency, major):
    result = money.to_major(minor, currency)
    assert result == major
    assert isinstance(result, int) == isinstance(major, int)  # whole amounts are ints: 100, not 100.00


def test_an_unknown_currency_renders_with_two_decimals():
    assert money.to_major(1050, "XYZ") == Decimal("10.5")


@settings(max_examples=200, deadline=None)
@given(minor=st.integers(min_value=1, max_value=100_000_000_000_000), currency=st.sampled_from(TWO_DECIMAL))
def test_rendering_then_parsing_gives_back_the_same_minor_units(minor, currency):
    text = money.format_plain(minor, currency)
    assert "E" not in text.upper()
    assert money.to_minor(money.parse_amount(Decimal(text)), currency) == minor


@settings(max_examples=100, deadline=None)
@given(minor=st.integers(min_value=1, max_value=1_000_000_000_000), currency=st.sampled_from(ZERO_DECIMAL))
def test_zero_decimal_currencies_round_trip_whole_units(minor, currency):
    assert money.to_major(minor, currency) == minor
    assert money.to_minor(money.parse_amount(minor), currency) == minor


# -------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(("minor", "currency", "text"), [
    (1050, "INR", "10.5"),
    (1000, "INR", "10"),
    (0, "INR", "0"),
    (1, "USD", "0.01"),
    (123456789, "INR", "1234567.89"),
    (100_000_000_000_000, "INR", "1000000000000"),
    (150, "JPY", "150"),
    (-250, "INR", "-2.5"),
])
def test_plain_format_prints_numbers_as_the_node_messages_did(minor, currency, text):
    assert money.format_plain(minor, currency) == text


@pytest.mark.parametrize(("minor", "currency", "text"), [
    (123450, "INR", "INR 1,234.50"),
    (5, "INR", "INR 0.05"),
    (0, "USD", "USD 0.00"),
    (100_000_000_000_000, "EUR", "EUR 1,000,000,000,000.00"),
    (123456, "JPY", "JPY 123,456"),
    (-123450, "INR", "INR -1,234.50"),
])
def test_money_format_for_people_has_the_code_grouping_and_all_decimals(minor, currency, text):
    assert money.format_money(minor, currency) == text


@settings(max_examples=500, deadline=None)
@given(minor=st.integers(min_value=-(10**20), max_value=10**20) | st.integers(-1000, 1000),
       currency=st.sampled_from([*money.CURRENCY_EXPONENTS, "XXX"]))
def test_money_format_for_people_is_the_decimal_formatting_of_the_amount(minor: int, currency: str) -> None:
    """Integer arithmetic writes what formatting the Decimal amount wrote, for every currency (and an unknown
    code, shown with two decimals) and either sign, up to 10^20 minor units (amounts are capped at 10^12 major
    units; past 28 digits the Decimal formatting rounded, the integers do not)."""
    exponent = money.CURRENCY_EXPONENTS.get(currency, 2)
    sign = "-" if minor < 0 else ""
    major = Decimal(abs(minor)).scaleb(-exponent)
    assert money.format_money(minor, currency) == f"{currency} {sign}{major:,.{exponent}f}"
