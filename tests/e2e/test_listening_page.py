"""The listening page in real headless Chromium: prompt, play both clips, award the trophy → snapshot row.

Playwright drives Debian's ``chromium`` by path (``playwright install`` cannot download a browser here).
"""

import shutil
import time

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.utils.platform import running_platform
from tests.utils.recorder import RecorderProcess
from tests.utils.snapshots import snapshot_preferences


pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",  # this machine's closed network refuses Chromium's own connections
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


def test_prompt_play_both_and_award_the_trophy(tmp_path):
    with running_platform(tmp_path / "platform", {"MUSICRL_COMPARISON_DURATION_S": "1"}) as platform:
        recorder = RecorderProcess(
            platform.nats.url, platform.dataset_dir, tmp_path, MUSICRL_BATCH_MAX_WAIT_S="0.5"
        ).start()
        try:
            winner_slot = _use_the_page(platform.url)
            _wait_for_preference(platform.dataset_dir)
            assert recorder.terminate() == 0
        finally:
            recorder.close()
    rows = snapshot_preferences(platform.dataset_dir, tmp_path / "snapshots").to_pylist()
    assert len(rows) == 1  # kept: the page reported real playback of both clips
    (row,) = rows
    assert row["choice"] == winner_slot
    assert row["prompt"] == "an upbeat funk groove with slap bass and brass stabs"
    assert row["a_listened_ms"] >= 500 and row["b_listened_ms"] >= 500  # measured from the audio elements


def _use_the_page(url: str) -> str:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            expect(page.get_by_role("heading", name="Which clip do you prefer?")).to_be_visible()
            page.get_by_label("Prompt").fill("an upbeat funk groove with slap bass and brass stabs")
            page.get_by_role("button", name="Generate two clips").click()
            # 1 s clips and the default share of one half: the page asks for 0.5 s of each
            expect(page.locator("#status")).to_have_text(
                "Listen to at least 0.5 s of each clip (or to its end) to vote.", timeout=30_000
            )
            trophies = page.get_by_role("button", name="I prefer clip")
            first, second = page.locator(".clip").all()
            first.locator("audio").evaluate("audio => audio.play()")
            expect(first.locator(".listened")).to_contain_text("(to the end)", timeout=15_000)
            for button in trophies.all() + [page.get_by_role("button", name="Neither")]:
                expect(button).to_be_disabled()  # one clip heard: a vote would not count yet
            second.locator("audio").evaluate("audio => audio.play()")
            expect(second.locator(".listened")).to_contain_text("(to the end)", timeout=15_000)
            expect(page.locator("#status")).to_have_text("Now choose.")
            winner = page.locator(".clip").nth(1)
            winner_slot = winner.get_attribute("data-slot")
            winner.get_by_role("button", name="I prefer clip 2").click()
            expect(page.locator("#status")).to_contain_text("Your choice was recorded")
            expect(winner).to_have_class("clip winner")
            return winner_slot
        finally:
            browser.close()


def _wait_for_preference(dataset) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if list((dataset / "preference_submitted").glob("date=*/part-*.parquet")):
            return
        time.sleep(0.5)
    raise TimeoutError("the page's preference never reached Parquet")
