"""The plugin system: registration bookkeeping, broken plugins, the allow-list and run-scoped dispatch.

Plugins here are in-memory modules (``types.ModuleType`` put in ``sys.modules``) or small files in
``tmp_path``; entry points are faked by monkeypatching ``kdcore.plugins.metadata.entry_points``.
"""

from __future__ import annotations

import importlib
import io
import json
import sys
import types
from collections.abc import Callable
from importlib import metadata

import pytest
import torch
from rich.console import Console
from tiny import tiny_task as shared_tiny_task

from kdcore import Task, hookimpl
from kdcore.config import resolve
from kdcore.engine import fit
from kdcore.plugins import DEFAULT_PLUGINS, PluginError, Registry
from kdcore.report import read_metrics
from kdcore.schedules import Constant

QUIET = Console(file=io.StringIO())


# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def forget_test_modules():
    """Modules this file imports from ``tmp_path`` must not leak into the next test."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("kdt_"):
            del sys.modules[name]
    importlib.invalidate_caches()


def plugin_module(monkeypatch, name: str, *functions: Callable) -> types.ModuleType:
    """An importable in-memory plugin module ``name`` holding ``functions`` under their own names."""
    module = types.ModuleType(name)
    for function in functions:
        setattr(module, function.__name__, function)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def registry_with(*modules: str) -> Registry:
    """kdcore's built-ins plus ``modules`` (plugin name = module name), no entry points."""
    return Registry(builtins=(*DEFAULT_PLUGINS, *modules), load_entry_points=False)


def fake_entry_points(monkeypatch, **plugins: str) -> None:
    """Make ``kd`` entry points ``name = module`` the only ones installed."""
    eps = [metadata.EntryPoint(name, value, "kd") for name, value in plugins.items()]
    monkeypatch.setattr(
        "kdcore.plugins.metadata.entry_points", lambda group=None: [e for e in eps if e.group == group]
    )


