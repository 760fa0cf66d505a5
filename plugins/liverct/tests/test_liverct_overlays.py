"""Overlays of predicted vs true masks: exact difference masks, radiological orientation, physical aspect
ratio, valid PNGs, the best weights drawn, and one figure per stage of a real (tiny) run."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from liverct_tiny import tiny_fit
from monai.data import MetaTensor
from PIL import Image

from kd_liverct import overlays
from kd_liverct.metrics import evaluate_segmentation
from kd_liverct.overlays import (
    DIFFERENCE_CODES,
    axial_view,
    build_overlay_figure,
    case_dice,
    choose_slices,
    confusion_masks,
    coronal_view,
    difference_map,
    draw_overlays,
    draw_stage_overlays,
    to_ras,
    view_aspects,
)
from kdcore.checkpoint import save_checkpoint
from kdcore.testing import plugin_only

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPACING = (2.0, 2.0, 5.0)  # anisotropic, as thick-slice CT


def sphere(shape, centre, radius_mm, spacing=SPACING) -> np.ndarray:
    """A ball of ``radius_mm`` (in mm, so round in space whatever the spacing) at voxel ``centre``."""
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    distance = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing, strict=True))
    return distance <= radius_mm**2


@pytest.fixture(scope="module")
def synthetic():
    """A 40 × 32 × 16 RAS volume: a liver ball at high x (the patient's right), a small tumour inside it,
    and a prediction shifted by 3 voxels towards the patient's left (lower x)."""
    shape = (40, 32, 16)
    label = np.zeros(shape, dtype=np.int64)
    label[sphere(shape, (27, 16, 8), 24.0)] = 1
    label[sphere(shape, (29, 17, 8), 6.0)] = 2
    prediction = np.roll(label, -3, axis=0)
    rng = np.random.default_rng(0)
    image = np.clip(0.2 + 0.4 * (label == 1) + 0.25 * (label == 2) + 0.03 * rng.standard_normal(shape), 0, 1)
    return image, label, prediction


# --- difference masks -----------------------------------------------------------------------------


def test_confusion_masks_are_exact_per_class():
    label = np.array([0, 1, 1, 1, 2, 2, 2, 0, 0, 1]).reshape(1, 2, 5)
    prediction = np.array([0, 1, 0, 2, 2, 1, 0, 1, 2, 1]).reshape(1, 2, 5)
    masks = confusion_masks(label, prediction)
    flat = {name: {k: np.flatnonzero(v).tolist() for k, v in m.items()} for name, m in masks.items()}
    assert flat == {
        "liver": {"tp": [1, 9], "fp": [5, 7], "fn": [2, 3]},
        "tumour": {"tp": [4], "fp": [3, 8], "fn": [5, 6]},
    }
    dice = case_dice(masks)
    assert dice["liver"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))
    assert dice["tumour"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 2))


def test_the_difference_map_codes_every_voxel_and_shows_tumour_over_liver():
    label = np.array([0, 1, 1, 1, 2, 2, 2, 0, 0, 1]).reshape(1, 2, 5)
    prediction = np.array([0, 1, 0, 2, 2, 1, 0, 1, 2, 1]).reshape(1, 2, 5)
    code = {f"{name} {outcome}": value for (name, outcome), value in DIFFERENCE_CODES.items()}
    expected = [
        0,
        code["liver tp"],
        code["liver fn"],
        code["tumour fp"],  # true liver predicted tumour: liver FN and tumour FP, the tumour's shown
        code["tumour tp"],
        code["tumour fn"],  # true tumour predicted liver: tumour FN and liver FP, the tumour's shown
        code["tumour fn"],
        code["liver fp"],
        code["tumour fp"],
        code["liver tp"],
    ]
    assert difference_map(label, prediction).ravel().tolist() == expected
    assert sorted(DIFFERENCE_CODES.values()) == list(range(1, 7))


def test_dice_is_undefined_for_a_class_absent_from_the_truth():
    label = np.array([[[0, 1, 1, 0]]])
    dice = case_dice(confusion_masks(label, np.array([[[0, 1, 2, 2]]])))
    assert dice["liver"] == pytest.approx(2 / 3)
    assert math.isnan(dice["tumour"])


