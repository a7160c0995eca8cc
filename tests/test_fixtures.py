"""The shared test fixtures do what the tests relying on them assume."""

from __future__ import annotations

from pathlib import Path

from fairat.config import params_from_raw
from tiny import FAIRAT_PHASE, PASSABLE_GATE, TINY_RUN, cli_flags, nested, tiny


def test_a_copied_mlflow_store_is_fresh_and_lives_where_it_was_put(mlflow_sqlite, tmp_path,
                                                                    monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = mlflow_sqlite(tmp_path / "a" / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    (default,) = client.search_experiments()  # the Default experiment only, made here
    print("ARTIFACT", default.artifact_location)
    assert default.experiment_id == "0"
    assert Path(default.artifact_location.removeprefix("file://")).parent == tmp_path / "mlruns" \
        or str(tmp_path) in default.artifact_location
    run = client.create_run(client.create_experiment("unit"))
    client.log_metric(run.info.run_id, "x", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"x": 1.0}
    other = MlflowClient(tracking_uri=mlflow_sqlite(tmp_path / "b" / "mlflow.db"))
    assert [e.name for e in other.search_experiments()] == ["Default"]  # copies are independent


def test_tiny_settings_are_valid_params_in_every_form():
    for overrides in (TINY_RUN, tiny(FAIRAT_PHASE, PASSABLE_GATE, train__max_batches=2)):
        flags = cli_flags(overrides)
        assert flags[::2] == ["-S"] * len(overrides)
        params = params_from_raw({}, flags[1::2])
        assert params == params_from_raw(nested(overrides))
        assert params.train.max_batches == overrides["train.max_batches"]
    assert tiny(train__epochs=3)["train.epochs"] == 3 and TINY_RUN["train.epochs"] == 1
