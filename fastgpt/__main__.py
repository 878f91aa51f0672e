"""usage: python -m fastgpt COMMAND [options]   (each command also runs as python -m fastgpt.COMMAND)"""
import importlib
import sys

COMMANDS = {"train": "pre-train a GPT (python -m fastgpt.train --help)",
            "finetune": "fine-tune on a task, or label texts with --predict (python -m fastgpt.finetune --help)",
            "sample": "generate text from a trained model (python -m fastgpt.sample --help)",
            "selftest": "check the fused kernels against the reference on this machine (python -m fastgpt.selftest)",
            "checkpoint": "verify training checkpoints (python -m fastgpt.checkpoint OUT_DIR)",
            "data": "fetch and prepare the offline data cache (python -m fastgpt.data --help)"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\ncommands:\n" + "\n".join(f"  {k:<11} {v}" for k, v in COMMANDS.items()))
        return 0
    if argv[0] not in COMMANDS:
        print(f"python -m fastgpt: error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    return importlib.import_module(f"fastgpt.{argv[0]}").main(argv[1:]) or 0


if __name__ == "__main__":
    from fastgpt import cli
    cli.run_program(main)
