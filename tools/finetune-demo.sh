#!/usr/bin/env bash
# `just finetune`: the demo pipeline on the project's own embedded assets. It grows with the trainer issue;
# today it shows the environment the fine-tune will run on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=target/release/ferrotune
"$bin" env
