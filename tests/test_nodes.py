"""Several nodes and restarts: two torchrun launchers on the loopback address stand for two machines."""

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from test_parallel import records, weights

from gptrain import TrainConfig, train
from gptrain.store.checkpoint import complete_checkpoints
from gptrain.training.checkpointing import resume_mode
from gptrain.training.ranks import FAULT_ENV, RankRecord, disagreements

STEPS = 6
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# torchrun's shared rendezvous store keeps the first attempt's addresses, which a restarted group would
# read (pytorch#135712): docs/cluster.md says to set this for --max-restarts.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def flags(data, out, *extra):
    return ["-m", "gptrain", "train", "--data", str(data), "--out", str(out), "--preset", "tiny", "--context-length",
            "32", "--max-steps", str(STEPS), "--batch-size", "2", "--save-every", "2", "--eval-freq", "3",
            "--eval-iter", "1", "--device", "cpu", "--sample-tokens", "0", "--lr", "2e-3", "--dropout", "0",
            "--precision", "fp32", *extra]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args, env=None):
    return subprocess.Popen([*TORCHRUN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, **(env or {})})


def start_two_nodes(launch, node_args, nproc=1):
    """Two torchrun launchers, as on two machines; ``launch`` is "c10d" or "static" rendezvous."""
    port = free_port()
    rendezvous = [["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "job"]] * 2
    if launch == "static":
        rendezvous = [["--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port)]
                      for node in range(2)]
    return [start("--nnodes", "2", f"--nproc-per-node={nproc}", *where, *args)
            for where, args in zip(rendezvous, node_args)]


def finish(procs, timeout=300):
    """(exit codes, stdout of all, stderr of each)."""
    results = [(*proc.communicate(timeout=timeout), proc.returncode) for proc in procs]
    return [code for _, _, code in results], "".join(out for out, _, _ in results), [err for _, err, _ in results]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, verdict_path):
    """The same 2-process job on two nodes (c10d rendezvous), on one node, and on one node with rank 1
    killed by SIGKILL in the middle of step 3, after the step-2 checkpoint, then restarted by torchrun
    with --resume auto. The three launch at once: each spends most of its time starting up."""
    root = tmp_path_factory.mktemp("nodes")
    nodes = start_two_nodes("c10d", [flags(verdict_path, root / "nodes")] * 2)
    one_node = start("--standalone", "--nproc-per-node=2", *flags(verdict_path, root / "one-node"))
    elastic = start("--standalone", "--nproc-per-node=2", "--max-restarts", "1",
                    *flags(verdict_path, root / "elastic", "--resume", "auto"), env={FAULT_ENV: "3:1"})
    outputs = {}
    for name, procs in (("nodes", nodes), ("one-node", [one_node]), ("elastic", [elastic])):
        codes, stdout, errors = finish(procs)
        assert set(codes) == {0}, (name, [err[-3000:] for err in errors])
        outputs[name] = stdout
    return root, outputs


def test_two_nodes_train_as_one_job(runs):
    root, outputs = runs
    stdout = outputs["nodes"]
    assert "global batch 4 sequences = 128 tokens (2 x 32 per micro-batch, 1 micro-batches, 2 process(es))" in stdout
    assert stdout.count("Ep 1 (Step 000000)") == 1  # global rank 0 alone logs, on whichever node it is
    for event, key in (("train", "loss"), ("eval", "val_loss")):
        assert [r[key] for r in records(root / "nodes", event)] == pytest.approx(
            [r[key] for r in records(root / "one-node", event)], abs=1e-6)
    reference = weights(root / "one-node" / "final")
    for name, tensor in weights(root / "nodes" / "final").items():
        torch.testing.assert_close(tensor, reference[name], atol=1e-6, rtol=0, msg=name)
    assert [step for step, _ in complete_checkpoints(root / "nodes")] == [2, 4, 6, 6]


def test_a_killed_worker_is_restarted_from_the_last_checkpoint_bit_for_bit(runs):
    root, outputs = runs
    stdout = outputs["elastic"]
    assert "Resuming from" in stdout and "step-0000002" in stdout
    restarts = records(root / "elastic", "restart")
    assert len(restarts) == 1 and restarts[0]["step"] == 2 and restarts[0]["restart"] == 1
    assert "by peer" in restarts[0]["cause"]  # how rank 0 lost rank 1: gloo's "Connection closed/reset by peer"
    assert [r["step"] for r in records(root / "elastic", "failed")] == [3]
    for event in ("train", "eval"):
        assert records(root / "elastic", event) == records(root / "one-node", event)
    expected = weights(root / "one-node" / "final")
    for name, tensor in weights(root / "elastic" / "final").items():
        assert torch.equal(tensor, expected[name]), name


def test_resume_auto_starts_fresh_and_never_uses_a_half_written_checkpoint(story_page, tmp_path):
    out = tmp_path / "run"

    def run_auto(max_steps):  # what gptrain train --resume auto does
        resume, start_over = resume_mode("auto", out)
        cfg = TrainConfig(data=str(story_page), out=str(out), preset="tiny", context_length=16, n_layers=2,
                          emb_dim=32, batch_size=2, max_steps=max_steps, save_every=2, eval_freq=0, sample_tokens=0,
                          device="cpu", precision="fp32")
        lines = []
        train(cfg, resume=resume, overwrite=start_over, echo=lines.append)
        return "\n".join(lines)

    (out / "checkpoints" / ".step-0000002.tmp").mkdir(parents=True)  # an attempt killed in its first save
    (out / "metrics.jsonl").write_text('{"event": "train", "step": 0, "loss": 11.0}\n')
    assert "Resuming" not in run_auto(4)  # no complete checkpoint: a fresh start over what was left
    assert [r["step"] for r in records(out, "train")] == [0, 1, 2, 3]
    # A save cut short: the step-4 folder lacks its training state; final/ is gone.
    shutil.rmtree(out / "final")
    (out / "checkpoints" / "step-0000004" / "training_state.pt").unlink()
    assert f"Resuming from {out / 'checkpoints' / 'step-0000002'}" in run_auto(6)
    assert [step for step, _ in complete_checkpoints(out)] == [2, 4, 6, 6]


def test_dry_run_prints_every_ranks_view_on_two_nodes(verdict_path, tmp_path):
    codes, stdout, errors = finish(start_two_nodes("static", [flags(verdict_path, tmp_path / "run", "--grad-accum",
                                                                    "2", "--dry-run")] * 2, nproc=2))
    assert codes == [0, 0], errors
    assert ("Dry run: 4 process(es) on 2 node(s) agree on gptrain" in stdout
            and "global batch 16 sequences, 9 steps per epoch; nothing trained" in stdout)
    for rank, node, local, shard in ((0, 0, 0, "0-1, 8-9"), (1, 0, 1, "2-3, 10-11"), (2, 1, 0, "4-5, 12-13"),
                                     (3, 1, 1, "6-7, 14-15")):
        assert (f"rank {rank} of 4: node {node} on {socket.gethostname()}, local rank {local}, cpu; sequences "
                f"{shard} of each global batch of 16 (144 training windows); per-rank batch 2 x 2") in stdout
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_a_rank_that_cannot_start_is_named_by_every_rank(verdict_path, tmp_path):
    missing = tmp_path / "missing.txt"
    node_args = [flags(verdict_path, tmp_path / "run"), flags(missing, tmp_path / "run")]
    codes, _, errors = finish(start_two_nodes("static", node_args))
    assert codes == [1, 1], errors  # torchrun exits 1 when a worker failed
    for stderr in errors:
        lines = [line for line in stderr.splitlines() if line.startswith("gptrain: error:")]
        assert len(lines) == 1 and f"rank 1 (node 1 on {socket.gethostname()}) failed before training" in lines[0]
        assert str(missing) in lines[0]
        assert stderr.count("Traceback") == 1 and "ChildFailedError" in stderr  # torchrun's report, no worker's


def test_ranks_that_disagree_are_refused_at_start():
    def rank(number, **changes):
        record = RankRecord(number, "0 on a", 0, "0.1.0", {"lr": 0.002, "seed": 123}, "ab" * 32, "")
        for name, value in changes.items():
            setattr(record, name, value)
        return record

    assert disagreements([rank(0), rank(1)]) == []
    assert disagreements([rank(0), rank(1, version="0.2.0")]) == [
        "rank 1 (node 0 on a) runs gptrain 0.2.0, rank 0 runs 0.1.0: install the same version on every node"]
    assert disagreements([rank(0), rank(1, settings={"lr": 0.004, "seed": 123})]) == [
        "rank 1 (node 0 on a) was given other settings than rank 0: --lr 0.004 (rank 0: 0.002); launch every "
        "node with the same flags"]
    assert disagreements([rank(0), rank(1), rank(2, data_sha256="cd" * 32)]) == [
        "rank 2 (node 0 on a) reads other training data than rank 0 (sha256 cdcdcdcdcdcd..., rank 0 "
        "abababababab...): give every node the same --data"]
