"""The comparison table: runs grouped by what they are (recipe and setting), seeds averaged."""
import math

import pandas as pd
import pytest

from pipeline.compare import compare, markdown, setting


def test_setting_names_ssp_semi_policy_and_round():
    assert setting({"stage": "base"}) == "base" and setting({"stage": "ssp"}) == "ssp"
    assert setting({"stage": "semi", "policy": "all", "round": "1", "pretrained": None}) == "semi all"
    assert setting({"stage": "semi", "policy": "threshold", "round": "2", "pretrained": "abc"}) == \
        "semi threshold + ssp round 2"


def test_compare_averages_seeds_within_a_setting_and_keeps_settings_apart():
    rows = [("ce", "base", "0", 0.60), ("ce", "base", "1", 0.70), ("ce", "semi all", "0", 0.80)]
    runs = pd.DataFrame([{"tags.dataset": "digits", "tags.imbalance_ratio": "10", "tags.method": m,
                          "tags.setting": s, "tags.seed": seed, "metrics.final_test_top1": top1}
                         for m, s, seed, top1 in rows])
    table = compare(runs).set_index("setting")
    assert table.loc["base", "final_test_top1"] == pytest.approx(0.65)
    assert table.loc["base", "final_test_top1_std"] == pytest.approx(0.0707107, rel=1e-4)
    assert table.loc["semi all", "seeds"] == 1 and math.isnan(table.loc["semi all", "final_test_top1_std"])
    text = markdown(compare(runs))
    assert "| digits | 10 | ce | base | 2 | 65.0 ± 7.1 |" in text and "| semi all | 1 | 80.0 |" in text
