"""``python -m seg.toolkit`` = the ``seg`` command."""

from seg.toolkit.cli import main

main()
