#!/usr/bin/env bash
# Installs the peers BENCH_PEERS=1 bench/run.sh measures Smartflow against, the versions the issues
# name: Portkey's gateway (npm) and LiteLLM's proxy (its own venv). Benchmark-only: nothing here is
# a dependency of the gateway, and CI never runs it.
#   bench/peers.sh            # into BENCH_PEERS_DIR (default bench/.peers, git-ignored)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${BENCH_PEERS_DIR:-$ROOT/bench/.peers}"
PORTKEY_VERSION=1.15.2
LITELLM_VERSION=1.108.0
mkdir -p "$DIR"
[[ -e "$DIR/portkey/node_modules/@portkey-ai/gateway" ]] ||
    npm install --prefix "$DIR/portkey" "@portkey-ai/gateway@$PORTKEY_VERSION"
if [[ ! -x "$DIR/litellm/bin/litellm" ]]; then
    python3 -m venv "$DIR/litellm"
    "$DIR/litellm/bin/pip" install "litellm[proxy]==$LITELLM_VERSION"
fi
echo "peers installed in $DIR"
