"""The `osbuild` command (`python3 -m osbuild`)

Signals are handled from the first line: the heavy imports come after.
"""

import sys

from .interrupt import Interrupted, install


def main() -> None:
    install()
    try:
        from .main_cli import osbuild_cli  # pylint: disable=import-outside-toplevel  # after the handlers

        code = osbuild_cli()
    except Interrupted as e:
        print(f"\nosbuild: interrupted ({e.name}), nothing was kept of the unfinished work", file=sys.stderr)
        code = e.exit_status
    sys.exit(code)


if __name__ == "__main__":
    main()
