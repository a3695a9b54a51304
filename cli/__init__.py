"""The `tvclean` command-line front end (installed as the `tvclean` package)."""
