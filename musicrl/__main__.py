"""``python -m musicrl`` runs the CLI."""

from musicrl.cli import main


main()
