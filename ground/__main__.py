"""`python -m ground ...` and the `groundcache-ground` script (see ground/cli.py).

The process's torch thread policy is set here, once, before any command runs
(`ground.threads`: one intra-op thread unless `$GROUNDCACHE_TORCH_THREADS` says otherwise).
"""

import sys

from ground.cli import main as cli_main
from ground.threads import ThreadSettingError, apply_thread_policy


def main(argv: list[str] | None = None) -> int:
    try:
        apply_thread_policy()
    except ThreadSettingError as err:  # before any command, so outside their error boundary
        print(f"error: {err}", file=sys.stderr)
        return 2
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
