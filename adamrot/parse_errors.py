"""Config errors of ``adamrot fit|validate|test`` in one ``adamrot: error:`` line: the
innermost reason of a jsonargparse error, with its dotted key, and no usage dump."""
from __future__ import annotations

import re
import sys
from typing import Optional

from lightning.pytorch.cli import LightningArgumentParser

from callbacks.exits import EXIT_CONFIG_ERROR


def summarize_parse_error(message: str) -> str:
    """The innermost reason of a jsonargparse error, prefixed with its dotted key."""
    keys: list[tuple[int, str]] = []
    best: Optional[tuple[int, str, str]] = None
    for raw in message.splitlines():
        indent = len(raw) - len(raw.lstrip())
        line = raw.strip().lstrip("- ").strip()
        keys = [(i, k) for i, k in keys if i < indent]
        m = re.match(r'Parser key "([^"]+)":\s*(.*)', line)
        if m:
            keys.append((indent, m.group(1)))
            line = m.group(2)
        if not line or line.startswith(("Does not validate", "Subtypes:", "Errors:",
                                        "Given value", "Problem with given class_path",
                                        "Expected a <class 'NoneType'>")):
            continue
        path = ".".join(k for _, k in keys)
        if best is None or len(keys) > best[0]:
            best = (len(keys), path, line)
    if best is None:
        return message.strip().splitlines()[0] if message.strip() else "invalid arguments"
    return f"{best[1]}: {best[2]}" if best[1] else best[2]


class AdamrotParser(LightningArgumentParser):
    """Config errors: the reason first, in one ``adamrot: error:`` line (no usage dump)."""

    def error(self, message: str, ex: Optional[Exception] = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        sub = getattr(ex, "subcommand_parser", None) or self
        prog = sub.prog.replace(" [options]", "")
        sys.stderr.write(f"adamrot: error: {summarize_parse_error(message)}\n"
                         f"  (all options: {prog} --help)\n")
        raise SystemExit(EXIT_CONFIG_ERROR)
