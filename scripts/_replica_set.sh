# Sourced by `scripts/test --replica-set`: start the docker-compose MongoDB replica set and point the suite at it.
# Needs Docker with the compose plugin. The set keeps running afterwards (quicker re-runs);
# stop it with `docker compose down` (add -v to drop its data).

start_replica_set() {
  if ! docker compose version >/dev/null 2>&1; then
    echo "error: --replica-set needs Docker with the compose plugin ('docker compose version' failed)" >&2
    return 1
  fi
  local compose=(docker compose --file "$ROOT/docker-compose.yml")
  echo "==> starting the MongoDB replica set (mongo1, mongo2, mongo3) and waiting until they are healthy" >&2
  "${compose[@]}" up --detach --wait mongo1 mongo2 mongo3
  echo "==> initiating replica set rs0 (idempotent) and waiting for mongo1 to be primary" >&2
  "${compose[@]}" run --rm mongo-init
  # The members advertise compose-network names the host cannot resolve, so the host talks to mongo1 alone;
  # see the comment at the top of docker-compose.yml.
  export LEDGER_TEST_MONGO_URI="mongodb://127.0.0.1:${MONGO_HOST_PORT:-27017}/?directConnection=true"
  echo "==> LEDGER_TEST_MONGO_URI=$LEDGER_TEST_MONGO_URI" >&2
}
