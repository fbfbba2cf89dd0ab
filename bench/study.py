"""The CIFAR-10-LT study (rho = 100, ResNet-32) through the real jobs (spark-submit on local[2],
TorchDistributor, MLflow), at the reference schedule scaled to ``--epochs``, in parts (``--parts``):

1. ``supervised``: ingest the JPEG copy of CIFAR-10, make the standard split (n_max 5,000: 12,406
   labeled images) and train ``ce``, ``ldam_drw``, ``cb_focal`` and ``balanced_softmax`` on it
   (experiment ``study-cifar10-lt100-e<epochs>``);
2. ``semi``: the semi-supervised chain of Yang & Xu (2020) on the split of the semi-supervised
   benchmarks (N1 = 1,500 labeled and M1 = 3,000 unlabeled at the head, both rho = 100): a ``ce``
   base model, SSP rotation pre-training then ``ce`` fine-tuning, streaming pseudo-labels of the pool
   by the base model (policy ``all`` as the paper, and ``crest`` alpha 3 with the EM prior
   correction, the best distribution-aware setting of bench/prior_study.py), semi-supervised ``ce``
   on labeled + pseudo-labeled images for each, and semi + SSP (experiment
   ``study-cifar10-lt100-ssl-e<epochs>``);
3. ``reversed``: the same labeled split and base model with a reversed pool (gamma_u -100): a stream
   with each policy and a semi-supervised run on each.

    .venv/bin/python bench/study.py --archive ../shared/data/cifar10-jpeg.tar.gz --epochs 15   # or: make study
    .venv/bin/python bench/study.py --archive ... --epochs 200 --parts semi --carry bench/carry  # across sittings

The state (data, splits, results, checkpoints, the MLflow store) lives in ``--state`` (default
``$LONGTAIL_STATE/study`` or ``~/.cache/longtail-lab/study``): a rerun skips finished stages and resumes
an interrupted training from its checkpoint; ``--fresh`` starts over. Each stage's record is written
into ``--records`` (default docs/records/study-cifar10-lt100-e<epochs>/) when it ends. ``--carry DIR``
keeps the chain's checkpoints (finished ones too: the stages after them need their models) in DIR, so
a sitting on a new machine re-finishes them from their checkpoints in seconds and goes on. The end
prints the tables (jobs/compare.py), the pseudo-labels' precision per class and the minutes of every
stage."""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sittings import (ROOT, SUBMIT, StageAbout, drop_carried, pct, prepare_environment, progress,  # noqa: E402
                      read_records, run_job, state_root, sync_carry, write_record)

from pipeline.pseudolabel.store import latest_balance  # noqa: E402
from pipeline.records import Manifest, Record, StreamResult, TrainResult, read_result  # noqa: E402

METHODS = ("ce", "ldam_drw", "cb_focal", "balanced_softmax")
STANDARD, SEMI = "conf/experiments/cifar10_lt100.yaml", "conf/experiments/cifar10_lt100_ssl.yaml"
# (name, --select, pseudolabel settings): the streams of each pool; crest-em is prior_study's best
POLICIES = (("all", "all", {}), ("crest-em", "crest", {"crest_alpha": 3.0, "adjust": "em"}))


def stage_about(stage: str, job: str, epochs: int, minutes: float, out: Record) -> StageAbout:
    """What the study's record says beside the job's result; for a stream, its last balance per class."""
    balance = latest_balance(out.out) if isinstance(out, StreamResult) else None
    kept = None if balance is None else [{k: r[k] for k in ("class_name", "selected_count", "precision")}
                                         for r in balance.to_pylist()]
    return StageAbout(stage=stage, job=job, study_epochs=epochs, minutes=minutes, pseudo_labels=kept)


