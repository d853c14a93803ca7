#!/usr/bin/env bash
# The main job: end-to-end demo on the embedded tiny backbone and the bundled data.
# Extra arguments go to `python -m dreambat_world demo` (e.g. --output_dir, --steps, --seed).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
python -m dreambat_world demo "$@"
