"""`python -m mmfm.serve DIR ... --host --port`: the same as `mmfm serve`."""
import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