def test_a_shifted_prediction_has_matching_false_positives_and_negatives(synthetic):
    _, label, prediction = synthetic
    masks = confusion_masks(label, prediction)
    for name, value in (("liver", 1), ("tumour", 2)):
        m = masks[name]
        assert int((m["tp"] | m["fn"]).sum()) == int((label == value).sum())
        assert int((m["tp"] | m["fp"]).sum()) == int((prediction == value).sum())
        assert not (m["tp"] & m["fp"]).any() and not (m["tp"] & m["fn"]).any()
        # A pure translation inside the volume: as many voxels gained as lost.
        assert int(m["fp"].sum()) == int(m["fn"].sum()) > 0


# --- orientation and aspect -------------------------------------------------------------------------


def test_views_follow_the_radiological_convention():
    volume = np.arange(4 * 3 * 2).reshape(4, 3, 2)  # RAS: x to the patient's right, y anterior, z superior
    axial = axial_view(volume, 1)
    assert axial.shape == (3, 4)  # rows y, columns x
    assert axial[0, 0] == volume[3, 2, 1]  # top left: the patient's right (max x), anterior (max y)
    assert axial[-1, -1] == volume[0, 0, 1]  # bottom right: the patient's left, posterior
    coronal = coronal_view(volume, 2)
    assert coronal.shape == (2, 4)  # rows z, columns x
    assert coronal[0, 0] == volume[3, 2, 1]  # top left: the patient's right (max x), superior (max z)
    assert coronal[-1, -1] == volume[0, 2, 0]


def test_a_liver_on_the_patients_right_appears_on_the_left_of_both_views(synthetic):
    _, label, prediction = synthetic  # in RAS the patient's right is at high x: the liver is at x = 27 of 40
    z, y = choose_slices(label, prediction)
    for view in (axial_view(label, z), coronal_view(label, y)):
        columns = np.nonzero(view > 0)[1]
        assert columns.size and columns.mean() < view.shape[1] / 2
    # Superior up in the coronal view, anterior up in the axial view.
    marker = np.zeros_like(label)
    marker[20, 31, 15] = 1  # anterior and superior corner
    assert np.nonzero(axial_view(marker, 15))[0].tolist() == [0]
    assert np.nonzero(coronal_view(marker, 31))[0].tolist() == [0]


def test_slices_cut_the_largest_liver_cross_section_and_the_liver_centre():
    label = np.zeros((10, 12, 8), dtype=np.int64)
    label[2:6, 3:5, 1] = 1  # 8 voxels
    label[2:8, 3:9, 5] = 1  # 36 voxels: the largest cross-section
    label[3:4, 4:5, 5] = 2  # tumour voxels count as liver here
    z, y = choose_slices(label)
    assert z == 5
    ys = np.nonzero(label)[1]
    assert y == round(ys.mean())
    assert choose_slices(np.zeros((4, 6, 8))) == (4, 3)  # nothing anywhere: the middle


def test_voxels_keep_their_physical_aspect_ratio(synthetic):
    image, label, prediction = synthetic
    assert view_aspects(SPACING) == {"axial": 1.0, "coronal": 2.5}
    fig = build_overlay_figure(image, label, prediction, "synthetic", SPACING)
    axes = fig.axes[:6]
    assert [ax.get_aspect() for ax in axes] == [1.0] * 3 + [2.5] * 3
    z, y = choose_slices(label, prediction)
    np.testing.assert_array_equal(axes[0].images[0].get_array(), axial_view(image, z))
    np.testing.assert_array_equal(
        axes[5].images[1].get_array(), coronal_view(difference_map(label, prediction), y)
    )
    assert "liver 0." in fig.get_suptitle() and "tumour 0." in fig.get_suptitle()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "tumour false negative" in legend and "liver true positive" in legend


def test_to_ras_flips_and_permutes_volumes_and_spacing():
    volume = np.arange(4 * 3 * 2).reshape(4, 3, 2)
    lps = np.diag([-2.0, -3.0, 4.0, 1.0])  # x to the left, y posterior
    (ras,), spacing = to_ras([volume], lps)
    np.testing.assert_array_equal(ras, volume[::-1, ::-1, :])
    assert spacing == [2.0, 3.0, 4.0]
    swapped = np.array([[0, 3.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 4.0, 0], [0, 0, 0, 1]])  # array axis 0 is y
    (ras,), spacing = to_ras([volume], swapped)
    np.testing.assert_array_equal(ras, volume.transpose(1, 0, 2))
    assert spacing == [3.0, 2.0, 4.0]


