"""The training loop, end to end on the scikit-learn digits with tiny models."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from typing import NamedTuple

import pytest
import torch
from rich.console import Console

from kdcore import engine
from kdcore.config import resolve
from kdcore.engine import LossWatch, deterministic_kernels, fit, pin_memory, select_device, to_device
from kdcore.plugins import Registry
from kdcore.report import read_metrics
from kdcore.strategies import EnsembleTeacher, plan_stages

QUIET = Console(file=io.StringIO())


def tiny_config(tmp_path, *sets: str, **overrides):
    """Digits, MLP student, small teacher, few epochs: about a second per stage on a CPU."""
    registry = Registry(load_entry_points=False)
    task = registry.get_task("classify", "digits")
    base = [
        'teacher.arch="cnn_small"',
        'student.arch="mlp"',
        "teacher.epochs=3",
        "teacher.lr=0.01",
        "student.lr=0.01",
        "student.epochs=2",
        "options.train_fraction=0.5",
        "train.progress=false",
        "train.log_every=1",
        'device="cpu"',
    ]
    overrides = {"out_dir": str(tmp_path / "runs"), **overrides}
    return resolve(task.defaults, sets=[*base, *sets], overrides=overrides)


def records(run_dir, split=None, stage=None):
    return [
        r
        for r in read_metrics(run_dir)
        if (split is None or r.get("split") == split) and (stage is None or r.get("stage") == stage)
    ]


def test_fit_writes_a_complete_run_directory(tmp_path):
    config = tiny_config(tmp_path)
    result = fit(config, Registry(load_entry_points=False), console=QUIET)
    run_dir = result.run_dir
    assert run_dir.parent == tmp_path / "runs" / "classify" / "digits"
    assert tomllib.loads((run_dir / "config.toml").read_text()) == config
    for name in ("best.pt", "last.pt", "teacher_best.pt", "teacher_last.pt", "baseline_best.pt"):
        assert (run_dir / "checkpoints" / name).stat().st_size > 0, name
    for name in ("losses.png", "metric.png", "schedules.png"):
        assert (run_dir / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary == result.summary
    assert list(summary["stages"]) == ["teacher", "student", "baseline"]
    assert summary["main_metric"] == "accuracy"
    assert summary["student_minus_baseline"] == pytest.approx(
        summary["stages"]["student"]["best_metric"] - summary["stages"]["baseline"]["best_metric"]
    )
    assert not list(run_dir.rglob("*.tmp")), "atomic writes leave no temporary files"


def test_student_learns_from_the_teacher(tmp_path):
    config = tiny_config(tmp_path, "student.epochs=4")
    result = fit(config, Registry(load_entry_points=False), console=QUIET)
    train = records(result.run_dir, "train", "student")
    first, last = train[0], train[-5:]
    for term in ("supervised", "kd", "total"):
        assert sum(r[term] for r in last) / len(last) < 0.7 * first[term], term
    assert all("kd" in r and "supervised" in r for r in train)
    assert result.summary["stages"]["student"]["best_metric"] > 0.5  # chance is 0.1
    assert result.summary["stages"]["teacher"]["best_metric"] > 0.5


def test_deterministic_training_repeats_its_weights_and_restores_the_global_settings(tmp_path, monkeypatch):
    seen = []
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with deterministic_kernels(True):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert seen == [(True, False)]
    assert not torch.are_deterministic_algorithms_enabled()
    sets = ("train.deterministic=true", "distill.baseline=false", "teacher.epochs=1", "student.epochs=1")
    weights = []
    for name in ("a", "b"):
        result = fit(
            tiny_config(tmp_path, *sets, run_name=name), Registry(load_entry_points=False), console=QUIET
        )
        weights.append(torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.are_deterministic_algorithms_enabled(), "the run leaves the global setting as it was"


def test_the_values_used_follow_the_schedules(tmp_path):
    config = tiny_config(
        tmp_path,
        'distill.temperature={name="anneal_to_one", start=8.0, end_fraction=0.5}',
        'distill.alpha={name="linear", start=1.0, end=0.0}',
        "distill.baseline=false",
    )
    result = fit(config, Registry(load_entry_points=False), console=QUIET)
    train = records(result.run_dir, "train", "student")
    total = len(train)
    assert train[0]["temperature"] == pytest.approx(8.0)
    assert train[0]["alpha"] == pytest.approx(1.0)
    assert all(r["temperature"] == pytest.approx(1.0) for r in train if r["step"] >= total / 2)
    temps = [r["temperature"] for r in train]
    assert temps == sorted(temps, reverse=True)
    assert train[-1]["alpha"] < 0.1
    assert "temperature" not in records(result.run_dir, "train", "teacher")[0]


def test_learnable_temperature_is_trained_within_its_bounds(tmp_path):
    config = tiny_config(
        tmp_path,
        'distill.temperature={name="learnable", initial=4.0, min_value=1.0, max_value=10.0}',
        "distill.baseline=false",
        "student.lr=0.05",
    )
    result = fit(config, Registry(load_entry_points=False), console=QUIET)
    temps = [r["temperature"] for r in records(result.run_dir, "train", "student")]
    assert temps[0] == pytest.approx(4.0, abs=1e-4)
    assert abs(temps[-1] - temps[0]) > 1e-3, "the temperature parameter must receive gradient steps"
    assert all(1.0 <= t <= 10.0 for t in temps)


def test_assistant_chain_trains_each_link(tmp_path):
    config = tiny_config(
        tmp_path,
        'distill.strategy="assistant_chain"',
        'distill.assistants=["cnn_small"]',
        'teacher.arch="cnn_large"',
    )
    result = fit(config, Registry(load_entry_points=False), console=QUIET)
    assert list(result.summary["stages"]) == ["teacher", "assistant1", "student", "baseline"]
    assert (result.run_dir / "checkpoints" / "assistant1_best.pt").is_file()
    assert "kd" in records(result.run_dir, "train", "assistant1")[0]


def test_ensemble_of_teachers(tmp_path):
    config = tiny_config(
        tmp_path,
        'distill.strategy="ensemble"',
        'distill.extra_teachers=["mlp"]',
        "distill.teacher_weights=[3.0, 1.0]",
        "distill.baseline=false",
    )
    result = fit(config, Registry(load_entry_points=False), console=QUIET)
    assert list(result.summary["stages"]) == ["teacher", "teacher2", "student"]
    assert result.summary["stages"]["student"]["best_metric"] > 0.3


def test_ensemble_teacher_averages_logits_with_normalised_weights():
    a, b = torch.nn.Linear(2, 3), torch.nn.Linear(2, 3)
    x = torch.randn(4, 2)
    ensemble = EnsembleTeacher([a, b], [3.0, 1.0])
    assert torch.allclose(ensemble(x), 0.75 * a(x) + 0.25 * b(x))
    with pytest.raises(ValueError, match="non-negative"):
        EnsembleTeacher([a, b], [1.0, -1.0])


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (['distill.strategy="ensemble"'], "distill.extra_teachers"),
        (['distill.strategy="assistant_chain"'], "distill.assistants"),
        (['distill.assistants=["mlp"]'], "distill.strategy"),
        (['distill.strategy="online"'], "offline, assistant_chain, ensemble"),
        (
            [
                'distill.strategy="ensemble"',
                'distill.extra_teachers=["mlp"]',
                "distill.teacher_weights=[1.0]",
            ],
            "2 teachers",
        ),
    ],
)
def test_plan_stages_rejects_inconsistent_strategies(tmp_path, sets, message):
    with pytest.raises(ValueError, match=message):
        plan_stages(tiny_config(tmp_path, *sets))


def test_feature_hints_add_logged_terms_and_remove_their_hooks(tmp_path, monkeypatch):
    plugin = tmp_path / "hint_probe.py"
    plugin.write_text(
        textwrap.dedent(
            """
            from kdcore import hookimpl
            SEEN = []

            @hookimpl
            def kd_fit_end(run, summary):
                SEEN.append((run.stage, run.student, run.teacher))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry(
        builtins=("kdcore.builtin.core", "kdcore.builtin.classify", "hint_probe"), load_entry_points=False
    )
    config = tiny_config(
        tmp_path,
        'student.arch="cnn_small"',
        'teacher.arch="cnn_large"',
        'distill.hints=[{student="features.2", teacher="features.5", loss="hint"}, '
        '{student="features.5", teacher="features.12", loss="attention", weight=2.0}]',
        "distill.baseline=false",
        with_plugins=["hint_probe"],
    )
    result = fit(config, registry, console=QUIET)
    train = records(result.run_dir, "train", "student")
    assert {"hint:features.2", "attention:features.5", "kd"} <= set(train[0])
    assert train[-1]["hint:features.2"] < train[0]["hint:features.2"], (
        "the adapter and student learn the hint"
    )
    import hint_probe

    stage, student, teacher = hint_probe.SEEN[-1]
    assert stage == "student"
    assert all(not m._forward_hooks for m in student.modules())
    assert all(not m._forward_hooks for m in teacher.modules())


