"""Self-training rounds (Yang & Xu 2020, with rounds): train on the pseudo-labels, let the new model
re-label the pool through the stream, train again. Above both the training launcher and the
streaming job, which know nothing of each other."""
from __future__ import annotations

import dataclasses
import hashlib
import json

from pipeline import fs
from pipeline.config import PseudoLabelConfig, config_key, to_dict
from pipeline.launch import launch_fit
from pipeline.pseudolabel.store import read_stream_info
from pipeline.records import Manifest, Rounds
from streaming.pseudolabel import run_pseudolabel

PSEUDOLABEL_KEYS = {f.name for f in dataclasses.fields(PseudoLabelConfig)} - {"select"}  # a policy's settings


def launch_semi(spark, cfg) -> dict:
    """Semi-supervised training on ``cfg.train.semi.pseudo_labels``; with ``train.semi.rounds`` > 1,
    each round's model re-labels the pool (the same policy, a new output beside the first) and the
    next round trains on those labels. Every round is its own MLflow run, tagged with its parent.
    Finished steps are recorded (``run_dir/semi-rounds-<config sha>.json``), so the same command
    run again continues where it stopped instead of paying for finished rounds again."""
    manifest = Manifest.read(cfg.train.splits)
    first = read_stream_info(cfg.train.semi.pseudo_labels)
    key = json.loads(json.dumps({"train": config_key(cfg), "pseudolabel": to_dict(cfg.pseudolabel),  # and the data:
                                 "splits_sha256": manifest.manifest_sha256,  # re-made splits or a re-run stream
                                 "pseudolabel_run_id": first.run_id}, default=str))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    folder, name = fs.normalize(cfg.train.runtime.run_dir), f"semi-rounds-{digest}.json"
    done = Rounds.read(folder, name).rounds if fs.exists(fs.join(folder, name)) else []

    def save(rounds):
        Rounds(config=key, rounds=json.loads(json.dumps(rounds, default=str))).write(folder, atomic=True, name=name)

    rounds, result = [], {}
    for round_ in range(1, cfg.train.semi.rounds + 1):
        step = done[round_ - 1] if len(done) >= round_ else None
        if step is None:  # this round's training has not finished yet
            result = launch_fit(spark, cfg)
            step = {"round": round_, "run_id": result["run_id"], "pseudo_labels": cfg.train.semi.pseudo_labels,
                    "final_test_top1": result["final_test_top1"], "result": result}
            save(rounds + [step])
        result = step["result"]
        rounds.append(step)
        if round_ == cfg.train.semi.rounds:
            break
        out = f"{cfg.train.semi.pseudo_labels.rstrip('/')}-round{round_ + 1}"
        if "next_pseudolabel_run_id" not in step:  # the re-labelling resumes from its own stream checkpoint
            info = read_stream_info(cfg.train.semi.pseudo_labels)
            policy = info.policy
            relabel = dataclasses.replace(cfg.pseudolabel, model=step["run_id"], input=info.input, out=out,
                                          checkpoint=None, truth=info.truth, trigger="available-now",
                                          select=policy["name"], align_labels=bool(policy.get("align_t")),
                                          **{k: v for k, v in policy.items() if k in PSEUDOLABEL_KEYS})
            labeled = run_pseudolabel(spark, dataclasses.replace(cfg, pseudolabel=relabel))
            step["next_pseudolabel_run_id"] = labeled["run_id"]
            save(rounds)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(
            cfg.train, semi=dataclasses.replace(cfg.train.semi, pseudo_labels=out)))
    summary = [{k: v for k, v in r.items() if k != "result"} for r in rounds]
    return {**result, "rounds": summary} if len(rounds) > 1 else result
