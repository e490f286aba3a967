#!/usr/bin/env bash
# scripts/services.sh up|down|status|env|pids
# scripts/services.sh start|stop|kill SERVICE   (SERVICE: pg, redis or kafka)
# scripts/services.sh restart-pg-immediate | sql PSQL-ARGS...
#
# Local PostgreSQL + Redis + Kafka for TicketBlitz development and tests.
#
#   up      install what is missing, start all three (those already running
#           are left alone, so `up` also restarts whatever is down), wait until
#           each answers
#   down    stop what `up` started (by the PIDs it recorded), wait for exit
#   status  print up/down per service; exit 0 only if all are up
#   env     print `export TICKETBLITZ_...` lines: eval "$(scripts/services.sh env)"
#   pids    print "SERVICE PID" for each service that runs (recorded PIDs)
#   start SERVICE   `up` for that one service only
#   stop SERVICE    `down` for that one service only
#   kill SERVICE    SIGKILL by recorded PID (PostgreSQL: the postmaster and its
#                   children), wait until gone; `start` or `up` brings it back
#   restart-pg-immediate   `pg_ctl stop -m immediate` (crash recovery on the
#                   next start), then start again and wait until it answers
#   sql ARGS...     psql as the cluster superuser (e.g. sql -tAc 'SELECT 1')
#
# Everything (data, logs, pid files, Kafka jars) lives under <repo>/.services/
# (git-ignored), the services listen on 127.0.0.1 only, on ports of their own
# so they never clash with a system PostgreSQL/Redis:
#
#   TB_PG_PORT (55432)  TB_REDIS_PORT (56379)
#   TB_KAFKA_PORT (59092)  TB_KAFKA_CONTROLLER_PORT (59093)
#
# A second, independent set runs beside the default one with a directory and
# ports of its own (what tests/chaos does), e.g.
#
#   TB_SERVICES_DIR=.services/chaos TB_PG_PORT=55532 TB_REDIS_PORT=56479 \
#   TB_KAFKA_PORT=59192 TB_KAFKA_CONTROLLER_PORT=59193 scripts/services.sh up
#
# Every command then acts on that set only (its pid files, data and ports);
# pass the same variables to each call.
#
# Other knobs: TB_KAFKA_WAIT (120 s), TB_PG_USER (tbpg), TB_KAFKA_HEAP (-Xmx512m),
# TB_SERVICES_DIR (<repo>/.services; relative paths are relative to the repo),
# TB_KAFKA_LIBS (<services dir>/kafka/libs: the broker's jar cache; another
# set's complete cache can be shared), TB_PG_CONF_EXTRA (extra postgresql.conf
# lines, e.g. "shared_preload_libraries = 'pg_stat_statements'").
#
# Sources: PostgreSQL and Redis from Debian packages; Kafka 4.x jars from Maven
# Central via scripts/kafka/pom.xml (the Apache download site is unreachable
# here). Meant to run as root on Debian 12 (apt-get, creating the pg user).
set -euo pipefail
# runuser/useradd live in /usr/sbin, which a non-login root PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"

