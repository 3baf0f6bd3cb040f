"""The ``irl-jax`` console command: ``irl-jax run|generate|report|plot|plan [ARGS...]``.

Each subcommand forwards the rest of the command line to one module's main, so
``irl-jax report runs/a`` is ``python -m irl_jax.report runs/a``:

* ``run`` → ``experiments.run`` (train: ``--config=FILE --workdir=DIR --config.FIELD=VALUE``);
* ``generate`` → ``irl_jax.generate`` (sample from a saved model);
* ``report`` → ``irl_jax.report`` (table of final metrics);
* ``plot`` → ``irl_jax.plot`` (metric curves as an image);
* ``plan`` → ``irl_jax.plan`` (ahead-of-time memory plan of a config on a TPU slice or GPU).

Only the chosen module is imported (``run`` defines global absl flags; the others parse with
argparse, ``plan`` with its own absl ``FlagValues``), so each subcommand's startup cost and
flags are its own.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

PROG = "irl-jax"
COMMANDS = {
    "run": ("experiments.run", "train an experiment config (absl flags: --config=FILE ...)"),
    "generate": ("irl_jax.generate", "sample responses from a Hugging Face model directory"),
    "report": ("irl_jax.report", "print a table of the final metrics of run directories"),
    "plot": ("irl_jax.plot", "plot logged metrics of run directories to an image"),
    "plan": ("irl_jax.plan", "compile a config ahead of time: memory per device, FLOPs, fits?"),
}


def usage() -> str:
    """The top-level help text."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} {{{','.join(COMMANDS)}}} [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", f"'{PROG} COMMAND --help' describes a command's flags."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatches to a subcommand's main.

    Args:
      argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
      The subcommand's exit status (2 for a missing or unknown command; ``run`` exits through
      ``absl.app.run``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"{PROG}: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    prog = f"{PROG} {command}"
    if command == "run":
        from absl import app, flags

        if any(arg in ("-h", "--help", "--helpshort") for arg in rest):
            # absl's own help describes the __main__ module (this one), not experiments.run.
            print(f"usage: {prog} --config=FILE [FLAGS]\n\n{module.__doc__.strip()}\n")
            print(flags.FLAGS.module_help(module))
            return 0
        app.run(module.main, argv=[prog, *rest])
        return 0
    return module.main(rest, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
