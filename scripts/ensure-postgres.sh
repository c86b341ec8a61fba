#!/usr/bin/env bash
# Prints a Postgres URL the tests can use: DATABASE_URL if set, else a server already
# answering on 127.0.0.1:5432, else (as root, with apt-get) a local PostgreSQL installed
# and started here. Anything else: one line saying what to install, exit 1.
set -euo pipefail

default_url="postgres://postgres@127.0.0.1:5432/postgres"

answers() {
  # Bash's /dev/tcp avoids needing psql just to probe.
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/5432" 2>/dev/null
}

if [ -n "${DATABASE_URL:-}" ]; then
  echo "$DATABASE_URL"
  exit 0
fi
if answers; then
  echo "$default_url"
  exit 0
fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "installing PostgreSQL with apt-get..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  # Tests connect as postgres over TCP without a password, like a CI service container.
  if ! grep -q "central-registry tests" "$hba"; then
    sed -i '1i host all postgres 127.0.0.1/32 trust # central-registry tests' "$hba"
  fi
  echo "starting PostgreSQL $version..." >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  for _ in $(seq 1 60); do
    if answers; then
      echo "$default_url"
      exit 0
    fi
    sleep 0.5
  done
  echo "PostgreSQL did not start; see /var/log/postgresql/" >&2
  exit 1
fi

echo "Tests need PostgreSQL: set DATABASE_URL, or install it (sudo apt-get install postgresql)." >&2
exit 1
