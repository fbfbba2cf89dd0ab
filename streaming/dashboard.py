"""The live pseudo-label dashboard (Dash + Plotly): the class balance a running jobs/pseudolabel.py
writes to OUT/balance, refreshed every few seconds.

    python -m streaming.dashboard --balance OUT/balance [--port 8050] [--interval 2]

It shows pseudo-label counts per class (cumulative and latest micro-batch) next to the labeled
split's counts and the hidden true counts, the imbalance ratio over time, mean confidence per class,
the confidence histogram, rows/s and latency, per-class precision/recall when the truth is known,
the pool's class distribution as EM and BBSE estimate it against the assumed (labeled) one, the
kept labels' and the true one, with the estimates' error over the micro-batches, and which model, policy and input the stream uses. Nothing yet: a "waiting for data" state; an
unreadable table: an error panel, and the page keeps polling."""
from __future__ import annotations

import argparse
import math
import threading
from typing import Optional

import pandas as pd

from pipeline import fs
from pipeline.pseudolabel import state as stream_state
from pipeline.pseudolabel import store
from pipeline.pseudolabel.balance import imbalance_ratio, overall_precision
from pipeline.pseudolabel.balance import prior_errors
from pipeline.pseudolabel.prior import divergences
from pipeline.records import Stream

COLORS = {"predicted": "#4c78a8", "selected": "#f58518", "labeled": "#54a24b", "true": "#9d9d9d"}


def load(balance_dir: str, cache: Optional[dict] = None) -> dict:
    """What the page shows: {"state": waiting|ok|error, ...}. Never raises. Bounded reading: the
    balance files new since the last call with the same ``cache`` (one row per class and
    micro-batch) and the confidence histogram of the newest state, never the labels."""
    out = fs.normalize(balance_dir).rstrip("/")
    out = out[: -len(store.BALANCE)].rstrip("/") if fs.name(out) == store.BALANCE else out
    try:
        info = store.read_stream_info(out) if fs.exists(fs.join(out, store.STREAM)) else None
        table = store.read_balance(out, cache).to_pandas()
        if table.empty:
            return {"state": "waiting", "info": info, "out": out}
        return {"state": "ok", "info": info, "out": out, "balance": table,
                "histogram": stream_state.load_histogram(out)}
    except Exception as e:  # a half-copied or foreign file: show it, keep serving
        return {"state": "error", "out": out, "error": f"{type(e).__name__}: {e}"}


