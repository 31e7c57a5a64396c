"""The shapes of the API, declared once: request bodies and query strings that validate, and response bodies.

Request models validate with the rules of :mod:`ledger.validation` and nothing else: each field's validator *is*
a ``ledger.validation`` function (pydantic's own type checks never run), and :meth:`RequestModel.precheck` gives
the Node service's "missing field" message before any field is looked at. A failing rule raises
:class:`~ledger.errors.ValidationFailed`, which pydantic lets through untouched, so the first broken rule, in
field order, is the 400 the client sees: message and ``errors`` map byte for byte as before.

Each field carries its OpenAPI schema beside its rule (:func:`rule`), and response models are plain pydantic
models; ``ledger.api.contract`` turns all of them into ``components/schemas`` of ``/api/openapi.json``.
Scalar shapes shared by many fields (ids, money, timestamps) are :data:`SCALARS`, referenced by name.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from bson import ObjectId
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, model_validator

from ledger import models, money, validation
from ledger.errors import ValidationFailed
from ledger.models import ACCOUNT_STATUSES
from ledger.services import history
from ledger.services import holds as hold_service

OBJECT_ID_PATTERN = validation.OBJECT_ID_PATTERN
NO_CONTROL_CHARACTERS = "^[^\\u0000-\\u001F\\u007F]*$"
SCHEMA_REF = "#/components/schemas/{model}"


def ref(name: str, **extra: Any) -> dict[str, Any]:
    """``{"$ref": "#/components/schemas/<name>"}`` plus siblings (description, nullable)."""
    return {"$ref": SCHEMA_REF.format(model=name), **extra}


def rule(check: Callable[[Any], Any], schema: dict[str, Any]) -> tuple[PlainValidator, WithJsonSchema]:
    """A field's validation rule and its documented schema, side by side: ``Annotated[T, *rule(check, schema)]``."""
    return PlainValidator(check), WithJsonSchema(schema)


def shows(schema: dict[str, Any]) -> WithJsonSchema:
    """The documented schema of a response field."""
    return WithJsonSchema(schema)


# ----------------------------------------------------------------------------------------- scalars

SCALARS: dict[str, dict[str, Any]] = {
    "ObjectId": {"type": "string", "pattern": OBJECT_ID_PATTERN, "example": "65f1c0ffee0123456789abcd"},
    "Timestamp": {"type": "string", "format": "date-time", "example": "2026-03-01T10:00:00.000Z"},
    "Currency": {"type": "string", "enum": sorted(money.CURRENCY_EXPONENTS), "example": "INR",
                 "description": "ISO-4217 code (case-insensitive on input)."},
    "Money": {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": int(money.MAX_AMOUNT_MAJOR),
        "description": "A JSON number in major units (10.5 = ten rupees fifty). At most as many decimals as the "
                       "currency's ISO-4217 exponent (2 for INR/USD/EUR/GBP, 0 for JPY/KRW). Strings, booleans, "
                       "NaN/Infinity, zero and negatives are refused with 400.",
        "example": 1000,
    },
    "Balance": {"type": "number", "description": "Major units; only the system account may be negative.",
                "example": 1000.5},
    "AvailableBalance": {"type": "number", "description": "Balance minus what unexpired holds reserve (major "
                                                          "units).",
                         "example": 1000.5},
    "IdempotencyKey": {"type": "string", "minLength": 1, "maxLength": validation.IDEMPOTENCY_KEY_MAX_LENGTH,
                       "pattern": NO_CONTROL_CHARACTERS,
                       "description": "Scoped to the calling user; never expires. May be sent in the "
                                      "Idempotency-Key header instead.",
                       "example": "order-2026-0001"},
    "Hash": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "SHA-256, lower-case hex.",
             "example": "0" * 64},
}

