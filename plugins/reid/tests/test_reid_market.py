"""kd_reid.market: file names, the Market-1501 / DukeMTMC-reID and MSMT17 layouts, and every error case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from kd_reid.market import NAME_PATTERN, Record, ReIDSplits, load_image, load_reid_folder, parse_name

# A tiny Market-1501 folder: split folder -> file names. Train holds a junk box and a distractor (both
# dropped); pid 4 is only seen by camera 1, so its query has no valid match (skipped, not an error).
MARKET = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg",
        "0002_c2s1_000520_01.jpg",
        "0010_c3s2_004100_02.jpg",
        "0007_c1s1_001000_01.jpg",
        "0007_c4s3_000090_01.jpg",
        "-1_c1s1_000003_01.jpg",
        "0000_c2s1_000004_01.jpg",
    ],
    "query": [
        "0003_c1s1_000151_00.jpg",
        "0005_c2s1_000730_00.jpg",
        "0004_c1s1_000900_00.jpg",
    ],
    "bounding_box_test": [
        "0003_c2s1_000300_01.jpg",
        "0003_c1s1_000160_02.jpg",
        "0005_c6s1_000800_01.jpg",
        "0004_c1s1_000950_01.jpg",
        "0000_c3s1_000010_01.jpg",
        "-1_c2s1_000020_01.jpg",
    ],
}


def write_jpeg(
    path: Path, colour: tuple[int, int, int] = (120, 60, 30), size: tuple[int, int] = (8, 16)
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG", quality=90)


def make_market(root: Path, layout: dict[str, list[str]] | None = None) -> Path:
    for folder, names in (layout or MARKET).items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_jpeg(root / folder / name)
    return root


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def names(records: list[Record]) -> list[str]:
    return [r.path.name for r in records]


# ------------------------------------------------------------------------------------------ file names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("0002_c1s1_000451_03.jpg", (2, 1)),  # Market-1501
        ("1501_c6s4_001902_01.jpg", (1501, 6)),
        ("-1_c3s2_000123_01.jpg", (-1, 3)),  # Market junk
        ("0000_c5s3_015240_04.jpg", (0, 5)),  # Market distractor
        ("0001_c2_f0046182.jpg", (1, 2)),  # DukeMTMC-reID
        ("7140_c8_f0156089.jpg", (7140, 8)),
    ],
)
def test_parse_name_reads_person_and_camera(name, expected):
    assert parse_name(name) == expected
    assert parse_name(Path("/data/market/query") / name) == expected  # only the file name counts


@pytest.mark.parametrize(
    "name", ["Thumbs.db", "c1s1_000451.jpg", "0002c1s1_000451_03.jpg", "--_c1s1.jpg", "x_c1.jpg"]
)
def test_parse_name_rejects_other_names_naming_file_and_pattern(name):
    with pytest.raises(ValueError) as info:
        parse_name(Path("/data/bounding_box_train") / name)
    message = str(info.value)
    assert name in message and NAME_PATTERN.pattern in message


# ------------------------------------------------------------------------------- Market-1501 / Duke


def test_market_splits_junk_distractors_and_relabelling(tmp_path):
    root = make_market(tmp_path / "market")
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")  # as in the official archive
    before = snapshot(root)

    splits = load_reid_folder(root)

    assert isinstance(splits, ReIDSplits)
    assert splits.layout == "market1501" and splits.root == root
    # Train: the junk box and the distractor are gone; labels 0..2 in ascending original pid (2, 7, 10).
    assert names(splits.train) == sorted(MARKET["bounding_box_train"])[2:]
    assert splits.num_train_ids == 3 and splits.original_pids == (2, 7, 10)
    assert [(r.pid, r.camid) for r in splits.train] == [(0, 1), (0, 2), (1, 1), (1, 4), (2, 3)]
    # Query keeps the original pids; gallery keeps the distractor (pid 0) and drops the junk box.
    assert [(r.pid, r.camid) for r in splits.query] == [(3, 1), (4, 1), (5, 2)]
    assert names(splits.gallery) == sorted(n for n in MARKET["bounding_box_test"] if not n.startswith("-1"))
    assert sorted(r.pid for r in splits.gallery) == [0, 3, 3, 4, 5]
    assert all(r.pid != -1 for r in splits.train + splits.query + splits.gallery)
    assert all(r.path.is_file() and r.path.parent.parent == root for r in splits.gallery)
    assert snapshot(root) == before  # nothing written or touched inside the data folder


def test_market_order_is_sorted_and_repeatable(tmp_path):
    root = make_market(tmp_path / "market")
    first, second = load_reid_folder(root), load_reid_folder(str(root))
    assert first == second
    for split in (first.train, first.query, first.gallery):
        assert [r.path for r in split] == sorted(r.path for r in split)


def test_duke_names_are_recognised(tmp_path):
    duke = {
        "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg", "0005_c2_f0046985.jpg"],
        "query": ["0033_c1_f0057706.jpg"],
        "bounding_box_test": ["0033_c6_f0045755.jpg", "0041_c1_f0057999.jpg"],
    }
    splits = load_reid_folder(make_market(tmp_path / "DukeMTMC-reID", duke))
    assert splits.layout == "dukemtmc"
    assert splits.original_pids == (1, 5) and [r.pid for r in splits.train] == [0, 0, 1]
    assert [(r.pid, r.camid) for r in splits.gallery] == [(33, 6), (41, 1)]


def test_a_single_nested_data_set_folder_is_found(tmp_path):
    inner = make_market(tmp_path / "download" / "Market-1501-v15.09.15")
    (tmp_path / "download" / "notes").mkdir()  # another folder without the layout is ignored
    (tmp_path / "download" / "Market-1501-v15.09.15.zip").write_bytes(b"PK")
    splits = load_reid_folder(tmp_path / "download")
    assert splits.root == inner and splits.num_train_ids == 3 and len(splits.gallery) == 5


def test_two_nested_data_sets_are_ambiguous(tmp_path):
    make_market(tmp_path / "all" / "Market-1501-v15.09.15")
    make_market(tmp_path / "all" / "DukeMTMC-reID")
    with pytest.raises(ValueError, match=r"several data sets \(DukeMTMC-reID, Market-1501-v15.09.15\)"):
        load_reid_folder(tmp_path / "all")


# -------------------------------------------------------------------------------------------- MSMT17


def make_msmt(root: Path, query_list: str | None = None) -> Path:
    train = [
        "0000/0000_000_01_0303morning_0015_0.jpg 0",
        "0000/0000_001_05_0303morning_0016_1.jpg 0",
        "0002/0002_004_11_0303afternoon_0421_0.jpg 2",
    ]
    val = ["0001/0001_000_03_0303noon_0100_0.jpg 1"]
    query = ["0000/0000_000_07_0303morning_0036_0.jpg 0", "0001/0001_003_02_0303noon_0300_1.jpg 1"]
    gallery = [
        "0000/0000_002_14_0303morning_0050_0.jpg 0",
        "0001/0001_005_02_0303noon_0310_0.jpg 1",
        "0001/0001_009_04_0113morning_0777_2.jpg 1",
    ]
    for folder, lines in (("train", train + val), ("test", query + gallery)):
        for line in lines:
            write_jpeg(root / folder / line.split()[0])
    (root / "list_train.txt").write_text("\n".join(train) + "\n")
    (root / "list_val.txt").write_text("\n".join(val) + "\n")
    (root / "list_query.txt").write_text(query_list if query_list is not None else "\n".join(query) + "\n")
    (root / "list_gallery.txt").write_text("\n".join(gallery) + "\n")
    return root


def test_msmt17_lists(tmp_path):
    root = make_msmt(tmp_path / "MSMT17_V1")
    before = snapshot(root)
    splits = load_reid_folder(root)
    assert splits.layout == "msmt17" and splits.root == root
    # Validation images join the training split; pid 0 is a real MSMT17 identity.
    assert splits.num_train_ids == 3 and splits.original_pids == (0, 1, 2)
    assert [(r.path.name[:4], r.pid, r.camid) for r in splits.train] == [
        ("0000", 0, 1),
        ("0000", 0, 5),
        ("0001", 1, 3),
        ("0002", 2, 11),
    ]
    assert [(r.pid, r.camid) for r in splits.query] == [(0, 7), (1, 2)]
    assert [(r.pid, r.camid) for r in splits.gallery] == [(0, 14), (1, 2), (1, 4)]
    assert all(r.path.is_file() for r in splits.train + splits.query + splits.gallery)
    assert snapshot(root) == before


def test_msmt17_v2_folders_and_unparsable_names(tmp_path):
    root = make_msmt(tmp_path / "MSMT17_V2")
    (root / "train").rename(root / "mask_train_v2")
    (root / "test").rename(root / "mask_test_v2")
    splits = load_reid_folder(tmp_path)  # found as the single nested data set
    assert splits.root == root and splits.layout == "msmt17" and len(splits.gallery) == 3
    assert all("mask_test_v2" in str(r.path) for r in splits.query)

    root = make_msmt(tmp_path / "bad", query_list="")
    write_jpeg(root / "test" / "0000" / "0000-000-07.jpg")
    (root / "list_query.txt").write_text("0000/0000-000-07.jpg 0\n")
    with pytest.raises(ValueError, match=r"0000-000-07\.jpg: expected MSMT17 names"):
        load_reid_folder(root)
    (root / "list_query.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"split 'query' is empty: .*list_query\.txt lists no usable image"):
        load_reid_folder(root)


def test_msmt17_malformed_line_names_file_and_line(tmp_path):
    root = make_msmt(
        tmp_path / "msmt", query_list="0000/0000_000_07_0303morning_0036_0.jpg 0\n\nbroken-line\n"
    )
    with pytest.raises(ValueError, match=r"list_query\.txt, line 3: expected 'relative/path\.jpg PID'"):
        load_reid_folder(root)
    root = make_msmt(tmp_path / "msmt2", query_list="0000/0000_000_07_0303morning_0036_0.jpg zero\n")
    with pytest.raises(ValueError, match=r"list_query\.txt, line 1"):
        load_reid_folder(root)


def test_msmt17_line_naming_a_missing_image(tmp_path):
    root = make_msmt(
        tmp_path / "msmt", query_list="0000/0000_000_07_0303morning_0036_0.jpg 0\n0009/gone.jpg 9\n"
    )
    with pytest.raises(ValueError, match=r"list_query\.txt, line 2: image .*0009/gone\.jpg does not exist"):
        load_reid_folder(root)


# ---------------------------------------------------------------------------------------------- errors


def test_missing_folder(tmp_path):
    with pytest.raises(ValueError, match=r"re-ID data folder .*nowhere does not exist"):
        load_reid_folder(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        load_reid_folder(tmp_path / "file")


def test_no_layout_lists_what_was_looked_for(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(ValueError) as info:
        load_reid_folder(tmp_path / "empty")
    message = str(info.value)
    assert str(tmp_path / "empty") in message and "no re-ID layout found" in message
    for expected in (
        "bounding_box_train/",
        "query/",
        "bounding_box_test/",
        "list_train.txt",
        "list_gallery.txt",
    ):
        assert expected in message
    partial = {k: v for k, v in MARKET.items() if k != "bounding_box_test"}
    with pytest.raises(ValueError, match=r"found only bounding_box_train/, query/\)"):
        load_reid_folder(make_market(tmp_path / "partial", partial))


def test_empty_split(tmp_path):
    root = make_market(tmp_path / "market", {**MARKET, "query": []})
    (root / "query" / "Thumbs.db").write_bytes(b"")
    with pytest.raises(ValueError, match=r"split 'query' is empty: .*query holds no image"):
        load_reid_folder(root)
    root = make_market(
        tmp_path / "junk", {**MARKET, "query": ["-1_c1s1_000001_01.jpg", "0000_c1s1_000002_01.jpg"]}
    )
    with pytest.raises(ValueError, match=r"split 'query' is empty: all 2 images .* are junk"):
        load_reid_folder(root)


def test_unparsable_file_name(tmp_path):
    root = make_market(tmp_path / "market")
    write_jpeg(root / "bounding_box_train" / "IMG_2024.jpg")
    with pytest.raises(ValueError, match=r"bounding_box_train/IMG_2024\.jpg: expected a name"):
        load_reid_folder(root)


def test_no_query_with_a_cross_camera_match(tmp_path):
    layout = {
        **MARKET,
        "query": ["0003_c1s1_000151_00.jpg", "0008_c2s1_000151_00.jpg"],
        "bounding_box_test": [
            "0003_c1s1_000160_02.jpg",
            "0000_c2s1_000010_01.jpg",
            "0009_c2s1_000011_01.jpg",
        ],
    }
    with pytest.raises(ValueError, match=r"none of the 2 query images .* from another camera"):
        load_reid_folder(make_market(tmp_path / "market", layout))


# -------------------------------------------------------------------------------------------- images


def test_load_image_decodes_to_rgb(tmp_path):
    grey = tmp_path / "0001_c1s1_000001_01.jpg"
    Image.new("L", (8, 16), 77).save(grey, format="JPEG", quality=95)
    image = load_image(grey)
    assert image.mode == "RGB" and image.size == (8, 16)
    assert abs(image.getpixel((3, 3))[0] - 77) <= 2


def test_load_image_rejects_truncated_and_foreign_files(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    full = tmp_path / "full.jpg"
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 64, 3), dtype=np.uint8))
    noise.save(full, format="JPEG", quality=90)
    data = full.read_bytes()
    truncated = tmp_path / "0002_c1s1_000451_03.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with Image.open(truncated) as lazy:  # opening reads only the header: the damage shows when decoding
        assert lazy.size == (64, 128)
    with pytest.raises(ValueError, match=r"0002_c1s1_000451_03\.jpg could not be decoded") as info:
        load_image(truncated)
    assert "truncated" in str(info.value.__cause__)  # PIL's own reason, not padding with grey
    text = tmp_path / "notes.jpg"
    text.write_text("not a JPEG")
    with pytest.raises(ValueError, match=r"notes\.jpg could not be decoded"):
        load_image(text)
    with pytest.raises(ValueError, match=r"missing\.jpg could not be decoded"):
        load_image(tmp_path / "missing.jpg")
    assert load_image(full).size == (64, 128)
