"""The `osbuild` command (`python3 -m osbuild`)

Signals are handled from the first line: the heavy imports come after.
"""

import sys

from .interrupt import Interrupted, install, report


def main() -> None:
    install()
    try:
        # after the handlers: the imports take a while
        from .main_cli import main as command  # noqa: PLC0415  # pylint: disable=import-outside-toplevel
    except Interrupted as e:
        sys.exit(report(e))
    command()


if __name__ == "__main__":
    main()
