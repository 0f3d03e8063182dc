"""``python -m natkit``: the same as the ``natkit`` command."""

from natkit.cli import main

if __name__ == "__main__":
    main(prog_name="natkit")
