"""The ``adamml`` command: one sub-command per job, each implemented next to what it runs.

Every sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this
file only wires them, so ``adamml --help`` lists everything the package can do.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from adamml.errors import AdamMLError

# name -> (module, one-line help). Imported lazily so `adamml --help` stays instant.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("adamml.demo", "generate, extract, train and evaluate on the embedded dataset"),
    "synth": ("adamml.data.synth", "write the embedded synthetic audio-visual dataset"),
    "extract": ("adamml.scale.extract", "decode videos once and cache what training needs"),
    "flops": ("adamml.models.flops", "count GFLOPs (multiply-adds) of a model configuration"),
    "weights": ("adamml.models.weights", "check that a weights file is the ImageNet network it claims"),
    "train": ("adamml.training.run", "train a stage of the recipe from a YAML config"),
    "evaluate": ("adamml.evaluation.evaluate", "evaluate checkpoints: accuracy, mAP, GFLOPs"),
    "predict": ("adamml.commands.predict", "classify video files with a trained model"),
    "export": ("adamml.commands.export", "a trained model as a portable folder (safetensors, model card, ONNX graphs)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adamml", description="Adaptive multi-modal video recognition (AdaMML)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a sub-command not built yet in this checkout
            if exc.name and exc.name.startswith("adamml"):
                p.set_defaults(_missing=str(exc))
                continue
            raise
        module.add_arguments(p)
    return parser


# Sub-commands that run models for inference: their large activations get huge pages
# (adamml.runtime.allocator; must happen before the parser imports torch).
INFERENCE_COMMANDS = ("evaluate", "predict")


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in INFERENCE_COMMANDS:
        from adamml.runtime.allocator import request_huge_pages

        request_huge_pages()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    if getattr(args, "_missing", None):
        print(f"adamml {args.command}: not available ({args._missing})", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(args._module)
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (AdamMLError, FileNotFoundError) as exc:  # bad input: say what and where, no traceback
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"adamml {args.command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
