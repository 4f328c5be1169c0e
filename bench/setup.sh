#!/usr/bin/env bash
# What the benchmark needs beyond `make install`: Debian's postfix package (for the Postfix
# row; only the programs are used: the benchmark runs a private instance with its own
# configuration and queue directory, see bench/postfix.py) and a reachable PostgreSQL for
# the PostgreSQL row (bench/run.py --pg-url, default postgresql+psycopg://postgres@127.0.0.1:5432/postgres).
set -euo pipefail

if ! command -v postfix >/dev/null 2>&1 && [ ! -x /usr/sbin/postfix ]; then
  echo "bench: installing Debian's postfix (the programs only; nothing is configured or started)"
  # "No configuration": the package writes no main.cf and starts no system instance.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi

if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "bench: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
fi
