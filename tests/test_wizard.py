"""The config wizard: its form model, and Pilot runs that save a TOML and refuse bad values."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from textual.widgets import Button, Input, Select, Static

from hhcl.config import PRESETS_DIR, ConfigError, load_config, preset_names
from hhcl_tui.wizard import FIELDS, GPUS, WizardApp, WizardForm, detect_datasets

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def preset_dict(name: str) -> dict:
    return tomllib.loads((PRESETS_DIR / f"{name}.toml").read_text())


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root (relative, inside tmp_path as the cwd) with market1501 and viper prepared."""
    monkeypatch.chdir(tmp_path)
    for name in ("market1501", "viper", "not-a-dataset"):
        (tmp_path / "data" / name).mkdir(parents=True)
    return Path("data")


# -- the form model -------------------------------------------------------------------------------


def test_detect_datasets(data_root: Path) -> None:
    assert detect_datasets(data_root) == ["market1501", "viper"]
    assert detect_datasets(data_root / "missing") == []


def test_form_errors_name_the_key_and_attach_to_the_field(data_root: Path) -> None:
    form = WizardForm("market", data_root)
    assert form.valid and form.errors == {}
    assert "not an int" in (form.set("data.batch_size", "lots") or "")
    assert not form.valid and "data.batch_size" in form.errors["data.batch_size"]
    assert "multiple of data.num_instances" in (form.set("data.batch_size", "250") or "")
    assert form.set("data.batch_size", "240") is None or "model.bn_group" in form.errors["data.batch_size"]
    # 240 is a multiple of 16 but not of the preset's bn_group 64: that error names model.bn_group (not a
    # form field), so it is shown at the field just edited
    assert form.errors == {"data.batch_size": form.errors["data.batch_size"]}
    assert "model.bn_group" in form.errors["data.batch_size"]
    assert form.set("data.batch_size", "128") is None and form.valid
    assert "cluster.eps" in (form.set("cluster.eps", "1.5") or "")
    form.set("cluster.eps", "0.5")
    assert "use one of off, bf16, fp16" in (form.set("train.amp", "fp8") or "")
    form.set("train.amp", "bf16")
    assert "--nproc-per-node" in (form.set(GPUS, "0") or "")
    form.set(GPUS, "4")
    assert form.valid and form.gpus == 4
    with pytest.raises(KeyError, match="unknown wizard field"):
        form.set("optim.lr", "1")


def test_form_save_and_argv(data_root: Path) -> None:
    form = WizardForm("demo", data_root)
    form.set("train.epochs", "3")
    with pytest.raises(ConfigError, match="must end with .toml"):
        form.save(Path("out.txt"))
    path = form.save(Path("cfg/out.toml"))
    assert load_config(path).train.epochs == 3
    assert form.train_argv(path) == ["train", "--preset", "cfg/out.toml"]
    lines = form.toml().splitlines()
    assert [lines[n - 1] for n in sorted(form.changed_lines())] == ["epochs = 3"]
    form.set("cluster.eps", "x")
    with pytest.raises(ConfigError, match="not valid yet"):
        form.save(Path("again.toml"))


# -- Pilot ----------------------------------------------------------------------------------------


async def type_into(pilot, app: WizardApp, widget_id: str, text: str) -> None:  # noqa: ANN001
    """Focus an input (which selects its text) and type over it, key by key."""
    app.query_one(f"#{widget_id}", Input).focus()
    await pilot.pause()
    await pilot.press(*text)
    await pilot.pause()


async def fill(pilot, app: WizardApp, widget_id: str, text: str) -> None:  # noqa: ANN001
    """Replace an input's text at once (as a paste would): the same Changed event, fewer Pilot round trips."""
    app.query_one(f"#{widget_id}", Input).value = text
    await pilot.pause()


