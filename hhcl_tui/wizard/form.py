"""The wizard's model (no Textual): a preset plus the keys people edit, validated with the engine's rules.

Each field holds the text the user typed; every change re-applies all fields to a copy of the preset with
:func:`hhcl.config.apply_overrides` and runs :func:`hhcl.config.validate`, so the errors shown are exactly
the ones ``hhcl train`` would raise, attached to the field they name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from hhcl.atomic import atomic_write_text
from hhcl.config import (
    CLUSTER_PARAMS,
    DATASETS,
    Config,
    ConfigError,
    all_keys,
    apply_overrides,
    key_info,
    load_config,
    validate,
)

GPUS = "gpus"  # not a config key: the --nproc-per-node of the train command the wizard offers to run
PRETRAINED_WORDS = ("imagenet", "none")  # the model.pretrained settings that name no path


@dataclass(frozen=True)
class Field:
    """One editable setting: a dotted config key (or ``gpus``), its label, and choices for a select; a clustering
    method's own setting names its ``method`` and is shown (and applied) only while that method is picked."""

    key: str
    label: str
    choices: tuple[str, ...] = ()
    hint: str = ""
    method: str | None = None

    @property
    def widget_id(self) -> str:
        return "f-" + self.key.replace(".", "-")

    @property
    def row_id(self) -> str:
        return "r-" + self.key.replace(".", "-")

    @property
    def error_id(self) -> str:
        return "e-" + self.key.replace(".", "-")

    @classmethod
    def of(cls, key: str, method: str | None = None) -> Field:
        """The field of a config key: label, choices and hint from its :class:`~hhcl.config.KeyInfo` (a hint's
        ``{low}`` and ``{high}`` are the key's bounds)."""
        info = key_info(key)
        low, high = info.bounds or (None, None)
        return cls(key, info.label, info.choices, info.hint.format(low=low, high=high), method)


#: the form's layout: the keys in the order shown (each key's label, choices and hint are its KeyInfo's); a
#: clustering method's own settings (``hhcl.config.CLUSTER_PARAMS``) follow the method, each shown while it is picked
LAYOUT = (
    "data.dataset", "model.arch", "model.pretrained", "model.pooling", "data.height", "data.width", "memory.mode",
    "cluster.method", "data.batch_size", "data.num_instances", "train.epochs", "train.iters", "train.device", GPUS,
    "train.amp",
)


def _fields() -> tuple[Field, ...]:
    fields: list[Field] = []
    for key in LAYOUT:
        if key == GPUS:
            fields.append(Field(GPUS, "GPUs", hint="processes on this node"))
            continue
        fields.append(Field.of(key))
        if key == "cluster.method":
            fields += [Field.of(p.key, method) for method, params in CLUSTER_PARAMS.items() for p in params]
    return tuple(fields)


FIELDS: tuple[Field, ...] = _fields()
#: every key whose KeyInfo has a wizard label (tests keep them equal to the form's)
LABELLED = tuple(k for k in all_keys() if key_info(k).label)
FIELD_KEYS = tuple(f.key for f in FIELDS)


def detect_datasets(root: Path) -> list[str]:
    """Datasets prepared under ``root``: the sub-folders named like a known dataset, in registry order."""
    return [name for name in DATASETS if (root / name).is_dir()]


