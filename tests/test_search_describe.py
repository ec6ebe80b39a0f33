"""What a trial is, in one line: the front table, front.csv and the report show it."""

from __future__ import annotations

from mtlsearch.search import describe_config
from mtlsearch.tracking._summary import front_records, records_csv


def test_a_two_level_ple_with_a_sparse_top_gate_is_described_level_by_level():
    config = {
        "model": {
            "levels": [
                {"n_shared": 2, "n_specific": [1, 1], "expert_hidden": [16], "select": "own+shared",
                 "shared_gate": True},
                {"n_shared": 1, "n_specific": [2, 0], "expert_hidden": [32, 16], "select": "all",
                 "shared_gate": False, "gate_kind": "topk", "top_k": 2, "norm": "batch"},
            ],
            "towers": [{"hidden": [8]}, {"hidden": [8]}],
        },
        "training": {"lr": 0.00512},
    }  # fmt: skip
    assert describe_config(config) == (
        "L1 2s+1p[16] own+shared+sg | L2 1s+2,0p[32,16] all top2 batchnorm | tower [8] | lr 0.00512"
    )
    assert describe_config(None) == "-"
    one_count = {"model": {"levels": [{"n_shared": 1, "n_specific": 2}]}, "training": {"lr": 0.01}}
    assert describe_config(one_count) == "L1 1s+2p[] ? | lr 0.01"  # a count written once for all tasks
    assert describe_config({"model": {"levels": [{"n_specific": {"a": 1}}]}}) == "-"  # never raises
    assert describe_config({"training": {}}) == "-"


def test_front_csv_carries_each_members_architecture(tmp_path):
    import optuna

    from mtlsearch.search import CONFIG_ATTR, Objective

    objectives = (Objective("a:auc", "maximize", "a", "auc"),)
    study = optuna.create_study(directions=["maximize"])
    config = {"model": {"levels": [{"n_shared": 1, "n_specific": [0], "expert_hidden": [4],
                                    "select": "shared"}], "towers": [{"hidden": [2]}]},
              "training": {"lr": 0.01}}  # fmt: skip
    study.add_trial(
        optuna.trial.create_trial(
            values=[0.7], user_attrs={CONFIG_ATTR: config, "valid": {"a": {"auc": 0.7}}}
        )
    )
    rows = front_records(study, objectives)
    assert rows[0]["architecture"] == "L1 1s+0p[4] shared | tower [2] | lr 0.01"
    assert "architecture" in records_csv(rows).splitlines()[0].split(",")
