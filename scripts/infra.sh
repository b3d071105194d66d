#!/usr/bin/env bash
# scripts/infra.sh - install and run drip's development infrastructure on loopback:
#
#   * Apache Kafka 4.1.1, KRaft, one combined broker+controller node, built from
#     Apache's jars on Maven Central (no tarball, no Docker);
#   * PostgreSQL (Debian's packaged server) with a private cluster.
#
# Usage: scripts/infra.sh up|down|status|env|restart kafka|postgres
#
#   up      install what is missing, start what is not running, wait until both
#           services really answer; idempotent (a second `up` takes ~1 s).
#   down    stop the services this clone started; idempotent.
#   status  report each service (exit 0 when both answer, 3 otherwise).
#   env     print the connection settings.
#   restart kafka|postgres   stop and start one service (used by the fault suite).
#
# Contract for callers (services/devtools/infra.py parses it): stdout carries ONLY the
# `DRIP_...=` lines; every progress or status message goes to stderr.
#
# State lives in $REPO/.drip/ (git-ignored): .drip/kafka (config, data, logs, pid)
# and .drip/pg (cluster, log, socket). Kafka's jars are cached per user in
# ${XDG_CACHE_HOME:-~/.cache}/drip/kafka-<version>/libs and shared by all clones.
#
# Environment knobs: DRIP_KAFKA_PORT (default 19092; the controller listens on
# the next port), DRIP_PG_PORT (default 54329).
set -euo pipefail

# --------------------------------------------------------------------------- settings
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$SCRIPT_DIR/.." && pwd -P)
STATE="$REPO/.drip"

HOST=127.0.0.1 # loopback only, for both services

