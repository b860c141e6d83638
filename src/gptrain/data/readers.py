"""The formats corpora come in, read one document at a time with memory that does not grow.

Plain text is read by :mod:`gptrain.data.prepare` itself; this module adds records: JSON lines
(plain, ``.gz`` or ``.zst``), CSV, Parquet, Arrow files and the folders that Hugging Face
``datasets.save_to_disk`` writes. Every record is one document, its text in ``--text-field``.
Parquet is read row group by row group and Arrow batch by batch from a memory map, so a
file larger than memory streams. pyarrow and zstandard are optional (``gptrain[formats]``):
only a corpus in those formats needs them.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from gptrain.core.errors import GptrainError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
TABLE_SUFFIXES = (".csv", ".parquet", ".arrow")
SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + TABLE_SUFFIXES
SUFFIX_LIST = ", ".join(SUFFIXES)
DATASET_STATE = "state.json"  # marks a folder written by datasets' save_to_disk
CSV_FIELD_LIMIT = 2**31 - 1  # a document can be far longer than csv's 128 KiB default


@dataclass
class ReadStats:
    """What readers report back: bytes of input consumed (for progress) and records skipped."""

    bytes_read: int = 0
    skipped_lines: int = 0
    first_skipped: str | None = None


def input_kind(path: Path) -> str | None:
    """``"text"``, ``"jsonl"``, ``"csv"``, ``"parquet"`` or ``"arrow"``; None for other files."""
    name = path.name.lower()
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    for suffix in TABLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    return None


def is_compressed(path: Path) -> bool:
    return path.name.lower().endswith((".gz", ".zst"))


def reject(stats: ReadStats, where: str, problem: str, strict: bool) -> None:
    """Count a record that holds no usable text, or stop on it with --strict."""
    if strict:
        raise GptrainError(f"{where} {problem}: fix it, or drop --strict to skip such records")
    stats.skipped_lines += 1
    stats.first_skipped = stats.first_skipped or f"{where} {problem}"


def open_binary(path: Path) -> IO[bytes]:
    """``path`` opened for reading bytes, decompressed on the fly when it ends in .gz or .zst."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise GptrainError(f"reading {path} needs zstandard: pip install 'gptrain[formats]', "
                               "or decompress it (zstd -d)") from None
        # The decompressor reads but does not split lines; the buffer on top does.
        return io.BufferedReader(zstandard.open(path, "rb"))
    return open(path, "rb")


def decompression_errors() -> tuple[type[BaseException], ...]:
    """What a damaged .gz or .zst raises; zstandard's only if it is installed (it is optional)."""
    errors: list[type[BaseException]] = [gzip.BadGzipFile, EOFError]
    zstandard = sys.modules.get("zstandard")
    if zstandard is not None:
        errors.append(zstandard.ZstdError)
    return tuple(errors)


def _pyarrow(path: Path):
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise GptrainError(f"reading {path} needs pyarrow: pip install 'gptrain[formats]'") from None
    return pyarrow


def _check_column(pa, path: Path, schema, text_field: str) -> None:
    if text_field not in schema.names:
        raise GptrainError(f"{path} has no column {text_field!r} (its columns: {', '.join(schema.names)}): "
                           "name the text column with --text-field")
    kind = schema.field(text_field).type
    values = kind.value_type if pa.types.is_dictionary(kind) else kind  # pandas' categoricals
    if not (pa.types.is_string(values) or pa.types.is_large_string(values) or pa.types.is_string_view(values)):
        raise GptrainError(f"column {text_field!r} of {path} holds {kind}, not text (its columns: "
                           f"{', '.join(schema.names)}): name the text column with --text-field")


def _column_documents(path: Path, batches, total_rows: int, text_field: str, strict: bool,
                      stats: ReadStats) -> Iterator[str]:
    """The texts of one column over record batches; progress advances by the share of rows read."""
    size, start, rows_read = path.stat().st_size, stats.bytes_read, 0
    for batch in batches:
        texts = batch.column(text_field).to_pylist()
        row, rows_read = rows_read, rows_read + len(texts)
        stats.bytes_read = start + size * rows_read // max(total_rows, 1)
        for row, text in enumerate(texts, start=row + 1):
            if text is None:
                reject(stats, f"{path} row {row}", f"has no {text_field!r} value", strict)
                continue
            yield text