Id = Annotated[str, shows(ref("ObjectId"))]
Timestamp = Annotated[str, shows(ref("Timestamp"))]
CurrencyCode = Annotated[str, shows(ref("Currency"))]
Money = Annotated[Decimal, shows(ref("Money"))]
Balance = Annotated[Decimal, shows(ref("Balance"))]
Available = Annotated[Decimal, shows(ref("AvailableBalance"))]
Key = Annotated[str, shows(ref("IdempotencyKey"))]
AccountStatus = Literal["ACTIVE", "FROZEN", "CLOSED"]


# ----------------------------------------------------------------------------------------- requests


_REQUIRED_FIELDS: dict[type[BaseModel], tuple[str, ...]] = {}


class RequestModel(BaseModel):
    """Base of request bodies: fields are validated by their ``ledger.validation`` rule, in declaration order."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @classmethod
    def precheck(cls, body: dict[str, Any]) -> None:
        """Node's ``Missing required fields: a, b`` (all the required fields named) when any is missing."""
        validation.require_fields(body, cls.required_fields())

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        known = _REQUIRED_FIELDS.get(cls)
        if known is None:  # fixed once the class is defined: worked out on the first request, not on each
            known = _REQUIRED_FIELDS[cls] = tuple(field.alias or name for name, field in cls.model_fields.items()
                                                  if field.is_required())
        return known

    @model_validator(mode="before")
    @classmethod
    def _precheck(cls, body: Any) -> Any:
        cls.precheck(body)
        return body


def _each_field_required(cls: type[RequestModel], body: dict[str, Any]) -> None:
    """The auth routes' message: ``<field> is required``, for the first one missing."""
    for field in cls.required_fields():
        if validation.is_missing(body.get(field)):
            raise ValidationFailed(f"{field} is required", errors={field: f"{field} is required"})


def _object_id(field: str) -> Callable[[Any], ObjectId]:
    return lambda value: validation.object_id(value, field)


FromAccountField = Annotated[ObjectId, *rule(_object_id("fromAccount"), ref("ObjectId"))]
ToAccountField = Annotated[ObjectId, *rule(_object_id("toAccount"), ref("ObjectId"))]
AmountField = Annotated[Decimal, *rule(validation.amount, ref("Money"))]
KeyField = Annotated[str, *rule(validation.idempotency_key, ref("IdempotencyKey"))]


class TransferRequest(RequestModel):
    fromAccount: FromAccountField
    toAccount: ToAccountField
    amount: AmountField
    idempotencyKey: KeyField


class FundingRequest(RequestModel):
    toAccount: ToAccountField
    amount: AmountField
    idempotencyKey: KeyField


def _status(value: Any) -> str:
    if value not in ACCOUNT_STATUSES:
        raise ValidationFailed(f"status must be one of {', '.join(ACCOUNT_STATUSES)}",
                               errors={"status": f"must be one of {', '.join(ACCOUNT_STATUSES)}"})
    return value


class AccountStatusRequest(RequestModel):
    """The owner may close (`CLOSED`, final; balance 0 and nothing held); the system user freezes (`FROZEN`) and
    unfreezes (`ACTIVE`) customer accounts."""

    status: Annotated[str, *rule(_status, {"type": "string", "enum": list(ACCOUNT_STATUSES)})]


def _currency(value: Any) -> str:
    return money.DEFAULT_CURRENCY if value is None else validation.currency(value)


class AccountRequest(RequestModel):
    """Optional; currency defaults to INR. Client-sent balance, status, user and _id are ignored."""

    currency: Annotated[str, *rule(_currency, {
        "type": "string", "nullable": True, "enum": [*sorted(money.CURRENCY_EXPONENTS), None],
        "description": "ISO-4217 code, case-insensitive; absent or null: INR."})] = money.DEFAULT_CURRENCY


class ReversalRequest(RequestModel):
    idempotencyKey: KeyField
    reason: Annotated[str | None, *rule(validation.reason, {"type": "string", "maxLength":
                                                             validation.REASON_MAX_LENGTH})] = None


