"""``distill.hints`` on the liverct U-Nets: a FitNets hint between the bottlenecks (56 student channels,
32 teacher channels in the tiny run: a 1x1x1 Conv3d adapter) trains beside the soft targets."""

from __future__ import annotations

from liverct_tiny import tiny_fit

from kdcore.report import read_metrics

BOTTLENECK = "model.1.submodule.1.submodule.1.submodule"
HINT = f"distill.hints=[{{student = '{BOTTLENECK}', teacher = '{BOTTLENECK}', loss = 'hint', weight = 1.0}}]"


def test_a_bottleneck_hint_is_learnt_and_the_student_validates(tmp_path):
    run = tiny_fit(tmp_path, HINT, "options.gtan=false")
    records = read_metrics(run.run_dir)
    hint = [r[f"hint:{BOTTLENECK}"] for r in records if r.get("split") == "train" and r["stage"] == "student"]
    assert len(hint) == 8  # every step of the 4 epochs logs the term
    assert hint[-1] < 0.7 * hint[0]  # the adapter and the student learn the teacher's bottleneck
    validated = [r for r in records if r.get("split") == "val" and r["stage"] == "student"]
    assert len(validated) == 4 and all(0.0 <= r["dice"] <= 1.0 for r in validated)
