"""Command-line parsing shared by the host stand-ins, following glibc getopt to the letter.

The real lspci, rdmsr and dmesg parse their arguments with glibc ``getopt``/``getopt_long``:
options and operands may be interleaved (GNU permutation), short options may be bundled
(``-vvk``) and take their argument attached or separate (``-d10de:`` / ``-d 10de:``), long
options may be abbreviated to any unique prefix (``--unsigned`` for ``--unsigned-decimal``) and
take ``--opt=value`` or ``--opt value``. The error messages below are glibc's own wording, so a
stand-in prints exactly what the real tool prints before its usage text.
"""

from __future__ import annotations

from dataclasses import dataclass

NO_ARG = 0
REQUIRED_ARG = 1
OPTIONAL_ARG = 2


@dataclass(frozen=True)
class LongOpt:
    """One entry of a getopt_long option table."""

    name: str
    has_arg: int
    key: str


class GetoptError(Exception):
    """A parse error; ``str(err)`` is the complete glibc message line (without newline)."""


def _parse_short(prog: str, arg: str, shortopts: str, args: list[str], i: int, out: list[tuple[str, str | None]]) -> int:
    """Parse a bundle of short options in ``arg``; return the index of the next argument."""
    pos = 1
    while pos < len(arg):
        char = arg[pos]
        idx = shortopts.find(char)
        if char == ":" or idx < 0:
            raise GetoptError(f"{prog}: invalid option -- '{char}'")
        takes = shortopts[idx + 1 : idx + 2] == ":"
        optional = takes and shortopts[idx + 2 : idx + 3] == ":"
        if not takes:
            out.append((char, None))
            pos += 1
            continue
        rest = arg[pos + 1 :]
        if rest:
            out.append((char, rest))
        elif optional:
            out.append((char, None))
        elif i + 1 < len(args):
            i += 1
            out.append((char, args[i]))
        else:
            raise GetoptError(f"{prog}: option requires an argument -- '{char}'")
        return i + 1
    return i + 1


def _parse_long(prog: str, arg: str, longopts: list[LongOpt], args: list[str], i: int, out: list[tuple[str, str | None]]) -> int:
    """Parse one ``--name[=value]`` argument; return the index of the next argument."""
    body = arg[2:]
    name, eq, value = body.partition("=")
    exact = [opt for opt in longopts if opt.name == name]
    if exact:
        found = exact[0]
    else:
        matches = [opt for opt in longopts if opt.name.startswith(name)]
        if not matches:
            raise GetoptError(f"{prog}: unrecognized option '--{body}'")
        first = matches[0]
        if any((m.has_arg, m.key) != (first.has_arg, first.key) for m in matches[1:]):
            names = " ".join(f"'--{m.name}'" for m in matches)
            raise GetoptError(f"{prog}: option '--{body}' is ambiguous; possibilities: {names}")
        found = first
    if eq:
        if found.has_arg == NO_ARG:
            raise GetoptError(f"{prog}: option '--{found.name}' doesn't allow an argument")
        out.append((found.key, value))
    elif found.has_arg == REQUIRED_ARG:
        if i + 1 >= len(args):
            raise GetoptError(f"{prog}: option '--{found.name}' requires an argument")
        i += 1
        out.append((found.key, args[i]))
    else:
        out.append((found.key, None))
    return i + 1


def gnu_getopt(
    prog: str, args: list[str], shortopts: str, longopts: list[LongOpt] | None = None
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Parse ``args`` (argv without argv[0]) the way glibc getopt_long does by default.

    Returns ``(options, operands)`` where options is a list of ``(key, value)`` in command-line
    order: the key of a short option is its letter, that of a long option its table key.
    ``--`` ends option parsing. Raises GetoptError with glibc's message.
    """
    longopts = longopts or []
    options: list[tuple[str, str | None]] = []
    operands: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            operands.extend(args[i + 1 :])
            break
        if arg.startswith("--") and longopts:
            i = _parse_long(prog, arg, longopts, args, i, options)
        elif arg.startswith("-") and arg != "-":
            i = _parse_short(prog, arg, shortopts, args, i, options)
        else:
            operands.append(arg)
            i += 1
    return options, operands
