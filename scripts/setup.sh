#!/usr/bin/env bash
# Installs what lotgrad needs to build and test on Debian 12, then nothing more.
# Idempotent: packages already present are left alone. Run as root (or with sudo).
set -euo pipefail
# OpenMP build of OpenBLAS: BLAS calls share lotgrad's OpenMP thread pool, so one
# owner sets the thread count (no oversubscription). libopenblas-dev is satisfied by it.
PKGS=(build-essential cmake ninja-build libopenblas-openmp-dev libopenblas-dev doctest-dev libstb-dev zlib1g-dev
      libcli11-dev nlohmann-json3-dev libopenmpi-dev openmpi-bin)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: dependencies present"
