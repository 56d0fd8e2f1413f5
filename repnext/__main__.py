"""``python -m repnext``: the command line."""

from .cli import main

if __name__ == "__main__":  # not when a spawned child re-imports the main module
    main()
