"""``python -m refusal_lab.cli``: the console script without the installed entry point."""

from refusal_lab.cli.app import main

if __name__ == "__main__":
    main()
