"""The front door and the reference: README stays a short page whose links resolve, and the docs
site builds strictly (a broken link or a missing page fails it) and reads in a real browser."""
import functools
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MKDOCS = [sys.executable, "-m", "mkdocs", "build", "--strict"]  # not --quiet: it hides the warnings strict counts
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(MKDOCS + ["--config-file", str(config), "--site-dir", str(site)],
                          capture_output=True, text=True, env=ENV, timeout=300)


def test_readme_is_a_front_door_of_at_most_250_lines_whose_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert local, "README links to its docs pages"
    assert [link for link in local if not (ROOT / link).exists()] == []
    for page in yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]:
        assert f"docs/{next(iter(page.values()))}" in readme or next(iter(page.values())) == "index.md"


def test_the_docs_site_builds_strictly_and_a_broken_link_fails_it(tmp_path):
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "benchmarks.html").exists()
    # the same pages with one link to a page that does not exist: strict makes it an error
    shutil.copytree(ROOT / "docs", tmp_path / "copy" / "docs", ignore=shutil.ignore_patterns("records", "study-*"))
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "copy")
    with open(tmp_path / "copy" / "docs" / "jobs.md", "a") as f:
        f.write("\nSee [the missing page](no-such-page.md).\n")
    broken = build(tmp_path / "copy" / "mkdocs.yml", tmp_path / "broken-site")
    assert broken.returncode != 0 and "no-such-page.md" in broken.stderr + broken.stdout


@pytest.mark.browser
def test_every_page_of_the_docs_site_opens_with_its_title_and_images_in_headless_chromium(tmp_path):
    from tests.test_dashboard import browser

    assert build(ROOT / "mkdocs.yml", tmp_path / "site").returncode == 0
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "site"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    driver = browser()
    try:
        nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
        for title, page in (next(iter(item.items())) for item in nav):
            driver.get(base + page.replace(".md", ".html"))
            h1 = driver.find_element("css selector", "article h1").text
            assert h1 and "404" not in driver.title, (page, driver.title)
            broken = driver.execute_script(
                "return [...document.images].filter(i => i.complete && i.naturalWidth === 0).map(i => i.src)")
            assert broken == [], (page, broken)
            assert title in driver.find_element("css selector", "nav.md-nav--primary").text
    finally:
        driver.quit()
        server.shutdown()
