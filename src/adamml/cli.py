"""The ``adamml`` command: one sub-command per job, each a module of ``adamml.commands``.

Every sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this
file only wires them. The table below holds each command's one-line help, so ``adamml --help``
lists everything without importing any command (torch, PyAV and the models load only for
the command that runs), and ``adamml NAME ...`` imports that one command's module alone.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from adamml.errors import AdamMLError

# name -> (module, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("adamml.commands.demo", "generate, extract, train and evaluate on the embedded dataset"),
    "synth": ("adamml.commands.synth", "write the embedded synthetic audio-visual dataset"),
    "extract": ("adamml.commands.extract", "decode videos once and cache what training needs"),
    "flops": ("adamml.commands.flops", "count GFLOPs (multiply-adds) of a model configuration"),
    "weights": ("adamml.commands.weights", "check that a weights file is the ImageNet network it claims"),
    "train": ("adamml.commands.train", "train a stage of the recipe from a YAML config"),
    "evaluate": ("adamml.commands.evaluate", "evaluate checkpoints: accuracy, mAP, GFLOPs"),
    "predict": ("adamml.commands.predict", "classify video files with a trained model"),
    "export": ("adamml.commands.export", "a trained model as a portable folder (safetensors, model card, ONNX graphs)"),
}

# Sub-commands that run models for inference: their large activations get huge pages
# (adamml.runtime.allocator; must happen before the command's module imports torch).
INFERENCE_COMMANDS = ("evaluate", "predict")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command's name and help; only ``command``'s own options are
    added (its module imported), since only the command that runs needs them."""
    parser = argparse.ArgumentParser(
        prog="adamml", description="Adaptive multi-modal video recognition (AdaMML)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).add_arguments(p)
            p.set_defaults(_module=module_name)
    return parser


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one sub-command (``adamml NAME``), its module's options added."""
    module_name, help_text = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"adamml {command}", description=help_text)
    importlib.import_module(module_name).add_arguments(parser)
    parser.set_defaults(command=command, _module=module_name)
    return parser


def parse_command(command: str, words: list[str]) -> argparse.Namespace:
    """A sub-command's words, options and positionals in any order: ``adamml train --data R
    train.seed=1 --budget 0.5 train.progress=false`` (plain parsing stops taking the overrides
    at the first option after them)."""
    parser = command_parser(command)
    try:
        return parser.parse_intermixed_args(words)
    except TypeError:  # a command with sub-commands of its own (weights ACTION): argparse cannot intermix
        return parser.parse_args(words)


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    command = words[0] if words and words[0] in COMMANDS else None
    if command in INFERENCE_COMMANDS:
        # Only the inference commands touch the allocator, before torch loads.
        from adamml.runtime.allocator import request_huge_pages

        request_huge_pages()
    if command is not None:
        args = parse_command(command, words[1:])
    else:
        parser = build_parser()
        args = parser.parse_args(words)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (AdamMLError, FileNotFoundError) as exc:  # bad input: say what and where, no traceback
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"adamml {args.command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
