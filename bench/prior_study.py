"""Distribution-aware pseudo-labels on CIFAR-10-LT, through the real jobs: the semi-supervised split
of DARP / ABC (N1 = 1,500 labeled, rho = 100, M1 = 3,000 unlabeled at the pool's head) with three
pool shapes, gamma_u = 100 (as skewed as the labeled set), 1 (uniform) and -100 (reversed), the same
labeled and held-out split (``--val-per-class`` images of every class, for BBSE) in all three.

1. one ``ce`` base model trained on the labeled split (``--epochs``, the reference schedule scaled);
2. per pool shape, the streaming job scores the pool (``--adjust em``: the live correction the
   dashboard shows; EM and BBSE estimates recorded with every micro-batch);
3. per pool shape and selection policy, the pool prior's estimation error (L1 and KL(truth || estimate)
   for the assumed labeled distribution, EM and BBSE) and the kept pseudo-labels' precision and recall
   per class and balanced (their means over the classes), computed by ``Policy.view`` from the stored
   probability vectors: the very function the stream's balance and the semi-supervised trainer use.

    .venv/bin/python bench/prior_study.py --archive ../shared/data/cifar10-jpeg.tar.gz --epochs 15

4. with ``--semi POOLS`` (e.g. ``-100``), per such pool and each of ``SEMI_RUNS``: a stream with that
   policy, then Yang & Xu's semi-supervised ``ce`` training on labeled + kept pseudo-labels
   (jobs/train_semi.py, ``--epochs``, the same budget as the base model), final-epoch test top-1
   (the test split is balanced: top-1 is the balanced accuracy) and many/medium/few.

``--data DIR`` reuses an ingest of the archive. Finished stages are kept under ``--work``/results and
skipped by a rerun; ``--screenshot PNG`` saves the dashboard of the reversed pool (headless
chromium)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from pipeline.schema import TRUTH  # noqa: E402
from pipeline.records import Manifest  # noqa: E402
from study import SEMI, Study  # noqa: E402

POOLS = {"100": "same as labeled (gamma_u 100)", "1": "uniform (gamma_u 1)", "-100": "reversed (gamma_u -100)"}
POLICIES = [("all", {}), ("all", {"adjust": "em"}), ("all", {"adjust": "bbse"}),
            ("all", {"adjust": "em", "adjust_tau": 0.0, "refine": "darp"}),
            ("threshold", {"tau": 0.95}), ("threshold", {"tau": 0.95, "adjust": "em"}),
            ("crest", {"crest_alpha": 3.0}), ("crest", {"crest_alpha": 3.0, "adjust": "em"})]
# (name, policy, pseudolabel settings, train_semi flags): the semi-supervised runs of ``--semi``
SEMI_RUNS = [("all", "all", {}, ()),
             ("all-em", "all", {"adjust": "em"}, ()),
             ("crest-em", "crest", {"crest_alpha": 3.0, "adjust": "em"}, ()),
             ("all-em-la", "all", {"adjust": "em"}, ("--pseudo-loss", "logit_adjusted"))]


def shots(result: dict, labeled_counts: list[int]) -> dict:
    """Final test top-1 and many/medium/few accuracy, the groups by the labeled split's counts for
    every run alike (a semi run's own groups follow labeled + pseudo-labeled counts, which differ
    per policy)."""
    import numpy as np

    from pipeline.metrics import shot_groups

    acc = np.asarray(result["final_test_per_class_accuracy"], dtype=float)
    out = {"top1": result["final_test_top1"]}
    for group, idx in shot_groups(labeled_counts).items():
        out[f"{group}_accuracy"] = float(acc[idx].mean()) if len(idx) else None
    return out


def semi_runs(study, gamma: str, splits: Path, base: dict, experiment: str) -> list[dict]:
    """Per ``SEMI_RUNS`` entry: its stream over the pool (shared by entries of one policy) and its
    semi-supervised run; the final-epoch test figures of each."""
    counts = Manifest.read(str(splits)).labeled_counts
    rows = []
    for name, policy, settings, flags in SEMI_RUNS:
        tag = policy + "".join(f"-{k}{v}" for k, v in settings.items())
        out = study.work / f"pseudo-labels-u{gamma}-{tag}"
        overrides = [a for k, v in settings.items() for a in ("--set", f"pseudolabel.{k}={v}")]
        stream = study.job(f"stream-u{gamma}-{tag}", "pseudolabel.py", "--config", SEMI, "--model", base["run_id"], "--input",
                  str(splits / "unlabeled"), "--out", str(out), "--select", policy, *overrides,
                  "--experiment", experiment)
        r = study.job(f"semi-u{gamma}-{name}", "train_semi.py", "--config", SEMI, "--splits", str(splits),
                      "--method", "ce", "--pseudo-labels", str(out), "--epochs", str(study.epochs),
                      "--experiment", experiment, *flags)
        rows.append({"run": name, "run_id": r["run_id"], "pseudo_labels": stream.get("selected"), **shots(r, counts)})
    return rows


def pool_table(out: Path, splits: Path) -> dict:
    """Estimation errors and per-policy precision/recall of one pool's stored pseudo-labels."""
    import numpy as np

    from pipeline.data import read_table
    from pipeline.pseudolabel.store import probs_matrix, read_labels, read_stream_info
    from pipeline.pseudolabel.prior import divergences, estimate_priors
    from pipeline.pseudolabel.policies import Policy

    info = read_stream_info(str(out))
    labels = read_labels(str(out), columns=["id", "probs"])
    probs = probs_matrix(labels)
    hidden = read_table(str(splits / TRUTH), columns=["id", "label"])
    truth = dict(zip(hidden.column("id").to_pylist(), hidden.column("label").to_pylist()))
    y = np.array([truth[i] for i in labels.column("id").to_pylist()])
    k, counts = probs.shape[1], tuple(info.labeled_counts)
    confusion = info.bbse["confusion"]
    estimates = estimate_priors(probs, counts, confusion)
    true_prior = np.bincount(y, minlength=k) / len(y)
    errors = {name: divergences(true_prior, prior) for name, prior in
              (("assumed", np.asarray(counts, float)), ("em", estimates["em"].prior),
               ("bbse", estimates["bbse"].prior))}
    rows = []
    for name, params in POLICIES:
        policy = Policy(name, labeled_counts=counts, confusion=tuple(map(tuple, confusion)), **params)
        view = policy.view(probs, estimates)
        keep, pred = view.keep, view.predicted
        kept = np.bincount(pred[keep], minlength=k)
        right = np.bincount(pred[keep & (pred == y)], minlength=k)
        precision = [r / n for r, n in zip(right, kept) if n]
        recall = right / np.maximum(np.bincount(y, minlength=k), 1)
        label = name + "".join(f" {key}={v}" for key, v in params.items())
        rows.append({"policy": label, "kept": int(keep.sum()), "precision": float(right.sum() / max(keep.sum(), 1)),
                     "balanced_precision": float(np.mean(precision)) if precision else 0.0,
                     "balanced_recall": float(recall.mean()), "min_recall": float(recall.min()),
                     "per_class_precision": [round(r / n, 3) if n else None for r, n in zip(right, kept)],
                     "per_class_recall": [round(float(r), 3) for r in recall]})
    return {"pool": len(y), "true_prior": true_prior.round(4).tolist(),
            "em": estimates["em"].prior.round(4).tolist(), "bbse": estimates["bbse"].prior.round(4).tolist(),
            "bbse_condition": estimates["bbse"].condition, "errors": errors, "policies": rows}


