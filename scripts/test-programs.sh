#!/usr/bin/env bash
# Makes sure the system programs that `npm test` uses for real are installed: a real redis-server for the
# Redis tests, Debian's chromium for the dashboard test, jq for the README's log-filtering one-liner.
# Missing ones are installed with apt-get when that is possible (root on Debian), once and only those;
# otherwise this stops at once with one line naming what to install. No test skips for a missing program.
set -euo pipefail

# "command:debian-package"
PROGRAMS=("redis-server:redis-server" "chromium:chromium" "jq:jq")

missing=()
for entry in "${PROGRAMS[@]}"; do
  command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "npm test needs these system programs: install ${missing[*]} (Debian: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi

echo "npm test: installing ${missing[*]} with apt-get (once; present programs are not reinstalled)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for entry in "${PROGRAMS[@]}"; do
  command -v "${entry%%:*}" >/dev/null 2>&1 || { echo "npm test: ${entry%%:*} is still missing after apt-get install ${entry#*:}" >&2; exit 1; }
done
