"""Textual config wizard (``hhcl wizard``): edits a preset's common keys and writes a preset-style TOML."""

from __future__ import annotations

from hhcl_tui.wizard.app import WizardApp, run_wizard
from hhcl_tui.wizard.form import FIELDS, GPUS, Field, WizardForm, detect_datasets

__all__ = ["FIELDS", "GPUS", "Field", "WizardApp", "WizardForm", "detect_datasets", "run_wizard"]
