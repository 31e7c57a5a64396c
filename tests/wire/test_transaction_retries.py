"""Every retry path of a transfer and a funding, injected on the wire at every step (docs/wire-protocol.md).

* ``TransientTransactionError`` (a ``WriteConflict``, a ``NoSuchTransaction``, a network error, which the driver
  labels transient inside a transaction) on any command → ``abortTransaction``, then the whole transaction
  again under the same session with the next ``txnNumber``;
* ``UnknownTransactionCommitResult`` on the commit (a ``wtimeout``, a network error the driver's own retry did
  not cure) → the commit alone again, same ``txnNumber``, still ``majority``;
* ``MaxTimeMSExpired`` and a retry budget running out → 503 with ``Retry-After``, and the same-key retry then
  completes the transfer, or replays it when the first commit did land: exactly one transfer either way.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest

from tests.wire.bank import (
    ABORT,
    REPLAY_READ,
    TRANSFER,
    Bank,
    Step,
    attempt_of,
    check_sessions,
    duplicate_key,
    serve_abort,
    serve_attempt,
    serve_auth,
)
from tests.wire.replset import (
    MAX_TIME_EXPIRED,
    NO_SUCH_TRANSACTION,
    WAIT,
    WRITE_CONFLICT,
    Received,
    ReplicaSet,
    http,
)

ATTEMPT = TRANSFER[2:]  # find accounts ... commitTransaction
ABORTED = Step("abortTransaction", None, ABORT)
COMMIT_STEP = 5

TRANSIENT: dict[str, Callable[[Received], Any]] = {
    "WriteConflict": lambda got: got.error(WRITE_CONFLICT),
    "NoSuchTransaction": lambda got: got.error(NO_SUCH_TRANSACTION),
    "network error": lambda got: got.hangup(),
}
WTIMEOUT = {"code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out",
            "errInfo": {"wtimeout": True}}

KINDS = ("transfer", "funding")


def counted(name: str, **labels: str) -> float:
    """A counter of ``ledger.metrics`` as /metrics would show it (0 before its first increment)."""
    from ledger import metrics

    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def send(app, bank: Bank, kind: str, key: str) -> Future:
    if kind == "transfer":
        return http(app, "POST", "/api/transactions", bank.customer_token, json=bank.transfer_body(key))
    return http(app, "POST", "/api/transactions/system/initial-funds", bank.system_token, json=bank.funding_body(key))


def auth(replica_set: ReplicaSet, bank: Bank, kind: str) -> list[Received]:
    return serve_auth(replica_set, bank.customer if kind == "transfer" else bank.system)


def success(kind: str) -> int:
    return 200 if kind == "transfer" else 201


def record_of(attempt: list[Received]) -> dict[str, Any]:
    return attempt[1].doc["documents"][0]


def assert_503_with_retry_after(response) -> None:
    assert response.status_code == 503, response.get_json()
    assert response.headers["Retry-After"] == "2"
    assert response.get_json() == {"message": "Service temporarily unavailable, please retry", "status": "failed"}


@pytest.mark.parametrize("error", TRANSIENT)
@pytest.mark.parametrize("kind", KINDS)
def test_a_transient_error_at_any_step_aborts_and_reruns_the_whole_transaction(app, replica_set, kind, error):
    bank = Bank(app)
    retries_before = counted("ledger_transaction_retries_total", reason="transient")
    for step in range(COMMIT_STEP):  # every command before the commit
        response = send(app, bank, kind, f"{kind}-{error}-{step}")
        auth(replica_set, bank, kind)
        first = serve_attempt(replica_set, bank, funding=kind == "funding", inject={step: TRANSIENT[error]})
        abort = serve_abort(replica_set)
        second = serve_attempt(replica_set, bank, funding=kind == "funding")

        reply = response.result(WAIT)
        assert reply.status_code == success(kind), (step, reply.get_json())
        check_sessions([*first, abort], [*ATTEMPT[: step + 1], ABORTED])
        check_sessions(second, ATTEMPT)
        (session, number), (session_again, next_number) = attempt_of(first), attempt_of(second)
        assert session_again == session, "the rerun left the request's session"
        assert next_number == number + 1, "the rerun reused a transaction number"
        assert reply.get_json()["transaction"]["_id"] == str(record_of(second)["_id"])
        replica_set.assert_quiet(0.05)
    assert counted("ledger_transaction_retries_total", reason="transient") == retries_before + COMMIT_STEP


@pytest.mark.parametrize("kind", KINDS)
def test_a_transient_error_on_the_commit_reruns_the_whole_transaction(app, replica_set, kind):
    bank = Bank(app)
    response = send(app, bank, kind, f"{kind}-commit-transient")
    auth(replica_set, bank, kind)
    first = serve_attempt(replica_set, bank, funding=kind == "funding",
                          inject={COMMIT_STEP: TRANSIENT["NoSuchTransaction"]})
    second = serve_attempt(replica_set, bank, funding=kind == "funding")

    assert response.result(WAIT).status_code == success(kind)
    check_sessions(first, ATTEMPT)  # a failed commit ends the transaction: nothing to abort
    check_sessions(second, ATTEMPT)
    assert attempt_of(second)[1] == attempt_of(first)[1] + 1
    replica_set.assert_quiet()


UNKNOWN_COMMIT: dict[str, list[Callable[[Received], Any]]] = {
    # the driver labels a write concern timeout UnknownTransactionCommitResult; we retry the commit
    "wtimeout": [lambda got: got.ok(writeConcernError=WTIMEOUT)],
    # the driver retries a commit once by itself after a network error; the second one reaches our loop
    "network error twice": [lambda got: got.hangup(), lambda got: got.hangup()],
    "wtimeout three times": [lambda got: got.ok(writeConcernError=WTIMEOUT)] * 3,
}


@pytest.mark.parametrize("failures", UNKNOWN_COMMIT)
@pytest.mark.parametrize("kind", KINDS)
def test_an_unknown_commit_result_retries_the_commit_alone_under_the_same_txn_number(
        app, replica_set, kind, failures):
    bank = Bank(app)
    retries_before = counted("ledger_transaction_retries_total", reason="unknown-commit")
    response = send(app, bank, kind, f"{kind}-{failures}")
    auth(replica_set, bank, kind)
    attempt = serve_attempt(replica_set, bank, funding=kind == "funding",
                            inject={COMMIT_STEP: UNKNOWN_COMMIT[failures][0]})
    commits = [attempt[-1]]
    for answer in UNKNOWN_COMMIT[failures][1:]:
        commits.append(answer(replica_set.expect("commitTransaction")))
    commits.append(replica_set.expect("commitTransaction").ok())

    reply = response.result(WAIT)
    assert reply.status_code == success(kind), reply.get_json()
    check_sessions(attempt, ATTEMPT)
    for commit in commits:
        assert (commit.doc["lsid"], commit.doc["txnNumber"]) == attempt_of(attempt)  # the same transaction
        assert commit.doc["writeConcern"]["w"] == "majority"
    assert reply.get_json()["transaction"]["_id"] == str(record_of(attempt)["_id"])
    replica_set.assert_quiet()  # no second attempt: the first one's commit is what was retried
    # Each commit our loop sent again is counted (the driver's own single retry is not ours to count).
    ours = len(commits) - 1 - (1 if failures == "network error twice" else 0)
    assert counted("ledger_transaction_retries_total", reason="unknown-commit") == retries_before + ours


def serve_same_key_replay(replica_set: ReplicaSet, bank: Bank, kind: str, stored: dict[str, Any]) -> list[Received]:
    """The same-key retry when the first attempt did commit: the insert meets the idempotency index, the
    transaction is aborted, and the stored record is read back outside any transaction."""
    auth(replica_set, bank, kind)
    served = serve_attempt(replica_set, bank, funding=kind == "funding", inject={1: duplicate_key})
    served.append(serve_abort(replica_set))
    read = replica_set.expect("find", "transactions").cursor([stored])
    check_sessions([read], REPLAY_READ)
    assert read.doc["filter"] == {"initiator": stored["initiator"], "idempotencyKey": stored["idempotencyKey"]}
    return [*served, read]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("committed", [True, False], ids=["it-had-committed", "it-had-not"])
def test_max_time_expired_on_the_commit_answers_503_and_the_same_key_retry_resolves_it_exactly_once(
        app, replica_set, kind, committed):
    bank = Bank(app)
    key = f"{kind}-maxtime-commit"
    response = send(app, bank, kind, key)
    auth(replica_set, bank, kind)
    first = serve_attempt(replica_set, bank, funding=kind == "funding",
                          inject={COMMIT_STEP: lambda got: got.error(MAX_TIME_EXPIRED)})

    assert_503_with_retry_after(response.result(WAIT))
    replica_set.assert_quiet()  # not retried: a second commit would expire the same way
    stored = record_of(first)
    retry = send(app, bank, kind, key)
    if committed:
        serve_same_key_replay(replica_set, bank, kind, stored)
    else:
        auth(replica_set, bank, kind)
        second = serve_attempt(replica_set, bank, funding=kind == "funding")
        stored = record_of(second)

    reply = retry.result(WAIT)
    assert reply.status_code == success(kind), reply.get_json()
    assert reply.get_json()["transaction"]["_id"] == str(stored["_id"])
    assert reply.headers.get("Idempotent-Replayed") == ("true" if committed else None)
    replica_set.assert_quiet()


@pytest.mark.parametrize("step", range(COMMIT_STEP))
def test_max_time_expired_inside_the_transaction_aborts_it_and_answers_503(app, replica_set, step):
    bank = Bank(app)
    response = send(app, bank, "transfer", f"maxtime-{step}")
    auth(replica_set, bank, "transfer")
    first = serve_attempt(replica_set, bank, inject={step: lambda got: got.error(MAX_TIME_EXPIRED)})
    abort = serve_abort(replica_set)

    assert_503_with_retry_after(response.result(WAIT))
    check_sessions([*first, abort], [*ATTEMPT[: step + 1], ABORTED])
    replica_set.assert_quiet()


def test_register_answers_503_when_the_server_s_time_limit_expires_on_its_commit(app, replica_set):
    response = http(app, "POST", "/api/auth/register",
                    json={"email": "slow@example.test", "password": "password-123", "name": "Slow"})
    replica_set.expect("insert", "users").ok(n=1)
    replica_set.expect("insert", "notifications").ok(n=1)
    replica_set.expect("commitTransaction").error(MAX_TIME_EXPIRED)

    assert_503_with_retry_after(response.result(WAIT))
    replica_set.assert_quiet()


# The budget starts with the transaction and covers the test's serving of its first attempt: at 0.4 s a loaded
# machine could spend it all before the first retry (a flaky "never retried"). Paced reruns send a few dozen
# commands in 1.5 s; unpaced ones would send thousands, so the bounds below still tell them apart.
BUDGET_SECONDS = 1.5


@pytest.mark.parametrize("kind", KINDS)
def test_a_retry_budget_spent_on_conflicts_answers_503_and_the_same_key_retry_completes_once(
        make_wire_app, replica_set, kind):
    app = make_wire_app(TRANSACTION_TIMEOUT_SECONDS=BUDGET_SECONDS)
    bank = Bank(app)
    timeouts_before = counted("ledger_transfers_total", outcome="timeout")
    key = f"{kind}-budget"
    response = send(app, bank, kind, key)
    auth(replica_set, bank, kind)

    def conflict(got: Received) -> None:
        if got.name == "abortTransaction":
            got.ok()
        else:
            assert (got.name, got.collection) == ("find", "accounts"), got
            got.error(WRITE_CONFLICT)

    served = replica_set.serve_until(response, conflict)
    assert len(served) < 120, f"{len(served)} commands in {BUDGET_SECONDS} s: the reruns are not paced"

    assert_503_with_retry_after(response.result(WAIT))
    reads = [got for got in served if got.name == "find"]
    assert len(reads) >= 2, "the conflict was never retried"
    assert [got.doc["txnNumber"] for got in reads] == list(range(reads[0].doc["txnNumber"],
                                                                 reads[0].doc["txnNumber"] + len(reads)))
    assert all(got.name in {"find", "abortTransaction"} for got in served)  # never a commit
    assert counted("ledger_transfers_total", outcome="timeout") == timeouts_before + 1
    retry = send(app, bank, kind, key)
    auth(replica_set, bank, kind)
    attempt = serve_attempt(replica_set, bank, funding=kind == "funding")
    assert retry.result(WAIT).status_code == success(kind)
    check_sessions(attempt, ATTEMPT)
    replica_set.assert_quiet()


def test_a_retry_budget_spent_on_unknown_commit_results_answers_503_then_the_same_key_replays(
        make_wire_app, replica_set):
    app = make_wire_app(TRANSACTION_TIMEOUT_SECONDS=BUDGET_SECONDS)
    bank = Bank(app)
    response = send(app, bank, "transfer", "unknown-commit-budget")
    auth(replica_set, bank, "transfer")
    attempt = serve_attempt(replica_set, bank, inject={COMMIT_STEP: lambda got: got.ok(writeConcernError=WTIMEOUT)})

    def unknown(got: Received) -> None:
        assert got.name == "commitTransaction", got
        assert (got.doc["lsid"], got.doc["txnNumber"]) == attempt_of(attempt)
        got.ok(writeConcernError=WTIMEOUT)

    commits = replica_set.serve_until(response, unknown)

    assert_503_with_retry_after(response.result(WAIT))
    assert commits, "the commit was never retried"
    # Paced by a jittered backoff: a server answering at once must not get a tight loop of commits (without
    # the backoff, over 500 commits reached the wire within a 0.4 s budget).
    assert len(commits) < 60, f"{len(commits)} commits in {BUDGET_SECONDS} s"
    # The majority acknowledgement never came, but the commit did apply: the same key must replay it.
    retry = send(app, bank, "transfer", "unknown-commit-budget")
    serve_same_key_replay(replica_set, bank, "transfer", record_of(attempt))
    reply = retry.result(WAIT)
    assert reply.status_code == 200
    assert reply.headers["Idempotent-Replayed"] == "true"
    assert reply.get_json()["transaction"]["_id"] == str(record_of(attempt)["_id"])
    replica_set.assert_quiet()


@pytest.mark.parametrize("matched", [0, 1])
def test_a_conditional_update_that_matches_less_than_both_accounts_reruns_the_transaction(app, replica_set, matched):
    bank = Bank(app)
    response = send(app, bank, "transfer", f"changed-{matched}")
    auth(replica_set, bank, "transfer")
    # Something changed both (or one) accounts since the read: the filters pin the sequence numbers read.
    first = serve_attempt(replica_set, bank, inject={2: lambda got: got.ok(n=matched, nModified=matched)})
    abort = serve_abort(replica_set)
    second = serve_attempt(replica_set, bank)

    assert response.result(WAIT).status_code == 200
    check_sessions([*first, abort], [*ATTEMPT[:3], ABORTED])
    check_sessions(second, ATTEMPT)
    assert attempt_of(second)[1] == attempt_of(first)[1] + 1
    replica_set.assert_quiet()