@pytest.mark.asyncio
async def test_wizard_writes_the_expected_toml_and_offers_training(data_root: Path) -> None:
    app = WizardApp(preset="market", data_root=data_root, out=Path("mine.toml"))
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        app.query_one("#f-data-dataset", Select).value = "viper"
        app.query_one("#f-model-arch", Select).value = "resnet50_ibn_a"
        # pooling through the keyboard: open the list, move from avg to gem, pick it
        app.query_one("#f-model-pooling", Select).focus()
        await pilot.press("enter", "down", "enter")
        app.query_one("#f-memory-mode", Select).value = "CMhard"
        await type_into(pilot, app, "f-cluster-eps", "0.5")
        await fill(pilot, app, "f-data-batch_size", "128")
        await fill(pilot, app, "f-data-num_instances", "8")
        await fill(pilot, app, "f-train-epochs", "40")
        await fill(pilot, app, "f-train-iters", "100")
        await type_into(pilot, app, "f-gpus", "2")
        app.query_one("#f-train-amp", Select).value = "bf16"
        # the own-cameras fields: start from no weights, at another image size, on a chosen device
        await fill(pilot, app, "f-model-pretrained", "none")
        await fill(pilot, app, "f-data-height", "384")
        await fill(pilot, app, "f-data-width", "192")
        await type_into(pilot, app, "f-train-device", "cpu")
        await pilot.pause()
        assert app.query_one("#train", Button).disabled  # nothing saved yet
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not app.query_one("#train", Button).disabled
        await pilot.click("#train")
        await pilot.pause()
    expected = preset_dict("market")
    expected["data"].update(dataset="viper", batch_size=128, num_instances=8, height=384, width=192)
    expected["model"].update(arch="resnet50_ibn_a", pooling="gem", pretrained="none")
    expected["memory"]["mode"] = "CMhard"
    expected["cluster"]["eps"] = 0.5
    expected["train"].update(epochs=40, iters=100, amp="bf16", device="cpu")
    saved = Path("mine.toml").read_text()
    assert tomllib.loads(saved) == expected
    assert saved.startswith("# hhcl wizard, from preset market")
    assert app.return_value == ["train", "--preset", "mine.toml", "--nproc-per-node", "2"]


@pytest.mark.asyncio
async def test_wizard_starts_on_the_first_field(data_root: Path) -> None:
    """The first key press reaches a field: Enter opens the preset list, Down and Enter pick the next preset."""
    app = WizardApp(preset="market", data_root=data_root, out=Path("x.toml"))
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        assert app.focused is app.query_one("#preset", Select)
        await pilot.press("enter")
        await pilot.pause()
        assert app.query_one("#preset", Select).expanded
        await pilot.press("down", "enter")
        await pilot.pause()
        names = preset_names()
        assert app.form.preset == names[names.index("market") + 1] != "market"


@pytest.mark.asyncio
async def test_wizard_refuses_invalid_input(data_root: Path) -> None:
    app = WizardApp(preset="market", data_root=data_root, out=Path("bad.toml"))
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await type_into(pilot, app, "f-data-batch_size", "250")
        error = app.query_one("#e-data-batch_size", Static)
        assert error.display and "data.batch_size = 250 is not allowed" in str(error.content)
        assert app.query_one("#f-data-batch_size", Input).has_class("-invalid")
        assert app.query_one("#save", Button).disabled
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not Path("bad.toml").exists()
        await fill(pilot, app, "f-cluster-eps", "autoo")
        assert ("cluster.eps = 'autoo' is not a number or auto: use a number in (0, 1) (a Jaccard distance) or "
                "auto. Did you mean 'auto'?") in str(app.query_one("#e-cluster-eps", Static).content)
        assert app.query_one("#preview-box").border_subtitle == "✗ 1 error: fix the red field"
        await fill(pilot, app, "f-model-pretrained", "nowhere.pth")
        assert "nowhere.pth does not exist; use imagenet, none" in str(
            app.query_one("#e-model-pretrained", Static).content)
        assert app.query_one("#preview-box").border_subtitle == "✗ 2 errors: fix the red field"
        await fill(pilot, app, "f-cluster-eps", "0.6")
        await fill(pilot, app, "f-model-pretrained", "imagenet")
        await fill(pilot, app, "f-data-batch_size", "256")
        # the config's own rules, one at a time as validate finds them
        await fill(pilot, app, "f-data-width", "100")
        assert "data.width = 100 is not allowed: must be a multiple of 16" in str(
            app.query_one("#e-data-width", Static).content)
        await fill(pilot, app, "f-data-width", "128")
        await fill(pilot, app, "f-train-device", "gpu")
        assert "use auto, cpu, cuda or cuda:N" in str(app.query_one("#e-train-device", Static).content)
        await fill(pilot, app, "f-train-device", "auto")
        for field in ("data-batch_size", "cluster-eps", "model-pretrained", "data-width", "train-device"):
            assert not app.query_one(f"#e-{field}", Static).display
        await fill(pilot, app, "out", "bad.txt")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "must end with .toml" in str(app.query_one("#e-out", Static).content)
        assert not Path("bad.txt").exists()
        await pilot.press("ctrl+t")  # nothing saved: refused, the app keeps running
        assert app.is_running
        await pilot.press("ctrl+q")
    assert app.return_value is None