def test_unknown_hint_module_names_the_module_and_suggests(tmp_path):
    config = tiny_config(
        tmp_path, 'student.arch="cnn_small"', 'distill.hints=[{student="feature.2", teacher="features.2"}]'
    )
    with pytest.raises(ValueError, match=r"did you mean 'features\.2'"):
        fit(config, Registry(load_entry_points=False), console=QUIET)


def test_a_trained_teacher_is_reused_from_its_checkpoint(tmp_path):
    first = fit(
        tiny_config(tmp_path, "distill.baseline=false"), Registry(load_entry_points=False), console=QUIET
    )
    checkpoint = str(first.run_dir / "checkpoints" / "teacher_best.pt")
    config = tiny_config(tmp_path, "distill.baseline=false", f'teacher.checkpoint="{checkpoint}"')
    second = fit(config, Registry(load_entry_points=False), console=QUIET)
    assert list(second.summary["stages"]) == ["student"]
    assert not records(second.run_dir, stage="teacher")
    wrong = tiny_config(tmp_path, 'teacher.arch="mlp"', f'teacher.checkpoint="{checkpoint}"')
    with pytest.raises(ValueError, match="holds architecture 'cnn_small'"):
        fit(wrong, Registry(load_entry_points=False), console=QUIET)


def test_same_seed_same_results(tmp_path):
    runs = [
        fit(
            tiny_config(tmp_path / str(i), "distill.baseline=false"),
            Registry(load_entry_points=False),
            console=QUIET,
        )
        for i in range(2)
    ]
    losses = [[r["total"] for r in records(run.run_dir, "train")] for run in runs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_student_and_baseline_start_from_the_same_weights(tmp_path):
    config = tiny_config(tmp_path, "student.epochs=1", "distill.alpha=0.0")
    result = fit(config, Registry(load_entry_points=False), console=QUIET)
    # With alpha = 0 the distillation term has no weight: the student *is* the baseline.
    student = [r["supervised"] for r in records(result.run_dir, "train", "student")]
    baseline = [r["supervised"] for r in records(result.run_dir, "train", "baseline")]
    assert student == pytest.approx(baseline, rel=1e-5)


def test_unknown_architecture_is_rejected_before_training(tmp_path):
    config = tiny_config(tmp_path, 'student.arch="resnet9000"')
    with pytest.raises(ValueError, match=r"student.arch 'resnet9000'.*mlp, cnn_small"):
        fit(config, Registry(load_entry_points=False), console=QUIET)
    assert not (tmp_path / "runs").exists(), "nothing is written for a config that cannot run"


def test_existing_run_directory_is_never_overwritten(tmp_path):
    config = tiny_config(tmp_path, "distill.baseline=false", 'run_name="fixed"')
    fit(config, Registry(load_entry_points=False), console=QUIET)
    with pytest.raises(FileExistsError, match="fixed"):
        fit(config, Registry(load_entry_points=False), console=QUIET)


def test_select_device(monkeypatch):
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        select_device("cuda")


def test_the_closing_table_gives_a_gain_only_to_students_of_the_baseline_architecture():
    from kdcore.engine import summary_table

    def stage(arch, best, distilled=True):
        return {
            "arch": arch,
            "parameters": 10,
            "best_metric": best,
            "final_metric": best,
            "seconds": 1.0,
            "distilled": distilled,
        }

    summary = {
        "main_metric": "dice",
        "seconds": 5.0,
        "device": "cpu",
        "stages": {
            "teacher": stage("big", 0.9, distilled=False),
            "chain/assistant1": stage("mid", 0.8),
            "chain/student": stage("small", 0.75),
            "baseline": stage("small", 0.7, distilled=False),
        },
    }
    console = Console(file=io.StringIO(), width=100)
    console.print(summary_table(summary))
    rows = {line.split("│")[1].strip(): line for line in console.file.getvalue().splitlines() if "│" in line}
    assert "+0.0500" in rows["chain/student"]
    assert "+0.1000" not in rows["chain/assistant1"] and "+" not in rows["chain/assistant1"]
    assert "dice: best and final by stage" in console.file.getvalue()


class _Compiled(torch.nn.Module):
    """What ``torch.compile`` returns, without compiling: the module under ``_orig_mod``."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self._orig_mod = module

    def forward(self, *args):
        return self._orig_mod(*args)


def test_train_compile_compiles_the_training_forwards_and_keeps_plain_checkpoints(tmp_path, monkeypatch):
    compiled: list[type] = []

    def fake_compile(module):
        compiled.append(type(module._orig_mod if isinstance(module, _Compiled) else module))
        return _Compiled(module)

    monkeypatch.setattr(torch, "compile", fake_compile)
    result = fit(
        tiny_config(tmp_path, "train.compile=true"), Registry(load_entry_points=False), console=QUIET
    )
    names = [kind.__name__ for kind in compiled]
    assert names == [
        "SmallCNN",
        "Sequential",
        "SmallCNN",
        "Sequential",
    ]  # teacher; student + its teacher; baseline
    state = torch.load(result.run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert not any(key.startswith("_orig_mod") for key in state["model"])
    assert result.summary["stages"]["student"]["best_metric"] > 0.3  # it learnt (chance is 0.1)
    with pytest.raises(ValueError, match=r"train\.compile cannot be used with distill\.hints"):
        hinted = tiny_config(
            tmp_path / "h",
            "train.compile=true",
            'student.arch="cnn_small"',
            'distill.hints=[{student="features.2", teacher="features.2"}]',
        )
        fit(hinted, Registry(load_entry_points=False), console=QUIET)


def test_a_run_of_the_small_networks_does_not_import_torchvision(tmp_path):
    """torchvision is imported for its networks only: start-up a run of the small networks does not pay."""
    script = (
        "import io, sys\n"
        "from rich.console import Console\n"
        "from kdcore.config import resolve\n"
        "from kdcore.engine import fit\n"
        "from kdcore.plugins import Registry\n"
        "registry = Registry(load_entry_points=False)\n"
        "task = registry.get_task('classify', 'digits')\n"
        "sets = ['teacher.arch=\"cnn_small\"', 'student.arch=\"mlp\"', 'teacher.epochs=1',"
        " 'student.epochs=1', 'distill.baseline=false', 'device=\"cpu\"']\n"
        f"config = resolve(task.defaults, sets=sets, overrides={{'out_dir': {str(tmp_path)!r}}})\n"
        "fit(config, registry, console=Console(file=io.StringIO()))\n"
        "print(sorted(m for m in sys.modules if m.startswith('torchvision')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert list((tmp_path / "classify" / "digits").iterdir()), "the run was written"


def test_log_values_are_read_back_as_floats_in_their_order():
    values = {
        "total": torch.tensor(1.5),
        "alpha": 0.5,
        "agreement": torch.tensor([0.25]),
        "count": torch.tensor(3),
        "half": torch.tensor(0.75, dtype=torch.bfloat16),
    }
    read = engine._floats(values)
    assert list(read.items()) == [
        ("total", 1.5),
        ("alpha", 0.5),
        ("agreement", 0.25),
        ("count", 3.0),
        ("half", 0.75),
    ]
    assert all(type(value) is float for value in read.values())
    with pytest.raises(ValueError, match="one element"):
        engine._floats({"vector": torch.ones(2)})


def test_the_log_values_of_an_accelerator_are_read_back_in_one_go(monkeypatch):
    reads = []

    def tolist(tensor):  # a meta tensor has no values: stand in for the device's read-back
        reads.append(tuple(tensor.shape))
        return [float(n) for n in range(tensor.numel())]

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    meta = {name: torch.empty((), device="meta") for name in ("total", "supervised", "kd")}
    read = engine._floats(
        {"total": meta["total"], "alpha": 0.5, "supervised": meta["supervised"], "kd": meta["kd"]}
    )
    assert reads == [(3,)]  # one read for the three device values
    assert list(read.items()) == [("total", 0.0), ("alpha", 0.5), ("supervised", 1.0), ("kd", 2.0)]


class Pair(NamedTuple):
    image: torch.Tensor
    label: torch.Tensor


def test_to_device_keeps_the_batch_structure_named_tuples_included():
    batch = {"pair": Pair(torch.ones(2), torch.zeros(2)), "ids": [torch.arange(2), "a"], "n": 3}
    moved = to_device(batch, torch.device("meta"))
    assert isinstance(moved["pair"], Pair) and moved["pair"].image.device.type == "meta"
    assert moved["pair"].label.shape == (2,)
    assert isinstance(moved["ids"], list) and moved["ids"][0].device.type == "meta"
    assert moved["ids"][1] == "a" and moved["n"] == 3
    assert batch["pair"].image.device.type == "cpu"  # the input is not changed


def test_to_device_leaves_a_batch_already_on_the_device_as_it_is():
    cpu = torch.device("cpu")
    images, labels = torch.ones(2, 3), torch.zeros(2)
    assert to_device([images, labels], cpu)[0] is images  # no copy, no Tensor.to call
    there = torch.empty(2, device="meta")
    mixed = [there, labels]  # one tensor to move: each is looked at
    moved = to_device(mixed, torch.device("meta"))
    assert moved[0] is there and moved[1].device.type == "meta" and mixed[1].device.type == "cpu"


def test_the_loss_watch_names_the_first_non_finite_step_also_after_its_window_filled():
    watch = LossWatch(window=3)
    for step, total in enumerate([1.0, 2.0, float("inf"), 4.0, float("nan"), 6.0, 7.0]):
        watch.update(torch.tensor(total), step)  # the window of 3 is read twice before any check
    with pytest.raises(FloatingPointError, match="stage 'student' step 2: the loss is inf"):
        watch.check("student")


def test_the_loss_watch_gives_each_epoch_the_mean_of_its_own_steps():
    watch = LossWatch(window=2)
    for step, total in enumerate([1.0, 2.0, 3.0, 6.0, 1.5]):
        watch.update(torch.tensor(total, dtype=torch.float16), step)
        if step == 1:
            watch.check("student")
    assert watch.epoch_mean("student") == pytest.approx(13.5 / 5)
    watch.update(torch.tensor(8.0), 5)
    assert watch.epoch_mean("student") == 8.0
    assert watch.epoch_mean("student") == 0.0  # an epoch without steps


@pytest.mark.parametrize("bar", [True, False])
def test_every_validated_epoch_prints_one_line_in_order_with_or_without_the_bar(tmp_path, bar):
    out = io.StringIO()
    console = Console(file=out, force_terminal=bar, width=120)
    config = tiny_config(
        tmp_path, f"train.progress={str(bar).lower()}", "student.epochs=3", "teacher.epochs=2"
    )
    fit(config, Registry(load_entry_points=False), console=console)
    printed = re.findall(
        r"\[(\w+)\] epoch (\d)/(\d)  train loss \d\.\d{4}  val accuracy \d\.\d{4}", out.getvalue()
    )
    expected = [("teacher", "1", "2"), ("teacher", "2", "2")]
    expected += [(stage, str(e), "3") for stage in ("student", "baseline") for e in (1, 2, 3)]
    assert printed == expected


@pytest.mark.parametrize("redraw_s", [0.0, 1e9])
def test_the_bar_is_drawn_with_the_step_count_and_last_logged_loss_when_a_redraw_is_due(
    tmp_path, monkeypatch, redraw_s
):
    monkeypatch.setattr(engine, "BAR_REDRAW_S", redraw_s)
    out = io.StringIO()
    config = tiny_config(tmp_path, "train.progress=true", "teacher.epochs=2")
    fit(config, Registry(load_entry_points=False), console=Console(file=out, force_terminal=True, width=120))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    drawn = [
        (int(n), int(total)) for n, total in re.findall(r"teacher \S+\s+(\d+)/(\d+) loss \d\.\d{4}", text)
    ]
    if redraw_s:  # a stage shorter than the delay shows no bar, only its epoch lines
        assert drawn == [] and not re.search(r"\d+/24", text)
    else:  # a redraw after every step, the last at the end of the stage
        assert [n for n, _ in drawn] == sorted(n for n, _ in drawn) and drawn[-1] == (24, 24)
    assert len(re.findall(r"\[teacher\] epoch \d/2", text)) == 2


@pytest.mark.parametrize(
    ("device", "workers", "pinned"),
    [("cuda", 2, True), ("cuda", 0, False), ("cpu", 2, False), ("cpu", 0, False)],
)
def test_batches_are_pinned_only_on_cuda_by_worker_processes(device, workers, pinned):
    assert pin_memory(torch.device(device), workers) is pinned