def read_parquet_documents(path: Path, text_field: str, strict: bool, stats: ReadStats) -> Iterator[str]:
    pa = _pyarrow(path)
    try:
        parquet = pa.parquet.ParquetFile(path, memory_map=True)
        _check_column(pa, path, parquet.schema_arrow, text_field)
        batches = (parquet.read_row_group(i, columns=[text_field]) for i in range(parquet.num_row_groups))
        yield from _column_documents(path, batches, parquet.metadata.num_rows, text_field, strict, stats)
    except pa.ArrowException as exc:
        raise GptrainError(f"{path} is not a readable Parquet file ({str(exc).splitlines()[0]}): "
                           "write it again, or leave it out") from None


def read_arrow_documents(path: Path, text_field: str, strict: bool, stats: ReadStats) -> Iterator[str]:
    """An Arrow IPC file, or the IPC stream that ``datasets.save_to_disk`` writes."""
    pa = _pyarrow(path)
    try:
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
                total_rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:
                source.seek(0)
                reader = pa.ipc.open_stream(source)
                # A stream does not know its length up front: count its rows first, off the memory map.
                total_rows = sum(batch.num_rows for batch in reader)
                source.seek(0)
                batches = pa.ipc.open_stream(source)
            _check_column(pa, path, reader.schema, text_field)
            yield from _column_documents(path, batches, total_rows, text_field, strict, stats)
    except pa.ArrowException as exc:
        raise GptrainError(f"{path} is not a readable Arrow file ({str(exc).splitlines()[0]}): "
                           "write it again, or leave it out") from None


def read_csv_documents(path: Path, text_field: str, strict: bool, stats: ReadStats) -> Iterator[str]:
    """One document per row, the text in the column whose header is ``text_field``."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    with open(path, "rb") as raw:
        lines = _counted_lines(path, raw, stats)
        reader = csv.reader(lines)
        try:
            header = next(reader, None)
            if header is None:
                return
            if text_field not in header:
                raise GptrainError(f"{path} has no column {text_field!r} (its columns: {', '.join(header)}): "
                                   "name the text column with --text-field")
            column = header.index(text_field)
            for row in reader:
                if len(row) <= column:
                    if row:
                        reject(stats, f"{path}:{reader.line_num}", f"has no {text_field!r} value", strict)
                    continue
                yield row[column]
        except csv.Error as exc:
            raise GptrainError(f"{path} is not valid CSV near line {reader.line_num} ({exc}): fix it, "
                               "or leave it out") from None


def _counted_lines(path: Path, raw: IO[bytes], stats: ReadStats) -> Iterator[str]:
    # Lines keep their own \r\n, as csv needs to read quoted newlines inside a field exactly.
    for number, line in enumerate(raw, 1):
        stats.bytes_read += len(line)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GptrainError(f"{path}:{number} is not UTF-8 text ({exc.reason}): convert it to UTF-8 "
                               "or leave it out") from None
        yield text.removeprefix("\ufeff") if number == 1 else text


def dataset_files(folder: Path) -> list[Path]:
    """The Arrow files of a ``save_to_disk`` folder, in its own order (its state.json's)."""
    try:
        state = json.loads((folder / DATASET_STATE).read_text(encoding="utf-8"))
        files = [folder / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise GptrainError(f"{folder / DATASET_STATE} is not a datasets state file: save the dataset again "
                           "with save_to_disk, or give its .arrow files") from None
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise GptrainError(f"dataset folder {folder} lacks {missing[0]}: copy the whole folder")
    return files


TABLE_READERS = {"csv": read_csv_documents, "parquet": read_parquet_documents, "arrow": read_arrow_documents}


def read_jsonl_documents(path: Path, text_field: str, strict: bool, stats: ReadStats) -> Iterator[str]:
    """The ``text_field`` of each record of a JSON-lines file (plain, .gz or .zst): one document per line."""
    try:
        yield from _jsonl_documents(path, text_field, strict, stats)
    except decompression_errors() as exc:
        raise GptrainError(f"{path} cannot be decompressed ({exc}): compress it again, or leave it out") from None


def _jsonl_documents(path: Path, text_field: str, strict: bool, stats: ReadStats) -> Iterator[str]:
    with open_binary(path) as f:
        for line_number, raw in enumerate(f, start=1):
            stats.bytes_read += len(raw)
            if not raw.strip():
                continue
            problem = None
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                problem = "is not JSON"
            else:
                if not isinstance(record, dict) or text_field not in record:
                    problem = f"has no {text_field!r} field"
                elif not isinstance(record[text_field], str):
                    problem = f"has a {text_field!r} field that is not a string"
            if problem:
                reject(stats, f"{path}:{line_number}", problem, strict)
                continue
            yield record[text_field]
