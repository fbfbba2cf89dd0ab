"""The pseudo-label dashboard: its states on bad or missing input, and a real headless Chromium
watching the class bars grow while a real stream fills the balance table."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streaming import dashboard
from tests.helpers import submit_command

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def test_no_output_yet_is_waiting_and_a_broken_file_is_an_error_naming_it(tmp_path):
    assert dashboard.load(str(tmp_path / "nothing" / "balance"))["state"] == "waiting"
    (tmp_path / "out" / "balance").mkdir(parents=True)
    (tmp_path / "out" / "balance" / "batch-00000000.parquet").write_bytes(b"not parquet")
    data = dashboard.load(str(tmp_path / "out" / "balance"))
    assert data["state"] == "error" and "batch-00000000.parquet" in data["error"]


def test_a_refresh_reads_only_the_balance_files_new_or_replaced_since_the_last_and_the_states_histogram(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.pseudolabel import state as stream_state
    from pipeline.pseudolabel import store
    from pipeline.pseudolabel.balance import state_balance
    from pipeline.pseudolabel.policies import Policy
    from pipeline.pseudolabel.state import StreamState

    out, rng, names = tmp_path / "out", np.random.default_rng(0), ["a", "b", "c"]
    state = StreamState.empty(3, 0.95, 10_000, seed=0, has_truth=False)

    def commit(b: int):
        nonlocal state
        probs = rng.dirichlet(np.ones(3), size=50).astype(np.float32)
        pred, conf = probs.argmax(1), probs.max(1)
        state = state.update(b, [f"{b}-{i:03d}" for i in range(50)], pred, conf, probs, None)
        stream_state.save(str(out), state)
        store.write_balance(str(out), b, state_balance(b, state, pred, conf, names, [10, 5, 1], Policy("all"), 1.0))

    commit(0)
    commit(1)
    cache: dict = {}
    first = dashboard.load(str(out / "balance"), cache)
    assert first["state"] == "ok" and sorted(first["balance"].batch_id.unique()) == [0, 1]
    assert first["histogram"].sum() == 100 and len(first["histogram"]) == stream_state.BINS
    # batch 0's file garbled in place, same size and time: a refresh does not open it again...
    old = out / "balance" / "batch-00000000.parquet"
    stat = old.stat()
    old.write_bytes(b"x" * stat.st_size)
    os.utime(old, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    commit(2)
    second = dashboard.load(str(out / "balance"), cache)
    assert second["state"] == "ok" and sorted(second["balance"].batch_id.unique()) == [0, 1, 2]
    assert second["histogram"].sum() == 150
    # ...while a page without the cache reads every file (and names the garbled one)
    assert "batch-00000000.parquet" in dashboard.load(str(out / "balance"))["error"]
    # a file replaced (a replayed micro-batch: written aside, renamed in) is read again
    replaced = out / "balance" / "batch-00000002.parquet"
    table = pq.read_table(replaced)
    table = table.set_column(table.schema.get_field_index("batch_count"), "batch_count",
                             pa.array([7, 7, 7], pa.int64()))
    pq.write_table(table, tmp_path / "aside.parquet")
    os.replace(tmp_path / "aside.parquet", replaced)
    third = dashboard.load(str(out / "balance"), cache)
    assert third["balance"][third["balance"].batch_id == 2].batch_count.tolist() == [7, 7, 7]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("REQUIRE_BROWSER"):  # .ci/run installs Debian's chromium: there it must run
            pytest.fail("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
        pytest.skip("needs Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait(condition, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


COUNT_BARS = ("var g = document.getElementById('counts').getElementsByClassName('js-plotly-plot')[0];"
              "return g && g.data && g.data.length ? g.data[0].y.reduce(function (a, b) { return a + b; }, 0) : null;")


@pytest.mark.browser
def test_dashboard_bars_follow_a_live_stream_in_headless_chromium(base, tmp_path):
    driver = browser()
    pool = sorted((base["splits"] / "unlabeled").glob("*.parquet"))
    inbox, out = tmp_path / "inbox", tmp_path / "pl"
    inbox.mkdir()
    port = free_port()
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "streaming.dashboard", "--balance", str(out / "balance"),
                                       "--port", str(port), "--interval", "0.5"], cwd=ROOT, start_new_session=True,
                                      stdout=(tmp_path / "dash.log").open("w"), stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}/"
        wait(lambda: _up(url), "the dashboard to serve")
        driver.get(url)
        status = lambda: text(driver, "status")
        wait(lambda: "Waiting for data" in status(), "the waiting state")

        command, env = submit_command("jobs/pseudolabel.py", "--model", base["run_id"], "--input", inbox, "--out",
                                      out, "--trigger", "continuous", "--interval", "1",
                                      "--truth", base["splits"] / "unlabeled_truth")
        procs.append(subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                                      stdout=(tmp_path / "job.log").open("w"), stderr=subprocess.STDOUT))
        for f in pool[:2]:  # the stream is live: every file appears whole (written aside, renamed in)
            shutil.copy(f, tmp_path / "staging.parquet")
            os.replace(tmp_path / "staging.parquet", inbox / f.name)
        wait(lambda: driver.execute_script(COUNT_BARS) == 200, "bars summing to the first 200 images", 300)
        assert "Live" in status() and "scored: 200 images" in text(driver, "header")

        shutil.copy(pool[2], tmp_path / "staging.parquet")  # a new file arrives whole
        os.replace(tmp_path / "staging.parquet", inbox / pool[2].name)
        wait(lambda: driver.execute_script(COUNT_BARS) == 300, "the bars to take in the new file")
        assert "scored: 300 images" in text(driver, "header")
        quality = driver.find_element("id", "quality")  # the hidden truth is known: precision/recall shown
        assert quality.is_displayed()
        # the header's live figures are the balance table's
        from pipeline.pseudolabel import store
        from pipeline.pseudolabel.balance import overall_precision

        wait(lambda: text(driver, "figure-scored") == "300", "the header to show 300 scored")
        rows = store.latest_balance(str(out)).to_pylist()
        assert text(driver, "figure-kept") == str(sum(r["selected_count"] for r in rows))
        assert text(driver, "figure-precision-of-kept") == f"{100 * overall_precision(rows):.1f}%"
        link = driver.find_element("id", "model-link").get_attribute("href")
        assert f"/runs/{base['run_id']}?workflowType=machine_learning" in link and "/#/experiments/" in link
        # class names on the axes, in class order
        names = json.loads((base["splits"] / "manifest.json").read_text())["class_names"]
        x = driver.execute_script("return document.getElementById('counts')"
                                  ".getElementsByClassName('js-plotly-plot')[0].data[0].x;")
        assert x == names
        # read in one script: the page re-renders every 0.5 s, so elements found one call earlier go stale
        ticks = driver.execute_script("return Array.from(document.querySelectorAll('#counts .xtick text'))"
                                      ".map(function (t) { return t.textContent; });")
        assert ticks == names
        # the main charts fit one 1600 x 1000 screen, no scrolling
        height, width = driver.execute_script("return [window.innerHeight, window.innerWidth];")
        # the pool's estimated class distribution (EM, every micro-batch) beside the assumed and true ones
        assert driver.find_element("id", "prior").is_displayed() and driver.find_element("id", "prior_error").is_displayed()
        traces = driver.execute_script("return document.getElementById('prior')"
                                       ".getElementsByClassName('js-plotly-plot')[0].data.map(function (t) { return t.name; });")
        assert {"assumed: labeled split", "EM estimate", "hidden truth"} <= set(traces)
        for chart in ("counts", "prior", "prior_error", "latest", "ratio", "confidence", "histogram", "speed"):
            rect = driver.find_element("id", chart).rect
            assert rect["y"] + rect["height"] <= height + 1 and rect["x"] + rect["width"] <= width + 1, (chart, rect)
        shot = Path(os.environ.get("DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def text(driver, element_id: str) -> str:
    """An element's text, read in one script call (a re-render between finding and reading cannot stale
    it); "" while the page has not rendered it yet."""
    return driver.execute_script("var e = document.getElementById(arguments[0]); return e ? e.innerText : '';",
                                 element_id)


def _up(url: str) -> bool:
    import urllib.request

    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False
