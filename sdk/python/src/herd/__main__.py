"""`python -m herd ARGS`: the `herd` binary of this installation, as if run as `herd ARGS`."""

import os
import sys

from .daemon import find_herd_bin


def main() -> None:
    herd = find_herd_bin()
    os.execv(herd, [herd, *sys.argv[1:]])


if __name__ == "__main__":
    main()
