import json

import pytest
import torch

from fairat.config import AttackConfig, ModelConfig, TrainConfig
from fairat.engine.checkpoint import load_checkpoint, load_model, save_checkpoint
from fairat.engine.methods.fairat import FairATConfig
from fairat.engine.training import Trainer, TrainPaths, epoch_plan, lr_at
from fairat.engine.training import train as engine_train
from fairat.steps.train import write_outputs

MODEL = ModelConfig(name="small_cnn", width=8)


def _cfg(method="pgd_at", epochs=2, **kw):
    base = dict(method=method, epochs=epochs, batch_size=64, lr=0.05, crop_padding=1, flip=False,
                attack=AttackConfig(eps=0.1, step_size=0.03, steps=2), val_attack_steps=2,
                fairat=FairATConfig(warmup=0.5, hard_ratio=0.2), max_batches=4,
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _paths(root):
    return TrainPaths(root / "model.pt", root / "checkpoints", root / "train.json",
                      root / "history.csv")


def train(model_cfg, cfg, data, paths, **kw):
    """The engine's training, then the train step's writing of its outputs."""
    summary = engine_train(model_cfg, cfg, data, paths, **kw)
    write_outputs(summary, cfg, paths)
    return summary


def test_the_engine_returns_the_model_and_writes_only_checkpoints(digits, tmp_path):
    summary = engine_train(MODEL, _cfg("pgd_at", epochs=1), digits, _paths(tmp_path))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["best.pt", "last.pt"]
    assert summary.model["selected"]["epoch"] == summary.chosen_epoch
    assert summary.model["training"] == summary.training
    write_outputs(summary, _cfg("pgd_at", epochs=1), _paths(tmp_path))
    assert load_model(tmp_path / "model.pt", torch.device("cpu"))[1]["epoch"] == 1
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["method"] == "pgd_at" and record["chosen_epoch"] == summary.chosen_epoch
    assert (tmp_path / "history.csv").read_text().startswith("epoch,")


@pytest.mark.parametrize("method", ["pgd_at", "trades", "fairat"])
def test_each_method_trains_and_writes_its_outputs(method, digits, tmp_path):
    summary = train(MODEL, _cfg(method), digits, _paths(tmp_path))
    assert summary.epochs == 2 and len(summary.history) == 2
    for name in ("model.pt", "train.json", "history.csv", "checkpoints/last.pt"):
        assert (tmp_path / name).exists(), name
    record = summary.history[-1]
    assert set(record["val_robust_per_class"]) == set(digits.train.class_names)
    assert 0 <= record["val_robust_avg"] <= record["val_clean_avg"] + 0.2
    model, meta = load_model(tmp_path / "model.pt", torch.device("cpu"))
    assert meta["selected"]["epoch"] == summary.chosen_epoch
    assert model(digits.test.images[:4].float() / 255).shape == (4, 10)
    assert json.loads((tmp_path / "train.json").read_text())["method"] == method


def test_fairat_adds_hard_copies_after_warmup_and_logs_their_classes(digits, tmp_path):
    summary = train(MODEL, _cfg("fairat", epochs=2, max_batches=None), digits, _paths(tmp_path))
    first, second = summary.history
    assert first["hard_count"] == 0
    budget = round(0.2 * len(digits.train))
    # the default splits the budget across classes by hardness, each quota rounded down
    assert budget - 10 < second["hard_count"] <= budget
    assert sum(second["hard_per_class"].values()) == second["hard_count"]
    assert second["examples"] == len(digits.train) + second["hard_count"]
    # the paper's global selection takes the budget exactly
    paper = FairATConfig(warmup=0.5, hard_ratio=0.2, per_class=False)
    summary = train(MODEL, _cfg("fairat", epochs=2, max_batches=None, fairat=paper), digits,
                    _paths(tmp_path / "paper"))
    assert summary.history[1]["hard_count"] == budget


def test_the_random_copies_control_adds_fairats_count_of_copies_at_random(digits, tmp_path):
    from fairat.engine.methods.random_copies import RandomCopiesConfig

    control = RandomCopiesConfig(warmup=0.5, hard_ratio=0.2)
    summary = train(MODEL, _cfg("random_copies", epochs=2, max_batches=None,
                                random_copies=control), digits, _paths(tmp_path))
    first, second = summary.history
    budget = round(0.2 * len(digits.train))
    assert first["hard_count"] == 0  # the same warm-up as FairAT's
    assert second["hard_count"] == budget  # FairAT's global count, exactly
    assert second["examples"] == len(digits.train) + budget
    assert sum(second["hard_per_class"].values()) == budget
    assert json.loads((tmp_path / "train.json").read_text())["method"] == "random_copies"


def test_runs_are_repeatable_and_resume_continues_exactly(digits, tmp_path):
    cfg = _cfg("fairat", epochs=3, checkpoint="last")
    full = train(MODEL, cfg, digits, _paths(tmp_path / "full"))
    train(MODEL, cfg, digits, _paths(tmp_path / "again"))
    # A run killed after epoch 2 (its last.pt on disk), then resumed to epoch 3.
    killed = tmp_path / "killed"
    assert _train_epochs(cfg, digits, killed, stop_after=2) == 2
    assert not (killed / "model.pt").exists()
    resumed = train(MODEL, cfg, digits, _paths(killed), resume=True)
    states = [load_checkpoint(root / "model.pt", torch.device("cpu"))["state_dict"]
              for root in (tmp_path / "full", tmp_path / "again", killed)]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
        assert torch.equal(states[0][key], states[2][key]), key
    assert resumed.epochs == 3
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert resumed.history[-1]["hard_per_class"] == full.history[-1]["hard_per_class"]


def _train_epochs(cfg, data, root, stop_after):
    """Train ``stop_after`` epochs of a longer run, as if the process were killed then."""
    trainer = Trainer(MODEL, cfg, data, _paths(root))
    for epoch in range(stop_after):
        record = trainer.train_epoch(epoch)
        record.update(trainer.validate())
        trainer.epoch += 1
        trainer.history.append(record)
        save_checkpoint(trainer.state(), root / "checkpoints" / "last.pt")
    return trainer.epoch


class _Killed(Exception):
    pass


def _kill_after(epoch):
    def on_epoch(record):  # called after last.pt is written, like a pod killed then
        if record["epoch"] == epoch:
            raise _Killed
    return on_epoch


def test_the_model_file_records_the_cost_of_every_session_and_where_it_ran(digits, tmp_path):
    """A resumed run's cost is the sum of its sessions (a cost ratio on the model card would
    otherwise count only the last one), and the machine line is kept only while every session
    ran on one recorded machine."""
    from fairat.provenance import machine, usable_cores

    cfg = _cfg("pgd_at", epochs=2, checkpoint="last")
    here, per_epoch = machine(torch.device("cpu")), 4 * 64  # max_batches 4 of batch 64
    killed = tmp_path / "killed"
    with pytest.raises(_Killed):
        Trainer(MODEL, cfg, digits, _paths(killed), on_epoch=_kill_after(1)).run()
    first = load_checkpoint(killed / "checkpoints" / "last.pt", torch.device("cpu"))["sessions"]
    assert first == [{"machine": here, "seconds": first[0]["seconds"], "cores": usable_cores(),
                      "max_load": first[0]["max_load"],  # this machine's load: only its type
                      "cpu_seconds": first[0]["cpu_seconds"],
                      "examples_trained": per_epoch, "epochs": [1, 1]}]
    assert first[0]["cpu_seconds"] > 0
    assert first[0]["max_load"] is None or first[0]["max_load"] >= 0.0
    summary = train(MODEL, cfg, digits, _paths(killed), resume=True)
    both = load_model(killed / "model.pt", torch.device("cpu"))[1]["training"]
    assert both == summary.training and both["sessions"] == 2 and both["machine"] == here
    assert both["cores"] == usable_cores()  # the load is kept, the highest of both sessions
    assert both["seconds"] == pytest.approx(first[0]["seconds"] + summary.seconds, abs=0.01)
    assert both["cpu_seconds"] > first[0]["cpu_seconds"]  # both sessions' CPU time, summed
    assert both["examples_trained"] == 2 * per_epoch and summary.examples_trained == per_epoch
    assert json.loads((killed / "train.json").read_text())["all_sessions"] == both
    # a first session on another machine: the time is still summed, the machine line not kept
    state = load_checkpoint(killed / "checkpoints" / "last.pt", torch.device("cpu"))
    state["sessions"][0]["machine"] = "cuda: another GPU; 16 cores usable, 16 torch threads"
    state.update(epoch=1, history=state["history"][:1], sessions=state["sessions"][:1])
    save_checkpoint(state, killed / "checkpoints" / "last.pt")
    mixed = train(MODEL, cfg, digits, _paths(killed), resume=True).training
    assert mixed["machine"] is None and len(mixed["machines"]) == 2 and mixed["seconds"] > 0
    # a checkpoint from before sessions were recorded: its time is unknown, so no total
    _train_epochs(cfg, digits, tmp_path / "old", stop_after=1)
    old = train(MODEL, cfg, digits, _paths(tmp_path / "old"), resume=True).training
    assert old["seconds"] is None and old["machine"] is None and old["sessions"] == 2
    assert old["cpu_seconds"] is None


def test_resume_refuses_a_different_config(digits, tmp_path):
    train(MODEL, _cfg("pgd_at", epochs=1, checkpoint="last"), digits, _paths(tmp_path))
    with pytest.raises(ValueError, match="train.lr"):
        train(MODEL, _cfg("pgd_at", epochs=2, checkpoint="last", lr=0.2), digits, _paths(tmp_path),
              resume=True)


def test_best_checkpoint_needs_a_validation_split(digits, tmp_path):
    from fairat.engine.data import PreparedData

    no_val = PreparedData(digits.train, digits.val.subset(torch.zeros(0, dtype=torch.long)),
                          digits.test)
    with pytest.raises(ValueError, match="val_per_class"):
        train(MODEL, _cfg(checkpoint="best"), no_val, _paths(tmp_path))


def test_schedules():
    cfg = TrainConfig(lr=0.1, schedule="piecewise", milestones=(0.5, 0.75), gamma=0.1)
    assert [round(lr_at(cfg, p), 6) for p in (0.0, 0.49, 0.5, 0.8)] == [0.1, 0.1, 0.01, 0.001]
    cos = TrainConfig(lr=0.1, schedule="cosine")
    assert lr_at(cos, 0.0) == pytest.approx(0.1) and lr_at(cos, 1.0) == pytest.approx(0.0)


def test_epoch_plan_covers_every_example_once_plus_copies():
    hard = torch.tensor([3, 7])
    plan = epoch_plan(10, hard, copies=2, batch_size=4, world_size=1,
                      gen=torch.Generator().manual_seed(0), max_batches=None)
    idx = torch.cat([b[0] for b in plan])
    copy = torch.cat([b[1] for b in plan])
    assert sorted(idx[~copy].tolist()) == list(range(10))
    assert sorted(idx[copy].tolist()) == [3, 3, 7, 7]


def test_rescore_pass_refreshes_every_score(digits, tmp_path):
    cfg = _cfg("fairat", epochs=2, checkpoint="last",
               fairat=FairATConfig(warmup=0.5, rescore_every=1, score="clean_ce"))
    trainer = Trainer(MODEL, cfg, digits, _paths(tmp_path))
    trainer.train_epoch(0)  # max_batches=4: only some examples get a score from training
    tracker = trainer.hook.tracker
    assert not bool(tracker.seen.all())
    trainer.hook.rescore(trainer, 1)
    assert bool(tracker.seen.all())
    with torch.no_grad():
        logits = trainer.model.eval()(digits.train.images[:5].float() / 255)
    expected = torch.nn.functional.cross_entropy(logits, digits.train.labels[:5], reduction="none")
    assert torch.allclose(tracker.scores[:5], expected, atol=1e-5)


def test_divergence_stops_at_once_and_leaves_the_previous_run_untouched(digits, tmp_path):
    from fairat.errors import TrainingDiverged

    train(MODEL, _cfg("pgd_at", epochs=1), digits, _paths(tmp_path))
    before = {name: (tmp_path / name).read_bytes()
              for name in ("model.pt", "train.json", "history.csv", "checkpoints/last.pt")}
    with pytest.raises(TrainingDiverged, match=r"epoch 1, batch 2/4, learning rate 1e\+30"):
        train(MODEL, _cfg("pgd_at", epochs=1, lr=1e30, momentum=0.0), digits, _paths(tmp_path))
    after = {name: (tmp_path / name).read_bytes() for name in before}
    assert after == before


def test_resume_refuses_other_data_with_one_clear_error(digits, tmp_path):
    from fairat.engine.data import PreparedData
    from fairat.errors import DataError

    cfg = _cfg("pgd_at", epochs=2, checkpoint="last")
    assert _train_epochs(cfg, digits, tmp_path, stop_after=1) == 1
    # another split: one training example fewer (the same images would hash alike)
    other = PreparedData(digits.train.subset(torch.arange(len(digits.train) - 1)), digits.val,
                         digits.test)
    with pytest.raises(DataError, match=r"cannot resume from .*last.pt: it was trained on other "
                                        r"data \(data sha256 [0-9a-f]{12}"):
        train(MODEL, cfg, other, _paths(tmp_path), resume=True)
    assert not (tmp_path / "model.pt").exists()
    # a checkpoint that does not say which data it saw cannot be checked, so it is refused too
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt", torch.device("cpu"))
    del state["data_sha256"]
    save_checkpoint(state, tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(DataError, match="does not record the data it was trained on"):
        train(MODEL, cfg, digits, _paths(tmp_path), resume=True)
    # the same data resumes
    state["data_sha256"] = Trainer(MODEL, cfg, digits, _paths(tmp_path)).data_sha256
    save_checkpoint(state, tmp_path / "checkpoints" / "last.pt")
    assert train(MODEL, cfg, digits, _paths(tmp_path), resume=True).epochs == 2


def test_a_refused_or_killed_training_ends_its_mlflow_run_failed(tmp_path, monkeypatch,
                                                                mlflow_sqlite):
    """A training that raises (here: --resume refused on other data) or gets SIGTERM (a pod
    evicted) ends its MLflow run FAILED instead of leaving it RUNNING forever."""
    import os
    import signal

    from mlflow.tracking import MlflowClient

    from fairat.config import Params, with_overrides
    from fairat.errors import DataError
    from fairat.steps import train as train_module
    from fairat.steps.prepare import prepare_step

    uri = mlflow_sqlite(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = with_overrides(Params(), {
        "data.val_per_class": 5, "model.width": 8, "train.method": "pgd_at", "train.epochs": 1,
        "train.max_batches": 2, "train.batch_size": 64, "train.attack.steps": 1,
        "train.val_attack_steps": 1, "train.checkpoint": "last", "train.progress": False,
        "train.device": "cpu", "track.experiment": "failed-runs"})
    prepare_step(params, tmp_path / "data")
    paths = _paths(tmp_path / "run")
    train_module.train_step(params, tmp_path / "data", paths)  # finishes
    finished = json.loads(paths.metrics.read_text())["mlflow_run_id"]
    state = load_checkpoint(paths.checkpoints / "last.pt", torch.device("cpu"))
    state["data_sha256"] = "0" * 64  # as if trained on another split
    save_checkpoint(state, paths.checkpoints / "last.pt")
    with pytest.raises(DataError, match="trained on other data"):
        train_module.train_step(params, tmp_path / "data", paths, resume=True)

    def killed(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the step")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(train_module, "train", killed)
    with pytest.raises(SystemExit) as stopped:
        train_module.train_step(params, tmp_path / "data", _paths(tmp_path / "killed"))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # the step's handler is gone again
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("failed-runs")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [(r.info.run_id == finished, r.info.status) for r in runs] == [
        (True, "FINISHED"), (False, "FAILED"), (False, "FAILED")]
