"""What every command shares: the parser that fails in one line, the help formatter, and the flags
several commands take, each defined once here."""

from __future__ import annotations

import argparse
import re


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help does not already name the default in [brackets] and
    there is one to show: not for None, nor for on/off switches."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.nargs == 0 or re.search(r"\[[^\]]*\]\s*$", text):
            return text
        return super()._get_help_string(action)


def package_version() -> str:
    from gptrain.core import version

    return version.package_version()


def print_help(parser: argparse.ArgumentParser) -> int:
    """A command group called without its command: its help, and the exit code of a usage error."""
    parser.print_help()
    return 2


DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"
SOURCE_HELP = ("a GPT-2 size (124M ... 1558M, gpt2 ... gpt2-xl), a Hugging Face GPT-2 folder, a state dict file "
               "(.pth, .pt, .bin, .safetensors), or a gptrain run directory (its final/; RUN/best for the best) "
               "or checkpoint")
RECORDS_TEXT_FIELD_HELP = "the field or column of records that holds the text"


def add_model_flags(p: argparse.ArgumentParser, *, required: bool = True, help: str = "the model",
                    aliases: tuple[str, ...] = ("--checkpoint", "--pretrained"), n_heads: bool = True) -> None:
    """--model SOURCE (also spelled ``aliases``, its names before) and, with ``n_heads``, --n-heads."""
    named = " and ".join(aliases) + (" are aliases" if len(aliases) > 1 else " is an alias")
    p.add_argument("--model", *aliases, dest="model", metavar="SOURCE", required=required,
                   help=f"{help}: {SOURCE_HELP} ({named})")
    if n_heads:
        add_n_heads_flag(p)


def add_sampling_flags(p: argparse.ArgumentParser, *, max_new_tokens: int, temperature: float,
                       top_k: int | None) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens to add")
    p.add_argument("--temperature", type=float, default=temperature, help="0 is greedy; higher is more random")
    p.add_argument("--top-k", type=int, default=top_k, help="sample only among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample only among the most likely tokens that hold this share of the probability")


def add_device_flag(p: argparse.ArgumentParser, *, default: str = "auto", name_default: bool = False) -> None:
    """--device; ``name_default`` writes "[auto]" into the help, for parsers whose formatter does not
    add the default (and for train, whose flags default to the config's value)."""
    p.add_argument("--device", default=default, help=DEVICE_HELP + (" [auto]" if name_default else ""))


def add_precision_flag(p: argparse.ArgumentParser, help: str, *, default: str = "auto") -> None:
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=default, help=help)


def add_text_field_flag(p: argparse.ArgumentParser, help: str = RECORDS_TEXT_FIELD_HELP, *,
                        default: str = "text") -> None:
    p.add_argument("--text-field", default=default, help=help)


def add_n_heads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-heads", type=int, default=None,
                   help="attention heads of a state dict file, which does not record them (GPT-2's widths imply them)")


QUANTIZATIONS = ("int8",)


def add_quantize_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                   help="run the linear layers with int8 weights and per-channel scales: a quarter of fp32's "
                        "weight bytes, for generation bound by memory bandwidth (see docs/generation.md)")
