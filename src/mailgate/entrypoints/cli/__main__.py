"""``python -m mailgate.entrypoints.cli``: how tests and the benchmark start processes."""

from mailgate.entrypoints.cli import main

main()
