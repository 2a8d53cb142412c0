#!/usr/bin/env bash
# Starts the services the test suites talk to, unless they already answer, and waits until
# each one does: PostgreSQL (127.0.0.1:5432), MariaDB (127.0.0.1:3306) and Redis
# (127.0.0.1:6379). Safe to run again: a service that answers is left alone.
#
# The store's tests need MariaDB and PostgreSQL (they fail, never skip, without them); the
# shared-state tests need Redis. Exits non-zero, naming the service, when one does not answer
# within the bounded wait.
set -euo pipefail

readonly WAIT_SECONDS=60

postgres_answers() {
    pg_isready -h 127.0.0.1 -q >/dev/null 2>&1
}

mariadb_answers() {
    if command -v mariadb-admin >/dev/null 2>&1; then
        mariadb-admin -h 127.0.0.1 -uroot ping >/dev/null 2>&1
    else
        mysqladmin -h 127.0.0.1 -uroot ping >/dev/null 2>&1
    fi
}

redis_answers() {
    [ "$(redis-cli -h 127.0.0.1 ping 2>/dev/null)" = "PONG" ]
}

start_postgres() {
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
}

start_mariadb() {
    # The server's socket directory lives on a tmpfs that a fresh machine may not have yet.
    if [ ! -d /run/mysqld ]; then
        mkdir -p /run/mysqld
        if id mysql >/dev/null 2>&1; then
            chown mysql:mysql /run/mysqld
        fi
    fi
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
}

start_redis() {
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

# Start whatever is not answering. A start command that fails is reported but does not stop
# the script: the wait below is what decides, and names the service that never came up.
for service in postgres mariadb redis; do
    if "${service}_answers"; then
        echo "services: ${service} already answers"
    else
        echo "services: starting ${service}"
        "start_${service}" || echo "services: the start command of ${service} failed" >&2
    fi
done

deadline=$((SECONDS + WAIT_SECONDS))
waiting=(postgres mariadb redis)
while [ "${#waiting[@]}" -gt 0 ]; do
    still_waiting=()
    for service in "${waiting[@]}"; do
        if "${service}_answers"; then
            echo "services: ${service} answers"
        else
            still_waiting+=("${service}")
        fi
    done
    waiting=("${still_waiting[@]+"${still_waiting[@]}"}")
    if [ "${#waiting[@]}" -eq 0 ]; then
        break
    fi
    if [ "${SECONDS}" -ge "${deadline}" ]; then
        echo "services: no answer within ${WAIT_SECONDS} s from: ${waiting[*]}" >&2
        exit 1
    fi
    sleep 1
done
echo "services: all answer"