class WizardForm:
    """Field texts over a preset, their validation errors, and the TOML they make."""

    def __init__(self, preset: str, data_root: Path, gpus: int = 1) -> None:
        self.data_root = Path(data_root)
        self.prepared = detect_datasets(self.data_root)
        self.values: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.config: Config | None = None
        self.last_edited: str | None = None
        self.gpus = gpus
        self.load_preset(preset)

    def load_preset(self, preset: str) -> None:
        """Start again from ``preset`` (name or TOML path); data.root is set to the root we looked in."""
        self.preset = preset
        self.base = load_config(preset, [f"data.root={self.data_root}"])
        self.values = {f.key: str(self.base.get(f.key)) for f in FIELDS if f.key != GPUS}
        self.values[GPUS] = str(self.gpus)
        self.last_edited = None
        self._revalidate()

    def set(self, key: str, text: str) -> str | None:
        """Set one field's text and re-validate everything; returns this field's error (None when fine)."""
        if key not in FIELD_KEYS:
            raise KeyError(f"unknown wizard field '{key}': fields are {', '.join(FIELD_KEYS)}")
        self.values[key] = text
        self.last_edited = key
        self._revalidate()
        return self.errors.get(key)

    def shown(self, field: Field) -> bool:
        """Whether ``field`` is on the form now: a clustering method's setting only while that method is picked."""
        return field.method is None or field.method == self.values["cluster.method"].strip()

    def _revalidate(self) -> None:
        self.errors = {}
        cfg = copy.deepcopy(self.base)
        hidden = {f.key for f in FIELDS if not self.shown(f)}  # another method's: the preset's value stays
        for key, text in self.values.items():
            if key == GPUS or key in hidden:
                continue
            try:
                apply_overrides(cfg, [f"{key}={text.strip()}"])
            except ConfigError as err:
                self.errors[key] = str(err)
        if "model.pretrained" not in self.errors:
            self._check_pretrained(self.values["model.pretrained"].strip())
        gpus = self.values[GPUS].strip()
        if gpus.isdigit() and int(gpus) >= 1:
            self.gpus = int(gpus)
        else:
            self.errors[GPUS] = f"GPUs = {gpus!r} is not allowed: use a whole number of 1 or more (--nproc-per-node)."
        if not self.errors:
            try:
                validate(cfg)
            except ConfigError as err:
                named = str(err).split(" ", 1)[0]
                where = named if named in FIELD_KEYS else (self.last_edited or FIELDS[0].key)
                self.errors[where] = str(err)
        self.config = None if self.errors else cfg

    def _check_pretrained(self, setting: str) -> None:
        """The one check beyond ``validate``, which leaves a path to the run's start (a config may be written for
        another machine): the wizard's config is trained here, so a ``model.pretrained`` path must exist."""
        path = Path(setting).expanduser()
        if setting in PRETRAINED_WORDS or (setting and path.exists()):
            return
        missing = f"{path} does not exist; " if setting else ""
        self.errors["model.pretrained"] = (
            f"model.pretrained = {setting!r} is not allowed: {missing}use imagenet, none, or the path of a run "
            "directory or a .pth, .pth.tar or .safetensors file."
        )

    @property
    def valid(self) -> bool:
        return self.config is not None

    def toml(self) -> str:
        """The config file text: a comment saying where it came from, then the full config."""
        if self.config is None:
            raise ConfigError(f"the config is not valid yet: {next(iter(self.errors.values()))}")
        header = f"# hhcl wizard, from preset {self.preset}\n\n"
        return header + self.config.to_toml()

    def changed_lines(self) -> set[int]:
        """1-based line numbers of :meth:`toml` whose value differs from the preset (for highlighting)."""
        if self.config is None:
            return set()
        changed, section = set(), ""
        for number, line in enumerate(self.toml().splitlines(), start=1):
            if line.startswith("["):
                section = line.strip("[]")
            elif " = " in line and not line.startswith("#"):
                dotted = f"{section}.{line.split(' = ', 1)[0]}"
                if self.config.get(dotted) != self.base.get(dotted):
                    changed.add(number)
        return changed

    def save(self, path: Path) -> Path:
        """Write the TOML to ``path`` (atomically); raises ConfigError while any field is invalid."""
        path = Path(path)
        if path.suffix != ".toml":
            raise ConfigError(f"save-to file '{path}' must end with .toml (e.g. {path.with_suffix('.toml')}).")
        if path.is_dir():
            raise ConfigError(f"save-to path '{path}' is a directory: give a file name such as {path / 'hhcl.toml'}.")
        atomic_write_text(path, self.toml())
        return path

    def train_argv(self, path: Path) -> list[str]:
        """Arguments for the ``hhcl`` command line that trains the saved file (no program name)."""
        argv = ["train", "--preset", str(path)]
        if self.gpus > 1:
            argv += ["--nproc-per-node", str(self.gpus)]
        return argv