KAFKA_VERSION=4.1.1
SCALA_VERSION=2.13
SLF4J_VERSION=1.7.36 # the broker logs through slf4j-api 1.7: bind it to reload4j
KAFKA_PORT=${DRIP_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
KAFKA_SCRAM_PORT=$((KAFKA_PORT + 2)) # SASL_PLAINTEXT listener, SCRAM-SHA-256 (issue 6 §9)
KAFKA_SCRAM_USER=drip
KAFKA_SCRAM_PASSWORD=drip-scram-secret # a local, loopback-only development credential
KAFKA_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/drip/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_CACHE/libs"
KAFKA_LIBS_MARKER="$KAFKA_CACHE/.complete"
KAFKA_DIR="$STATE/kafka"
KAFKA_PID_FILE="$KAFKA_DIR/kafka.pid"
KAFKA_LOG="$KAFKA_DIR/server.log"          # INFO and above, from log4j
KAFKA_CONSOLE_LOG="$KAFKA_DIR/console.log" # WARN and above + JVM output
KAFKA_START_TIMEOUT=${DRIP_KAFKA_START_TIMEOUT:-120}

PG_PORT=${DRIP_PG_PORT:-54329}
PG_USER=drip # the application's role: owns database drip and may create test databases,
PG_PASSWORD=drip # but is not a superuser (issue 6 §9)
PG_ADMIN=drip_admin # the cluster's superuser, used by this script only
PG_DB=drip
PG_LINK="$STATE/pg" # PG_DIR below is where it really lives (see pg_locate_dir)
PG_START_TIMEOUT=${DRIP_PG_START_TIMEOUT:-60}

KAFKA_BOOTSTRAP="$HOST:$KAFKA_PORT"
DATABASE_URL="postgresql://$PG_USER:$PG_PASSWORD@$HOST:$PG_PORT/$PG_DB"

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1

# --------------------------------------------------------------------------- helpers
log() { printf '[infra] %s\n' "$*" >&2; }

die() {
  printf '[infra] ERROR: %s\n' "$*" >&2
  exit 1
}

# Print the last lines of a log file to stderr (used when a start fails).
tail_log() {
  local file=$1 lines=${2:-40}
  if [ -f "$file" ]; then
    printf '[infra] ---- last %s lines of %s ----\n' "$lines" "$file" >&2
    tail -n "$lines" "$file" >&2 || true
    printf '[infra] ---- end of %s ----\n' "$file" >&2
  fi
}

# True when something accepts TCP connections on $HOST:$1. Loopback refuses
# instantly when nothing listens; the timeout only guards against odd firewalls.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# Run a command with root rights (apt-get): directly when root, else via sudo.
as_root() {
  if [ "$IS_ROOT" = 1 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run: $* (no sudo found); install it by hand"
  fi
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 ||
    die "apt-get not found; install these by hand: $*"
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# Python used for the Kafka readiness probe: the project's venv has aiokafka,
# which lets the probe do a real metadata request.
probe_python() {
  if [ -x "$REPO/.venv/bin/python" ]; then
    echo "$REPO/.venv/bin/python"
  elif command -v python3 >/dev/null 2>&1; then
    command -v python3
  else
    echo ""
  fi
}

# Serialise concurrent `up`/`down` runs in this clone (e.g. parallel test jobs).
# The state folder holds data and credentials: nobody else may list or read it (711:
# the postgres user may still pass through to .drip/pg, itself 700 and its own).
take_repo_lock() {
  mkdir -p "$STATE"
  chmod 711 "$STATE"
  exec 9>"$STATE/infra.lock"
  flock -w 600 9 || die "another infra.sh is still running in $REPO (lock $STATE/infra.lock)"
}

# =========================================================================== Kafka
# ---- prerequisites: Java >= 17 (Kafka 4 brokers need it) and Maven

JAVA=""

java_major() { # prints the major version of the given java binary, or 0
  "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1 | grep . || echo 0
}

find_java() {
  local candidate
  for candidate in "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java 2>/dev/null || true)" /usr/lib/jvm/*/bin/java; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && [ "$(java_major "$candidate")" -ge 17 ]; then
      JAVA=$candidate
      return 0
    fi
  done
  return 1
}

ensure_java_and_maven() {
  if ! find_java; then
    apt_install openjdk-17-jre-headless
    find_java || die "no Java 17+ found even after installing openjdk-17-jre-headless"
  fi
  # Maven is only needed while the jar cache is incomplete.
  if [ ! -f "$KAFKA_LIBS_MARKER" ] && ! command -v mvn >/dev/null 2>&1; then
    apt_install maven
  fi
}

# ---- Kafka jars: resolved once per user from Maven Central, shared by all clones

ensure_kafka_libs() {
  [ -f "$KAFKA_LIBS_MARKER" ] && return 0
  mkdir -p "$KAFKA_CACHE"
  # Two clones may run a first `up` at once: one resolves, the other waits.
  exec 8>"$KAFKA_CACHE/.lock"
  flock -w 900 8 || die "timed out waiting for another resolver ($KAFKA_CACHE/.lock)"
  if [ -f "$KAFKA_LIBS_MARKER" ]; then exec 8>&-; return 0; fi

  log "resolving org.apache.kafka:kafka_$SCALA_VERSION:$KAFKA_VERSION (+ slf4j-reload4j) into $KAFKA_LIBS"
  local work="$KAFKA_CACHE/resolve.$$"
  rm -rf "$work"
  mkdir -p "$work"
  # A throw-away pom (packaging pom: nothing to compile) whose only job is to
  # name the artifacts; copy-dependencies then drops the whole runtime closure
  # into one folder, which becomes the broker's classpath.
  cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.drip</groupId>
  <artifactId>drip-kafka-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_VERSION</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>$SLF4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  # Maven's output goes to a log shown only on failure (Debian's 3.8 prints
  # stray colour codes even with -q -B).
  if ! (cd "$work" && mvn -q -B dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$work/libs" >"$work/mvn.log" 2>&1); then
    tail_log "$work/mvn.log" 60
    rm -rf "$work"
    die "maven could not resolve the Kafka jars (its output is above)"
  fi
  [ -f "$work/libs/kafka_$SCALA_VERSION-$KAFKA_VERSION.jar" ] ||
    die "maven finished but kafka_$SCALA_VERSION-$KAFKA_VERSION.jar is missing in $work/libs"
  # Swap the folder in whole, then mark it complete: a half-resolved cache is
  # never mistaken for a good one.
  rm -rf "$KAFKA_LIBS"
  mv "$work/libs" "$KAFKA_LIBS"
  mv "$work/pom.xml" "$KAFKA_CACHE/pom.xml"
  rm -rf "$work"
  find "$KAFKA_LIBS" -name '*.jar' | wc -l >"$KAFKA_LIBS_MARKER"
  log "cached $(cat "$KAFKA_LIBS_MARKER") jars in $KAFKA_LIBS"
  exec 8>&-
}

# ---- configuration (rewritten on every start so port overrides take effect)

write_kafka_config() {
  mkdir -p "$KAFKA_DIR/data"
  chmod 700 "$KAFKA_DIR" "$KAFKA_DIR/data"
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Generated by scripts/infra.sh on every start: edit the script, not this file.
# Single node in KRaft mode, acting as both broker and controller.
process.roles=broker,controller
node.id=1
# Static voter set: lets 'StorageTool format' work without --standalone.
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT,SASL_PLAINTEXT://$HOST:$KAFKA_SCRAM_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,SASL_PLAINTEXT://$HOST:$KAFKA_SCRAM_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
inter.broker.listener.name=PLAINTEXT
# A SCRAM listener, as managed Kafka services have: clients authenticate with SCRAM-SHA-256;
# the user is created when the storage is formatted (--add-scram).
sasl.enabled.mechanisms=SCRAM-SHA-256
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=$KAFKA_DIR/data

num.partitions=4
default.replication.factor=1
min.insync.replicas=1
# drip creates its topics with explicit partitions; nothing appears by accident
auto.create.topics.enable=false
# One node: every internal topic must live with a replication factor of 1.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer internal partitions than the defaults (50) so the first consumer group
# and the first transactional producer start in well under a second.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
# Tests create and join groups all the time: do not wait 3 s for more members.
group.initial.rebalance.delay.ms=0
EOF

  # reload4j (log4j 1.x API) configuration: everything from INFO to a rolling
  # file, only WARN and above to the console (which nohup sends to console.log).
  cat >"$KAFKA_DIR/log4j.properties" <<EOF
# Generated by scripts/infra.sh.
log4j.rootLogger=INFO, file, console

log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=$KAFKA_LOG
log4j.appender.file.MaxFileSize=50MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n

log4j.appender.console=org.apache.log4j.ConsoleAppender
log4j.appender.console.Threshold=WARN
log4j.appender.console.layout=org.apache.log4j.PatternLayout
log4j.appender.console.layout.ConversionPattern=[%d] %p %m (%c)%n

# Per-request logging is far too chatty at INFO.
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
EOF

  # Kafka 4 also ships log4j 2 (log4j-core is in its runtime closure, used for
  # its dynamic log-level controller). Without a configuration log4j 2 prints
  # "Reconfiguration failed: No configuration found" at every start; give it a
  # minimal one (WARN to the console). The broker's own logging goes through
  # slf4j 1.7 -> reload4j, configured above.
  cat >"$KAFKA_DIR/log4j2.properties" <<EOF
# Generated by scripts/infra.sh.
status = warn
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.console.ref = console
EOF
}

kafka_log_opts() {
  echo "-Dlog4j.configuration=file:$KAFKA_DIR/log4j.properties"
  echo "-Dlog4j2.configurationFile=$KAFKA_DIR/log4j2.properties"
}

kafka_java() { # run a Kafka tool class with the cached classpath
  local opts
  mapfile -t opts < <(kafka_log_opts)
  "$JAVA" "${opts[@]}" -cp "$KAFKA_LIBS/*" "$@"
}

# Format the KRaft metadata log once; later starts reuse the data as it is. Storage
# formatted before the SCRAM user existed (no marker) is formatted again: Kafka holds no
# state drip needs across restarts of the local stack (the event store is PostgreSQL).
KAFKA_SCRAM_MARKER_NAME=.drip-scram-user
format_kafka_storage() {
  if [ -f "$KAFKA_DIR/data/meta.properties" ]; then
    [ -f "$KAFKA_DIR/data/$KAFKA_SCRAM_MARKER_NAME" ] && return 0
    log "Kafka storage predates the SCRAM user: formatting it again (topics are recreated)"
    rm -rf "$KAFKA_DIR/data"
    mkdir -p "$KAFKA_DIR/data"
    chmod 700 "$KAFKA_DIR/data"
  fi
  local cluster_id
  if [ -s "$KAFKA_DIR/cluster.id" ]; then
    cluster_id=$(cat "$KAFKA_DIR/cluster.id")
  else
    cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)
    [ -n "$cluster_id" ] || die "kafka.tools.StorageTool random-uuid printed nothing"
    echo "$cluster_id" >"$KAFKA_DIR/cluster.id"
  fi
  log "formatting Kafka storage in $KAFKA_DIR/data (cluster id $cluster_id)"
  kafka_java kafka.tools.StorageTool format -t "$cluster_id" \
    -c "$KAFKA_DIR/server.properties" --ignore-formatted \
    --add-scram "SCRAM-SHA-256=[name=$KAFKA_SCRAM_USER,password=$KAFKA_SCRAM_PASSWORD]" >&2 ||
    die "kafka storage format failed"
  touch "$KAFKA_DIR/data/$KAFKA_SCRAM_MARKER_NAME"
}

# The pid in the pid file, if that process is alive and really our broker.
kafka_pid() {
  [ -f "$KAFKA_PID_FILE" ] || return 1
  local pid
  pid=$(cat "$KAFKA_PID_FILE" 2>/dev/null || true)
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $KAFKA_DIR/server.properties" || return 1
  echo "$pid"
}

start_kafka() {
  write_kafka_config
  format_kafka_storage
  log "starting Kafka $KAFKA_VERSION on $HOST:$KAFKA_PORT (controller $HOST:$KAFKA_CONTROLLER_PORT)"
  : >"$KAFKA_CONSOLE_LOG"
  # setsid + nohup: the broker gets its own session and ignores SIGHUP, so it
  # outlives the shell (or Python subprocess) that ran `up`. All three standard
  # streams are redirected so it holds no pipe of the caller open.
  # 8>&- 9>&-: the broker must not inherit our flock file descriptors, or it
  # would hold the locks for its whole life and block the next `up`.
  local opts
  mapfile -t opts < <(kafka_log_opts)
  (
    cd "$KAFKA_DIR"
    exec 8>&- 9>&-
    exec nohup setsid "$JAVA" -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
      "${opts[@]}" -Dkafka.logs.dir="$KAFKA_DIR" \
      -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
      >>"$KAFKA_CONSOLE_LOG" 2>&1 </dev/null
  ) &
  echo $! >"$KAFKA_PID_FILE"
  # setsid only forks when it is a process-group leader, which a background job
  # of a script is not, so $! is the JVM. Should that ever not hold, look it up.
  sleep 0.2
  if ! kafka_pid >/dev/null; then
    pgrep -f -n -- "kafka.Kafka $KAFKA_DIR/server.properties" >"$KAFKA_PID_FILE" || true
  fi
}

# Exit 0 once the broker serves requests. With aiokafka (the project venv) this
# is a real metadata request that must list a broker; otherwise a raw
# ApiVersions request over a socket (the listener only accepts requests once
# the broker has finished starting).
kafka_probe() {
  local py
  py=$(probe_python)
  [ -n "$py" ] || { port_open "$KAFKA_PORT"; return; }
  "$py" - "$HOST" "$KAFKA_PORT" 2>/dev/null <<'PY'
import asyncio, socket, struct, sys

host, port = sys.argv[1], int(sys.argv[2])

def raw_api_versions() -> bool:
    client = b"drip-infra"
    # header v1: api_key=18 (ApiVersions), api_version=0, correlation_id, client_id
    body = struct.pack(">hhih", 18, 0, 7, len(client)) + client
    with socket.create_connection((host, port), timeout=3) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        head = s.recv(10)
    if len(head) < 10:
        return False
    _size, corr, err = struct.unpack(">iih", head)
    return corr == 7 and err == 0

async def metadata() -> bool:
    from aiokafka.admin import AIOKafkaAdminClient
    admin = AIOKafkaAdminClient(bootstrap_servers=f"{host}:{port}", request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        cluster = await asyncio.wait_for(admin.describe_cluster(), 5)
        return bool(cluster.get("brokers"))
    finally:
        await admin.close()

try:
    import aiokafka  # noqa: F401
    ok = asyncio.run(metadata())
except ImportError:
    ok = raw_api_versions()
except Exception:
    ok = False
sys.exit(0 if ok else 1)
PY
}

wait_for_kafka() {
  local started_here=$1 deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  until kafka_probe; do
    if [ "$started_here" = 1 ] && ! kafka_pid >/dev/null; then
      tail_log "$KAFKA_CONSOLE_LOG" 30
      tail_log "$KAFKA_LOG" 15
      die "Kafka exited during startup (logs above)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail_log "$KAFKA_CONSOLE_LOG" 30
      tail_log "$KAFKA_LOG" 15
      die "Kafka did not answer on $HOST:$KAFKA_PORT within ${KAFKA_START_TIMEOUT}s (logs above)"
    fi
    sleep 0.5
  done
}

# Start (or find) the broker without waiting for it: `up` sets up PostgreSQL
# while the JVM boots, then calls kafka_finish. KAFKA_OURS says whether to
# watch our own process while waiting.
KAFKA_OURS=0
kafka_begin() {
  if kafka_pid >/dev/null && ! grep -q "^sasl.enabled.mechanisms=" "$KAFKA_DIR/server.properties"; then
    log "restarting this clone's Kafka to add the SCRAM listener and stop auto-creating topics"
    kafka_down
  fi
  if port_open "$KAFKA_PORT"; then
    # Maybe ours, maybe another clone's broker: either way it is reused.
    KAFKA_OURS=0
    return 0
  fi
  KAFKA_OURS=1
  if kafka_pid >/dev/null; then
    # Our broker runs but does not answer: still booting, unless it was started
    # with another DRIP_KAFKA_PORT (server.properties holds the ports in use).
    grep -qF "PLAINTEXT://$HOST:$KAFKA_PORT," "$KAFKA_DIR/server.properties" ||
      die "this clone's Kafka (pid $(kafka_pid)) runs with other ports ($(grep '^listeners=' "$KAFKA_DIR/server.properties")); run 'scripts/infra.sh down' first"
    log "Kafka (pid $(kafka_pid)) is still starting; waiting for it"
    return 0
  fi
  # The broker port is free; the controller port must be free too, or the
  # broker would boot for seconds and then die on a bind error.
  port_open "$KAFKA_CONTROLLER_PORT" &&
    die "port $KAFKA_CONTROLLER_PORT (Kafka controller = DRIP_KAFKA_PORT+1) is taken by another process"
  ensure_java_and_maven
  ensure_kafka_libs
  start_kafka
}

kafka_finish() {
  wait_for_kafka "$KAFKA_OURS"
  [ "$KAFKA_OURS" = 1 ] && log "Kafka is up (pid $(kafka_pid), logs in $KAFKA_DIR)"
  return 0
}

kafka_down() {
  local pid
  if ! pid=$(kafka_pid); then
    rm -f "$KAFKA_PID_FILE"
    if port_open "$KAFKA_PORT"; then
      log "Kafka: something else answers on $HOST:$KAFKA_PORT (not started by this clone); left alone"
    else
      log "Kafka: not running"
    fi
    return 0
  fi
  log "stopping Kafka (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  # A controlled shutdown takes a few seconds; escalate only if it hangs.
  local deadline=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "Kafka did not stop within 60s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.3
  done
  rm -f "$KAFKA_PID_FILE"
  log "Kafka stopped"
}

kafka_status() {
  local pid
  if pid=$(kafka_pid); then
    if port_open "$KAFKA_PORT"; then
      log "kafka: running (pid $pid, this clone) at $KAFKA_BOOTSTRAP, data in $KAFKA_DIR"
      return 0
    fi
    log "kafka: starting (pid $pid, this clone), not yet answering on $KAFKA_BOOTSTRAP"
    return 1
  fi
  if port_open "$KAFKA_PORT"; then
    log "kafka: running at $KAFKA_BOOTSTRAP (not started by this clone)"
    return 0
  fi
  log "kafka: not running (would listen on $KAFKA_BOOTSTRAP)"
  return 1
}

# =========================================================================== PostgreSQL
PG_BIN=""
PG_DIR=""

# Debian keeps the server binaries in /usr/lib/postgresql/<major>/bin, off PATH;
# prefer what PATH has, else the newest installed major version.
find_pg_bin() {
  local dir candidates=()
  if command -v pg_ctl >/dev/null 2>&1; then
    candidates+=("$(dirname "$(readlink -f "$(command -v pg_ctl)")")")
  fi
  # Newest major first; an unmatched glob stays literal and fails the -x test.
  while IFS= read -r dir; do candidates+=("$dir"); done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k4 -rn)
  for dir in "${candidates[@]}"; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      PG_BIN=$dir
      return 0
    fi
  done
  return 1
}

ensure_postgres_installed() {
  find_pg_bin && return 0
  # Debian's package may also create and start its own cluster on 5432; that one
  # is not ours and is left alone.
  apt_install postgresql
  find_pg_bin || die "initdb/pg_ctl not found even after installing postgresql"
}

# Client tools: the server's own bin dir has them; fall back to PATH.
pg_tool() {
  if [ -n "$PG_BIN" ] && [ -x "$PG_BIN/$1" ]; then echo "$PG_BIN/$1"; else command -v "$1"; fi
}

# PostgreSQL refuses to run as root. As root we run the server as the
# `postgres` system user, which therefore must own the cluster directory AND be
# able to traverse every directory above it.
ensure_postgres_user() {
  id -u postgres >/dev/null 2>&1 && return 0
  log "creating system user postgres"
  useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
    --shell /bin/bash postgres
}

# Run a server-side command as the cluster owner.
run_pg() {
  if [ "$IS_ROOT" = 1 ]; then
    # From /: the caller's working directory may be unreadable for postgres.
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# Decide where the cluster lives and set PG_DIR.
#
# Normally that is .drip/pg itself. But as root, the repository may sit where
# the postgres user cannot go (typically under /root, mode 0700). Rather than
# loosening permissions on someone's home directory, the cluster then lives in
# /var/tmp/drip-pg-<hash of the repo path> (one per clone, survives reboots,
# reachable by postgres) and .drip/pg is a symlink to it. `rm -rf .drip` removes
# the symlink, and the next `up` wipes the orphaned target, so a cold start is
# still a cold start.
pg_locate_dir() {
  mkdir -p "$STATE"
  if [ -L "$PG_LINK" ] && [ -d "$PG_LINK/" ]; then
    PG_DIR=$(readlink -f "$PG_LINK")
    return 0
  fi
  [ -L "$PG_LINK" ] && rm -f "$PG_LINK" # dangling symlink: its target was removed
  if [ "$IS_ROOT" = 0 ] || [ -d "$PG_LINK" ]; then
    mkdir -p "$PG_LINK"
    PG_DIR=$PG_LINK
    return 0
  fi
  ensure_postgres_user
  if runuser -u postgres -- test -x "$STATE"; then
    mkdir -p "$PG_LINK"
    PG_DIR=$PG_LINK
    return 0
  fi
  local target
  target="/var/tmp/drip-pg-$(printf '%s' "$REPO" | sha256sum | cut -c1-16)"
  log "postgres cannot reach $STATE; keeping the cluster in $target (symlinked from .drip/pg)"
  if [ -e "$target" ]; then
    if [ -f "$target/data/postmaster.pid" ] && run_pg "$(pg_tool pg_ctl)" -D "$target/data" status >/dev/null 2>&1; then
      log "reusing the cluster already running in $target"
    else
      log "removing orphaned cluster $target (its .drip/pg link was deleted)"
      rm -rf "$target"
    fi
  fi
  mkdir -p "$target"
  chmod 700 "$target"
  ln -s "$target" "$PG_LINK"
  PG_DIR=$target
}

pg_paths() {
  chmod 700 "$PG_DIR" 2>/dev/null || true # its owner's only (postgres, or the user)
  PG_DATA="$PG_DIR/data"
  PG_RUN="$PG_DIR/run"
  PG_LOGFILE="$PG_DIR/postgres.log"
  PG_READY_MARKER="$PG_DIR/.initialized-least-privilege" # drip is not the superuser
}

pg_server_running() { # is the cluster in PG_DATA running? (needs PG_BIN)
  [ -f "$PG_DATA/PG_VERSION" ] && run_pg "$(pg_tool pg_ctl)" -D "$PG_DATA" status >/dev/null 2>&1
}

init_pg_cluster() {
  if [ -f "$PG_READY_MARKER" ] && [ -f "$PG_DATA/PG_VERSION" ]; then
    local have want
    have=$(cat "$PG_DATA/PG_VERSION")
    want=$("$PG_BIN/pg_ctl" --version | sed -n 's/.* \([0-9][0-9]*\)\..*/\1/p')
    [ "$have" = "$want" ] ||
      die "cluster in $PG_DATA is PostgreSQL $have but $PG_BIN is $want; run 'scripts/infra.sh down' and remove $PG_LINK to recreate it"
    return 0
  fi
  # No marker: never initialised, or an earlier `up` died half-way. Start over.
  rm -rf "$PG_DATA" "$PG_READY_MARKER"
  mkdir -p "$PG_DATA" "$PG_RUN"
  chmod 700 "$PG_DIR"
  local pwfile="$PG_DIR/.pwfile"
  pg_admin_password >"$pwfile"
  chmod 600 "$pwfile"
  [ "$IS_ROOT" = 1 ] && chown -R postgres:postgres "$PG_DIR"
  log "initdb: new cluster in $PG_DATA (superuser $PG_ADMIN, scram-sha-256 auth)"
  # The superuser is drip_admin, used by this script only; drip connects as its own role.
  if ! run_pg "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_ADMIN" --pwfile="$pwfile" \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C >"$PG_DIR/initdb.log" 2>&1; then
    rm -f "$pwfile"
    tail_log "$PG_DIR/initdb.log"
    die "initdb failed"
  fi
  rm -f "$pwfile"
  # Runtime settings live in drip.conf, rewritten on every start (port overrides).
  echo "include_if_exists = 'drip.conf'" >>"$PG_DATA/postgresql.conf"
}

write_pg_config() {
  mkdir -p "$PG_RUN"
  # A Unix socket path must fit in ~107 bytes; in a deeply nested clone, turn
  # the socket off instead of failing (everything here connects over TCP, and
  # pg_ctl -w watches postmaster.pid, not the socket).
  local socket_dirs=$PG_RUN
  if [ "${#PG_RUN}" -gt 90 ]; then
    socket_dirs=""
    log "path $PG_RUN is too long for a Unix socket; PostgreSQL will listen on TCP only"
  fi
  cat >"$PG_DATA/drip.conf" <<EOF
# Generated by scripts/infra.sh on every start.
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$socket_dirs'
max_connections = 200
EOF
  [ "$IS_ROOT" = 1 ] && chown -R postgres:postgres "$PG_DIR"
  return 0
}

# The superuser's password: made once per cluster, kept beside it, readable by its owner.
pg_admin_password() {
  local file="$STATE/pg-admin.password"
  if [ ! -s "$file" ]; then
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$file")
  fi
  cat "$file"
}

# psql as drip over TCP (password auth), quiet and unaligned.
pg_query() { # pg_query DB SQL
  PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=3 "$(pg_tool psql)" -X -q -t -A \
    -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d "$1" -c "$2"
}

pg_admin_query() { # pg_admin_query DB SQL: as the superuser
  PGPASSWORD=$(pg_admin_password) PGCONNECT_TIMEOUT=3 "$(pg_tool psql)" -X -q -t -A \
    -h "$HOST" -p "$PG_PORT" -U "$PG_ADMIN" -d "$1" -c "$2"
}

# The application role: LOGIN and CREATEDB (the tests make a database each), no more;
# it owns database drip, so it owns the schema drip creates its tables in.
ensure_pg_database() {
  if [ "$(pg_admin_query postgres "select 1 from pg_roles where rolname = '$PG_USER'")" != 1 ]; then
    log "creating role $PG_USER (login, createdb, not a superuser)"
    pg_admin_query postgres "create role $PG_USER login createdb nosuperuser nocreaterole password '$PG_PASSWORD'" >&2
  fi
  if [ "$(pg_admin_query postgres "select 1 from pg_database where datname = '$PG_DB'")" != 1 ]; then
    log "creating database $PG_DB owned by $PG_USER"
    pg_admin_query postgres "create database $PG_DB owner $PG_USER" >&2
  fi
}

wait_for_pg() {
  local deadline=$((SECONDS + PG_START_TIMEOUT)) isready
  isready=$(pg_tool pg_isready) || isready=""
  while :; do
    if { [ -z "$isready" ] || "$isready" -q -h "$HOST" -p "$PG_PORT" -t 2; } &&
      [ "$(pg_query "$PG_DB" 'select 1' 2>/dev/null)" = 1 ]; then
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      [ -n "$PG_DIR" ] && tail_log "$PG_LOGFILE"
      pg_query "$PG_DB" 'select 1' >&2 || true # show the client-side error too
      die "PostgreSQL did not accept '$PG_USER' on $HOST:$PG_PORT/$PG_DB within ${PG_START_TIMEOUT}s"
    fi
    sleep 0.3
  done
}

pg_up() {
  if pg_existing && pg_server_running && [ ! -f "$PG_READY_MARKER" ]; then
    # a cluster made when drip was its superuser: made again with a separate superuser
    log "this clone's PostgreSQL has drip as its superuser: recreating it (its data is lost)"
    run_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >&2 </dev/null
  fi
  if port_open "$PG_PORT"; then
    # Maybe ours, maybe another clone's cluster: either way it is reused.
    find_pg_bin || true # for pg_isready/psql from the server's bin dir
    wait_for_pg
    return 0
  fi
  ensure_postgres_installed
  [ "$IS_ROOT" = 1 ] && ensure_postgres_user
  pg_locate_dir
  pg_paths
  init_pg_cluster
  if pg_server_running; then
    # Running but not on our port (e.g. started with another DRIP_PG_PORT).
    die "the cluster in $PG_DATA runs but does not answer on $HOST:$PG_PORT; run 'scripts/infra.sh down' first"
  fi
  write_pg_config
  log "starting PostgreSQL ($PG_BIN) on $HOST:$PG_PORT"
  # -l sends the server's output to the log file, so nothing keeps our pipes open.
  # 8>&- 9>&-: the postmaster must not inherit our flock descriptors either.
  if ! run_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOGFILE" -w -t "$PG_START_TIMEOUT" start >&2 </dev/null 8>&- 9>&-; then
    tail_log "$PG_LOGFILE"
    die "pg_ctl start failed"
  fi
  ensure_pg_database
  touch "$PG_READY_MARKER"
  [ "$IS_ROOT" = 1 ] && chown postgres:postgres "$PG_READY_MARKER"
  wait_for_pg
  log "PostgreSQL is up (data in $PG_DATA, log $PG_LOGFILE)"
}

# Resolve the existing cluster without creating anything (for down/status).
pg_existing() {
  [ -d "$PG_LINK/" ] || return 1
  PG_DIR=$(readlink -f "$PG_LINK")
  pg_paths
  [ -f "$PG_DATA/PG_VERSION" ] && find_pg_bin
}

pg_down() {
  if pg_existing && pg_server_running; then
    log "stopping PostgreSQL ($PG_DATA)"
    run_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >&2 </dev/null
    log "PostgreSQL stopped"
  elif port_open "$PG_PORT"; then
    log "PostgreSQL: something else answers on $HOST:$PG_PORT (not started by this clone); left alone"
  else
    log "PostgreSQL: not running"
  fi
}

pg_status() {
  if pg_existing && pg_server_running; then
    if port_open "$PG_PORT"; then
      log "postgres: running (this clone) at $HOST:$PG_PORT, data in $PG_DATA"
      return 0
    fi
    log "postgres: the cluster in $PG_DATA runs but does not answer on $HOST:$PG_PORT"
    return 1
  fi
  if port_open "$PG_PORT"; then
    log "postgres: running at $HOST:$PG_PORT (not started by this clone)"
    return 0
  fi
  log "postgres: not running (would listen on $HOST:$PG_PORT)"
  return 1
}

# =========================================================================== commands
print_env() {
  echo "DRIP_KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP"
  echo "DRIP_DATABASE_URL=$DATABASE_URL"
  # the SCRAM listener, for clients (and the tests) that authenticate
  echo "DRIP_LOCAL_KAFKA_SCRAM_BOOTSTRAP=$HOST:$KAFKA_SCRAM_PORT"
  echo "DRIP_LOCAL_KAFKA_SCRAM_USERNAME=$KAFKA_SCRAM_USER"
  echo "DRIP_LOCAL_KAFKA_SCRAM_PASSWORD=$KAFKA_SCRAM_PASSWORD"
}

cmd_up() {
  take_repo_lock
  kafka_begin
  pg_up
  kafka_finish
  log "kafka    listening on $KAFKA_BOOTSTRAP (controller $HOST:$KAFKA_CONTROLLER_PORT)"
  log "postgres listening on $HOST:$PG_PORT (database $PG_DB, user $PG_USER)"
  print_env
}

cmd_down() {
  take_repo_lock
  kafka_down
  pg_down
}

cmd_status() {
  local rc=0
  kafka_status || rc=3
  pg_status || rc=3
  return "$rc"
}

cmd_restart() { # restart one service (the fault suite's broker and database restarts)
  take_repo_lock
  case "${1:-}" in
  kafka) kafka_down && kafka_begin && kafka_finish ;;
  postgres) pg_down && pg_up ;;
  *) usage; exit 2 ;;
  esac
  print_env
}

usage() {
  cat >&2 <<EOF
usage: $0 up|down|status|env|restart kafka|postgres
  up      install and start Kafka and PostgreSQL on loopback (idempotent)
  down    stop what this clone started
  status  report both services (exit 3 unless both answer)
  env     print DRIP_KAFKA_BOOTSTRAP and DRIP_DATABASE_URL
  restart stop and start one service (kafka or postgres)
EOF
}

main() {
  case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) print_env ;;
  restart) cmd_restart "${2:-}" ;;
  -h | --help | help) usage ;;
  *)
    usage
    exit 2
    ;;
  esac
}

main "$@"
