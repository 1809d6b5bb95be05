#!/usr/bin/env bash
# Best effort: make a Docker engine reachable for the Docker discovery tests.
# - an engine already answers: nothing to do;
# - dockerd is installed and we are root: start it in the background;
# - under CI (CI=true) as root with apt-get: install Debian's docker.io (and docker-compose).
# Never fails the build: without an engine, the Docker tests are skipped with the reason.
set -u
docker info >/dev/null 2>&1 && exit 0
[ "$(id -u)" = 0 ] || { echo "docker-engine: not root; Docker tests will be skipped"; exit 0; }
if ! command -v dockerd >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ] && command -v apt-get >/dev/null 2>&1; then
    echo "docker-engine: installing docker.io"
    # docker-compose too: the compose test prefers the real tool to its Docker SDK fallback.
    if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
          docker.io docker-compose) >/tmp/meshpilot-docker-install.log 2>&1; then
      echo "docker-engine: docker.io could not be installed; Docker tests will be skipped"
      exit 0
    fi
  else
    echo "docker-engine: no dockerd; Docker tests will be skipped"
    exit 0
  fi
fi
nohup dockerd >/tmp/meshpilot-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && { echo "docker-engine: dockerd is up"; exit 0; }
  sleep 0.5
done
echo "docker-engine: dockerd did not start (see /tmp/meshpilot-dockerd.log); Docker tests will be skipped"
exit 0
