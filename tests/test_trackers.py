"""`gptrain train --logger wandb mlflow`: what each tracker recorded, read back through its own library,
equals metrics.jsonl; offline (WANDB_MODE=offline, MLflow's file store in the run)."""

import json
import struct
import sys
from pathlib import Path

import pytest

from gptrain.cli import main
from gptrain.reporting.trackers import flat_params, scalars

wandb_internal_pb2 = pytest.importorskip("wandb.proto.wandb_internal_pb2", reason="wandb is a dev dependency")
tracking = pytest.importorskip("mlflow.tracking", reason="mlflow-skinny is a dev dependency")


def wandb_records(path: Path):
    """The records of an offline run's .wandb file: wandb's own protobuf messages, in LevelDB's log
    framing (32 KiB blocks; each piece has a 7-byte header: crc, length, type), after a 7-byte
    ':W&B' header. wandb reads these files in its Go core only, so the framing is undone here."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pieces = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if left < 7 or (length, kind) == (0, 0):  # a block's zero padding
            position += left
            continue
        pieces += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def expected_metrics(run: Path) -> list[tuple[str, int, float]]:
    """(EVENT/FIELD, step, value) for every number in metrics.jsonl, in order."""
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        event = record.pop("event")
        rows += [(f"{event}/{key}", record.get("step", 0), value) for key, value in scalars(record).items()]
    return rows


def test_wandb_and_mlflow_record_what_metrics_jsonl_records(tmp_path, story_page, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):  # wandb's own files stay in tmp_path
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    run = tmp_path / "run"
    assert main(["train", "--data", str(story_page), "--out", str(run), "--preset", "tiny", "--context-length", "16",
                 "--emb-dim", "32", "--n-layers", "2", "--n-heads", "2", "--batch-size", "4", "--max-steps", "3",
                 "--eval-freq", "2", "--eval-iter", "1", "--sample-tokens", "3", "--device", "cpu",
                 "--precision", "fp32", "--logger", "jsonl", "wandb", "mlflow",
                 "--wandb-project", "proj", "--run-name", "tiny-run"]) == 0, capsys.readouterr().err
    expected = expected_metrics(run)
    assert {key for key, _, _ in expected} >= {"train/loss", "train/lr", "eval/val_loss", "end/wall_time_s"}
    config = json.loads((run / "config.json").read_text())
    report = (run / "report.html").read_bytes()

    # wandb: a row per step, each record's numbers merged into its step's row.
    [path] = (run / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(wandb_records(path))
    history = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            history[record.history.step.num] = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                                for item in record.history.item}
    steps_rows = {}
    for key, step, value in expected:
        steps_rows.setdefault(step, {})[key] = value
    assert {step: {key: row[key] for key in steps_rows[step]} for step, row in history.items()} == steps_rows
    [started] = [record.run for record in records if record.WhichOneof("record_type") == "run"]
    assert (started.project, started.display_name) == ("proj", "tiny-run")
    logged_config = {item.key: json.loads(item.value_json) for item in started.config.update}
    assert {key: logged_config[key] for key in config} == config
    [artifact] = [record.artifact for record in records if record.WhichOneof("record_type") == "artifact"]
    [entry] = artifact.manifest.contents
    assert (artifact.type, entry.path, Path(entry.local_path).read_bytes()) == ("report", "report.html", report)

    # MLflow: the file store in RUN/mlruns, through its client.
    client = tracking.MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    [logged] = client.search_runs([client.get_experiment_by_name("gptrain").experiment_id])
    assert logged.info.run_name == "tiny-run" and logged.info.status == "FINISHED"
    for key in {key for key, _, _ in expected}:
        history = [(metric.step, metric.value) for metric in client.get_metric_history(logged.info.run_id, key)]
        assert history == [(step, value) for name, step, value in expected if name == key], key
    assert logged.data.params == flat_params(config)
    downloaded = Path(client.download_artifacts(logged.info.run_id, "report.html", str(tmp_path / "download")))
    assert downloaded.read_bytes() == report


@pytest.mark.parametrize("logger,extra", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_tracker_package_is_one_line_naming_its_extra(tmp_path, story_page, monkeypatch, capsys, logger,
                                                                 extra):
    module = {"wandb": "wandb", "mlflow": "mlflow.tracking"}[logger]
    monkeypatch.setitem(sys.modules, module, None)  # what an absent package looks like to import
    assert main(["train", "--data", str(story_page), "--out", str(tmp_path / "run"), "--preset", "tiny",
                 "--context-length", "16", "--max-steps", "1", "--device", "cpu", "--logger", logger]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pip install 'gptrain[{extra}]'" in err


def test_wandb_without_a_login_is_one_line_naming_both_ways_out(tmp_path, story_page, monkeypatch, capsys):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc holding a key
    pytest.importorskip("wandb").teardown()  # wandb keeps the settings it read at its first start in this process
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    assert main(["train", "--data", str(story_page), "--out", str(tmp_path / "run"), "--preset", "tiny",
                 "--context-length", "16", "--max-steps", "1", "--device", "cpu", "--logger", "wandb"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wandb could not start a run (No API key configured" in err
    assert "'wandb login'" in err and "WANDB_MODE=offline" in err