class Study:
    """Stages run once each (a result file per stage in the state); a training resumes from its checkpoint."""

    def __init__(self, work: Path, epochs: int, records: Optional[Path] = None, carry: Optional[Path] = None,
                 eval_every: int = 1):
        self.work, self.epochs, self.records, self.eval_every, self.minutes = work, epochs, records, eval_every, {}
        self.run_dir, self.carry = work / "runs" / f"e{epochs}", carry
        (work / "results").mkdir(parents=True, exist_ok=True)
        if carry:
            sync_carry(self.run_dir, carry, restore=True)

    def job(self, stage: str, script: str, *args: str, keep: bool = False) -> Record:
        """Run ``spark-submit jobs/SCRIPT`` once; its --result record (kept for reruns) is returned and, the
        first time, recorded. A finished training's carried checkpoint is dropped unless ``keep``."""
        job, result = script.removesuffix(".py"), self.work / "results" / f"{stage}.json"
        record = self.records / f"{stage}.json" if self.records else None
        ran = not result.exists()
        if ran:
            print(f"--- {stage}: jobs/{script} {' '.join(args)}", flush=True)
            started = time.time()
            run_job([*SUBMIT, f"jobs/{script}", *args, "--result", str(result)], self.run_dir, self.carry)
            self.minutes[stage] = (time.time() - started) / 60
        out = read_result(job, str(result))
        if record and (ran or not record.exists()):  # a stage that ended before its record was written gets it now
            write_record(record, stage_about(stage, job, self.epochs, self.minutes.get(stage, float("nan")), out), out)
        if ran and isinstance(out, TrainResult) and not keep:
            drop_carried(self.carry, out.checkpoint)
        return out

    def train(self, stage: str, config: str, splits: Path, method: str, experiment: str, *extra: str,
              script: str = "train.py", keep: bool = False) -> TrainResult:
        return self.job(stage, script, "--config", config, "--splits", str(splits), "--method", method,
                        "--epochs", str(self.epochs), "--experiment", experiment, "--resume",
                        "--set", f"train.runtime.run_dir={self.run_dir}", "--set", f"train.eval_every={self.eval_every}",
                        *extra, keep=keep)

    def stream(self, stage: str, model: TrainResult, pool: Path, out: Path, select: str, settings: dict,
               experiment: str) -> StreamResult:
        """Pseudo-labels of ``pool`` by ``model``; an output without its stage's result (a kill) is made
        anew. With a carry folder the output is carried too (~0.4 MB): scored again on another machine,
        a policy that reads the predictions could keep other rows (float rounding), and the carried
        semi-supervised checkpoint trained on these ones would have to start over."""
        result = self.work / "results" / f"{stage}.json"
        carried = self.carry / "streams" / stage if self.carry else None
        if not result.exists():
            if out.exists():
                shutil.rmtree(out)
            if carried and (carried / "result.json").exists():
                shutil.copytree(carried / "out", out)
                shutil.copyfile(carried / "result.json", result)
                print(f"carry: the pseudo-labels of {stage} from {carried}", flush=True)
        sets = [a for k, v in settings.items() for a in ("--set", f"pseudolabel.{k}={v}")]
        labels = self.job(stage, "pseudolabel.py", "--config", SEMI, "--model", model.run_id, "--input", str(pool),
                          "--out", str(out), "--select", select, *sets, "--max-files-per-trigger", "1",
                          "--experiment", experiment)
        if carried and not (carried / "result.json").exists():
            shutil.copytree(out, carried / "out")
            shutil.copyfile(result, carried / "result.json")
        return labels