# ---------------------------------------------------------------- layout ----
# Resolve the repo root from this file, so the script works from any cwd and
# from a fresh clone anywhere.
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd -P)"
DEFAULT_SERVICES_DIR="$REPO_ROOT/.services"
SERVICES_DIR="${TB_SERVICES_DIR:-$DEFAULT_SERVICES_DIR}"
[[ "$SERVICES_DIR" == /* ]] || SERVICES_DIR="$REPO_ROOT/$SERVICES_DIR"
SERVICES_DIR="$(readlink -m "$SERVICES_DIR")"
# What names this set in paths outside of it (/tmp sockets, /var/lib): the
# repo for the default set (as always), the directory itself for another set.
if [[ "$SERVICES_DIR" == "$(readlink -m "$DEFAULT_SERVICES_DIR")" ]]; then
    SET_ID="$REPO_ROOT"
else
    SET_ID="$SERVICES_DIR"
fi

HOST=127.0.0.1
PG_PORT="${TB_PG_PORT:-55432}"
REDIS_PORT="${TB_REDIS_PORT:-56379}"
KAFKA_PORT="${TB_KAFKA_PORT:-59092}"
KAFKA_CONTROLLER_PORT="${TB_KAFKA_CONTROLLER_PORT:-59093}"
KAFKA_WAIT="${TB_KAFKA_WAIT:-120}"
KAFKA_HEAP="${TB_KAFKA_HEAP:--Xmx512m -Xms256m}"

DB_NAME=ticketblitz
DB_USER=ticketblitz
DB_PASSWORD=ticketblitz

# PostgreSQL refuses to run as root, so the private cluster belongs to this
# system user (created on demand).
PG_OS_USER="${TB_PG_USER:-tbpg}"
PG_CONF_EXTRA="${TB_PG_CONF_EXTRA:-}"

REDIS_DIR="$SERVICES_DIR/redis"
KAFKA_DIR="$SERVICES_DIR/kafka"
KAFKA_LIBS="$(readlink -m "${TB_KAFKA_LIBS:-$KAFKA_DIR/libs}")"
KAFKA_POM="$SCRIPT_DIR/kafka/pom.xml"

# Topics the app needs: name:partitions
KAFKA_TOPICS=(booking-requests:6 booking-requests-dlq:1 booking-results:6)

# --------------------------------------------------------------- helpers ----
log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# Print the last lines of a log file to stderr (used when a service fails).
tail_log() {
    local file="$1"
    if [[ -f "$file" ]]; then
        printf '[services] ---- last lines of %s ----\n' "$file" >&2
        tail -n 40 "$file" >&2 || true
        printf '[services] ----\n' >&2
    fi
}

# SIGKILL the recorded pid of service $1 (pid file $2) if it is alive and its command line contains $3.
sigkill_recorded() {
    local name="$1" pid
    pid="$(read_pid "$2")"
    if ! pid_matches "$pid" "$3"; then
        log "$name: not running"
        return 0
    fi
    log "$name: SIGKILL pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    wait_pid_gone "$pid" 30 || die "$name pid $pid did not exit"
}

# True if the pid is alive AND its command line contains $2. Guards against a
# stale pid file whose number was reused by an unrelated process.
pid_matches() {
    local pid="$1" needle="$2"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$needle"
}

# First line of a pid file, digits only; empty if the file is missing.
read_pid() {
    if [[ -f "$1" ]]; then head -n1 "$1" | tr -dc '0-9'; fi
}

# True while pid $1 exists and is not a zombie (an exited child that its
# parent, often PID 1 here, has not reaped yet is gone for our purposes).
pid_alive() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

# Wait up to $2 seconds for pid $1 to exit.
wait_pid_gone() {
    local pid="$1" secs="$2" i
    for ((i = 0; i < secs * 5; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.2
    done
    ! pid_alive "$pid"
}

# Cheap TCP probe (bash built-in), to avoid starting a JVM per poll.
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Refuse to start a service whose port is already taken by someone else:
# otherwise the wait loop could mistake that other server for ours.
ensure_port_free() {
    local port="$1" var="$2"
    if port_open "$port"; then
        die "$HOST:$port is already in use by another process (pick another port with $var=...)"
    fi
}

# Install Debian packages that are not installed yet; `apt-get update` at most
# once per run, and only when something is actually missing.
APT_UPDATED=0
apt_ensure() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    [[ $(id -u) -eq 0 ]] || die "need root to install: ${missing[*]}"
    if ((!APT_UPDATED)); then
        log "apt-get update"
        apt-get update -qq >&2
        APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# Run a command as the PostgreSQL cluster owner. `cd /` because the caller's
# cwd (e.g. under /root) may not be accessible to that user.
as_pg() { (cd / && runuser -u "$PG_OS_USER" -- "$@"); }

# ------------------------------------------------------------ PostgreSQL ----
pg_bin_dir() {
    # Newest installed major version, e.g. /usr/lib/postgresql/15/bin; prints
    # nothing (and succeeds, for `set -e` callers) if none is installed.
    local dirs=(/usr/lib/postgresql/*/bin)
    [[ -d "${dirs[0]}" ]] || return 0
    printf '%s\n' "${dirs[@]}" | sort -V | tail -n1
}

