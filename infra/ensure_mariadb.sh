#!/usr/bin/env bash
# Make sure the MySQL/MariaDB server named by DB_HOST/DB_PORT answers; start the local MariaDB if it is ours and
# stopped. Used by `make test`, `make up` and CI.
set -euo pipefail
host=${DB_HOST:-127.0.0.1}
port=${DB_PORT:-3306}
answers() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }
if ! answers; then
  case "$host" in
    127.0.0.1|localhost)
      if [ -x /usr/sbin/mariadbd ]; then
        echo "MariaDB on $host:$port is not answering; starting it"
        # By its pid file: matched by executable alone, any other mariadbd here reads as "already running".
        pid_file=$(/usr/sbin/mariadbd --print-defaults | tr ' ' '\n' | sed -n 's/^--pid-file=//p' | tail -1)
        start-stop-daemon --start --oknodo --background --pidfile "${pid_file:-/run/mysqld/mysqld.pid}" \
          --exec /usr/sbin/mariadbd
      fi ;;
  esac
fi
for _ in $(seq 1 60); do
  answers && exit 0
  sleep 0.5
done
echo "MySQL/MariaDB at $host:$port did not answer within 30 s" >&2
exit 1
