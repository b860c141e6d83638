import csv
import gzip
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from datasets import Dataset

from gptrain.cli import main
from gptrain.data.prepare import Stats, prepare
from gptrain.data.readers import read_parquet_documents

# Twenty documents with what breaks naive readers: quotes, commas, newlines, \r\n, non-ASCII.
TEXTS = [f'Document {i}: "quoted", commas, and a line\nbreak.\r\nÜmlaut {i * 7} 日本 🙂' + " tail" * i
         for i in range(20)]


def write_jsonl(path, rows):
    path.write_bytes(b"".join(json.dumps(row).encode() + b"\n" for row in rows))


def write_all_formats(folder, texts):
    rows = [{"id": i, "text": t} for i, t in enumerate(texts)]
    write_jsonl(folder / "c.jsonl", rows)
    (folder / "c.jsonl.gz").write_bytes(gzip.compress((folder / "c.jsonl").read_bytes()))
    (folder / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress((folder / "c.jsonl").read_bytes()))
    with open(folder / "c.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([r["id"], r["text"]] for r in rows)
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    pq.write_table(table, folder / "c.parquet", row_group_size=6)  # four row groups
    with pa.OSFile(str(folder / "c.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=7):
            writer.write_batch(batch)
    Dataset.from_dict({"id": list(range(len(texts))), "text": texts}).save_to_disk(
        str(folder / "saved"), max_shard_size="2KB")  # several .arrow files, in state.json's order
    return ["c.jsonl", "c.jsonl.gz", "c.jsonl.zst", "c.csv", "c.parquet", "c.arrow", "saved"]


def shard_bytes(folder):
    return (folder / "train.bin").read_bytes() + b"|" + (folder / "val.bin").read_bytes()


def test_every_format_gives_byte_identical_shards(tmp_path):
    sources = write_all_formats(tmp_path, TEXTS)
    assert len(list((tmp_path / "saved").glob("*.arrow"))) > 1
    shards = {}
    for name in sources:
        meta = prepare([str(tmp_path / name)], tmp_path / f"out-{name}", workers=1, val_fraction=0.2)
        assert meta["documents"]["train"] + meta["documents"]["val"] == 20, name
        shards[name] = shard_bytes(tmp_path / f"out-{name}")
    assert len(set(shards.values())) == 1, {k: len(v) for k, v in shards.items()}
    tokens = np.frombuffer(shards["c.jsonl"].split(b"|")[0], dtype=np.uint16)
    assert tokens.size > 20 * 20


@pytest.mark.parametrize("name", ["c.csv", "c.parquet", "c.arrow", "saved"])
def test_a_missing_column_names_the_columns_there_are(tmp_path, capsys, name):
    write_all_formats(tmp_path, TEXTS[:3])
    capsys.readouterr()  # datasets' own progress bars
    assert main(["prepare", str(tmp_path / name), "--out", str(tmp_path / "out"), "--text-field", "body",
                 "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no column 'body' (its columns: id, text)" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["c.parquet", "c.arrow"])
def test_a_column_that_is_not_text_says_so(tmp_path, capsys, name):
    write_all_formats(tmp_path, TEXTS[:3])
    capsys.readouterr()  # datasets' own progress bars
    assert main(["prepare", str(tmp_path / name), "--out", str(tmp_path / "out"), "--text-field", "id",
                 "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "column 'id'" in err[0] and "holds int64, not text (its columns: id, text)" in err[0]


def test_large_and_dictionary_encoded_strings_are_text(tmp_path):
    pq.write_table(pa.table({"text": pa.array(TEXTS[:3]).dictionary_encode()}), tmp_path / "d.parquet")
    pq.write_table(pa.table({"text": pa.array(TEXTS[:3], type=pa.large_string())}), tmp_path / "l.parquet")
    write_jsonl(tmp_path / "j.jsonl", [{"text": t} for t in TEXTS[:3]])
    shards = set()
    for name in ("d.parquet", "l.parquet", "j.jsonl"):
        prepare([str(tmp_path / name)], tmp_path / f"out-{name}", workers=1)
        shards.add(shard_bytes(tmp_path / f"out-{name}"))
    assert len(shards) == 1


def test_null_texts_are_skipped_and_counted(tmp_path):
    pq.write_table(pa.table({"text": ["one", None, "three"]}), tmp_path / "n.parquet")
    meta = prepare([str(tmp_path / "n.parquet")], tmp_path / "out", workers=1, val_fraction=0.0)
    assert meta["documents"]["train"] == 2 and meta["skipped_lines"] == 1
    assert "n.parquet row 2 has no 'text' value" in meta["first_skipped"]
    with pytest.raises(ValueError, match=r"n.parquet row 2 has no 'text' value: fix it, or drop --strict"):
        prepare([str(tmp_path / "n.parquet")], tmp_path / "strict", workers=1, strict=True)


def test_csv_rows_without_the_column_are_skipped_and_counted(tmp_path):
    (tmp_path / "c.csv").write_text("id,text\n1,one\n2\n\n3,three\n", encoding="utf-8")
    meta = prepare([str(tmp_path / "c.csv")], tmp_path / "out", workers=1, val_fraction=0.0)
    assert meta["documents"]["train"] == 2 and meta["skipped_lines"] == 1
    assert meta["first_skipped"].endswith("c.csv:3 has no 'text' value")


@pytest.mark.parametrize("name, content, message", [
    ("bad.parquet", b"PAR1 not really parquet at all PAR1", "is not a readable Parquet file"),
    ("bad.arrow", b"ARROW1\x00\x00garbage", "is not a readable Arrow file"),
    ("bad.jsonl.gz", gzip.compress(b'{"text": "x"}\n' * 100)[:-20], "cannot be decompressed"),
    ("bad.jsonl.zst", b"\x28\xb5\x2f\xfd garbage", "cannot be decompressed"),
    ("bad.csv", b'text\n"ok"\n\xff\xfe\n', "bad.csv:3 is not UTF-8 text"),
])
def test_corrupt_files_are_one_line_exit_2(tmp_path, monkeypatch, capsys, name, content, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(content)
    assert main(["prepare", name, "--out", "out", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_a_folder_mixes_formats_in_name_order(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(TEXTS[0], encoding="utf-8")
    pq.write_table(pa.table({"text": TEXTS[1:3]}), tmp_path / "corpus" / "b.parquet")
    (tmp_path / "corpus" / "notes.docx").write_bytes(b"ignored")
    meta = prepare([str(tmp_path / "corpus")], tmp_path / "out", workers=1, val_fraction=0.0)
    assert meta["documents"]["train"] == 3
    assert [p.rsplit("/", 1)[-1] for p in meta["sources"]] == ["a.txt", "b.parquet"]


@pytest.mark.parametrize("module, name", [("zstandard", "c.jsonl.zst"), ("pyarrow", "c.parquet")])
def test_a_missing_optional_package_is_one_line(tmp_path, monkeypatch, capsys, module, name):
    write_all_formats(tmp_path, TEXTS[:2])
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees when the package is not installed
    assert main(["prepare", str(tmp_path / name), "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"needs {module}: pip install 'gptrain[formats]'" in err[0]


def test_parquet_is_read_one_row_group_at_a_time(tmp_path):
    pq.write_table(pa.table({"text": TEXTS}), tmp_path / "c.parquet", row_group_size=5)
    stats = Stats()
    documents = read_parquet_documents(tmp_path / "c.parquet", "text", False, stats)
    assert [next(documents) for _ in range(5)] == TEXTS[:5]
    # After the first of four row groups, a quarter of the file counts as read, not all of it.
    assert stats.bytes_read == (tmp_path / "c.parquet").stat().st_size * 5 // 20
    assert list(documents) == TEXTS[5:]