# PG_HOME holds data/, run/ (socket), postgres.log. Normally it is
# .services/pg itself; if the cluster user cannot reach the repo (e.g. a clone
# under /root, mode 700) .services/pg is a symlink to a directory under
# /var/lib/ticketblitz-pg/ (see pg_prepare_home). Resolving the link works
# for both cases and creates nothing, so status/down/env can use it too.
pg_home() { readlink -m "$SERVICES_DIR/pg"; }
pg_data() { echo "$(pg_home)/data"; }

# Unix socket directory. Socket paths are limited to ~107 bytes, so a deep
# checkout falls back to a short per-repo directory under /tmp.
pg_socket_dir() {
    local dir
    dir="$(pg_home)/run"
    if ((${#dir} > 80)); then
        dir="/tmp/tbpg-$(printf '%s' "$SET_ID" | sha1sum | cut -c1-12)"
    fi
    echo "$dir"
}

pg_ensure_user() {
    id -u "$PG_OS_USER" >/dev/null 2>&1 && return 0
    log "creating system user $PG_OS_USER (owner of the private PostgreSQL cluster)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$PG_OS_USER"
}

# Make PG_HOME exist, owned by the cluster user, and reachable by it.
pg_prepare_home() {
    local link="$SERVICES_DIR/pg" alt
    if [[ ! -L "$link" ]]; then
        mkdir -p "$link"
        chown "$PG_OS_USER:" "$link"
        if ! as_pg test -x "$link" -a -w "$link"; then
            # Some ancestor of the repo (e.g. /root) is not traversable by the
            # cluster user. Rather than loosening permissions on it, keep the
            # cluster in a per-repo directory the user can reach, and leave a
            # symlink in .services/ so paths stay the same.
            alt="/var/lib/ticketblitz-pg/$(printf '%s' "$SET_ID" | sha1sum | cut -c1-12)"
            log "$PG_OS_USER cannot reach $link; keeping the cluster in $alt (symlinked)"
            mkdir -p "$alt"
            chown "$PG_OS_USER:" "$alt"
            rmdir "$link" 2>/dev/null || die "$link exists, is not empty, and is unreachable for $PG_OS_USER"
            ln -s "$alt" "$link"
        fi
    fi
    local home sock
    home="$(pg_home)"
    sock="$(pg_socket_dir)"
    mkdir -p "$home" "$sock"
    chown "$PG_OS_USER:" "$home" "$sock"
    chmod 0755 "$sock" # clients as root/others need to reach the socket
}

pg_is_running() {
    local bin
    bin="$(pg_bin_dir)"
    [[ -n "$bin" && -f "$(pg_data)/postmaster.pid" ]] || return 1
    id -u "$PG_OS_USER" >/dev/null 2>&1 || return 1
    as_pg "$bin/pg_ctl" status -D "$(pg_data)" >/dev/null 2>&1
}

pg_answers() {
    local bin
    bin="$(pg_bin_dir)"
    [[ -n "$bin" ]] && "$bin/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 3
}

# Settings live in ticketblitz.conf (rewritten on every `up`, so port
# overrides take effect) and are included from postgresql.conf.
pg_write_conf() {
    local data
    data="$(pg_data)"
    cat >"$data/ticketblitz.conf" <<EOF
# Written by scripts/services.sh on every 'up' - edits are overwritten.
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$(pg_socket_dir)'
max_connections = 200
shared_buffers = 128MB
fsync = on
logging_collector = off
log_min_messages = warning
$PG_CONF_EXTRA
EOF
    chown "$PG_OS_USER:" "$data/ticketblitz.conf"
    grep -q "^include_if_exists = 'ticketblitz.conf'" "$data/postgresql.conf" ||
        echo "include_if_exists = 'ticketblitz.conf'" >>"$data/postgresql.conf"
}

# Run SQL as the cluster superuser over the unix socket (peer auth).
pg_sql() {
    as_pg "$(pg_bin_dir)/psql" -X -q -v ON_ERROR_STOP=1 -h "$(pg_socket_dir)" \
        -p "$PG_PORT" -d postgres "$@"
}

pg_up() {
    apt_ensure postgresql
    local bin data log
    bin="$(pg_bin_dir)"
    [[ -n "$bin" ]] || die "no PostgreSQL binaries under /usr/lib/postgresql/*/bin"
    pg_ensure_user
    pg_prepare_home
    data="$(pg_data)"
    log="$(pg_home)/postgres.log"

    if [[ ! -f "$data/PG_VERSION" ]]; then
        log "initdb $data"
        # Host connections need the password; local (socket) connections use
        # peer auth, which is how this script administers the cluster.
        as_pg "$bin/initdb" -D "$data" --encoding=UTF8 --locale=C.UTF-8 \
            --auth-local=peer --auth-host=scram-sha-256 >"$(pg_home)/initdb.log" 2>&1 ||
            { tail_log "$(pg_home)/initdb.log"; die "initdb failed"; }
    fi
    pg_write_conf

    if pg_is_running; then
        log "postgres: already running"
    else
        ensure_port_free "$PG_PORT" TB_PG_PORT
        log "postgres: starting on $HOST:$PG_PORT"
        # -w: pg_ctl itself waits until the server accepts connections.
        if ! as_pg "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null; then
            tail_log "$log"
            die "postgres did not start"
        fi
    fi

    local i
    for ((i = 0; i < 60; i++)); do pg_answers && break; sleep 1; done
    pg_answers || { tail_log "$log"; die "postgres does not answer on $HOST:$PG_PORT"; }

    # Role and database, idempotently. CREATEDB so tests may make scratch DBs.
    if [[ "$(pg_sql -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" != 1 ]]; then
        log "postgres: creating role $DB_USER"
        pg_sql -c "CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD'"
    fi
    # Tests drop their scratch databases WITH (FORCE), which must also end an autovacuum worker there.
    pg_sql -qc "GRANT pg_signal_backend TO $DB_USER" >/dev/null
    if [[ "$(pg_sql -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]]; then
        log "postgres: creating database $DB_NAME"
        pg_sql -c "CREATE DATABASE $DB_NAME OWNER $DB_USER"
    fi
    PGPASSWORD="$DB_PASSWORD" "$bin/psql" -X -q -h "$HOST" -p "$PG_PORT" -U "$DB_USER" \
        -d "$DB_NAME" -tAc 'SELECT 1' >/dev/null ||
        die "postgres: cannot log in as $DB_USER"
    log "postgres: up"
}

pg_down() {
    if ! pg_is_running; then
        log "postgres: not running"
        return 0
    fi
    local pid
    pid="$(read_pid "$(pg_data)/postmaster.pid")"
    log "postgres: stopping pid $pid"
    # pg_ctl finds the postmaster via data/postmaster.pid and waits (-w) for
    # that file to go; then make sure the process itself has exited too.
    as_pg "$(pg_bin_dir)/pg_ctl" -D "$(pg_data)" -m fast -w -t 60 stop >/dev/null
    wait_pid_gone "$pid" 30 || die "postgres pid $pid did not exit"
}

# SIGKILL the postmaster and its children (the backends would otherwise keep
# the shared memory, and the next start would refuse until they noticed).
pg_kill() {
    local pid children
    pid="$(read_pid "$(pg_data)/postmaster.pid")"
    if ! pid_matches "$pid" postgres; then
        log "postgres: not running"
        return 0
    fi
    children="$(cat "/proc/$pid/task/$pid/children" 2>/dev/null || true)"
    log "postgres: SIGKILL pid $pid and children $children"
    # shellcheck disable=SC2086 # a list of pids
    kill -KILL "$pid" $children 2>/dev/null || true
    wait_pid_gone "$pid" 30 || die "postgres pid $pid did not exit"
    local c
    for c in $children; do wait_pid_gone "$c" 30 || die "postgres child $c did not exit"; done
    # PostgreSQL's lock files (data dir, socket) name the dead postmaster, which
    # counts as alive while it is an unreaped zombie: give its parent a moment
    # to reap it, then drop the files, so that `start` starts.
    local i
    for ((i = 0; i < 25; i++)); do [[ -e "/proc/$pid" ]] || break; sleep 0.2; done
    rm -f "$(pg_data)/postmaster.pid" "$(pg_socket_dir)/.s.PGSQL.$PG_PORT.lock"
}

# Crash-stop (no checkpoint, crash recovery on start), then start again.
pg_restart_immediate() {
    pg_is_running || die "postgres is not running"
    local pid
    pid="$(read_pid "$(pg_data)/postmaster.pid")"
    log "postgres: stop -m immediate (pid $pid)"
    as_pg "$(pg_bin_dir)/pg_ctl" -D "$(pg_data)" -m immediate -w -t 60 stop >/dev/null
    wait_pid_gone "$pid" 30 || die "postgres pid $pid did not exit"
    pg_up
}

pg_pid() { pg_is_running && read_pid "$(pg_data)/postmaster.pid"; }

pg_status() {
    local pid
    pid="$(read_pid "$(pg_data)/postmaster.pid")"
    if pg_is_running && pg_answers; then
        echo "postgres: up   (pid $pid, $HOST:$PG_PORT, data $(pg_data))"
    else
        echo "postgres: down"
        return 1
    fi
}

# ----------------------------------------------------------------- Redis ----
REDIS_PIDFILE="$REDIS_DIR/redis.pid"

redis_is_running() { pid_matches "$(read_pid "$REDIS_PIDFILE")" redis-server; }

redis_answers() {
    command -v redis-cli >/dev/null || return 1
    [[ "$(timeout 5 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

redis_up() {
    apt_ensure redis-server # brings redis-tools (redis-cli)
    mkdir -p "$REDIS_DIR"
    if redis_is_running; then
        log "redis: already running"
    else
        ensure_port_free "$REDIS_PORT" TB_REDIS_PORT
        log "redis: starting on $HOST:$REDIS_PORT"
        rm -f "$REDIS_PIDFILE"
        # No persistence: test data only. Redis daemonizes and writes the pid.
        redis-server --bind "$HOST" --port "$REDIS_PORT" --protected-mode yes \
            --save "" --appendonly no --dir "$REDIS_DIR" \
            --daemonize yes --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_DIR/redis.log" ||
            { tail_log "$REDIS_DIR/redis.log"; die "redis did not start"; }
    fi
    local i
    for ((i = 0; i < 150; i++)); do redis_answers && break; sleep 0.2; done
    redis_answers || { tail_log "$REDIS_DIR/redis.log"; die "redis does not answer on $HOST:$REDIS_PORT"; }
    log "redis: up"
}

redis_down() {
    local pid
    pid="$(read_pid "$REDIS_PIDFILE")"
    if ! pid_matches "$pid" redis-server; then
        log "redis: not running"
        rm -f "$REDIS_PIDFILE"
        return 0
    fi
    log "redis: stopping pid $pid"
    kill -TERM "$pid"
    wait_pid_gone "$pid" 30 || die "redis pid $pid did not exit"
    rm -f "$REDIS_PIDFILE"
}

redis_kill() { sigkill_recorded redis "$REDIS_PIDFILE" redis-server; }

redis_pid() { redis_is_running && read_pid "$REDIS_PIDFILE"; }

redis_status() {
    if redis_is_running && redis_answers; then
        echo "redis:    up   (pid $(read_pid "$REDIS_PIDFILE"), $HOST:$REDIS_PORT)"
    else
        echo "redis:    down"
        return 1
    fi
}

# ----------------------------------------------------------------- Kafka ----
KAFKA_PIDFILE="$KAFKA_DIR/kafka.pid"
KAFKA_LOG="$KAFKA_DIR/kafka.log"
KAFKA_CONF="$KAFKA_DIR/config/server.properties"
KAFKA_DATA="$KAFKA_DIR/data"
# Admin-client settings for the CLI: fail within seconds instead of the
# default 60 s retry window, so the wait loop can notice a dead broker.
KAFKA_ADMIN_CONF="$KAFKA_DIR/config/admin.properties"
KAFKA_MAIN=kafka.Kafka
# In Kafka 4.1 the storage tool is still the Scala object in kafka_2.13, the
# topic CLI lives in kafka-tools.
KAFKA_STORAGE_MAIN=kafka.tools.StorageTool
KAFKA_TOPIC_MAIN=org.apache.kafka.tools.TopicCommand

java_ensure() {
    command -v java >/dev/null || apt_ensure openjdk-17-jre-headless
    local major
    major="$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
    [[ "${major%%.*}" -ge 17 ]] 2>/dev/null || die "Kafka 4 needs Java 17+, found '${major:-none}'"
}

# Fetch the broker's jars from Maven Central into .services/kafka/libs, once.
# A marker holding the pom's hash makes a changed pom (e.g. a version bump)
# trigger a fresh copy, and an interrupted copy never looks complete.
kafka_ensure_libs() {
    local want marker="$KAFKA_LIBS/.pom.sha256"
    want="$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
    if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || apt_ensure maven
    log "kafka: fetching jars from Maven Central (first run only)"
    local tmp="$KAFKA_LIBS.tmp" t0=$SECONDS
    rm -rf "$tmp"
    mkdir -p "$KAFKA_DIR" "$(dirname "$KAFKA_LIBS")"
    # -f with an explicit outputDirectory: mvn writes nothing into scripts/.
    # Its output goes to a log, shown only if it fails.
    if ! mvn -B -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$KAFKA_DIR/mvn.log" 2>&1; then
        tail_log "$KAFKA_DIR/mvn.log"
        die "mvn dependency:copy-dependencies failed (is Maven Central reachable?)"
    fi
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
    echo "$want" >"$marker"
    local jars=("$KAFKA_LIBS"/*.jar)
    log "kafka: ${#jars[@]} jars in $((SECONDS - t0)) s"
}

# Rewritten on every `up` so port overrides take effect.
kafka_write_conf() {
    mkdir -p "$KAFKA_DIR/config" "$KAFKA_DATA"
    cat >"$KAFKA_CONF" <<EOF
# Written by scripts/services.sh on every 'up' - edits are overwritten.
# Single-node KRaft: this process is both broker and controller.
process.roles=broker,controller
node.id=1
# Static voter set: simplest for one node, and it keeps working if the
# controller port is overridden after the storage was formatted.
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=6
auto.create.topics.enable=false
# One broker: internal topics cannot have more than one replica.
offsets.topic.replication.factor=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
# Tests want consumers to join at once, not after the default 3 s.
group.initial.rebalance.delay.ms=0
log.retention.hours=24
EOF
    # Broker logs go to stdout, which is redirected to kafka.log.
    cat >"$KAFKA_DIR/config/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
    cat >"$KAFKA_ADMIN_CONF" <<'EOF'
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF
    # CLI tools: warnings only, on stderr, so their stdout stays parseable.
    cat >"$KAFKA_DIR/config/tools-log4j2.properties" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
}

# Run a Kafka CLI main class from the cached jars. Small heap and C1-only JIT:
# these are short-lived JVMs. `timeout` so a hung admin call cannot hang `up`.
kafka_cli() {
    local main="$1"
    shift
    timeout 60 java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Dlog4j2.configurationFile="$KAFKA_DIR/config/tools-log4j2.properties" \
        -cp "$KAFKA_LIBS/*" "$main" "$@"
}

# Format the KRaft storage once; meta.properties marks a formatted log dir.
kafka_format_once() {
    [[ -f "$KAFKA_DATA/meta.properties" ]] && return 0
    local cid_file="$KAFKA_DIR/cluster.id" cid
    if [[ ! -s "$cid_file" ]]; then
        kafka_cli "$KAFKA_STORAGE_MAIN" random-uuid >"$cid_file"
    fi
    cid="$(tr -d '[:space:]' <"$cid_file")"
    log "kafka: formatting $KAFKA_DATA (cluster id $cid)"
    kafka_cli "$KAFKA_STORAGE_MAIN" format -t "$cid" -c "$KAFKA_CONF" >&2 ||
        die "kafka storage format failed"
}

kafka_is_running() { pid_matches "$(read_pid "$KAFKA_PIDFILE")" "$KAFKA_MAIN"; }

kafka_list_topics() {
    [[ -f "$KAFKA_ADMIN_CONF" ]] || return 1
    kafka_cli "$KAFKA_TOPIC_MAIN" --bootstrap-server "$HOST:$KAFKA_PORT" \
        --command-config "$KAFKA_ADMIN_CONF" --list 2>/dev/null
}

kafka_answers() { kafka_list_topics >/dev/null; }

kafka_start() {
    log "kafka: starting on $HOST:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT)"
    # The log is appended to across restarts; keep one old generation once it
    # passes ~50 MB so it cannot grow without bound.
    if [[ -f "$KAFKA_LOG" ]] && (($(stat -c %s "$KAFKA_LOG") > 50000000)); then
        mv -f "$KAFKA_LOG" "$KAFKA_LOG.1"
    fi
    {
        echo
        echo "==== $(date -Is) services.sh: starting kafka ===="
    } >>"$KAFKA_LOG"
    # setsid + nohup: the broker outlives this script and its terminal;
    # in a non-interactive script setsid execs in place, so $! is java's pid.
    # shellcheck disable=SC2086 # KAFKA_HEAP is a list of JVM options
    setsid nohup java $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_DIR/config/log4j2.properties" \
        -Dkafka.logs.dir="$KAFKA_DIR" \
        -cp "$KAFKA_LIBS/*" "$KAFKA_MAIN" "$KAFKA_CONF" \
        >>"$KAFKA_LOG" 2>&1 </dev/null &
    local pid=$! i
    echo "$pid" >"$KAFKA_PIDFILE"
    # Until the forked subshell has exec'd setsid/nohup/java, its command line
    # is still this script's; give the exec a moment before judging the pid.
    for ((i = 0; i < 50; i++)); do
        pid_matches "$pid" "$KAFKA_MAIN" && return 0
        sleep 0.1
    done
}

kafka_wait() {
    local deadline=$((SECONDS + KAFKA_WAIT))
    while ((SECONDS < deadline)); do
        kafka_is_running || { tail_log "$KAFKA_LOG"; die "kafka exited during startup"; }
        port_open "$KAFKA_PORT" && kafka_answers && return 0
        sleep 1
    done
    tail_log "$KAFKA_LOG"
    die "kafka did not answer on $HOST:$KAFKA_PORT within ${KAFKA_WAIT}s"
}

kafka_ensure_topics() {
    local existing spec name parts
    existing="$(kafka_list_topics)" || die "kafka: cannot list topics"
    for spec in "${KAFKA_TOPICS[@]}"; do
        name="${spec%%:*}"
        parts="${spec##*:}"
        grep -qx -- "$name" <<<"$existing" && continue
        log "kafka: creating topic $name ($parts partitions)"
        kafka_cli "$KAFKA_TOPIC_MAIN" --bootstrap-server "$HOST:$KAFKA_PORT" --create \
            --if-not-exists --topic "$name" --partitions "$parts" --replication-factor 1 >/dev/null
    done
}

kafka_up() {
    java_ensure
    mkdir -p "$KAFKA_DIR"
    # The download is not counted against the start-up wait below.
    kafka_ensure_libs
    if kafka_is_running; then
        log "kafka: already running"
    else
        ensure_port_free "$KAFKA_PORT" TB_KAFKA_PORT
        ensure_port_free "$KAFKA_CONTROLLER_PORT" TB_KAFKA_CONTROLLER_PORT
        kafka_write_conf
        kafka_format_once
        kafka_start
    fi
    kafka_wait
    kafka_ensure_topics
    log "kafka: up"
}

kafka_down() {
    local pid
    pid="$(read_pid "$KAFKA_PIDFILE")"
    if ! pid_matches "$pid" "$KAFKA_MAIN"; then
        log "kafka: not running"
        rm -f "$KAFKA_PIDFILE"
        return 0
    fi
    log "kafka: stopping pid $pid"
    kill -TERM "$pid"
    # A clean shutdown flushes logs and writes a KRaft snapshot; be patient,
    # but not forever.
    if ! wait_pid_gone "$pid" 60; then
        log "kafka: pid $pid still alive after 60 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_pid_gone "$pid" 10 || die "kafka pid $pid did not exit"
    fi
    rm -f "$KAFKA_PIDFILE"
}

kafka_kill() { sigkill_recorded kafka "$KAFKA_PIDFILE" "$KAFKA_MAIN"; }

kafka_pid() { kafka_is_running && read_pid "$KAFKA_PIDFILE"; }

kafka_status() {
    if kafka_is_running && [[ -d "$KAFKA_LIBS" ]] && kafka_answers; then
        echo "kafka:    up   (pid $(read_pid "$KAFKA_PIDFILE"), $HOST:$KAFKA_PORT)"
    else
        echo "kafka:    down"
        return 1
    fi
}

# -------------------------------------------------------------- commands ----
cmd_env() {
    echo "export TICKETBLITZ_DATABASE_URL=postgresql://$DB_USER:$DB_PASSWORD@$HOST:$PG_PORT/$DB_NAME"
    echo "export TICKETBLITZ_REDIS_URL=redis://$HOST:$REDIS_PORT/0"
    echo "export TICKETBLITZ_KAFKA_BOOTSTRAP=$HOST:$KAFKA_PORT"
}

cmd_up() {
    local t0=$SECONDS
    mkdir -p "$SERVICES_DIR"
    pg_up
    redis_up
    kafka_up
    log "all services up in $((SECONDS - t0)) s; use: eval \"\$(scripts/services.sh env)\""
}

cmd_down() {
    # Reverse start order. Each stops only the pid it recorded.
    local rc=0
    kafka_down || rc=1
    redis_down || rc=1
    pg_down || rc=1
    return $rc
}

cmd_status() {
    local rc=0
    pg_status || rc=1
    redis_status || rc=1
    kafka_status || rc=1
    return $rc
}

cmd_pids() {
    local name pid
    for name in pg redis kafka; do
        if pid="$("${name}_pid")" && [[ -n "$pid" ]]; then echo "$name $pid"; fi
    done
    return 0
}

usage() {
    echo "usage: $0 up|down|status|env|pids|restart-pg-immediate" >&2
    echo "       $0 start|stop|kill pg|redis|kafka" >&2
    echo "       $0 sql PSQL-ARGS..." >&2
    exit 2
}

# The function prefix of a service name.
service_fn() {
    case "$1" in
    pg | postgres) echo pg ;;
    redis) echo redis ;;
    kafka) echo kafka ;;
    *) usage ;;
    esac
}

main() {
    (($# >= 1)) || usage
    local cmd="$1"
    shift
    case "$cmd" in
    up | down | status | env | pids | restart-pg-immediate) (($# == 0)) || usage ;;
    start | stop | kill) (($# == 1)) || usage ;;
    sql) ;;
    *) usage ;;
    esac
    case "$cmd" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    pids) cmd_pids ;;
    start) mkdir -p "$SERVICES_DIR" && "$(service_fn "$1")_up" ;;
    stop) "$(service_fn "$1")_down" ;;
    kill) "$(service_fn "$1")_kill" ;;
    restart-pg-immediate) pg_restart_immediate ;;
    sql) pg_sql "$@" ;;
    esac
}

main "$@"
