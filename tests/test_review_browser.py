"""The review page in a real browser (headless Chromium driven by Selenium): keys save to
review.csv, a reload shows them, kill -9 of the server loses nothing, names are text, views.

Skipped where Chromium, chromedriver (Debian: chromium, chromium-driver) or selenium is not
installed. REVIEW_SHOTS=DIR also saves screenshots of the views there.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest
from test_review_app import (
    CLASSES,
    NASTY_FILE,
    UNREADABLE,
    UNREADABLE_ERROR,
    make_review_run,
    start_command,
)

from tvcore.rundir import read_training_values
from tvcore.rundir.review import read_reviews

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
for program in (CHROMIUM, CHROMEDRIVER):
    if not os.path.exists(program):
        pytest.skip(f"{program} not installed (Debian packages chromium, chromium-driver)",
                    allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

# The machine has no network: without these flags Chromium stalls on connection attempts.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000"]


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def run(tmp_path):
    return make_review_run(tmp_path)


@pytest.fixture
def served(run):
    """The `tvclean review` process of `run` (SIGINT at the end) and its URL."""
    process, url = start_command(run)
    yield process, url
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)


def wait(driver, condition, timeout=20):
    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def open_page(driver, url):
    driver.get(url)
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card"))


def text(driver, selector) -> str:
    return driver.find_element(By.CSS_SELECTOR, selector).text


def rows(driver) -> list[int]:
    return driver.execute_script(  # in one step: the grid may be redrawn meanwhile
        "return Array.from(document.querySelectorAll('#grid .card'), c => Number(c.dataset.row))")


def press(driver, *keys):
    body = driver.find_element(By.TAG_NAME, "body")
    for key in keys:
        body.send_keys(key)


def focused_row(driver) -> int:
    return driver.execute_script("return Number(document.querySelector('#grid .card.focus')"
                                 ".dataset.row)")


def shot(driver, name):
    folder = os.environ.get("REVIEW_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_keys_save_at_once_a_reload_shows_them_and_kill_9_loses_none(browser, run, served):
    process, url = served
    open_page(browser, url)
    assert browser.current_url.endswith("/#view=next")  # the token left the address bar
    assert text(browser, "#reviewed") == "0"
    queue = rows(browser)
    paths = read_training_values(run.training_values).path
    assert focused_row(browser) == queue[0]
    press(browser, "d")
    wait(browser, lambda d: text(d, "#reviewed") == "1")
    assert focused_row(browser) == queue[1]
    press(browser, "k", "2")
    wait(browser, lambda d: text(d, "#reviewed") == "3")
    saved = read_reviews(run)
    assert {p: (r.decision, r.label) for p, r in saved.items()} == {
        paths[queue[0]]: ("dirty", ""),
        paths[queue[1]]: ("clean", read_training_values(run.training_values).given_label[queue[1]]),
        paths[queue[2]]: ("relabel", CLASSES[1]) if
        read_training_values(run.training_values).given_label[queue[2]] != CLASSES[1]
        else ("clean", CLASSES[1])}
    press(browser, "u")  # takes back the relabel
    wait(browser, lambda d: text(d, "#reviewed") == "2")
    assert paths[queue[2]] not in read_reviews(run)
    assert focused_row(browser) == queue[2]
    press(browser, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_LEFT)
    assert focused_row(browser) == queue[3]
    press(browser, "d")
    wait(browser, lambda d: text(d, "#reviewed") == "3")
    badge = browser.find_element(By.CSS_SELECTOR, f'.card[data-row="{queue[0]}"] .badge')
    assert badge.text == "✗ discard"

    process.send_signal(signal.SIGKILL)  # the server dies mid-review
    process.communicate(timeout=30)
    saved = read_reviews(run)
    assert {p: r.decision for p, r in saved.items()} == {
        paths[queue[0]]: "dirty", paths[queue[1]]: "clean", paths[queue[3]]: "dirty"}

    process, url = start_command(run)  # started again: the page shows every saved decision
    try:
        open_page(browser, url)
        assert text(browser, "#reviewed") == "3"
        assert text(browser, "#remaining") == str(len(paths) - len(UNREADABLE) - 3)
        assert not {queue[0], queue[1], queue[3]} & set(rows(browser))  # the queue moved on
        browser.find_element(By.CSS_SELECTOR, '#views button[data-view="reviewed"]').click()
        wait(browser, lambda d: rows(d) == [queue[3], queue[1], queue[0]])
        badges = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#grid .card .badge")]
        assert badges == ["✗ discard", "✓ keep", "✗ discard"]
        browser.refresh()  # the view is kept in the address
        wait(browser, lambda d: rows(d) == [queue[3], queue[1], queue[0]])
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)


def test_names_with_html_are_shown_as_text(browser, served):
    _, url = served
    open_page(browser, url)
    title = browser.title
    search = browser.find_element(By.ID, "search")
    press(browser, "/")
    assert browser.switch_to.active_element == search
    search.send_keys("onerror")
    wait(browser, lambda d: rows(d) == [1])
    assert text(browser, "#grid .card .name") == NASTY_FILE
    assert browser.find_elements(By.CSS_SELECTOR, 'img[src="x"]') == []
    assert browser.title == title and not browser.title.endswith("1")
    search.send_keys(Keys.BACKSPACE * len("onerror"))  # typed away: all images again
    wait(browser, lambda d: len(rows(d)) > 1)
    Select(browser.find_element(By.CSS_SELECTOR, 'select[data-view="class"]')).select_by_value(
        CLASSES[1])
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card .given")
         and {e.text for e in d.find_elements(By.CSS_SELECTOR, "#grid .card .given")}
         == {CLASSES[1]})
    assert browser.find_elements(By.CSS_SELECTOR, "#grid .labels b") == []  # no tag made


def test_views_show_the_tables_rows(browser, run, served):
    _, url = served
    open_page(browser, url)
    shot(browser, "next")
    table = read_training_values(run.training_values)
    by_rank = sorted(range(len(table)), key=lambda i: table.rank[i])
    browser.find_element(By.CSS_SELECTOR, '#views button[data-view="discarded"]').click()
    discarded = [i for i in by_rank if table.decision[i] == "dirty"]
    wait(browser, lambda d: rows(d) == discarded)
    first = browser.find_element(By.CSS_SELECTOR, '.card[data-row="0"]')  # score -0.0123
    assert first.find_element(By.CSS_SELECTOR, ".score").text == "-0.0123"
    assert first.find_element(By.CSS_SELECTOR, ".labels").text == f"cat → {CLASSES[1]}"
    assert first.find_element(By.CSS_SELECTOR, ".name").text == "img000.png"
    shot(browser, "discarded")
    browser.find_element(By.CSS_SELECTOR, '#views button[data-view="unreadable"]').click()
    wait(browser, lambda d: rows(d) == list(UNREADABLE))
    assert UNREADABLE_ERROR in text(browser, "#grid .card .placeholder")
    shot(browser, "unreadable")
    browser.find_element(By.CSS_SELECTOR, '#views button[data-view="all"]').click()
    wait(browser, lambda d: rows(d) == by_rank[:60])
    images = browser.find_elements(By.CSS_SELECTOR, "#grid .card .pic img")
    wait(browser, lambda d: all(d.execute_script("return arguments[0].complete && "
                                                 "arguments[0].naturalWidth > 0", img)
                                for img in images))
    press(browser, Keys.ENTER)  # the enlarged view
    wait(browser, lambda d: d.find_element(By.ID, "overlay").is_displayed())
    shot(browser, "enlarged")
    press(browser, Keys.ESCAPE)
    wait(browser, lambda d: not d.find_element(By.ID, "overlay").is_displayed())
    press(browser, "r")  # the relabel picker: type to filter, Enter picks
    wait(browser, lambda d: d.find_element(By.ID, "picker").is_displayed())
    browser.switch_to.active_element.send_keys("ee", Keys.ENTER)
    wait(browser, lambda d: text(d, "#reviewed") == "1")
    row = by_rank[0]
    review = read_reviews(run)[table.path[row]]
    assert (review.decision, review.label) == (("relabel", "eel") if table.given_label[row]
                                               != "eel" else ("clean", "eel"))


def test_unknown_token_page_is_refused(browser, served):
    _, url = served
    browser.get(url.rpartition("=")[0] + "=wrong")
    assert "forbidden" in browser.find_element(By.TAG_NAME, "body").text
    assert browser.find_elements(By.CSS_SELECTOR, ".card") == []
