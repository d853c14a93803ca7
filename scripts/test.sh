#!/usr/bin/env bash
# The test suite (offline, tiny models). Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
python -m pytest -q "$@"
