"""Run the mtlsearch CLI from a checkout: ``python cli.py --help``."""

from mtlsearch.cli import main

if __name__ == "__main__":
    main()
