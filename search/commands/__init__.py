"""One module per command-line command (see search/cli.py)."""
