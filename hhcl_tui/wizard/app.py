"""``hhcl wizard``: a Textual form over :class:`WizardForm` that previews, saves and offers to train a config.

The app's return value is the ``hhcl`` argv to run next (``train --preset FILE [--nproc-per-node N]``) when
the user picks "Train now", else None.
"""

from __future__ import annotations

from pathlib import Path

from rich.syntax import Syntax
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static

from hhcl.config import ConfigError, preset_description, preset_names
from hhcl.words import plural
from hhcl_tui.wizard.form import FIELDS, Field, WizardForm


class WizardApp(App[list[str] | None]):
    """Pick a preset, edit the keys people change, see the TOML, save it, train it."""

    TITLE = "hhcl wizard"
    CSS_PATH = "wizard.tcss"
    AUTO_FOCUS = "#preset"  # the first field, so the first Enter opens the preset list (not the scroll area)
    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+t", "train", "Train now"),
        Binding("ctrl+q", "quit", "Quit"),
    ]

    def __init__(self, *, preset: str = "market", data_root: Path = Path("data"), out: Path = Path("hhcl.toml"),
                 gpus: int = 1) -> None:
        super().__init__()
        self.form = WizardForm(preset, data_root, gpus=gpus)
        self.out = Path(out)
        self.saved: Path | None = None
        self._by_widget = {f.widget_id: f for f in FIELDS}
        self._shown: dict[str, str] = {}  # what each widget shows now, so unchanged ones are not redrawn

    # -- layout -----------------------------------------------------------------------------------
    def _field_widget(self, field: Field) -> Input | Select[str]:
        value = self.form.values[field.key]
        if field.choices:
            options = [(self._choice_label(field, c), c) for c in field.choices]
            return Select(options, value=value, allow_blank=False, compact=True, id=field.widget_id)
        return Input(value=value, placeholder=field.hint, compact=True, id=field.widget_id)

    def _choice_label(self, field: Field, choice: str) -> str:
        if field.key != "data.dataset":
            return choice
        return f"{choice} ✓" if choice in self.form.prepared else f"{choice} (not prepared)"

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with Horizontal(id="main"):
            with VerticalScroll(id="form"):
                with Horizontal(classes="row"):
                    yield Label("Preset", classes="label")
                    yield Select([(n, n) for n in preset_names()], value=self.form.preset, allow_blank=False,
                                 compact=True, id="preset")
                yield Static(id="preset-info", classes="info")
                yield Static(self._datasets_info(), id="datasets-info", classes="info")
                for field in FIELDS:
                    with Horizontal(classes="row", id=field.row_id):
                        yield Label(field.label, classes="label")
                        yield self._field_widget(field)
                    yield Static(id=field.error_id, classes="error")
                with Horizontal(classes="row", id="out-row"):
                    yield Label("Save to", classes="label")
                    yield Input(value=str(self.out), compact=True, id="out")
                yield Static(id="e-out", classes="error")
                with Horizontal(id="buttons"):
                    yield Button("Save", id="save", variant="primary", compact=True)
                    yield Button("Train now", id="train", variant="success", compact=True, disabled=True)
                    yield Button("Quit", id="quit", compact=True)
                yield Static(id="status", classes="info")
            with Vertical(id="preview-box"):
                with VerticalScroll(id="preview-scroll"):
                    yield Static(id="preview")
        yield Footer()

    def _datasets_info(self) -> Text:
        root = self.form.data_root
        if self.form.prepared:
            return Text.assemble(("prepared in ", "dim"), (f"{root}/", "bold"), (": ", "dim"),
                                 (", ".join(self.form.prepared), "green"))
        return Text.assemble(("no prepared datasets in ", "dim"), (f"{root}/", "bold"),
                             (" (hhcl prepare DATASET)", "dim"))

    def on_mount(self) -> None:
        self.query_one("#preview-box").border_title = "TOML preview"
        self.query_one("#form").border_title = "Settings"
        self._refresh()

    # -- events -----------------------------------------------------------------------------------
    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "preset":
            if isinstance(event.value, str) and event.value != self.form.preset:
                self.form.load_preset(event.value)
                self._load_widgets()
        elif event.select.id in self._by_widget and isinstance(event.value, str):
            self.form.set(self._by_widget[event.select.id].key, event.value)
        self._refresh()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "out":
            self.out = Path(event.value.strip())
            self.query_one("#e-out", Static).update("")
            return
        field = self._by_widget.get(event.input.id or "")
        if field is not None:
            self.form.set(field.key, event.value)
            self._refresh()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        actions = {"save": self.action_save, "train": self.action_train, "quit": self.action_quit}
        action = actions.get(event.button.id or "")
        if action is not None:
            self.call_later(action)

    # -- view -------------------------------------------------------------------------------------
    def _load_widgets(self) -> None:
        """Show the form's values (after a preset change) without echoing change events back."""
        with self.prevent(Input.Changed, Select.Changed):
            for field in FIELDS:
                widget = self.query_one(f"#{field.widget_id}")
                value = self.form.values[field.key]
                if isinstance(widget, Input):
                    widget.value = value
                elif isinstance(widget, Select):
                    widget.value = value

    def _refresh(self) -> None:
        """Show the form's errors and TOML; only widgets whose content changed are touched (typing stays fast)."""
        form = self.form
        if self._shown.get("preset") != form.preset:
            self._shown["preset"] = form.preset
            self.query_one("#preset-info", Static).update(Text(preset_description(form.preset), style="italic dim"))
        for field in FIELDS:
            shown = form.shown(field)
            if self._shown.get(field.row_id) != str(shown):
                self._shown[field.row_id] = str(shown)
                self.query_one(f"#{field.row_id}").display = shown
            message = form.errors.get(field.key, "")
            if self._shown.get(field.error_id, "") == message:
                continue
            self._shown[field.error_id] = message
            error = self.query_one(f"#{field.error_id}", Static)
            error.update(Text(f"✗ {message}") if message else "")
            error.display = bool(message)
            self.query_one(f"#{field.widget_id}").set_class(bool(message), "-invalid")
        box = self.query_one("#preview-box")
        if form.valid:
            toml = form.toml()
            changed = form.changed_lines()
            if self._shown.get("toml") != toml:
                self._shown["toml"] = toml
                self.query_one("#preview", Static).update(
                    Syntax(toml, "toml", theme="ansi_dark", background_color="default", word_wrap=True,
                           highlight_lines=changed)
                )
            subtitle = f"valid · {len(changed)} changed from {Path(form.preset).stem}" if changed else "valid"
        else:
            subtitle = f"✗ {plural(len(form.errors), 'error')}: fix the red field"
        if box.border_subtitle != subtitle:
            box.border_subtitle = subtitle
            box.set_class(not form.valid, "-invalid")
        self.query_one("#save", Button).disabled = not form.valid

    # -- actions ----------------------------------------------------------------------------------
    def _save(self) -> Path | None:
        try:
            path = self.form.save(self.out)
        except (ConfigError, OSError) as err:
            message = str(err)
            where = "#e-out" if self.form.valid else None
            if where:
                error = self.query_one(where, Static)
                error.update(Text(f"✗ {message}"))
                error.display = True
            self.notify(message, title="Not saved", severity="error")
            return None
        self.saved = path
        self.query_one("#train", Button).disabled = False
        self.query_one("#status", Static).update(
            Text.assemble(("✓ saved ", "bold green"), (str(path), "bold"), ("\ntrain: ", "dim"),
                          ("hhcl " + " ".join(self.form.train_argv(path)), "cyan"))
        )
        self.notify(f"Saved {path}", title="Saved")
        return path

    def action_save(self) -> None:
        """Write the TOML (when every field is valid) and offer to train it."""
        self._save()

    def action_train(self) -> None:
        """Save the current settings and exit with the train command to run."""
        if self.saved is None:
            self.notify("Save the config first (ctrl+s).", severity="warning")
            return
        path = self._save()
        if path is not None:
            self.exit(self.form.train_argv(path))

    async def action_quit(self) -> None:
        self.exit(None)


def run_wizard(*, out: Path, data_root: Path, preset: str = "market") -> list[str] | None:
    """Run the wizard; returns the ``hhcl`` argv to train the saved config, or None."""
    return WizardApp(preset=preset, data_root=data_root, out=out).run()