def write_module(tmp_path, monkeypatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()


def tiny_task(name: str = "tiny") -> Task:
    """The shared tiny task without the baseline stage: teacher and student only."""
    return shared_tiny_task(name, distill={"baseline": False, "alpha": 0.7})


def tiny_config(tmp_path, registry: Registry, plugin: str, *sets: str, **overrides) -> dict:
    task = registry.get_task(plugin)
    overrides = {"plugin": plugin, "task": task.name, "out_dir": str(tmp_path / "runs"), **overrides}
    return resolve(task.defaults, sets=sets, overrides=overrides)


def student_train_records(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r.get("split") == "train" and r.get("stage") == "student"]


def half_loss(student, teacher, temperature):
    return 0.5 * torch.nn.functional.mse_loss(student, teacher)


class Plateau(Constant):
    name = "kdt_plateau"


def good_plugin(monkeypatch, name: str = "kdt_good") -> types.ModuleType:
    task = tiny_task()

    @hookimpl
    def kd_register_tasks(register):
        register(task)

    @hookimpl
    def kd_register_schedules(register):
        register("kdt_plateau", Plateau)

    @hookimpl
    def kd_register_losses(register):
        register("kdt_half_mse", half_loss)

    return plugin_module(monkeypatch, name, kd_register_tasks, kd_register_schedules, kd_register_losses)


# --- registration ---------------------------------------------------------------------------------


def test_a_plugin_registering_a_task_a_schedule_and_a_loss_is_listed(monkeypatch):
    good_plugin(monkeypatch)
    registry = registry_with("kdt_good")

    info = registry.plugins["kdt_good"]
    assert not info.broken and info.error is None
    assert info.tasks == ["tiny"]
    assert info.hooks == ["kd_register_losses", "kd_register_schedules", "kd_register_tasks"]
    assert (info.module, info.distribution) == ("kdt_good", "kdcore")
    assert list(registry.plugins) == ["core", "classify", "kdt_good"]
    assert registry.schedules["kdt_plateau"] is Plateau
    assert registry.losses["kdt_half_mse"] is half_loss
    assert "constant" in registry.schedules and "soft_target_kl" in registry.losses, "core's still there"
    task = registry.get_task("kdt_good")
    assert (task.name, task.plugin) == ("tiny", "kdt_good")
    assert registry.get_task("kdt_good", "tiny") is task
    assert registry.plugin_object("kdt_good") is sys.modules["kdt_good"]


def test_registered_schedule_and_loss_drive_a_run(tmp_path, monkeypatch):
    good_plugin(monkeypatch)
    registry = registry_with("kdt_good")
    config = tiny_config(
        tmp_path,
        registry,
        "kdt_good",
        'distill.loss="kdt_half_mse"',
        'distill.alpha={name="kdt_plateau", value=0.25}',
    )
    result = fit(config, registry, console=QUIET)
    train = student_train_records(result.run_dir)
    assert len(train) == 6
    assert all(r["alpha"] == pytest.approx(0.25) for r in train)
    for r in train:
        assert r["total"] == pytest.approx(0.75 * r["supervised"] + 0.25 * r["kd"], rel=1e-5)


def _broken_registrations(duplicate: str) -> list[Callable]:
    task = tiny_task("staged")

    @hookimpl
    def kd_register_tasks(register):
        register(task)
        if duplicate == "task":
            register(tiny_task("staged"))

    @hookimpl
    def kd_register_schedules(register):
        register("kdt_staged_schedule", Plateau)
        if duplicate == "schedule":
            register("constant", Plateau)  # taken by kdcore's core plugin
        if duplicate == "schedule from another plugin":
            register("kdt_plateau", Plateau)  # taken by kdt_good, loaded first

    @hookimpl
    def kd_register_losses(register):
        register("kdt_staged_loss", half_loss)
        if duplicate == "loss":
            register("soft_target_kl", half_loss)

    return [kd_register_tasks, kd_register_schedules, kd_register_losses]


@pytest.mark.parametrize(
    ("duplicate", "message"),
    [
        ("task", "ValueError: task 'staged' registered twice"),
        ("schedule", "ValueError: schedule 'constant' is already registered"),
        ("schedule from another plugin", "ValueError: schedule 'kdt_plateau' is already registered"),
        ("loss", "ValueError: loss 'soft_target_kl' is already registered"),
    ],
)
def test_a_duplicate_registration_breaks_only_that_plugin(monkeypatch, duplicate, message):
    good_plugin(monkeypatch)
    plugin_module(monkeypatch, "kdt_dup", *_broken_registrations(duplicate))
    registry = Registry(builtins=(*DEFAULT_PLUGINS, "kdt_good", "kdt_dup"), load_entry_points=False)
    info = registry.plugins["kdt_dup"]
    # Schedules and losses register on first need (kdcore's own import torch): here, or any get_task.
    assert info.broken == (duplicate == "task")
    registry.register_schedules_and_losses()
    assert info.broken
    assert info.error.startswith(message)
    assert "test_plugins.py:" in info.error, "the location is the plugin's line, not the registry's"
    assert info.tasks == [] and info.hooks == []
    # Nothing it staged before failing was kept.
    assert "kdt_dup" not in registry.tasks
    assert "kdt_staged_schedule" not in registry.schedules
    assert "kdt_staged_loss" not in registry.losses
    assert registry.schedules["constant"] is not Plateau
    assert registry.losses["soft_target_kl"] is not half_loss
    assert registry.pm.get_plugin("kdt_dup") is None, "its hooks are unregistered"
    with pytest.raises(PluginError, match=r"plugin 'kdt_dup' \(kdcore .*\) is broken: ValueError"):
        registry.get_task("kdt_dup")
    # The plugin registered before it is untouched.
    assert registry.get_task("kdt_good").name == "tiny"
    assert registry.schedules["kdt_plateau"] is Plateau


def test_plugins_after_a_broken_one_still_load(monkeypatch):
    plugin_module(monkeypatch, "kdt_dup", *_broken_registrations("loss"))
    task = tiny_task("later")

    @hookimpl
    def kd_register_tasks(register):
        register(task)

    plugin_module(monkeypatch, "kdt_later", kd_register_tasks)
    registry = registry_with("kdt_dup", "kdt_later")
    assert registry.get_task("kdt_later").plugin == "kdt_later"  # registers the schedules and losses
    assert registry.plugins["kdt_dup"].broken
    assert not registry.plugins["kdt_later"].broken


def test_registering_something_that_is_not_a_task_breaks_the_plugin(monkeypatch):
    @hookimpl
    def kd_register_tasks(register):
        register({"name": "dict-task"})

    plugin_module(monkeypatch, "kdt_notask", kd_register_tasks)
    error = registry_with("kdt_notask").plugins["kdt_notask"].error
    assert error.startswith("TypeError: register() expects a kdcore.tasks.Task, got dict (test_plugins.py:")


def test_a_misspelt_hook_breaks_the_plugin_with_a_suggestion(monkeypatch):
    task = tiny_task()

    @hookimpl
    def kd_register_tasks(register):
        register(task)

    @hookimpl
    def kd_epoch_ends(run, epoch, metrics):
        raise AssertionError("never called")

    plugin_module(monkeypatch, "kdt_typo", kd_register_tasks, kd_epoch_ends)
    registry = registry_with("kdt_typo")
    error = registry.plugins["kdt_typo"].error
    assert error.startswith("ValueError: 'kd_epoch_ends' is not a kd hook; did you mean 'kd_epoch_end'?")
    assert "kdt_typo" not in registry.tasks
    assert registry.pm.get_plugin("kdt_typo") is None


def test_a_hook_with_an_unknown_argument_breaks_the_plugin(monkeypatch):
    @hookimpl
    def kd_epoch_end(run, epoch, metrics, extra):
        pass

    plugin_module(monkeypatch, "kdt_badargs", kd_epoch_end)
    registry = registry_with("kdt_badargs")
    error = registry.plugins["kdt_badargs"].error
    assert error.startswith("PluginValidationError: Plugin 'kdt_badargs' for hook 'kd_epoch_end'; ")
    assert "{'extra'}" in error
    assert "\n" not in error and "_manager.py" not in error, "one line, no location inside pluggy"
    assert registry.pm.get_plugin("kdt_badargs") is None
    assert not registry.plugins["classify"].broken


# --- entry points ---------------------------------------------------------------------------------


def test_an_entry_point_whose_import_raises_is_recorded_broken(tmp_path, monkeypatch):
    good_plugin(monkeypatch)
    write_module(tmp_path, monkeypatch, "kdt_boom", 'x = 1\nraise RuntimeError("needs CUDA 13")\n')
    fake_entry_points(monkeypatch, boom="kdt_boom", missing="kdt_nowhere", good="kdt_good")
    monkeypatch.delenv("KD_LOAD_PLUGINS")

    registry = Registry()
    assert list(registry.plugins) == ["core", "classify", "boom", "missing", "good"]
    boom = registry.plugins["boom"]
    assert boom.broken
    assert boom.error == "RuntimeError: needs CUDA 13 (kdt_boom.py:2)"
    assert (boom.module, boom.distribution, boom.version) == ("kdt_boom", "?", "?")
    missing = registry.plugins["missing"]
    assert missing.error == "ModuleNotFoundError: No module named 'kdt_nowhere'", "no importlib location"
    good = registry.plugins["good"]
    assert not good.broken and good.tasks == ["tiny"]
    assert registry.get_task("good").plugin == "good", "the entry-point name is the plugin name"
    assert registry.get_task("classify").name == "digits"

    with pytest.raises(PluginError) as excinfo:
        registry.get_task("boom")
    assert str(excinfo.value) == "plugin 'boom' (? ?) is broken: RuntimeError: needs CUDA 13 (kdt_boom.py:2)"
    with pytest.raises(PluginError, match="No module named 'kdt_nowhere'"):
        registry.plugin_object("missing")


def test_a_real_distribution_gives_the_plugin_its_name_and_version(tmp_path, monkeypatch):
    (tmp_path / "kdt_dist_plugin.py").write_text("")
    info_dir = tmp_path / "kdt_dist-2.5.1.dist-info"
    info_dir.mkdir()
    (info_dir / "METADATA").write_text("Metadata-Version: 2.1\nName: kdt-dist\nVersion: 2.5.1\n")
    (info_dir / "entry_points.txt").write_text("[kd]\ndistplug = kdt_dist_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("KD_LOAD_PLUGINS", "distplug")

    info = Registry().plugins["distplug"]
    assert (info.distribution, info.version, info.module) == ("kdt-dist", "2.5.1", "kdt_dist_plugin")
    assert not info.broken and info.tasks == [] and info.hooks == []


def test_unknown_plugin_and_unknown_task_suggest_the_closest_name():
    registry = Registry(load_entry_points=False)
    with pytest.raises(PluginError) as excinfo:
        registry.get_task("clasify")
    assert str(excinfo.value) == (
        "no plugin named 'clasify'. Did you mean 'classify'? Installed: classify, core. "
        "Install one with pip, or see `kd plugins`."
    )
    with pytest.raises(PluginError, match=r"no plugin named 'xyz'\. Installed: classify, core\."):
        registry.plugin_object("xyz")
    with pytest.raises(PluginError) as excinfo:
        registry.get_task("classify", "digit")
    message = "plugin 'classify' has no task 'digit'. Did you mean 'digits'? Its tasks: digits"
    assert str(excinfo.value) == message
    with pytest.raises(PluginError, match="plugin 'core' registers no tasks"):
        registry.get_task("core")


def test_an_entry_point_cannot_take_a_built_in_plugins_name(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "kdt_impostor", "raise AssertionError('must not be imported')\n")
    fake_entry_points(monkeypatch, classify="kdt_impostor")
    monkeypatch.delenv("KD_LOAD_PLUGINS")

    registry = Registry()
    assert not registry.plugins["classify"].broken
    assert registry.plugins["classify"].module == "kdcore.builtin.classify"
    assert registry.get_task("classify").name == "digits"
    impostor = registry.plugins["classify (?)"]
    assert impostor.name == "classify" and impostor.module == "kdt_impostor"
    assert impostor.error.startswith("plugin name 'classify' is already taken by kdcore")
    assert "kdt_impostor" not in sys.modules


@pytest.mark.parametrize(
    ("allow", "loaded"),
    [
        (None, ["a", "b"]),
        ("", []),
        ("a", ["a"]),
        (" b , a ", ["a", "b"]),
        ("b,not-installed", ["b"]),
    ],
)
def test_kd_load_plugins_is_an_allow_list(tmp_path, monkeypatch, allow, loaded):
    write_module(tmp_path, monkeypatch, "kdt_a", "")
    write_module(tmp_path, monkeypatch, "kdt_b", "")
    fake_entry_points(monkeypatch, a="kdt_a", b="kdt_b")
    if allow is None:
        monkeypatch.delenv("KD_LOAD_PLUGINS")
    else:
        monkeypatch.setenv("KD_LOAD_PLUGINS", allow)

    registry = Registry()
    assert list(registry.plugins) == ["core", "classify", *loaded]
    imported = sorted(name[len("kdt_") :] for name in sys.modules if name in ("kdt_a", "kdt_b"))
    assert imported == loaded, "a plugin outside the allow-list is never imported"


def test_kd_trace_plugins_prints_hook_calls(monkeypatch, capsys):
    good_plugin(monkeypatch)
    monkeypatch.setenv("KD_TRACE_PLUGINS", "1")
    registry = registry_with("kdt_good")
    capsys.readouterr()
    pm = registry.run_plugin_manager(registry.get_task("kdt_good"))
    pm.hook.kd_epoch_start(run=None, epoch=3)
    err = capsys.readouterr().err
    assert "kd_epoch_start" in err and "epoch: 3" in err


# --- run-scoped dispatch --------------------------------------------------------------------------


def owner_and_bystander(monkeypatch) -> dict[str, list]:
    """``kdt_owner`` owns the task; ``kdt_bystander`` is installed but owns nothing.

    Both override the distillation loss and the soft targets and record what they see.
    """
    calls: dict[str, list] = {"owner_soft": [], "bystander_soft": [], "bystander_epoch_end": [], "order": []}
    task = tiny_task()

    @hookimpl
    def kd_register_tasks(register):
        register(task)

    @hookimpl
    def kd_soft_targets(run, inputs, batch):
        calls["owner_soft"].append(run.step)
        calls["order"].append("owner")
        with torch.no_grad():
            return run.teacher(inputs)

    @hookimpl
    def kd_distill_loss(run, student_outputs, teacher_outputs, batch):
        return {"owner_kd": run.kd_loss(student_outputs, teacher_outputs, run.temperature)}

    plugin_module(monkeypatch, "kdt_owner", kd_register_tasks, kd_soft_targets, kd_distill_loss)

    @hookimpl
    def kd_epoch_end(run, epoch, metrics):
        calls["bystander_epoch_end"].append((run.stage, epoch))

    @hookimpl(specname="kd_soft_targets")
    def observe_soft_targets(run, inputs, batch):
        calls["bystander_soft"].append(run.step)
        calls["order"].append("bystander")
        return None  # not a result: the next implementation is asked

    @hookimpl(specname="kd_distill_loss")
    def bystander_loss(run, student_outputs, teacher_outputs, batch):
        return {"bystander_kd": 0.5 * run.kd_loss(student_outputs, teacher_outputs, run.temperature)}

    plugin_module(monkeypatch, "kdt_bystander", kd_epoch_end, observe_soft_targets, bystander_loss)
    return calls


def test_run_plugin_manager_holds_core_the_tasks_plugin_and_the_extras(monkeypatch):
    owner_and_bystander(monkeypatch)
    registry = registry_with("kdt_owner", "kdt_bystander")
    task = registry.get_task("kdt_owner")
    assert [name for name, _ in registry.run_plugin_manager(task).list_name_plugin()] == ["core", "kdt_owner"]
    pm = registry.run_plugin_manager(task, ["kdt_bystander", "kdt_owner", "kdt_bystander"])
    assert [name for name, _ in pm.list_name_plugin()] == ["core", "kdt_owner", "kdt_bystander"]
    impls = [impl.plugin_name for impl in pm.hook.kd_distill_loss.get_hookimpls()]
    assert impls == ["core", "kdt_owner", "kdt_bystander"], "pluggy calls the last one first"
    with pytest.raises(PluginError, match="Did you mean 'kdt_bystander'"):
        registry.run_plugin_manager(task, ["kdt_bystandr"])


def test_a_run_reaches_only_core_and_the_tasks_plugin(tmp_path, monkeypatch):
    calls = owner_and_bystander(monkeypatch)
    registry = registry_with("kdt_owner", "kdt_bystander")
    result = fit(tiny_config(tmp_path, registry, "kdt_owner"), registry, console=QUIET)

    assert calls["bystander_epoch_end"] == [] and calls["bystander_soft"] == []
    assert calls["owner_soft"] == list(range(6)), "the task's plugin overrides core's soft targets"
    train = student_train_records(result.run_dir)
    assert len(train) == 6
    assert all("owner_kd" in r and "kd" not in r and "bystander_kd" not in r for r in train)


def test_with_plugins_extras_override_the_tasks_plugin(tmp_path, monkeypatch):
    calls = owner_and_bystander(monkeypatch)
    registry = registry_with("kdt_owner", "kdt_bystander")
    config = tiny_config(tmp_path, registry, "kdt_owner", with_plugins=["kdt_bystander"])
    result = fit(config, registry, console=QUIET)

    assert calls["bystander_epoch_end"] == [("teacher", 0), ("teacher", 1), ("student", 0), ("student", 1)]
    # kd_soft_targets: the extra is asked first, returns None, so the task's plugin answers.
    assert calls["bystander_soft"] == calls["owner_soft"] == list(range(6))
    assert calls["order"] == ["bystander", "owner"] * 6
    # kd_distill_loss: the extra's result wins; the task's plugin is not consulted.
    train = student_train_records(result.run_dir)
    assert len(train) == 6
    for r in train:
        assert "bystander_kd" in r and "owner_kd" not in r and "kd" not in r
        assert r["total"] == pytest.approx(0.3 * r["supervised"] + 0.7 * r["bystander_kd"], rel=1e-5)


def test_kd_plugins_check_runs_the_schedule_and_loss_registration(monkeypatch):
    from click.testing import CliRunner

    from kdcore.cli import cli

    plugin_module(monkeypatch, "kdt_dup", *_broken_registrations("loss"))
    monkeypatch.setattr("kdcore.cli.get_registry", lambda: registry_with("kdt_dup"))
    listed = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).stdout)
    assert {p["name"]: p["broken"] for p in listed}["kdt_dup"] is False  # listing registers tasks only
    checked = json.loads(CliRunner().invoke(cli, ["plugins", "--json", "--check"]).stdout)
    error = {p["name"]: p["error"] for p in checked}["kdt_dup"]
    assert error.startswith("ValueError: loss 'soft_target_kl' is already registered")
