#!/usr/bin/env bash
# The system tools the test suite runs for real (Prometheus and promtool, wrk, curl, and buildah with
# debootstrap for the image test): installed from Debian
# when this user may (root, or sudo without a password), otherwise named with the command to run.
# `make test` and .ci/run call it first, so that a fresh machine never passes by skipping those tests.
set -euo pipefail
packages=()
{ command -v prometheus && command -v promtool; } >/dev/null || packages+=(prometheus)
command -v wrk >/dev/null || packages+=(wrk)
command -v curl >/dev/null || packages+=(curl)  # the TLS tests call the server with curl
# tests/deploy/test_image.py builds the image on a debootstrapped base and runs it
command -v buildah >/dev/null || packages+=(buildah)
command -v debootstrap >/dev/null || packages+=(debootstrap)
[ ${#packages[@]} -eq 0 ] && exit 0
install="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${packages[*]}"
if [ "$(id -u)" = 0 ]; then
  sh -c "$install"
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo sh -c "$install"
else
  echo "the tests need ${packages[*]} (Debian packages), and this user cannot install them:" >&2
  echo "  sudo apt-get install -y ${packages[*]}" >&2
  exit 1
fi