def figures(data: dict, log_scale: bool = False) -> dict:
    """The page's Plotly figures from ``load``'s result (state ok)."""
    import plotly.graph_objects as go

    table: pd.DataFrame = data["balance"]
    last_id = table.batch_id.max()
    last = table[table.batch_id == last_id].sort_values("class_index")
    names = last.class_name.tolist()
    counts = go.Figure()
    for key, column in (("predicted", "cumulative_count"), ("selected", "selected_count"),
                        ("labeled", "labeled_count"), ("true", "true_count")):
        if last[column].notna().all():
            counts.add_bar(name={"predicted": "pseudo-labels (all predictions)", "selected": "kept by the policy",
                                 "labeled": "labeled split", "true": "hidden truth"}[key],
                           x=names, y=last[column].tolist(), marker_color=COLORS[key])
    counts.update_layout(barmode="group", title=f"Images per class after micro-batch {last_id}",
                         yaxis_type="log" if log_scale else "linear", legend_orientation="h")

    recent = table[table.batch_id > last_id - 5]
    latest = go.Figure([go.Bar(name=f"batch {b}", x=g.class_name, y=g.batch_count)
                        for b, g in recent.groupby("batch_id")])
    latest.update_layout(barmode="group", title="Predictions per class, latest micro-batches",
                         yaxis_type="log" if log_scale else "linear")

    per_batch = table.groupby("batch_id")
    ratios = per_batch.selected_count.apply(lambda c: imbalance_ratio(c.tolist()))
    present = per_batch.selected_count.apply(lambda c: imbalance_ratio([n for n in c.tolist() if n] or [1]))
    missing = per_batch.selected_count.apply(lambda c: int((c == 0).sum()))
    ratio = go.Figure([
        go.Scatter(x=ratios.index, y=[r if math.isfinite(r) else None for r in ratios], mode="lines+markers",
                   name="all classes (gap: a class has none)"),
        go.Scatter(x=present.index, y=present.tolist(), mode="lines+markers", line_dash="dot",
                   name="classes that have some", text=[f"{m} classes with none" for m in missing])])
    ratio.update_layout(title="Imbalance ratio of the kept pseudo-labels (n_max / n_min)", xaxis_title="micro-batch",
                        legend_orientation="h")

    confidence = go.Figure(go.Bar(x=names, y=last.mean_confidence.tolist(), marker_color=COLORS["predicted"]))
    confidence.update_layout(title="Mean confidence per predicted class", yaxis_range=[0, 1])

    histogram = histogram_figure(data.get("histogram"))

    first = per_batch.first()
    speed = go.Figure([go.Scatter(x=first.index, y=first.rows_per_s, name="images/s", mode="lines+markers"),
                       go.Scatter(x=first.index, y=first.latency_s, name="latency (s)", yaxis="y2",
                                  mode="lines+markers")])
    speed.update_layout(title="Throughput and latency per micro-batch", xaxis_title="micro-batch",
                        yaxis2={"overlaying": "y", "side": "right", "title": "s"})

    quality = None
    if last.precision.notna().any() or last.recall.notna().any():
        quality = go.Figure([go.Bar(name="precision", x=names, y=last.precision.tolist()),
                             go.Bar(name="recall", x=names, y=last.recall.tolist())])
        quality.update_layout(barmode="group", title="Kept pseudo-labels against the hidden truth",
                              yaxis_range=[0, 1])
    prior, prior_error = prior_figures(table, last, names)
    return {"counts": counts, "latest": latest, "ratio": ratio, "confidence": confidence,
            "histogram": histogram, "speed": speed, "quality": quality, "prior": prior, "prior_error": prior_error}


def histogram_figure(bins):
    """The confidence histogram of every prediction so far, from the state's bin counts (None: an
    output written before the stream kept its state)."""
    import plotly.graph_objects as go

    width = 1.0 / (len(bins) if bins is not None else 1)
    figure = go.Figure(go.Bar(x=[] if bins is None else [(i + 0.5) * width for i in range(len(bins))],
                              y=[] if bins is None else bins.tolist(), width=width, marker_color=COLORS["predicted"]))
    figure.update_layout(title="Confidence of every prediction so far", xaxis_title="confidence", xaxis_range=[0, 1])
    return figure


def _share(values) -> list[float]:
    total = float(sum(values))
    return [float(v) / total if total else 0.0 for v in values]


def prior_figures(table: pd.DataFrame, last: pd.DataFrame, names: list[str]):
    """The pool's class distribution as estimated (EM, BBSE) against what plain self-training
    assumes (the labeled split's), the kept labels' and, when known, the hidden truth; and the
    estimates' L1 error over the micro-batches. (None, None) for an output without estimates."""
    import plotly.graph_objects as go

    if "prior_em" not in last or last.prior_em.isna().all():
        return None, None
    prior = go.Figure()
    series = [("assumed: labeled split", _share(last.labeled_count), COLORS["labeled"]),
              ("EM estimate", last.prior_em.tolist(), "#e45756"),
              ("BBSE estimate", last.prior_bbse.tolist() if last.prior_bbse.notna().all() else None, "#b279a2"),
              ("kept pseudo-labels", _share(last.selected_count), COLORS["selected"]),
              ("hidden truth", _share(last.true_count) if last.true_count.notna().all() else None, COLORS["true"])]
    for name, values, color in series:
        if values is not None:
            prior.add_bar(name=name, x=names, y=values, marker_color=color)
    prior.update_layout(barmode="group", title="Class distribution of the pool: estimated, assumed, kept",
                        legend_orientation="h", yaxis_title="share")
    error = go.Figure()
    if last.true_count.notna().all():

        for name, column in (("EM", "prior_em"), ("BBSE", "prior_bbse"), ("assumed (labeled)", "labeled_count"),
                             ("kept labels", "selected_count")):
            points = [(b, divergences(g.true_count.to_numpy(float), g[column].to_numpy(float))[0])
                      for b, g in table.groupby("batch_id") if g[column].notna().all() and g.true_count.sum() > 0]
            if points:
                error.add_scatter(x=[b for b, _ in points], y=[e for _, e in points], mode="lines+markers", name=name)
        error.update_layout(title="L1 distance to the pool's true class distribution", xaxis_title="micro-batch",
                            legend_orientation="h")
    else:
        for c, g in table.groupby("class_index"):
            error.add_scatter(x=g.batch_id, y=g.prior_em, mode="lines", name=g.class_name.iloc[0])
        error.update_layout(title="EM estimate of the pool prior over micro-batches", xaxis_title="micro-batch")
    return prior, error