def screenshot(out: Path, png: Path) -> None:
    """The dashboard of ``out`` in headless chromium (1600 x 1000), saved to ``png``."""
    import shutil
    import signal
    import socket
    import urllib.request

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dash = subprocess.Popen([sys.executable, "-m", "streaming.dashboard", "--balance", str(out), "--port", str(port)],
                            cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        driver.get(f"http://127.0.0.1:{port}/")
        for _ in range(120):
            if "Live" in driver.find_element("id", "status").text:
                break
            time.sleep(0.5)
        time.sleep(3)  # the charts draw
        png.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(png))
    finally:
        driver.quit()
        os.killpg(dash.pid, signal.SIGTERM)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", help="the CIFAR-10 archive to ingest (or --data)")
    ap.add_argument("--data", help="an ingest of it already made by jobs/ingest.py")
    ap.add_argument("--work", default="runs/prior-study")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--val-per-class", type=int, default=100)
    ap.add_argument("--pool-files", type=int, default=10, help="files per pool: micro-batches of the stream")
    ap.add_argument("--screenshot", help="save the reversed pool's dashboard here (PNG)")
    ap.add_argument("--semi", default="", help="pools (of 100, 1, -100, comma-separated) to train semi-supervised on")
    args = ap.parse_args()
    if not (args.archive or args.data):
        ap.error("give --archive or --data")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    for key in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        os.environ.setdefault(key, sys.executable)
    work = Path(args.work).resolve()
    study, started = Study(work, args.epochs), time.time()
    data = Path(args.data).resolve() if args.data else work / "cifar10"
    if not args.data:
        study.job("ingest", "ingest.py", "--config", SEMI, "--source", os.path.abspath(args.archive), "--out",
                  str(data), "--overwrite")
    splits = {}
    for gamma in POOLS:
        splits[gamma] = work / f"splits-u{gamma}"
        study.job(f"splits-u{gamma}", "longtail.py", "--config", SEMI, "--data", str(data), "--out",
                  str(splits[gamma]), "--unlabeled-ratio", gamma, "--val-per-class", str(args.val_per_class),
                  "--set", f"longtail.files_per_split={args.pool_files}", "--overwrite")
    labeled = {Manifest.read(str(s)).ids_sha256["labeled"] for s in splits.values()}
    assert len(labeled) == 1, "the three pools must share one labeled split"
    experiment = f"prior-study-cifar10-lt100-e{args.epochs}"
    base = study.train("base", SEMI, splits["100"], "ce", experiment)
    report = {"epochs": args.epochs, "base_run_id": base["run_id"], "base_final_test_top1": base["final_test_top1"],
              "pools": {}}
    for gamma in POOLS:
        out = work / f"pseudo-labels-u{gamma}"
        study.job(f"stream-u{gamma}", "pseudolabel.py", "--config", SEMI, "--model", base["run_id"], "--input",
                  str(splits[gamma] / "unlabeled"), "--out", str(out), "--select", "all", "--adjust", "em",
                  "--experiment", experiment)
        report["pools"][gamma] = pool_table(out, splits[gamma])
    semi = [g for g in args.semi.split(",") if g]
    unknown = set(semi) - set(POOLS)
    if unknown:
        ap.error(f"--semi: unknown pools {sorted(unknown)}; known: {', '.join(POOLS)}")
    report["semi"] = {g: semi_runs(study, g, splits[g], base, experiment) for g in semi}
    (work / "results" / "report.json").write_text(json.dumps(report, indent=2))

    print(f"\nbase model: ce, {args.epochs} epochs, final test top-1 {100 * base['final_test_top1']:.2f}%")
    print("\npool prior estimation error vs the hidden truth (L1 / KL):\n")
    print("| pool | assumed = labeled | EM | BBSE (cond) |\n|---|---|---|---|")
    for gamma, r in report["pools"].items():
        e = r["errors"]
        print(f"| {POOLS[gamma]}, {r['pool']} images | {e['assumed'][0]:.3f} / {e['assumed'][1]:.3f} | "
              f"{e['em'][0]:.3f} / {e['em'][1]:.3f} | {e['bbse'][0]:.3f} / {e['bbse'][1]:.3f} "
              f"({r['bbse_condition']:.1f}) |")
    print("\nkept pseudo-labels (precision, balanced precision, balanced recall, lowest class recall, %):\n")
    print("| policy | " + " | ".join(POOLS[g] for g in POOLS) + " |\n|---|" + "---|" * len(POOLS))
    for i, (name, params) in enumerate(POLICIES):
        cells = []
        for gamma in POOLS:
            p = report["pools"][gamma]["policies"][i]
            cells.append(f"{p['kept']}: {100 * p['precision']:.1f} / {100 * p['balanced_precision']:.1f} / "
                         f"{100 * p['balanced_recall']:.1f} / {100 * p['min_recall']:.1f}")
        print(f"| {report['pools']['100']['policies'][i]['policy']} | " + " | ".join(cells) + " |")
    if semi:
        print(f"\nsemi-supervised ce on labeled + kept pseudo-labels, {args.epochs} epochs (final test top-1 = "
              f"balanced accuracy / many / medium / few, %):\n")
        print("| run | " + " | ".join(POOLS[g] for g in semi) + " |\n|---|" + "---|" * len(semi))
        counts = Manifest.read(str(splits["100"])).labeled_counts
        plain = shots(base, counts)
        print("| base model, no pseudo-labels | " + " | ".join("{:.2f} / {:.1f} / {:.1f} / {:.1f}".format(
            *(100 * plain[k] for k in ("top1", "many_accuracy", "medium_accuracy", "few_accuracy")))
            for _ in semi) + " |")
        for i, (name, *_rest) in enumerate(SEMI_RUNS):
            cells = ["{:.2f} / {:.1f} / {:.1f} / {:.1f} ({} kept)".format(
                *(100 * report["semi"][g][i][k] for k in ("top1", "many_accuracy", "medium_accuracy", "few_accuracy")),
                report["semi"][g][i]["pseudo_labels"]) for g in semi]
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.screenshot:
        screenshot(work / "pseudo-labels-u-100", Path(args.screenshot).resolve())
        print(f"\ndashboard of the reversed pool: {args.screenshot}")
    print("\nminutes per stage (this invocation):", ", ".join(f"{k} {v:.1f}" for k, v in study.minutes.items()))
    print(f"total {(time.time() - started) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