def expires_in(value: Any) -> int:
    if value is None:
        return hold_service.DEFAULT_EXPIRY_SECONDS
    if isinstance(value, bool) or not isinstance(value, int) or not (
            hold_service.MIN_EXPIRY_SECONDS <= value <= hold_service.MAX_EXPIRY_SECONDS):
        text = (f"expiresInSeconds must be a whole number from {hold_service.MIN_EXPIRY_SECONDS:,} to "
                f"{hold_service.MAX_EXPIRY_SECONDS:,}")
        raise ValidationFailed(text, errors={"expiresInSeconds": text})
    return value


class HoldRequest(RequestModel):
    fromAccount: FromAccountField
    toAccount: ToAccountField
    amount: AmountField
    idempotencyKey: KeyField
    expiresInSeconds: Annotated[int, *rule(expires_in, {
        "type": "integer", "minimum": hold_service.MIN_EXPIRY_SECONDS,
        "maximum": hold_service.MAX_EXPIRY_SECONDS})] = hold_service.DEFAULT_EXPIRY_SECONDS


def _optional_amount(value: Any) -> Decimal | None:
    return None if value is None else validation.amount(value)


class CaptureRequest(RequestModel):
    idempotencyKey: KeyField
    amount: Annotated[Decimal | None, *rule(_optional_amount, ref(
        "Money", description="At most the held amount; absent: all."))] = None