def semi_chain(study: Study, ssl: Path, rev: Optional[Path], experiment: str) -> None:
    """Base, SSP, and per pool and policy: the stream and its semi-supervised run (+ SSP on the paper's)."""
    keep = study.carry is not None  # the chain's later stages read these models
    base = study.train("ssl-base", SEMI, ssl, "ce", experiment, keep=keep)
    pre = study.job("ssl-pretrain", "pretrain.py", "--config", SEMI, "--splits", str(ssl), "--epochs", str(study.epochs),
                    "--experiment", experiment, "--resume", "--set", f"train.runtime.run_dir={study.run_dir}",
                    "--set", f"train.eval_every={study.eval_every}", keep=keep)
    ssp = ("--pretrained", pre.checkpoint)  # a path: the same key on another machine, where the run id is new
    study.train("ssl-ssp", SEMI, ssl, "ce", experiment, *ssp)
    order = [("ssl", "all"), "ssp", ("ssl", "crest-em"), *([("rev", "all"), ("rev", "crest-em")] if rev else [])]
    for step in order:  # the paper's chain (base, SSP, semi, semi + SSP) first, then the distribution-aware runs
        if step == "ssp":
            study.train("ssl-semi-all-ssp", SEMI, ssl, "ce", experiment, "--pseudo-labels",
                        str(study.work / "pseudo-labels-ssl-all"), *ssp, script="train_semi.py")
            continue
        pool, name = step
        splits, (select, settings) = {"ssl": ssl, "rev": rev}[pool], {n: (s, kv) for n, s, kv in POLICIES}[name]
        out = study.work / f"pseudo-labels-{pool}-{name}"
        study.stream(f"{pool}-pseudolabel-{name}", base, splits / "unlabeled", out, select, settings, experiment)
        study.train(f"{pool}-semi-{name}", SEMI, splits, "ce", experiment, "--pseudo-labels", str(out),
                    script="train_semi.py")


STAGES = {"ssl-base": "`ce` base (labeled only)", "ssl-pretrain": "SSP: rotation pre-training (test: 4-way rotation top-1)",
          "ssl-ssp": "`ce` from SSP", "ssl-semi-all": "semi, policy `all`", "ssl-semi-all-ssp": "semi + SSP, policy `all`",
          "ssl-semi-crest-em": "semi, `crest` alpha 3 + EM prior", "rev-semi-all": "reversed pool: semi, policy `all`",
          "rev-semi-crest-em": "reversed pool: semi, `crest` alpha 3 + EM prior"}


