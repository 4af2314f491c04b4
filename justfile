# Developer commands; each mirrors what README.md documents.

# Run the end-to-end demo (embedded defaults, no keys).
demo *ARGS:
    uv run rakka-trio demo {{ARGS}}

# Run the test suite.
test *ARGS:
    uv run pytest {{ARGS}}

# Run the benchmarks (ratios against peers measured in the same run).
bench *ARGS:
    uv run --group bench python bench/run.py {{ARGS}}

# Lint, format check and strict type check.
lint:
    uv run ruff check .
    uv run ruff format --check .
    uv run mypy

# Open the live console on a control server (token from $RAKKA_TOKEN or --token).
tui URL *ARGS:
    uv run rakka-trio tui {{URL}} {{ARGS}}
