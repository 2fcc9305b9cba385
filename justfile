# ferrotune tasks. Recipes stay thin: logic lives in tools/ and in Rust.
# Every recipe that compiles goes through tools/with-torch, which installs libtorch (torch 2.11.0 from PyPI)
# and the Python test oracles once, into ~/.cache/ferrotune (FERROTUNE_TORCH_HOME), and sets cargo's env.

set shell := ["bash", "-euo", "pipefail", "-c"]

torch := "tools/with-torch"

# List the recipes.
default:
    @just --list

# Install libtorch and the Python oracle venv (idempotent; seconds when already done).
setup:
    tools/setup-torch.sh > /dev/null
    @echo "torch venv: $(tools/setup-torch.sh | sed -n "s/^export FERROTUNE_TORCH_HOME='\(.*\)'/\1/p")"

# Build the `ferrotune` binary (target/release/ferrotune, runs without LD_LIBRARY_PATH).
build: setup
    {{torch}} cargo build --release --bin ferrotune

# Formatting, clippy (warnings are errors), crate boundaries, every crate builds alone.
check: setup
    cargo fmt --all --check
    {{torch}} cargo clippy --workspace --all-targets --release -- -D warnings
    tools/check-boundaries.sh
    {{torch}} tools/check-crates-alone.sh

# The whole test suite (Rust tests; Python oracles from the venv).
test: build
    {{torch}} cargo test --workspace --release

# The demo fine-tune on the embedded default assets.
finetune: build
    tools/finetune-demo.sh

# Benchmarks against the Python peers (results go into BENCHMARKS.md by hand, with machine and date).
bench: build
    {{torch}} tools/bench/run.sh