def headline(data: dict) -> dict[str, str]:
    """The live figures of the header, from the last committed micro-batch's balance rows."""
    table = data["balance"]
    last = table[table.batch_id == table.batch_id.max()].sort_values("class_index")
    rows = last.to_dict("records")
    kept = [int(r["selected_count"]) for r in rows]
    ratio = imbalance_ratio(kept)
    precision = overall_precision(rows) if rows and not pd.isna(rows[0]["true_count"]) else None
    return {"scored": f"{int(rows[0]['cumulative_rows'])}", "images/s": f"{rows[0]['rows_per_s']:.0f}",
            "last micro-batch": f"{rows[0]['latency_s']:.2f} s", "kept": f"{sum(kept)}",
            "imbalance of kept": f"{ratio:.1f}" if math.isfinite(ratio) else "inf (a class has none)",
            "precision of kept": "-" if precision is None else f"{100 * precision:.1f}%",
            **pool_prior_error(rows)}


def pool_prior_error(rows: list[dict]) -> dict[str, str]:
    """The header's estimate figure: the EM estimate's L1 distance to the hidden truth (and the
    assumed labeled distribution's, for scale), when both are known."""

    if not rows or pd.isna(rows[0].get("prior_em", float("nan"))) or pd.isna(rows[0]["true_count"]):
        return {}
    errors = prior_errors(rows)
    return {"pool prior L1 EM/assumed": f"{errors['pl_prior_l1_em']:.2f} / {errors['pl_prior_l1_labeled']:.2f}"}


def describe(data: dict) -> list[str]:
    """The header lines: what the stream is and how far it got."""
    info = data.get("info")
    lines = [f"output: {data['out']}"]
    if info is not None:
        policy = ", ".join(f"{k}={v}" for k, v in info.policy.items() if k != "name")
        lines += [f"model: {info.model_uri} (run {info.model_run_id}, {info.base_run.get('method')} "
                  f"{info.base_run.get('stage')})",
                  f"policy: {info.policy['name']}" + (f" ({policy})" if policy else ""),
                  f"input: {info.input}", f"pseudolabel run: {info.run_id}"]
    if data["state"] == "ok":
        last = data["balance"][data["balance"].batch_id == data["balance"].batch_id.max()]
        lines.append(f"scored: {int(last.cumulative_rows.iloc[0])} images in "
                     f"{data['balance'].batch_id.nunique()} micro-batches; kept: {int(last.selected_count.sum())}")
    return lines


def run_page(mlflow_ui: str, info: Stream) -> str:
    """The MLflow UI's page of the scoring model's run, in its model-training view (MLflow 3's UI
    opens on its GenAI view unless the URL asks: the experiment kind tag alone does not switch it)."""
    experiment, run = info.base_run.get("experiment_id"), info.model_run_id
    path = f"experiments/{experiment}/runs/{run}" if experiment else f"runs/{run}"
    return f"{mlflow_ui}/#/{path}?workflowType=machine_learning"


GRAPH_HEIGHT = 290  # px: two rows of four charts fit a 1600 x 1000 screen under the header
CARD = {"border": "1px solid #ddd", "borderRadius": "6px", "padding": "6px 14px", "minWidth": "120px"}


