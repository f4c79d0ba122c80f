#!/usr/bin/env bash
# Install the system packages orthogpt builds and runs with (Debian 12 / Ubuntu 24.04).
# Idempotent and quick when everything is present. Needs root or sudo for apt-get.
set -euo pipefail

PKGS=(build-essential cmake ninja-build pkg-config git
      libyaml-cpp-dev libspdlog-dev libfmt-dev libcli11-dev libpcre2-dev nlohmann-json3-dev
      libopenmpi-dev openmpi-bin libgtest-dev libgmock-dev libbenchmark-dev
      bible-kjv python3 python3-matplotlib)
command -v npm >/dev/null 2>&1 || PKGS+=(npm)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#PKGS[@]} packages present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install_deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
