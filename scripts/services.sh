# shellcheck shell=bash
# scripts/services.sh — source me (bash). Makes sure a PostgreSQL and a Redis
# are reachable and exports DATABASE_URL and REDIS_URL. For each service:
#   1. an already-set DATABASE_URL / REDIS_URL is kept;
#   2. else the local server on 127.0.0.1:5432 / 127.0.0.1:6379 is used if it
#      answers (database "processhub" is created there, trust auth assumed);
#   3. else a private throwaway server is started on a free port in a temp dir.
# Private servers are stopped and deleted by processhub_services_cleanup:
#     source scripts/services.sh && trap processhub_services_cleanup EXIT
# For testing, PROCESSHUB_PG_PROBE_PORT / PROCESSHUB_REDIS_PROBE_PORT replace
# the probed ports 5432 / 6379.

if ! (return 0 2>/dev/null); then
    echo "processhub: scripts/services.sh must be sourced: source scripts/services.sh" >&2
    exit 1
fi

_ph_say() { echo "processhub: $*" >&2; }
_ph_mask() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }  # hide passwords
_ph_is_root() { [ "$(id -u)" = 0 ]; }

_ph_port_open() {  # something listens on 127.0.0.1:$1
    python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2).close()' "$1" 2>/dev/null
}

_ph_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_ph_pg_ready() {  # PostgreSQL accepts connections on 127.0.0.1:$1
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -t 3 -h 127.0.0.1 -p "$1"
    else
        _ph_port_open "$1"
    fi
}

_ph_redis_ready() {  # Redis answers PING on 127.0.0.1:$1
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(timeout 5 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]
    else
        python3 -c 'import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2)
s.sendall(b"PING\r\n")
sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)' "$1" 2>/dev/null
    fi
}

_ph_as_pg() {  # run a PostgreSQL server command; as root, run it as user postgres
    if ! _ph_is_root; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u postgres -- "$@"
    else
        su postgres -s /bin/bash -c "$(printf '%q ' "$@")"
    fi
}

_ph_pg_bindir() {  # dir of initdb + pg_ctl (+ createdb): PATH (symlinks resolved), then newest /usr/lib/postgresql/*/bin
    local d dirs=()
    if d=$(command -v initdb 2>/dev/null); then dirs+=("$(dirname "$(readlink -f "$d")")"); fi
    while IFS= read -r d; do dirs+=("$d"); done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV)
    for d in "${dirs[@]}"; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
    done
    return 1
}

_ph_createdb() {  # $1 = createdb binary, $2 = port; "already exists" is fine
    local out
    if out=$("$1" -h 127.0.0.1 -p "$2" -U postgres processhub 2>&1) || [[ $out == *"already exists"* ]]; then
        return 0
    fi
    _ph_say "could not create database processhub on 127.0.0.1:$2: $out"
    _ph_say "start a PostgreSQL with trust auth for user postgres, or set DATABASE_URL=postgres://..."
    return 1
}