class RegisterRequest(RequestModel):
    """Other fields (systemUser, _id, ...) are ignored."""

    @classmethod
    def precheck(cls, body: dict[str, Any]) -> None:
        _each_field_required(cls, body)

    email: Annotated[str, *rule(validation.email, {"type": "string", "format": "email", "maxLength": 254,
                                                   "description": "Trimmed and lower-cased."})]
    # The rule is 6 to 72 *bytes* of UTF-8; JSON Schema counts characters (1 to 4 bytes each), so the bounds
    # below are the character counts no valid password can fall outside of.
    password: Annotated[str, *rule(validation.password, {
        "type": "string", "minLength": -(-validation.PASSWORD_MIN_BYTES // 4),
        "maxLength": validation.PASSWORD_MAX_BYTES,
        "description": "6 to 72 bytes of UTF-8 (not characters); over 72 bytes is a 400, never a silent "
                       "truncation."})]
    name: Annotated[str, *rule(validation.name, {"type": "string", "minLength": 1,
                                                 "maxLength": validation.NAME_MAX_LENGTH})]


def _login_email(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationFailed("email must be a string", errors={"email": "email must be a string"})
    return value.strip().lower()


class LoginRequest(RequestModel):
    @classmethod
    def precheck(cls, body: dict[str, Any]) -> None:
        _each_field_required(cls, body)

    email: Annotated[str, *rule(_login_email, {"type": "string"})]
    password: Annotated[str, *rule(validation.login_password, {"type": "string"})]


# ----------------------------------------------------------------------------------------- path parameters


@dataclass(frozen=True)
class PathParameter:
    """A path segment: its documented schema and the rule that reads it (``contract.path(name)``)."""

    schema: dict[str, Any]
    parse: Callable[[str], Any]


def _id_or_invalid(what: str) -> Callable[[str], ObjectId]:
    def parse(value: str) -> ObjectId:
        parsed = validation.maybe_object_id(value)
        if parsed is None:
            raise ValidationFailed(f"Invalid {what} id", errors={"id": "must be a 24-character hexadecimal id"})
        return parsed
    return parse


def _id_named(field: str) -> Callable[[str], ObjectId]:
    return lambda value: validation.path_object_id(value, field)


#: An id that is None when malformed: the route answers its 404, as the Node service did.
ID_OR_NOT_FOUND = PathParameter(ref("ObjectId"), validation.maybe_object_id)
#: Part-two routes: a malformed id is a 400 naming the field ...
ACCOUNT_ID_FIELD = PathParameter(ref("ObjectId"), _id_named("accountId"))
TRANSACTION_ID_FIELD = PathParameter(ref("ObjectId"), _id_named("transactionId"))
#: ... or ``Invalid <what> id``.
ACCOUNT_ID = PathParameter(ref("ObjectId"), _id_or_invalid("account"))
HOLD_ID = PathParameter(ref("ObjectId"), _id_or_invalid("hold"))
TRANSACTION_ID = PathParameter(ref("ObjectId"), _id_or_invalid("transaction"))


# ----------------------------------------------------------------------------------------- query strings


class QueryModel(RequestModel):
    """Base of query strings: every field is validated, present or not (an absent one is ``None``); a field
    without a default is a required parameter."""

    @classmethod
    def precheck(cls, body: dict[str, Any]) -> None:
        return None


class EntriesQuery(QueryModel):
    limit: Annotated[int, *rule(
        lambda value: validation.page_limit(value, history.DEFAULT_PAGE_SIZE, history.MAX_PAGE_SIZE),
        {"type": "integer", "minimum": 1, "maximum": history.MAX_PAGE_SIZE})] = history.DEFAULT_PAGE_SIZE
    cursor: Annotated[str | None, *rule(lambda value: value, {
        "type": "string",
        "description": "The previous page's `nextCursor`; any other value (or another account's) is a 400."})] = None


class StatementQuery(QueryModel):
    from_: Annotated[date, Field(alias="from"), *rule(lambda value: validation.calendar_date(value, "from"),
                                                      {"type": "string", "format": "date"})]
    to: Annotated[date, *rule(lambda value: validation.calendar_date(value, "to"), {
        "type": "string", "format": "date", "description": "Inclusive; from <= to, at most 366 days."})]


class BalanceQuery(QueryModel):
    at: Annotated[datetime | None, *rule(lambda value: None if value is None else validation.instant(value), {
        "type": "string", "format": "date-time",
        "description": "An ISO-8601 instant with its zone (`2026-03-01T10:00:00.000Z`): the balance right after "
                       "the last entry at or before it (0 before the first). Malformed or in the future: "
                       "400."})] = None


class AssetQuery(QueryModel):
    v: Annotated[str | None, *rule(lambda value: value, {
        "type": "string",
        "description": "The file's content hash (its ETag). When it matches, the answer is `Cache-Control: public, "
                       "max-age=31536000, immutable`; otherwise `no-cache`."})] = None


# ----------------------------------------------------------------------------------------- responses


class Shape(BaseModel):
    """Base of response bodies (documentation only: responses are built by the serializers)."""

    model_config = ConfigDict(populate_by_name=True)


class Closed(Shape):
    """A response body with exactly the documented fields."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Error(Closed):
    """The one envelope of every error."""

    message: Annotated[str, Field(json_schema_extra={"example": "Account not found"})]
    status: Literal["failed"]
    errors: Annotated[dict[str, str], Field(description="Per-field reasons, when a field is at fault.")] = None


class User(Closed):
    id: Annotated[Id, Field(alias="_id")]
    email: Annotated[str, shows({"type": "string", "format": "email"})]
    name: str


class Session(Closed):
    user: User
    token: Annotated[str, Field(description="HS256 JWT")]


class Message(Closed):
    message: str


class Account(Closed):
    id: Annotated[Id, Field(alias="_id")]
    user: Id
    status: AccountStatus
    currency: CurrencyCode
    balance: Balance
    availableBalance: Available
    createdAt: Timestamp
    updatedAt: Timestamp


class AccountResponse(Closed):
    account: Account


class AccountList(Closed):
    accounts: list[Account]


class AccountStatusView(Closed):
    id: Annotated[Id, Field(alias="_id")]
    status: AccountStatus
    updatedAt: Timestamp


class AccountStatusResponse(Closed):
    account: AccountStatusView


class BalanceResponse(Closed):
    """`{accountId, balance, availableBalance}`, or with `?at=`: `{accountId, balance, at}`."""

    accountId: Id
    balance: Balance
    availableBalance: Available = None
    at: Annotated[str, shows(ref("Timestamp", description="Present when `?at=` was given: the balance right after "
                                                          "the last entry at or before it."))] = None


class Transaction(Closed):
    id: Annotated[Id, Field(alias="_id")]
    fromAccount: Id
    toAccount: Id
    amount: Money
    currency: CurrencyCode = None
    kind: Annotated[str, shows({"type": "string", "enum": list(models.TRANSACTION_KINDS)})] = None
    status: Literal["PENDING", "COMPLETED", "FAILED", "REVERSED"]
    idempotencyKey: Key
    createdAt: Timestamp
    updatedAt: Timestamp
    reverses: Annotated[str, shows(ref("ObjectId",
                                       description="On a REVERSAL: the transaction it reverses."))] = None
    reversedBy: Annotated[str, shows(ref("ObjectId", description="On a REVERSED transaction: its reversal."))] = None


class TransactionResponse(Closed):
    message: str
    transaction: Transaction


class TransactionEnvelope(Closed):
    transaction: Transaction


class Hold(Closed):
    id: Annotated[Id, Field(alias="_id")]
    fromAccount: Id
    toAccount: Id
    amount: Money
    currency: CurrencyCode
    status: Annotated[Literal["ACTIVE", "CAPTURED", "VOIDED", "EXPIRED"],
                      Field(description="An ACTIVE hold past expiresAt is EXPIRED from that instant.")]
    expiresAt: Timestamp
    createdAt: Timestamp
    updatedAt: Timestamp
    capturedAmount: Money = None


class HoldResponse(Closed):
    hold: Hold


class HoldList(Closed):
    holds: list[Hold]


class CaptureResponse(Closed):
    hold: Hold
    transaction: Transaction


_NullableHash = Annotated[str | None, shows(ref("Hash", nullable=True))]


class Entry(Closed):
    id: Annotated[Id, Field(alias="_id")]
    account: Id
    type: Literal["DEBIT", "CREDIT"]
    amount: Money
    currency: CurrencyCode
    balanceAfter: Balance
    seq: Annotated[int, Field(ge=1, description="The account's entry number: 1, 2, 3, ...")]
    transaction: Id
    counterparty: Annotated[str | None, shows(ref("ObjectId", nullable=True, description="The other account."))]
    kind: Literal["TRANSFER", "INITIAL_FUNDS", "REVERSAL", "HOLD_CAPTURE"] | None
    createdAt: Timestamp
    prevHash: Annotated[str | None, shows(ref(
        "Hash", nullable=True,
        description="The previous entry's hash on this account (64 zeros for seq 1); null only on entries written "
                    "before the chain existed, until backfilled."))] = None
    hash: Annotated[str | None, shows(ref("Hash", nullable=True,
                                          description="SHA-256 of the canonical line (docs/hash-chain.md)."))] = None


class EntriesPage(Closed):
    entries: list[Entry]
    nextCursor: Annotated[str | None, Field(description="Pass as `cursor` for the next (older) page; null on the "
                                                        "last page.")]


class Statement(Closed):
    account: Id
    currency: CurrencyCode
    from_: Annotated[date, Field(alias="from")]
    to: date
    openingBalance: Balance
    closingBalance: Balance
    totalDebits: Annotated[Decimal, shows({"type": "number", "minimum": 0})]
    totalCredits: Annotated[Decimal, shows({"type": "number", "minimum": 0})]
    openingHash: _NullableHash
    closingHash: _NullableHash
    entries: Annotated[list[Entry], Field(description="Oldest first.")]


class VerifyProblem(Closed):
    check: Annotated[str, Field(json_schema_extra={"example": "hash"})]
    account: Annotated[str | None, shows(ref("ObjectId", nullable=True))]
    seq: int | None
    transaction: Annotated[str | None, shows(ref("ObjectId", nullable=True))]
    message: str


class VerifyReport(Closed):
    ok: bool
    checked: dict[str, int]
    problemCount: Annotated[int, Field(ge=0)]
    problems: Annotated[list[VerifyProblem], Field(max_length=100, description="The first 100 problems.")]


class Health(Shape):
    status: Literal["ok"]


class Readiness(Shape):
    status: Literal["ready", "unavailable"]
    engine: Literal["embedded", "mongodb"]
    replicaSet: str = None
    error: str = None
    missingIndexes: list[str] = None
