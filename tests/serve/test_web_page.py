"""The clinician's page, in a real headless Chromium against the real `domainvlm serve`.

The browser does what a clinician does (key, upload, adapter, question); the oracle is the
REST API asked the same thing by `requests`, and the browser's own list of what it fetched
(nothing outside the server: the page must work offline in a hospital).
Run with DOMAINVLM_WEB_SCREENSHOT=docs/images/serve-web-page.png to refresh the README's copy
(CI leaves it unset: the test writes only to its temp folder).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import pydicom
import pytest
import requests

sys.path.insert(0, str(Path(__file__).parents[1] / "adapters"))
from factory import make_adapter  # noqa: E402
from server import running_server  # noqa: E402

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WEB = Path(__file__).parents[2] / "adapters" / "service" / "web"
QUESTION = "Is there a lesion in the liver?"
INTENDED_USE = "Questions about synthetic chest CT (tests only)"
VIEW = {"strategy": "slices", "count": 3, "window": "composite", "image_size": 96}
WAIT = 60  # seconds: a tiny model answers in well under one


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_models):
    """The real server: a tiny LLaVA base, one adapter with a card and a recorded view, an API
    key, a project key for de-identification and a real Orthanc as its PACS, which holds a
    synthetic CT study."""
    from domainvlm.adapters.service import db, keys
    from domainvlm.adapters.store import AdapterStore
    from domainvlm.data.views import write_views
    from domainvlm.medical.keys import write_key_file
    from domainvlm.medical.orthanc import LocalOrthanc
    from domainvlm.medical.pacs import PacsClient

    root = tmp_path_factory.mktemp("web")
    base = tiny_models("llava")
    adapter = make_adapter(base, root / "adapter")
    write_views(adapter, VIEW)
    (root / "metrics.json").write_text('{"n": 40, "vqa": {"accuracy": 0.625}}')
    AdapterStore(root / "store").add(
        adapter, "chest-ct", intended_use=INTENDED_USE, licence="CC0-1.0",
        metrics=root / "metrics.json")
    data = root / "data"
    data.mkdir()
    url = f"sqlite:///{data / 'serve.db'}"
    db.upgrade(url)
    with db.session_factory(db.engine_for(url))() as session, session.begin():
        api_key = keys.add_key(session, "clinician")
    in_pacs = _study_files(root / "in-pacs", index=1)
    with LocalOrthanc(root / "orthanc") as orthanc:
        PacsClient(orthanc.dicomweb_url).store([in_pacs[0].parent])
        args = ["--model", str(base), "--store", str(root / "store"), "--pacs",
                f"main={orthanc.dicomweb_url}", "--project-key-file",
                str(write_key_file(root / "project.key"))]
        with running_server(args, data) as server:
            server.key, server.orthanc = api_key, orthanc
            server.pacs_study = pydicom.dcmread(in_pacs[0]).StudyInstanceUID
            yield server


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=ChromeService(DRIVER))
    # The viewport itself at 1280x800 (a window of that size has a smaller viewport).
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()


def _study_files(folder: Path, index: int = 0) -> list[Path]:
    """A synthetic CT series with planted patient data (the server de-identifies it)."""
    from domainvlm.medical.cohort import write_patient

    write_patient(folder, seed=3, index=index, shape=(8, 48, 48))
    return sorted(folder.rglob("*.dcm"))


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition)
    except TimeoutException:
        error = driver.find_element("id", "error")
        shown = error.text if error.is_displayed() else "no error shown"
        raise AssertionError(f"timed out waiting for {what}; page error: {shown}") from None


def _by_id(driver, name: str):
    return driver.find_element("id", name)


def _use_key(driver, key: str) -> None:
    field = _by_id(driver, "key")
    field.clear()
    field.send_keys(key)
    driver.find_element("css selector", "#key-form button").click()


def _open_with_key(driver, served) -> None:
    """The page, with the key given and the adapters listed."""
    from selenium.webdriver.support.ui import Select

    driver.get(served.url + "/")
    _use_key(driver, served.key)
    _wait(driver, lambda d: len(Select(_by_id(d, "adapter")).options) == 2, "the adapters")


def test_page_uses_no_external_url():
    """Every file of the page names only the server it came from."""
    for path in WEB.iterdir():
        text = path.read_text()
        assert "://" not in text, f"{path.name} names an external URL"
        assert "@import" not in text and "url(" not in text, path.name


@pytest.mark.slow  # one server, Orthanc and Chromium for the module: ~35 s
def test_clinician_asks_about_an_uploaded_study(served, browser, tmp_path):
    from selenium.webdriver.support.ui import Select

    headers = {"Authorization": f"Bearer {served.key}"}
    browser.get(served.url + "/")
    _wait(browser, lambda d: _by_id(d, "status").text.startswith("ready"), "readiness")

    # A wrong key: the page shows the server's problem detail, word for word.
    _use_key(browser, "dvk_not-a-key")
    refused = requests.get(served.url + "/v1/studies",
                           headers={"Authorization": "Bearer dvk_not-a-key"}, timeout=10)
    assert refused.status_code == 401
    _wait(browser, lambda d: _by_id(d, "error").is_displayed(), "the error banner")
    assert _by_id(browser, "error-text").text == refused.json()["detail"]

    _use_key(browser, served.key)
    adapter = Select(_by_id(browser, "adapter"))
    _wait(browser, lambda d: len(adapter.options) == 2, "the adapter list")
    assert not _by_id(browser, "error").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('domainvlm.key')") == served.key

    files = _study_files(tmp_path / "study")
    _by_id(browser, "upload-files").send_keys("\n".join(str(f) for f in files))
    browser.find_element("css selector", "#upload-form button").click()
    _wait(browser, lambda d: _by_id(d, "study-work").is_displayed(), "the uploaded study")
    [study] = requests.get(served.url + "/v1/studies", headers=headers, timeout=10).json()
    assert study["instances"] == len(files)

    adapter.select_by_value("chest-ct@1")
    card = _by_id(browser, "card").text
    assert INTENDED_USE in card
    assert "vqa accuracy 0.625" in card and "CC0-1.0" in card
    views = requests.get(f"{served.url}/v1/studies/{study['id']}/views",
                         params={"adapter": "chest-ct@1"}, headers=headers, timeout=30).json()
    shown = _wait(browser, lambda d: _loaded_views(d, len(views["images"])), "the views")
    assert shown == [image.get("description") or f"view {image['index'] + 1}"
                     for image in views["images"]]
    first = requests.get(served.url + views["images"][0]["url"], headers=headers, timeout=30)
    assert _shown_png(browser, 0) == first.content  # the very bytes the model sees

    _by_id(browser, "questions").send_keys(QUESTION)
    _by_id(browser, "ask").click()
    _wait(browser, lambda d: _by_id(d, "answer").is_displayed(), "the answer")
    expected = requests.post(f"{served.url}/v1/studies/{study['id']}/ask", headers=headers,
                             json={"questions": [QUESTION], "adapter": "chest-ct@1"},
                             timeout=60).json()
    assert _shown_text(browser, "#answers .answer") == expected["answers"][0]["answer"]
    facts = _by_id(browser, "answer-facts").text
    assert "chest-ct@1" in facts and expected["description"] in facts

    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(url.startswith((served.url, "blob:")) for url in fetched), fetched

    shot = tmp_path / "serve-web-page.png"
    assert browser.save_screenshot(str(shot))
    _check_png(shot)
    if target := os.environ.get("DOMAINVLM_WEB_SCREENSHOT"):
        shutil.copyfile(shot, target)


@pytest.mark.slow
def test_image_tab_answers_as_the_api(served, browser, tmp_path):
    """The plain image tab sends the image, question and adapter as /v1/vqa takes them."""
    from PIL import Image
    from selenium.webdriver.support.ui import Select

    image = tmp_path / "scene.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    _open_with_key(browser, served)
    Select(_by_id(browser, "adapter")).select_by_value("chest-ct@1")
    _by_id(browser, "tab-image").click()
    _by_id(browser, "vqa-images").send_keys(str(image))
    _by_id(browser, "vqa-question").send_keys("What colour is the square?")
    browser.find_element("css selector", "#vqa-form button[type=submit]").click()
    _wait(browser, lambda d: _by_id(d, "vqa-answer").is_displayed(), "the image answer")
    with image.open("rb") as handle:
        expected = requests.post(
            served.url + "/v1/vqa", headers={"Authorization": f"Bearer {served.key}"},
            files={"image": ("scene.png", handle, "image/png")},
            data={"question": "What colour is the square?", "adapter": "chest-ct@1"},
            timeout=60).json()
    assert _shown_text(browser, "#vqa-text") == expected["answer"]
    assert "chest-ct@1" in _by_id(browser, "vqa-facts").text


@pytest.mark.slow
def test_import_from_the_pacs_and_send_the_answer_back(served, browser):
    """A study named by its UID comes in from the configured PACS; the answer asked with
    "send to the PACS" is the one the SR in Orthanc holds; then the study is deleted."""
    from selenium.webdriver.support.ui import Select

    from domainvlm.medical.pacs import PacsClient
    from domainvlm.medical.sr import read_sr_answer

    _open_with_key(browser, served)
    _wait(browser, lambda d: _by_id(d, "pacs-form").is_displayed(), "the PACS form")
    assert [o.text for o in Select(_by_id(browser, "pacs-name")).options] == ["main"]
    _by_id(browser, "pacs-uid").send_keys(served.pacs_study)
    browser.find_element("css selector", "#pacs-form button").click()
    headers = {"Authorization": f"Bearer {served.key}"}
    _wait(browser, lambda d: len(d.find_elements("css selector", "#studies button")) == 2,
          "the imported study in the list")
    [imported] = [s for s in requests.get(served.url + "/v1/studies", headers=headers,
                                          timeout=10).json() if s["source"] == "pacs"]
    pressed = browser.find_element("css selector", '#studies [aria-pressed="true"]')
    assert pressed.get_attribute("data-study") == imported["id"]
    views = requests.get(f"{served.url}/v1/studies/{imported['id']}/views", headers=headers,
                         timeout=30).json()
    _wait(browser, lambda d: _loaded_views(d, len(views["images"])), "the imported views")

    _by_id(browser, "write-sr").click()
    _by_id(browser, "questions").send_keys(QUESTION)
    _by_id(browser, "ask").click()
    _wait(browser, lambda d: _by_id(d, "answer").is_displayed(), "the answer")
    shown = _shown_text(browser, "#answers .answer")
    note = browser.find_element("css selector", "#answers .note").text
    sr_uid = note.rsplit(" ", 1)[-1]
    pacs = PacsClient(served.orthanc.dicomweb_url)
    [found] = [r for r in pacs.search_instances(imported["study_uid"]) if r.sop_uid == sr_uid]
    report = read_sr_answer(pacs.retrieve_instance(found.study_uid, found.series_uid, sr_uid))
    assert (report.question, report.answer) == (QUESTION, shown)

    _by_id(browser, "delete-study").click()
    browser.switch_to.alert.accept()
    _wait(browser, lambda d: len(d.find_elements("css selector", "#studies button")) == 1,
          "the list without the deleted study")
    gone = requests.get(f"{served.url}/v1/studies/{imported['id']}", headers=headers,
                        timeout=10)
    assert gone.status_code == 404 and not _by_id(browser, "study-work").is_displayed()


def _shown_text(driver, selector: str) -> str:
    """The text the page put in `selector`, character for character (WebElement.text is the
    rendered text, with whitespace folded)."""
    return driver.execute_script(
        "return document.querySelector(arguments[0]).textContent", selector)


def _loaded_views(driver, count: int) -> list[str] | None:
    """The captions of the views once `count` images have loaded, else None."""
    ready = driver.execute_script(
        "const imgs = [...document.querySelectorAll('#views img')];"
        "return imgs.length === arguments[0] && imgs.every(i => i.complete && i.naturalWidth)"
        " && document.getElementById('views').getAttribute('aria-busy') === 'false';", count)
    if not ready:
        return None
    return [c.text for c in driver.find_elements("css selector", "#views figcaption")]


def _shown_png(driver, index: int) -> bytes:
    """The bytes behind the page's view `index` (its blob URL, read inside the page)."""
    import base64

    data = driver.execute_async_script(
        "const done = arguments[1];"
        "fetch(document.querySelectorAll('#views img')[arguments[0]].src)"
        ".then(r => r.arrayBuffer()).then(b => {"
        " let s = ''; new Uint8Array(b).forEach(x => s += String.fromCharCode(x));"
        " done(btoa(s)); });", index)
    return base64.b64decode(data)


def _check_png(path: Path) -> None:
    """A real 1280x800 screenshot with something drawn on it (not one flat colour)."""
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    with Image.open(io.BytesIO(data)) as shot:
        assert shot.size == (1280, 800)
        assert len(shot.convert("L").getcolors(65536) or []) > 16
