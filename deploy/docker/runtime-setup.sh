#!/bin/sh
# The Dockerfile's user step; tests/ship/test_deploy_scripts.py runs it against a scratch /etc.
#
#   deploy/docker/runtime-setup.sh            # in the image: user `miner` (uid/gid 10001), state dir
#   ROOT=/tmp/scratch deploy/docker/runtime-setup.sh   # the same into another root (useradd --prefix)
#
# The miner runs as this unprivileged user; its state (logs, metagraph snapshot) goes to
# STATE_DIR, a volume; its hotkey is mounted read-only at WALLETS (never baked into the image).
set -eu
ROOT=${ROOT:-}
USER_NAME=${USER_NAME:-miner}
USER_ID=${USER_ID:-10001}
STATE_DIR=${STATE_DIR:-/var/lib/streetcascade}
WALLETS=${WALLETS:-/home/miner/.bittensor/wallets}

if [ -n "$ROOT" ]; then
    PREFIX="--prefix $ROOT"
else
    PREFIX=""
fi
# shellcheck disable=SC2086  # PREFIX is empty or two words
groupadd $PREFIX --gid "$USER_ID" "$USER_NAME"
# shellcheck disable=SC2086
useradd $PREFIX --uid "$USER_ID" --gid "$USER_ID" --no-log-init --create-home --home-dir "/home/$USER_NAME" \
    --shell /usr/sbin/nologin "$USER_NAME"
mkdir -p "$ROOT$STATE_DIR" "$ROOT$WALLETS"
chown -R "$USER_ID:$USER_ID" "$ROOT$STATE_DIR" "$ROOT/home/$USER_NAME"
chmod 0750 "$ROOT$STATE_DIR"
chmod 0700 "$ROOT$WALLETS"