# --- the PNG ------------------------------------------------------------------------------------------


def test_draw_overlays_writes_a_small_valid_png(synthetic, tmp_path):
    image, label, prediction = synthetic
    path = draw_overlays(image, label, prediction, tmp_path / "sub" / "case.png", "synthetic", SPACING)
    assert path == tmp_path / "sub" / "case.png"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert 10_000 < len(data) < 200_000
    with Image.open(path) as png:
        png.verify()
    with Image.open(path) as png:
        width, height = png.size
        assert png.format == "PNG"
    assert 800 <= width <= 1200 and 500 <= height <= 1200
    assert [p.name for p in path.parent.iterdir()] == ["case.png"]  # no temporary file left behind


def test_shapes_are_checked(synthetic, tmp_path):
    image, label, prediction = synthetic
    with pytest.raises(ValueError, match="3-D"):
        draw_overlays(image[None], label, prediction, tmp_path / "x.png", "t", SPACING)
    with pytest.raises(ValueError, match="differ in shape"):
        draw_overlays(image, label, prediction[:-1], tmp_path / "x.png", "t", SPACING)
    assert not (tmp_path / "x.png").exists()


# --- the stage hook, on a fake run ----------------------------------------------------------------------


def _intensity_classifier(best: bool) -> torch.nn.Conv3d:
    """A 1×1×1 convolution: with ``best`` weights it maps 0 / 0.5 / 1 to background / liver / tumour;
    otherwise it predicts background everywhere."""
    model = torch.nn.Conv3d(1, 3, kernel_size=1)
    with torch.no_grad():
        if best:
            model.weight.copy_(torch.tensor([0.0, 10.0, 30.0]).view(3, 1, 1, 1, 1))
            model.bias.copy_(torch.tensor([0.0, -3.0, -22.0]))
        else:
            model.weight.zero_()
            model.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    return model


@pytest.fixture
def fake_run(tmp_path, synthetic):
    _, label, _ = synthetic
    affine = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))
    image = torch.from_numpy(label / 2.0).float()[None]
    item = {"image": MetaTensor(image, affine=affine), "label": MetaTensor(torch.from_numpy(label)[None])}
    save_checkpoint(
        tmp_path / "checkpoints" / "teacher_best.pt", {"model": _intensity_classifier(True).state_dict()}
    )
    run = SimpleNamespace(
        task=SimpleNamespace(evaluate=evaluate_segmentation),
        config={"options": {"overlay_cases": 3, "patch_size": [16, 16, 16], "spacing": [9.0, 9.0, 9.0]}},
        run_dir=tmp_path,
        device=torch.device("cpu"),
        stage="teacher",
        student=_intensity_classifier(False).train(),
        data=SimpleNamespace(val=[item], info={"val_cases": ["liver 7"]}),
    )
    summary = {"arch": "conv", "best_epoch": 1, "epochs": 3, "checkpoint": "checkpoints/teacher_best.pt"}
    return run, summary


def test_the_hook_draws_the_best_checkpoint_and_leaves_the_student_alone(fake_run, monkeypatch):
    run, summary = fake_run
    drawn = []

    def spy(image, label, prediction, path, title, spacing):
        drawn.append(SimpleNamespace(label=label, prediction=prediction, title=title, spacing=spacing))
        return real(image, label, prediction, path, title, spacing)

    real = overlays.draw_overlays
    monkeypatch.setattr(overlays, "draw_overlays", spy)
    before = {k: v.clone() for k, v in run.student.state_dict().items()}
    paths = draw_stage_overlays(run, summary)
    # Three cases asked for, one in the validation set; the case name is made safe for a file name.
    assert paths == summary["overlays"] == ["report/overlays/teacher_liver_7.png"]
    assert (run.run_dir / paths[0]).read_bytes().startswith(PNG_SIGNATURE)
    assert "overlays_error" not in summary
    (case,) = drawn
    np.testing.assert_array_equal(case.prediction, case.label)  # the best weights, not the current ones
    assert case.spacing == list(SPACING)  # from the MetaTensor's affine, not options.spacing
    assert case.title.startswith("teacher (conv), best epoch 2 of 3")
    assert run.student.training
    for key, value in run.student.state_dict().items():
        assert torch.equal(value, before[key])


