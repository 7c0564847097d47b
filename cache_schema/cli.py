"""What the three command lines share: sub-command dispatch, the top-level help, the error boundary.

``python -m cache_schema``, ``python -m extract`` and ``python -m ground`` each keep a ``COMMANDS``
dict of name -> ``run(argv) -> exit status`` and call `run_commands`, which

- prints every command, one line each (the first line of its function's docstring), for
  ``--help``, ``-h`` and no arguments, under the ``python -m PACKAGE`` name;
- hands the rest of the line to the command, which keeps its own parser and ``--help``;
- runs the command inside `error_boundary`: groundcache's errors (`KNOWN_ERRORS`) become one
  escaped ``error: ...`` line on stderr and exit status 2, anything else is a bug and keeps its
  traceback.

Needs no torch; rich (for the red ``error:``) is imported only when an error is printed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence

from cache_schema.errors import KNOWN_ERRORS

EXIT_BAD_INPUT = 2
"""Exit status of a command stopped by bad input (argparse uses 2 for bad arguments too)."""

Command = Callable[[list[str]], int]
"""A sub-command: takes the arguments after its name, returns the exit status."""


def one_line(err: BaseException) -> str:
    """The error's message on one line: the lines of a multi-line message are joined with '; '."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__


def print_error(message: str | BaseException) -> None:
    """Print ``error: <message>`` as one line on stderr, the message escaped from rich markup.

    Without the escape, rich reads ``[tiny_clip(dim=32)]`` in a message as a style tag and drops it.
    """
    from rich.console import Console
    from rich.markup import escape

    text = one_line(message) if isinstance(message, BaseException) else message
    # soft_wrap: a long message stays one line instead of being wrapped at the terminal width.
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(text)}", highlight=False)


def error_boundary(command: Callable[[], int]) -> int:
    """Run `command` and return its exit status; `KNOWN_ERRORS` print one line and give 2.

    Returns:
        `command`'s status, or `EXIT_BAD_INPUT` when it raised one of `KNOWN_ERRORS`.
    """
    try:
        return command()
    except KNOWN_ERRORS as err:
        print_error(err)
        return EXIT_BAD_INPUT


def summary(command: Command) -> str:
    """A command's one-line description: the first line of its docstring."""
    doc = (command.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def commands_help(prog: str, description: str, commands: Mapping[str, Command]) -> str:
    """The top-level help: usage, `description`, then every command with its summary, one a line."""
    width = max(len(name) for name in commands)
    rows = [f"  {name:<{width}}  {summary(run)}".rstrip() for name, run in commands.items()]
    return "\n".join(
        [
            f"usage: {prog} COMMAND [ARGS ...]",
            "",
            description.strip(),
            "",
            "commands:",
            *rows,
            "",
            f"`{prog} COMMAND --help` shows the options of one command.",
        ]
    )


def run_commands(
    prog: str,
    description: str,
    commands: Mapping[str, Command],
    argv: Sequence[str] | None = None,
    *,
    default: Command | None = None,
) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to ``commands[argv[0]]`` inside `error_boundary`.

    Args:
        prog: how the user typed the program (``python -m ground``), for the help and messages.
        description: what the program does, shown above the command list.
        commands: name -> command, in the order the help lists them.
        argv: the arguments after the program name.
        default: the command that gets the whole line when it starts with an option other than
            ``-h``/``--help`` (``python -m extract --config X`` is ``run --config X``); None: none.

    Returns:
        The command's exit status; 0 after ``--help``; 2 with no arguments (after the help), for an
        unknown command, or when the command raised one of `KNOWN_ERRORS`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(commands_help(prog, description, commands))
        return 0 if argv else EXIT_BAD_INPUT
    if default is not None and argv[0].startswith("-"):
        return error_boundary(lambda: default(argv))
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print_error(f"{prog}: unknown command {name!r}; commands: {', '.join(commands)}")
        return EXIT_BAD_INPUT
    return error_boundary(lambda: commands[name](rest))
