"""Exact money: currencies, parsing wire amounts, rendering minor units.

On the wire an amount is a JSON number in major units (``1000``, ``10.5``), as the Node clients send it. The
request parser reads JSON numbers as ``int`` or ``Decimal`` (never ``float``), so ``0.1`` is exactly one tenth.
In storage every amount and balance is an integer count of minor units (paise, cents); floats never touch a
balance. Rendering turns minor units back into an exact ``Decimal`` that the JSON encoder writes as a number.
"""

from __future__ import annotations

from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, Inexact

# ISO-4217 code -> minor-unit exponent. A small table of supported currencies.
CURRENCY_EXPONENTS: dict[str, int] = {
    "INR": 2,
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "AUD": 2,
    "CAD": 2,
    "CHF": 2,
    "SGD": 2,
    "AED": 2,
    "CNY": 2,
    "JPY": 0,
    "KRW": 0,
}
DEFAULT_CURRENCY = "INR"
MAX_AMOUNT_MAJOR = Decimal(1_000_000_000_000)
MAX_DECIMALS = max(CURRENCY_EXPONENTS.values())
# Arithmetic that never rounds: an amount is converted exactly or not at all.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact])


class InvalidAmount(ValueError):
    """The amount is not a positive JSON number with an allowed number of decimals."""


class UnsupportedCurrency(ValueError):
    """The currency is not a supported ISO-4217 code."""


def normalize_currency(value: object) -> str:
    """Return the upper-case ISO-4217 code for ``value``, or raise :class:`UnsupportedCurrency`."""
    if not isinstance(value, str) or len(value.strip()) != 3 or not value.strip().isalpha():
        raise UnsupportedCurrency("currency must be a 3-letter ISO-4217 code")
    code = value.strip().upper()
    if code not in CURRENCY_EXPONENTS:
        supported = ", ".join(sorted(CURRENCY_EXPONENTS))
        raise UnsupportedCurrency(f"currency {code} is not supported (supported: {supported})")
    return code


def parse_amount(value: object) -> Decimal:
    """Validate a wire amount (currency not yet known) and return it as an exact ``Decimal``.

    Accepts JSON numbers only: ``int`` or ``Decimal`` as produced by the request parser. Rejects booleans,
    strings, objects, NaN and infinities, zero and negatives, more than 1,000,000,000,000, and more decimals
    than any supported currency allows.
    """
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise InvalidAmount("amount must be a JSON number")
    amount = Decimal(value)
    if not amount.is_finite():
        raise InvalidAmount("amount must be a finite number")
    if amount <= 0:
        raise InvalidAmount("amount must be greater than 0")
    if amount > MAX_AMOUNT_MAJOR:
        raise InvalidAmount("amount must be at most 1000000000000")
    if _decimals(amount) > MAX_DECIMALS:
        raise InvalidAmount(f"amount must have at most {MAX_DECIMALS} decimal places")
    return amount


def to_minor(amount: Decimal, currency: str) -> int:
    """Convert a validated major-unit amount to integer minor units of ``currency``, exactly."""
    exponent = CURRENCY_EXPONENTS[currency]
    if _decimals(amount) > exponent:
        raise InvalidAmount(f"amount must have at most {exponent} decimal places for {currency}")
    return int(amount.scaleb(exponent, context=_EXACT))


def to_major(minor: int, currency: str) -> Decimal | int:
    """Exact major-unit value of ``minor`` units: an ``int`` when whole, else a ``Decimal``."""
    exponent = CURRENCY_EXPONENTS.get(currency, 2)
    if exponent == 0 or minor % (10**exponent) == 0:
        return minor // (10**exponent)
    return Decimal(minor).scaleb(-exponent).normalize()


def format_plain(minor: int, currency: str) -> str:
    """``1050, INR`` -> ``10.5``: the number as the Node service printed it in messages."""
    value = to_major(minor, currency)
    return str(value) if isinstance(value, int) else format(value, "f")


def format_money(minor: int, currency: str) -> str:
    """``123450, INR`` -> ``INR 1,234.50``: for people (emails)."""
    exponent = CURRENCY_EXPONENTS.get(currency, 2)
    sign = "-" if minor < 0 else ""
    if not exponent:
        return f"{currency} {sign}{abs(minor):,}"
    whole, fraction = divmod(abs(minor), 10**exponent)  # integers throughout: exact, and no Decimal per call
    return f"{currency} {sign}{whole:,}.{fraction:0{exponent}d}"


def _decimals(amount: Decimal) -> int:
    """Decimal places that carry a non-zero digit, counted exactly.

    ``Decimal.normalize`` would first round to the context's 28 digits, so ``0.1000000000000000000000000000001``
    would count as one decimal place and be charged as ``0.10``; reading the digits never rounds.
    """
    _, digits, exponent = amount.as_tuple()
    if not isinstance(exponent, int):
        raise InvalidAmount("amount must be a finite number")
    significant = "".join(map(str, digits)).rstrip("0")
    if not significant:  # zero
        return 0
    trailing_zeros = len(digits) - len(significant)
    return max(0, -(exponent + trailing_zeros))