def create_app(balance_dir: str, interval_s: float = 2.0, mlflow_ui: str = "http://127.0.0.1:5000"):
    from dash import Dash, Input, Output, dcc, html

    app = Dash(__name__, title="Pseudo-label balance")
    graph_ids = ("counts", "prior", "prior_error", "latest", "ratio", "confidence", "histogram", "speed", "quality")
    app.layout = html.Div([
        html.Div([html.H3("Pseudo-label class balance", style={"margin": "0 16px 0 0"}),
                  html.Div(id="status", style={"fontWeight": "bold"}),
                  dcc.Checklist(id="log-scale", options=[{"label": " log scale", "value": "log"}], value=[],
                                style={"marginLeft": "auto"})],
                 style={"display": "flex", "alignItems": "center", "gap": "12px"}),
        html.Div(id="figures", style={"display": "flex", "gap": "10px", "margin": "6px 0", "flexWrap": "wrap"}),
        html.Div(id="header", style={"fontSize": "12px", "color": "#555"}),
        html.Div([dcc.Graph(id=g, style={"display": "none"}, config={"displayModeBar": False}) for g in graph_ids],
                 style={"display": "grid", "gridTemplateColumns": "repeat(4, minmax(0, 1fr))", "gap": "4px"}),
        dcc.Interval(id="tick", interval=int(interval_s * 1000)),
    ], style={"fontFamily": "sans-serif", "margin": "8px 16px"})

    cache: dict = {}  # the balance files read so far: a refresh reads only the new ones
    reading = threading.Lock()  # Dash serves callbacks on threads: one refresh uses the cache at a time

    @app.callback([Output("figures", "children"), Output("header", "children"), Output("status", "children"),
                   Output("status", "style"), *[Output(g, "figure") for g in graph_ids],
                   *[Output(g, "style") for g in graph_ids]],
                  [Input("tick", "n_intervals"), Input("log-scale", "value")])
    def refresh(_, scale):
        with reading:
            data = load(balance_dir, cache)
        hidden, shown = {"display": "none"}, {"display": "block", "height": f"{GRAPH_HEIGHT}px", "minWidth": 0}
        empty = [{}] * len(graph_ids)
        if data["state"] == "error":
            return ([], [html.Div(data["out"])], f"Error reading the balance table: {data['error']}",
                    {"color": "white", "background": "#c0392b", "padding": "8px"}, *empty, *[hidden] * len(graph_ids))
        header = [html.Div(line) for line in describe(data)]
        info = data.get("info")
        if info is not None:  # the scoring model's MLflow page
            header.append(html.A(f"model run {info.model_run_id} in the MLflow UI", id="model-link",
                                 href=run_page(mlflow_ui, info), target="_blank"))
        if data["state"] == "waiting":
            return ([], header, "Waiting for data: no micro-batch has been committed yet.",
                    {"color": "#555", "padding": "8px"}, *empty, *[hidden] * len(graph_ids))
        cards = [html.Div([html.Div(k, style={"fontSize": "11px", "color": "#666"}),
                           html.Div(v, id=f"figure-{k.replace(' ', '-').replace('/', '-')}",
                                    style={"fontSize": "20px", "fontWeight": "bold"})], style=CARD)
                 for k, v in headline(data).items()]
        figs = figures(data, log_scale="log" in (scale or []))
        for fig in figs.values():
            if fig is not None:
                fig.update_layout(height=GRAPH_HEIGHT, margin={"l": 40, "r": 20, "t": 40, "b": 40},
                                  title_font_size=13)
        return (cards, header, f"Live: micro-batch {int(data['balance'].batch_id.max())}", {"color": "#1e7d32"},
                *[figs[g] or {} for g in graph_ids], *[shown if figs[g] else hidden for g in graph_ids])

    return app


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--balance", required=True, help="OUT/balance of jobs/pseudolabel.py (or OUT)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8050)
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    ap.add_argument("--mlflow-ui", default="http://127.0.0.1:5000", help="where the MLflow UI is (make mlflow-ui)")
    args = ap.parse_args(argv)
    print(f"dashboard of {fs.normalize(args.balance)} on http://{args.host}:{args.port}", flush=True)
    create_app(args.balance, args.interval, args.mlflow_ui).run(host=args.host, port=args.port, debug=False)


if __name__ == "__main__":
    main()