def table(records: list[tuple[StageAbout, Record]]) -> str:
    """The study's tables from its records alone: every training (final epoch; per class, head first;
    the pseudo-labels it trained on), then every stream's kept pseudo-labels per class."""
    by_stage = {a.stage: (a, r) for a, r in records}
    order = [*(s for s in STAGES if s in by_stage), *sorted(s for s in by_stage if s not in STAGES)]
    lines = ["| stage | what | epochs | final top-1 | many | medium | few | per class (head first) "
             "| pseudo-labels trained on: kept, precision | minutes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for stage in order:
        a, r = by_stage[stage]
        if not isinstance(r, TrainResult):
            continue
        stream = by_stage.get(stage.replace("-semi-", "-pseudolabel-").removesuffix("-ssp")) if "-semi-" in stage else None
        pl = f"{stream[1].selected}, {pct(stream[1].precision)}" if stream else "-"
        lines.append(f"| {stage} | {STAGES.get(stage, a.job)} | {r.epochs} | {pct(r.final_test_top1)} | "
                     f"{pct(r.final_test_many_accuracy)} | {pct(r.final_test_medium_accuracy)} | "
                     f"{pct(r.final_test_few_accuracy)} | {' '.join(pct(v) for v in r.final_test_per_class_accuracy)} | "
                     f"{pl} | {r.train_minutes:.0f} |")  # across its sittings
    streams = [by_stage[s] for s in order if isinstance(by_stage[s][1], StreamResult)]
    if streams:
        lines += ["", "| stream | kept | precision | per class: kept (precision), head first |", "|---|---|---|---|"]
        for a, r in streams:
            per_class = ", ".join(f"{c['selected_count']} ({pct(c['precision'])})" for c in a.pseudo_labels or [])
            lines.append(f"| {a.stage} | {r.selected} | {pct(r.precision)} | {per_class or '-'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", help="cifar10-jpeg.tar.gz (not needed with --progress or --table)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--parts", default="supervised,semi", help="of supervised, semi, reversed")
    ap.add_argument("--methods", default=",".join(METHODS), help="the supervised part's recipes")
    ap.add_argument("--eval-every", type=int, default=1, help="train.eval_every (the last epoch is always evaluated)")
    ap.add_argument("--state", help="default: $LONGTAIL_STATE/study, else ~/.cache/longtail-lab/study")
    ap.add_argument("--records", help="default: docs/records/study-cifar10-lt100-e<epochs>")
    ap.add_argument("--carry", help="a folder of the repository that keeps the chain's checkpoints across machines")
    ap.add_argument("--fresh", action="store_true", help="forget finished stages and start over")
    ap.add_argument("--progress", action="store_true",
                    help="print the finished stages and where each unfinished training stands, and stop")
    ap.add_argument("--table", action="store_true", help="print the tables of the records in --records and stop")
    args = ap.parse_args()
    records = Path(args.records or ROOT / f"docs/records/study-cifar10-lt100-e{args.epochs}").resolve()
    if args.table:
        return print(table(read_records(records, StageAbout)))
    parts = set(args.parts.split(","))
    if parts - {"supervised", "semi", "reversed"} or ("reversed" in parts and "semi" not in parts):
        ap.error(f"--parts: of supervised, semi, reversed (reversed needs semi's base), got {args.parts}")
    work = state_root(args.state) / "study"
    carry = Path(args.carry).resolve() / f"study-e{args.epochs}" if args.carry else None
    if args.progress:
        done = sorted(p.stem for p in (work / "results").glob("*.json"))
        lines = progress(work / "runs" / f"e{args.epochs}", carry)
        return print(f"finished stages: {', '.join(done) or 'none'}\n" + ("\n".join(lines) or "no unfinished training"))
    if not args.archive:
        ap.error("--archive is required (except with --progress or --table)")
    if args.fresh and work.exists():
        shutil.rmtree(work)
    prepare_environment(work)
    study, started = Study(work, args.epochs, records, carry, args.eval_every), time.time()
    data, std, ssl, rev = (work / "cifar10", work / "cifar10-lt100", work / "cifar10-lt100-ssl",
                           work / "cifar10-lt100-ssl-reversed")
    study.job("ingest", "ingest.py", "--config", STANDARD, "--source", str(Path(args.archive).resolve()), "--out",
              str(data), "--overwrite")
    experiments = []
    if "supervised" in parts:
        study.job("splits", "longtail.py", "--config", STANDARD, "--data", str(data), "--out", str(std), "--overwrite")
        experiments.append(f"study-cifar10-lt100-e{args.epochs}")  # one experiment per budget: tables never mix
        for method in args.methods.split(","):
            study.train(f"train-{method}", STANDARD, std, method, experiments[-1])
    if "semi" in parts:
        study.job("splits-ssl", "longtail.py", "--config", SEMI, "--data", str(data), "--out", str(ssl), "--overwrite")
        if "reversed" in parts:
            study.job("splits-ssl-reversed", "longtail.py", "--config", SEMI, "--data", str(data), "--out", str(rev),
                      "--unlabeled-ratio", "-100", "--overwrite")
            same = {Manifest.read(str(s)).ids_sha256["labeled"] for s in (ssl, rev)}
            assert len(same) == 1, "the two pools must share one labeled split (and so one base model)"
        experiments.append(f"study-cifar10-lt100-ssl-e{args.epochs}")
        semi_chain(study, ssl, rev if "reversed" in parts else None, experiments[-1])
    report(study, experiments, started)


def report(study: Study, experiments: list[str], started: float) -> None:
    for experiment in experiments:
        print(f"\n{experiment}, {study.epochs} epochs (final epoch, %):")
        subprocess.run([sys.executable, "jobs/compare.py", "--experiment", experiment], cwd=ROOT, check=True)
    print(f"\nthe records in {study.records} (the pseudo-labels' precision per class in the second table):")
    print(table(read_records(study.records, StageAbout)))
    print("\nminutes per stage (this invocation):", ", ".join(f"{k} {v:.1f}" for k, v in study.minutes.items()))
    print(f"total {(time.time() - started) / 60:.1f} minutes")

if __name__ == "__main__":
    main()
