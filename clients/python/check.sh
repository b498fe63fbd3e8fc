#!/usr/bin/env bash
# Python checks (CI runs this; so can you): builds `fdfs` (debug), installs clients/python with its test extras
# into a venv under target/ (as `pip install` would for a user: not editable), then ruff, mypy, the client and
# Django tests, and the example shop's end-to-end test. Every pytest run must collect tests (exit 5 fails).
#
# The aws CLI (awscli from PyPI, pinned) gets a venv of its own, target/awscli-venv: awscli 1.x pins a botocore
# that is not the one boto3 in the test venv needs. tests/test_s3_awscli.py runs it (FDFS_AWS_CLI).
# tests/test_s3_big.py runs nginx (Debian's; .ci/run installs it before this script).
#
# Environment: FDFS_PY_VENV (default target/py-venv), FDFS_PY_BIG_FILE_MB (size of the streamed big-file tests,
# plain and through the S3 door, default 1024).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${FDFS_PY_VENV:-$ROOT/target/py-venv}"
PY="$VENV/bin/python"

if [[ ! -x "$PY" ]]; then
    if ! python3 -m venv "$VENV"; then
        # Debian's own python3 needs python3-venv for this.
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        python3 -m venv "$VENV"
    fi
fi
"$PY" -m pip install -q --disable-pip-version-check --upgrade "$ROOT/clients/python[test]"
# tests/test_s3_postgres.py runs a PostgreSQL server of its own (Debian's; it fails, not skips, without one).
if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
fi
AWSCLI_VERSION="1.46.2"
AWS_VENV="$ROOT/target/awscli-venv"
if ! "$AWS_VENV/bin/aws" --version 2>/dev/null | grep -q "^aws-cli/$AWSCLI_VERSION "; then
    python3 -m venv "$AWS_VENV"
    "$AWS_VENV/bin/python" -m pip install -q --disable-pip-version-check "awscli==$AWSCLI_VERSION"
fi
export FDFS_AWS_CLI="$AWS_VENV/bin/aws"
# `--setup`: only the installs (.ci/prepare runs them while cargo builds).
[[ ${1:-} == --setup ]] && exit 0
(cd "$ROOT" && cargo build -q -p fdfs)

for dir in clients/python examples/django-shop; do
    cd "$ROOT/$dir"
    echo "== $dir: ruff, mypy, pytest"
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/mypy"
    "$PY" -m pytest -p no:cacheprovider
done
