"""Everything ``fit`` would build, without training: the config parsed by the same
LightningCLI machinery (:class:`adamrot.train.AdamrotCLI`: same parser, same overrides, same
refusals), the LightningModule on the meta device (no weight memory, no init time), and the
data module only where reading it costs nothing to download (a prepared directory, the
embedded corpus, small local sources). No trainer is built: a GPU config is checked on a
CPU machine."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch import LightningDataModule, LightningModule

from adamrot.errors import ConfigError
from adamrot.parse_errors import summarize_parse_error
from adamrot.train import AdamrotCLI

#: local text/image sources larger than this are not prepared by preflight (fit would)
MAX_LOCAL_BYTES = 64 << 20


class PreflightCLI(AdamrotCLI):
    """``AdamrotCLI`` that parses and instantiates the model (on the meta device) and the
    callbacks, but no trainer, no data module and no checkpoint."""

    def _parse_ckpt_path(self) -> None:         # preflight never resumes
        return

    def _set_seed(self) -> None:                 # no weights are drawn on the meta device
        return

    def instantiate_classes(self) -> None:
        cfg = self.config.clone()
        cfg["data"] = None                       # instantiated by build() when it is safe
        try:
            with torch.device("meta"):
                self.config_init = self.parser.instantiate_classes(cfg)
        except (ValueError, FileNotFoundError) as e:
            message = str(e)
            if "Does not validate" in message or "Parser key" in message:
                message = summarize_parse_error(message)     # jsonargparse's nesting
            raise ConfigError(message) from e
        self.model = self._get(self.config_init, "model")
        self.datamodule = None
        self.trainer = None

    def after_instantiate_classes(self) -> None:
        return


@dataclass
class Built:
    """What preflight works on: the resolved config (``dump``), the config files given, the
    model on the meta device and the data module (or why there is none)."""
    dump: dict
    configs: list[str]
    model: LightningModule
    datamodule: Optional[LightningDataModule] = None
    data_note: str = ""
    root_given: Optional[str] = None
    findings: list = field(default_factory=list)

    @property
    def trainer(self) -> dict:
        return self.dump.get("trainer") or {}

    @property
    def data(self) -> dict:
        return (self.dump.get("data") or {}).get("init_args") or {}

    @property
    def data_class(self) -> str:
        return (self.dump.get("data") or {}).get("class_path") or ""


def config_files(argv: list[str]) -> list[str]:
    out = []
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--config="):
            out.append(a.split("=", 1)[1])
    return out


def root_on_command_line(argv: list[str]) -> Optional[str]:
    for i, a in enumerate(argv):
        if a == "--trainer.default_root_dir" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--trainer.default_root_dir="):
            return a.split("=", 1)[1]
    return None


def _size(paths: list[str]) -> int:
    total = 0
    for p in paths:
        path = Path(p)
        files = path.rglob("*") if path.is_dir() else [path]
        for f in files:
            try:
                total += f.stat().st_size if f.is_file() else 0
            except OSError:
                pass
            if total > MAX_LOCAL_BYTES:
                return total
    return total


def data_readable(class_path: str, args: dict) -> tuple[bool, str]:
    """Whether preflight may instantiate the data module here: nothing to download, nothing
    big to prepare. Returns ``(ok, why not)``."""
    if args.get("prepared"):
        return True, ""
    name = class_path.rsplit(".", 1)[-1]
    if name == "TextDataModule":
        tok = args.get("tokenizer") or "bytes"
        if tok == "gpt2" and not args.get("tiktoken_ranks_file"):
            return False, ("not prepared here (data.prepared unset; the gpt2 tokenizer would "
                           "be downloaded)")
        src = args.get("source", "embedded")
        if src == "embedded":
            return True, ""
        if src == "local":
            size = _size(list(args.get("paths") or []))
            if size > MAX_LOCAL_BYTES:
                return False, f"local corpus over {MAX_LOCAL_BYTES >> 20} MiB: not prepared here"
            return True, ""
        return False, f"{src} corpus {args.get('hub_dataset')!r} not prepared here"
    if name == "ImageNetDataModule":
        src = args.get("source", "embedded")
        if src == "embedded":
            return True, ""
        if src == "folder":
            root = args.get("root")
            if not root or not os.path.isdir(root):
                return False, f"image folder {root!r} not on this machine"
            if _size([root]) > MAX_LOCAL_BYTES:
                return False, f"image folder {root} over {MAX_LOCAL_BYTES >> 20} MiB: not prepared here"
            return True, ""
        return False, "parquet images not prepared here"
    return False, f"unknown data module {class_path}: not read"


def build(argv: list[str], read_data: bool = True) -> Built:
    """Parse ``argv`` (``fit``'s options) as ``fit`` does and build the model on the meta
    device; the data module too when :func:`data_readable`. Bad input: ``SystemExit(2)``
    from the parser or :class:`ConfigError`."""
    with warnings.catch_warnings():   # args given while sys.argv holds `adamrot preflight`
        warnings.filterwarnings("ignore", message=".*args parameter is intended")
        cli = PreflightCLI(LightningModule, LightningDataModule, subclass_mode_model=True,
                           subclass_mode_data=True, args=list(argv), run=False,
                           auto_configure_optimizers=False)
    dump = cli._dump()
    built = Built(dump=dump, configs=config_files(argv), model=cli.model,
                  root_given=root_on_command_line(argv))
    data = dump.get("data") or {}
    ok, why = data_readable(data.get("class_path") or "", data.get("init_args") or {})
    if not read_data:
        ok, why = False, "not read (--no-data)"
    if ok:
        from lightning.pytorch.cli import instantiate_class

        try:
            built.datamodule = instantiate_class((), data)
        except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
            built.data_note = f"cannot be read here: {e}"
            built.findings.append(("error", f"data: {e}"))
    else:
        built.data_note = why
    return built
