"""``elt serve`` in a real headless browser (Debian's chromium, driven by Playwright).

The page must list the published marts with working presigned download
links, the rejects, and draw the station chart, while never writing to S3.
The screenshot is kept in ``test-artifacts/serve.png``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import BIN, PROJECT, SAMPLE_WEEKS, Elt, week_csv

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = PROJECT / "test-artifacts"
# As the machine notes advise: no background connections on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def snapshot(elt: Elt) -> dict[str, str]:
    """Every key in the bucket and its ETag."""
    client = elt.s3()
    return {
        o["Key"]: o["ETag"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="lake")
        for o in page.get("Contents", [])
    }


@pytest.fixture(scope="module")
def served(elt: Elt) -> Iterator[str]:
    """The two real weeks and one bad row published, and ``elt serve`` on a free port."""
    for week in SAMPLE_WEEKS:
        elt.s3().upload_file(str(week), "lake", f"raw/turnstile/{week.name}")
    bad = week_csv(2, day="01/20/2024").replace(b",1001,100\n", b",not a number,100\n")
    elt.put("raw/turnstile/240120_bad.csv", bad)
    elt.run("run")
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "elt"), "serve", "--port", str(port)],
        env=elt.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/"
    for _ in range(100):
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError(proc.communicate()[1].decode()[-3000:])
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    assert shutil.which("chromium"), "chromium is missing: `make test` installs it (make browser)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


def test_page_lists_marts_links_download_and_chart_renders(elt: Elt, served: str, browser) -> None:
    before = snapshot(elt)
    page = browser.new_page(viewport={"width": 1200, "height": 1400})
    # WHEN the page is opened
    response = page.goto(served)
    assert response is not None and response.status == 200
    # THEN the marts table lists each published CSV with its rows and the last run's status
    rows = page.locator("#marts tbody tr")
    assert rows.count() == 2
    daily = page.locator("#marts tr[data-mart='turnstile_daily']")
    cells = daily.locator("td").all_inner_texts()
    published = elt.get("marts/turnstile_daily.csv")
    assert cells[0] == "turnstile_daily"
    assert int(cells[1]) == published.count(b"\n") - 1 == 70189
    assert int(cells[2]) == len(published)
    assert cells[4].endswith("success")
    # AND its download link is a presigned URL returning the published CSV
    href = daily.locator("a.download").get_attribute("href")
    assert href is not None and "X-Amz-Signature=" in href
    download = page.request.get(href)
    assert download.status == 200 and download.body() == published
    # AND each part of the partitioned marts is listed with its dates and a working link
    parts = page.locator("#parts tr[data-mart='turnstile_daily']")
    assert parts.count() == 2
    january = page.locator(
        "#parts tr[data-mart='turnstile_daily'][data-partition='2024-01'] td"
    ).all_inner_texts()
    assert january[:4] == ["turnstile_daily", "2024-01", "2024-01-01 to 2024-01-20", "60161"]
    link = page.locator(
        "#parts tr[data-mart='turnstile_daily'][data-partition='2024-01'] a"
    ).get_attribute("href")
    assert link is not None
    assert page.request.get(link).body() == elt.get("marts/turnstile_daily/2024-01.csv")
    # AND the rejects of the dataset are listed
    rejects = page.locator("#rejects tr[data-dataset='turnstile'] td").all_inner_texts()
    assert rejects[:2] == ["turnstile", "1"]
    # WHEN a station is chosen
    page.select_option("#station", "R051")
    page.click("form button[type=submit]")
    page.wait_for_url("**/?station=R051")
    # THEN the chart is drawn for it: one line of entries and one of exits over the loaded dates
    chart = page.locator("#chart svg")
    assert chart.is_visible()
    box = chart.bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 200
    assert page.locator("#chart").get_attribute("data-station") == "R051"
    assert "R051 59 ST: daily entries and exits" in page.locator("#chart").inner_text()
    for line in ("entries", "exits"):
        path = page.locator(f"#chart svg g#{line} path").first.get_attribute("d") or ""
        assert path.count("L") >= 13  # 15 service dates: 2023-12-30 to 2024-01-20 minus gaps
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve.png"), full_page=True)
    page.close()
    # AND browsing wrote nothing to S3
    assert snapshot(elt) == before
