"""``python -m toolkit`` = the ``seg`` command."""

from toolkit.cli import main

main()
