"""``python -m autograder grade ASSIGNMENT --submissions DIR``: see :mod:`autograder.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
