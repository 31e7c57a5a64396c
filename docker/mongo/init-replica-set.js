// One-shot replica-set initiation for docker-compose.yml, run by the mongo-init service with mongosh against
// mongo1. Idempotent: an already initialized set is fine. Exits 0 once mongo1 is the writable primary and
// every member is PRIMARY or SECONDARY (so majority writes can be acknowledged); exits 1 after the deadline.
const config = {
  _id: "rs0",
  members: [
    // mongo1 has the highest priority, so it is the primary whenever it is healthy: the host's test suite
    // reaches the set through mongo1's published port with directConnection=true (see docker-compose.yml).
    { _id: 0, host: "mongo1:27017", priority: 2 },
    { _id: 1, host: "mongo2:27017", priority: 1 },
    { _id: 2, host: "mongo3:27017", priority: 1 },
  ],
};

try {
  rs.initiate(config);
  print("replica set rs0 initiated");
} catch (error) {
  if (error.codeName !== "AlreadyInitialized") {
    throw error;
  }
  print("replica set rs0 already initialized");
}

const deadline = Date.now() + 120 * 1000;
for (;;) {
  let ready = false;
  let summary = "no status yet";
  try {
    const status = rs.status();
    const states = status.members.map((member) => `${member.name}=${member.stateStr}`);
    summary = states.join(", ");
    const allUp = status.members.every((member) => member.state === 1 || member.state === 2);
    ready = allUp && db.hello().isWritablePrimary === true;
  } catch (error) {
    summary = `${error.codeName || error.message}`;
  }
  if (ready) {
    print(`replica set rs0 ready: ${summary}`);
    quit(0);
  }
  if (Date.now() > deadline) {
    print(`replica set rs0 not ready after 120 s: ${summary}`);
    quit(1);
  }
  sleep(1000);
}