@pytest.mark.asyncio
async def test_wizard_preset_switch_and_dataset_detection(data_root: Path) -> None:
    app = WizardApp(preset="market", data_root=data_root, out=Path("x.toml"))
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        labels = {str(prompt) for prompt, _ in app.query_one("#f-data-dataset", Select)._options}
        assert {"market1501 ✓", "viper ✓", "msmt17 (not prepared)"} <= labels
        app.query_one("#preset", Select).value = "demo"
        await pilot.pause()
        assert app.query_one("#f-data-batch_size", Input).value == "64"
        assert app.query_one("#f-cluster-eps", Input).value == "0.5"
        assert app.query_one("#f-model-arch", Select).value == "resnet18"
        assert app.form.preset == "demo" and app.form.valid


def test_the_form_shows_the_picked_clustering_methods_own_settings(data_root: Path) -> None:
    form = WizardForm("market", data_root)
    shown = [f.key for f in FIELDS if form.shown(f) and f.key.startswith("cluster.")]
    assert shown == ["cluster.method", "cluster.eps"]
    assert form.set("cluster.infomap_min_sim", "2") is None and form.valid  # another method's: not applied
    form.set("cluster.method", "infomap")
    shown = [f.key for f in FIELDS if form.shown(f) and f.key.startswith("cluster.")]
    assert shown == ["cluster.method", "cluster.infomap_min_sim", "cluster.infomap_k", "cluster.infomap_min_size"]
    assert "cluster.infomap_min_sim = 2.0 is not allowed" in form.errors["cluster.infomap_min_sim"]
    form.set("cluster.infomap_min_sim", "0.6")
    assert form.set("cluster.eps", "x") is None and form.valid  # DBSCAN's eps is irrelevant now
    cfg = tomllib.loads(form.toml())["cluster"]
    assert (cfg["method"], cfg["infomap_min_sim"], cfg["eps"]) == ("infomap", 0.6, 0.45)
    assert [f.label for f in FIELDS if form.shown(f) and f.method] == ["InfoMap min sim", "InfoMap k", "InfoMap min size"]


@pytest.mark.asyncio
async def test_picking_infomap_swaps_the_clustering_fields(data_root: Path) -> None:
    app = WizardApp(preset="market", data_root=data_root, out=Path("im.toml"))
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        assert app.query_one("#r-cluster-eps").display and not app.query_one("#r-cluster-infomap_k").display
        app.query_one("#f-cluster-method", Select).value = "infomap"
        await pilot.pause()
        assert not app.query_one("#r-cluster-eps").display and app.query_one("#r-cluster-infomap_k").display
        await fill(pilot, app, "f-cluster-infomap_k", "20")
        await pilot.press("ctrl+s")
        await pilot.pause()
    saved = tomllib.loads(Path("im.toml").read_text())["cluster"]
    assert (saved["method"], saved["infomap_k"]) == ("infomap", 20)
