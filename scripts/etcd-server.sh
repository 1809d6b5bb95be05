#!/usr/bin/env bash
# The etcd binary for the replica tests (tests/e2e/test_replicas.py, tests/unit/test_store_etcd.py).
# - etcd is on PATH: nothing to do;
# - under CI (CI=true) as root with apt-get: install Debian's etcd-server; failing that, fail:
#   under CI the etcd tests must run, never skip;
# - elsewhere: say so; the etcd tests skip with the reason.
set -u
command -v etcd >/dev/null 2>&1 && exit 0
if [ "${CI:-}" = "true" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "etcd-server: installing Debian's etcd-server"
    if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        etcd-server) >/tmp/meshpilot-etcd-install.log 2>&1 && command -v etcd >/dev/null; then
      exit 0
    fi
    echo "etcd-server: etcd-server could not be installed (see /tmp/meshpilot-etcd-install.log)"
    exit 1
  fi
  echo "etcd-server: CI=true but not root with apt-get: cannot install etcd-server"
  exit 1
fi
echo "etcd-server: no etcd on PATH (apt-get install etcd-server); the etcd tests will be skipped"
exit 0
