#!/usr/bin/env bash
# Installs every build, test and benchmark dependency from Debian 12's archive.
# The Dockerfile and .ci/run use this same script.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
PKGS=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libabsl-dev libyaml-cpp-dev nlohmann-json3-dev libre2-dev
  zlib1g-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev prometheus-cpp-dev
  libopenblas0-pthread liblapack-dev libblas-dev
  libsqlite3-dev libpq-dev postgresql postgresql-client libssl-dev openssl
  protobuf-compiler
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev
  python3 python3-numpy python3-torch python3-grpcio python3-protobuf python3-sklearn
  python3-yaml
  python3-venv python3-pip python3-setuptools python3-wheel
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "install_deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
