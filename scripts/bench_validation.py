"""Per-request cost of validating a transfer body: the hand-written checks vs a pydantic v2 model vs marshmallow.

Each candidate runs the same rules (``ledger.validation``: Node's ``Missing required fields`` message first, then
each field in order) so the messages are byte-identical; the script checks that on a set of bad bodies before
it times anything, then prints microseconds per validation (best of 5 runs). marshmallow is optional: the
candidate is skipped, with a line saying so, when it is not installed.

    .venv/bin/python scripts/bench_validation.py
"""

from __future__ import annotations

import contextlib
import sys
import timeit
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel, PlainValidator, model_validator  # noqa: E402

from ledger import validation  # noqa: E402
from ledger.errors import ValidationFailed  # noqa: E402

FIELDS = ("fromAccount", "toAccount", "amount", "idempotencyKey")
GOOD = {"fromAccount": "65f1c0ffee0123456789abcd", "toAccount": "65f1c0ffee0123456789abce",
        "amount": Decimal("10.50"), "idempotencyKey": "order-2026-0001"}
BAD = [{}, {**GOOD, "amount": "10"}, {**GOOD, "fromAccount": {"$ne": None}}, {**GOOD, "amount": Decimal("-1")},
       {**GOOD, "idempotencyKey": "a\x00b"}, {**GOOD, "toAccount": ""}, {**GOOD, "amount": Decimal("1.001")}]


def hand_written(body: dict[str, Any]) -> tuple:
    validation.require_fields(body, FIELDS)
    return (validation.object_id(body["fromAccount"], "fromAccount"),
            validation.object_id(body["toAccount"], "toAccount"),
            validation.amount(body["amount"]), validation.idempotency_key(body["idempotencyKey"]))


class TransferModel(BaseModel):
    fromAccount: Annotated[Any, PlainValidator(lambda v: validation.object_id(v, "fromAccount"))]
    toAccount: Annotated[Any, PlainValidator(lambda v: validation.object_id(v, "toAccount"))]
    amount: Annotated[Any, PlainValidator(validation.amount)]
    idempotencyKey: Annotated[Any, PlainValidator(validation.idempotency_key)]

    @model_validator(mode="before")
    @classmethod
    def _required(cls, body: Any) -> Any:
        validation.require_fields(body, FIELDS)
        return body


def with_pydantic(body: dict[str, Any]) -> TransferModel:
    return TransferModel.model_validate(body)


def marshmallow_candidate():
    try:
        import marshmallow
    except ImportError:
        return None

    class Rule(marshmallow.fields.Field):
        def __init__(self, check, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.check = check

        def _deserialize(self, value, attr, data, **kwargs):
            return self.check(value)

    class TransferSchema(marshmallow.Schema):
        class Meta:
            unknown = marshmallow.EXCLUDE

        fromAccount = Rule(lambda v: validation.object_id(v, "fromAccount"), required=True)
        toAccount = Rule(lambda v: validation.object_id(v, "toAccount"), required=True)
        amount = Rule(validation.amount, required=True)
        idempotencyKey = Rule(validation.idempotency_key, required=True)

        @marshmallow.pre_load
        def _required(self, body, **kwargs):
            validation.require_fields(body, FIELDS)
            return body

    schema = TransferSchema()
    return schema.load


def outcome(check, body) -> tuple[str, Any]:
    try:
        check(body)
    except ValidationFailed as exc:
        return exc.message, exc.errors
    return "ok", None


def main() -> None:
    candidates = {"hand-written (ledger.validation)": hand_written, "pydantic v2 model": with_pydantic}
    loader = marshmallow_candidate()
    if loader is None:
        print("marshmallow: not installed, skipped")
    else:
        candidates["marshmallow schema"] = loader
    for name, check in candidates.items():  # fidelity first: the same message and errors map for every body
        for body in BAD:
            assert outcome(check, body) == outcome(hand_written, body), (name, body)
    print(f"{'candidate':36} {'valid body':>12} {'invalid body':>13}")
    for name, check in candidates.items():
        figures = []
        for body in (GOOD, BAD[1]):
            runs = 20_000

            def once(check=check, body=body):
                with contextlib.suppress(ValidationFailed):
                    check(body)
            best = min(timeit.repeat(once, number=runs, repeat=5))
            figures.append(best / runs * 1e6)
        print(f"{name:36} {figures[0]:10.2f}µs {figures[1]:11.2f}µs")


if __name__ == "__main__":
    main()