_ph_start_pg() {  # $1 = probed port (for messages)
    local bindir dir port
    if ! bindir=$(_ph_pg_bindir); then
        _ph_say "PostgreSQL is not reachable on 127.0.0.1:$1 and no initdb/pg_ctl was found. Install it: apt-get install postgresql (Debian/Ubuntu) or start one and set DATABASE_URL=postgres://..."
        return 1
    fi
    if _ph_is_root && ! { id -u postgres >/dev/null 2>&1 && { command -v runuser || command -v su; } >/dev/null 2>&1; }; then
        _ph_say "PostgreSQL refuses to run as root and there is no 'postgres' user to run it as. Create one (useradd --system --create-home postgres), run as a normal user, or start a server and set DATABASE_URL=postgres://..."
        return 1
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/processhub-pg-$$.XXXXXX") || return 1
    _PH_PG_DIR=$dir _PH_PG_BINDIR=$bindir  # from here on, cleanup knows about it
    if _ph_is_root; then chown postgres: "$dir" || return 1; fi
    if ! _ph_as_pg test -w "$dir"; then
        _ph_say "user postgres cannot write to $dir; point TMPDIR to a directory it can reach (e.g. TMPDIR=/tmp)"
        return 1
    fi
    port=$(_ph_free_port) || return 1
    if ! (cd "$dir" && _ph_as_pg "$bindir/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C --no-sync) >"$dir/initdb.log" 2>&1; then
        _ph_say "initdb failed:"; tail -n 20 "$dir/initdb.log" >&2
        return 1
    fi
    printf '%s\n' "listen_addresses = '127.0.0.1'" "port = $port" "unix_socket_directories = '$dir'" \
        "fsync = off" "synchronous_commit = off" "full_page_writes = off" >>"$dir/data/postgresql.conf"
    if ! (cd "$dir" && _ph_as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start) >/dev/null 2>&1; then
        _ph_say "private PostgreSQL failed to start:"; tail -n 20 "$dir/postgres.log" >&2
        return 1
    fi
    local createdb=$bindir/createdb
    [ -x "$createdb" ] || createdb=$(command -v createdb) || createdb=createdb
    _ph_createdb "$createdb" "$port" || return 1
    _PH_PG_URL=postgres://postgres@127.0.0.1:$port/processhub
    export DATABASE_URL=$_PH_PG_URL
}

_ph_start_redis() {  # $1 = probed port (for messages)
    local dir port
    if ! command -v redis-server >/dev/null 2>&1; then
        _ph_say "Redis is not reachable on 127.0.0.1:$1 and no redis-server was found. Install it: apt-get install redis-server (Debian/Ubuntu) or start one and set REDIS_URL=redis://..."
        return 1
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/processhub-redis-$$.XXXXXX") || return 1
    _PH_REDIS_DIR=$dir
    port=$(_ph_free_port) || return 1
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
        --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null 2>&1
    for _ in $(seq 50); do _ph_redis_ready "$port" && break; sleep 0.1; done
    if ! _ph_redis_ready "$port"; then
        _ph_say "private Redis failed to start:"; tail -n 20 "$dir/redis.log" >&2
        return 1
    fi
    _PH_REDIS_URL=redis://127.0.0.1:$port/0
    export REDIS_URL=$_PH_REDIS_URL
}

# Stop and delete the private servers started above (safe to call repeatedly).
processhub_services_cleanup() {
    local pid
    if [ -n "${_PH_PG_DIR:-}" ]; then
        if [ -f "$_PH_PG_DIR/data/postmaster.pid" ]; then
            (cd "$_PH_PG_DIR" && _ph_as_pg "$_PH_PG_BINDIR/pg_ctl" -D "$_PH_PG_DIR/data" -m immediate -w stop) >/dev/null 2>&1 || true
        fi
        rm -rf "$_PH_PG_DIR" || true
        if [ "${DATABASE_URL:-}" = "${_PH_PG_URL:-}" ]; then unset DATABASE_URL; fi
        _PH_PG_DIR='' _PH_PG_URL=''
    fi
    if [ -n "${_PH_REDIS_DIR:-}" ]; then
        if pid=$(cat "$_PH_REDIS_DIR/redis.pid" 2>/dev/null) && kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -rf "$_PH_REDIS_DIR" || true
        if [ "${REDIS_URL:-}" = "${_PH_REDIS_URL:-}" ]; then unset REDIS_URL; fi
        _PH_REDIS_DIR='' _PH_REDIS_URL=''
    fi
    return 0
}

_ph_services_main() {
    local pg_port=${PROCESSHUB_PG_PROBE_PORT:-5432} redis_port=${PROCESSHUB_REDIS_PROBE_PORT:-6379} createdb
    if [ -n "${DATABASE_URL:-}" ]; then
        _ph_say "PostgreSQL: using DATABASE_URL from the environment: $(_ph_mask "$DATABASE_URL")"
    elif _ph_pg_ready "$pg_port"; then
        createdb=$(command -v createdb) || createdb=$(_ph_pg_bindir)/createdb
        if [ -x "$createdb" ]; then
            _ph_createdb "$createdb" "$pg_port" || return 1
        else
            _ph_say "createdb not found; assuming database processhub exists on 127.0.0.1:$pg_port"
        fi
        export DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/processhub
        _ph_say "PostgreSQL: using existing server: $DATABASE_URL"
    else
        _ph_start_pg "$pg_port" || return 1
        _ph_say "PostgreSQL: started private server in $_PH_PG_DIR: $DATABASE_URL"
    fi
    if [ -n "${REDIS_URL:-}" ]; then
        _ph_say "Redis: using REDIS_URL from the environment: $(_ph_mask "$REDIS_URL")"
    elif _ph_redis_ready "$redis_port"; then
        export REDIS_URL=redis://127.0.0.1:$redis_port/0
        _ph_say "Redis: using existing server: $REDIS_URL"
    else
        _ph_start_redis "$redis_port" || return 1
        _ph_say "Redis: started private server in $_PH_REDIS_DIR: $REDIS_URL"
    fi
}

if ! _ph_services_main; then
    processhub_services_cleanup
    return 1
fi