def test_the_hook_can_be_turned_off_and_skips_stages_without_a_best_checkpoint(fake_run):
    run, summary = fake_run
    run.config["options"]["overlay_cases"] = 0
    assert draw_stage_overlays(run, summary) == [] and "overlays" not in summary
    run.config["options"]["overlay_cases"] = 1
    assert draw_stage_overlays(run, {**summary, "checkpoint": "checkpoints/none.pt"}) == []
    assert draw_stage_overlays(run, {**summary, "best_epoch": -1}) == []
    run.task = SimpleNamespace(evaluate=lambda *args: {})  # another plugin's task
    assert draw_stage_overlays(run, summary) == []
    assert not (run.run_dir / "report").exists()


def test_a_failed_figure_is_reported_without_ending_the_run(fake_run, monkeypatch):
    run, summary = fake_run

    def broken(*args):
        raise RuntimeError("no room")

    monkeypatch.setattr(overlays, "draw_overlays", broken)
    with pytest.warns(UserWarning, match="overlays of stage 'teacher' failed: RuntimeError: no room"):
        assert draw_stage_overlays(run, summary) == []
    assert summary["overlays"] == [] and summary["overlays_error"] == "RuntimeError: no room"


# --- a real tiny run --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overlay_run(tmp_path_factory, data_home):
    with plugin_only("liverct", data_home):
        return tiny_fit(
            tmp_path_factory.mktemp("overlays"),
            "teacher.epochs=1",
            "student.epochs=1",
            "distill.baseline=true",
        )


def test_every_stage_of_a_run_gets_its_overlay_in_the_report(overlay_run):
    run_dir = overlay_run.run_dir
    stages = json.loads((run_dir / "report" / "summary.json").read_text())["stages"]
    assert set(stages) == {"teacher", "student", "baseline"}
    case = "liver_001"  # the tiny run's one validation case
    for stage, summary in stages.items():
        assert summary["overlays"] == [f"report/overlays/{stage}_{case}.png"]
        assert "overlays_error" not in summary
        data = (run_dir / summary["overlays"][0]).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) < 200_000
    assert sorted(p.name for p in (run_dir / "report" / "overlays").iterdir()) == [
        f"{stage}_{case}.png" for stage in ("baseline", "student", "teacher")
    ]


def test_the_phantom_liver_is_drawn_on_the_left():
    """End to end with the loader: the validation volume is RAS and its liver (on the patient's right)
    lands on the left of both views."""
    from kd_liverct import DEFAULTS, phantom_root
    from kd_liverct.data import build_datasets

    options = {**DEFAULTS["options"], "phantom_cases": 4, "patch_size": [32, 32, 16]}
    item = build_datasets(phantom_root(options), options, 0, check=False).val[0]
    (label,), _ = to_ras([item["label"][0]], item["label"].affine)
    np.testing.assert_array_equal(label, item["label"][0].numpy())  # already RAS: to_ras changes nothing
    z, y = choose_slices(label)
    for view in (axial_view(label, z), coronal_view(label, y)):
        assert np.nonzero(view > 0)[1].mean() < view.shape[1] / 2


def test_the_stages_of_a_variant_draw_into_its_own_folder(fake_run):
    run, summary = fake_run
    run.variant, run.stage = "kd hot", "student"
    assert draw_stage_overlays(run, summary) == ["report/overlays/kd_hot/student_liver_7.png"]
    assert (run.run_dir / "report/overlays/kd_hot/student_liver_7.png").is_file()


def test_a_config_saved_before_sw_batch_size_existed_still_evaluates(fake_run):
    run, _ = fake_run
    assert "sw_batch_size" not in run.config["options"]  # as in a run directory from before the option
    item = run.data.val[0]
    batch = {"image": item["image"][None], "label": item["label"][None]}
    metrics = evaluate_segmentation(_intensity_classifier(True), [batch], torch.device("cpu"), run.config)
    assert metrics["dice_liver"] == pytest.approx(1.0) and metrics["dice"] == pytest.approx(1.0)
