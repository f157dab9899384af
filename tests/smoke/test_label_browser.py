"""The labeling page in a real browser (Debian's headless chromium + chromedriver, selenium):
label with the mouse and the keyboard, undo, counts change, markup in a response stays text,
and the exported file trains a reward model. A failure leaves failure.png in the test's tmp dir."""

import shutil

import lightning as L
import pytest
import torch

from tests.label_server import Server, need_label_extra, queued_db

need_label_extra()
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the 'label' extra) absent")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip(
        "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

MARKUP = "<script>window.pwned = 1</script><b id='injected'>bold</b> & <i>x</i>"


def chrome(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
        f"--user-data-dir={profile}",
    ]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))


def count(driver, element_id: str) -> int:
    return int(driver.find_element(By.ID, element_id).text)


def wait_mine(driver, n: int) -> None:
    """Until the page (reloaded once the server confirmed) shows n labels of this annotator."""

    def shown(d) -> bool:
        try:
            return count(d, "mine") == n
        except (WebDriverException, ValueError):  # stale, missing or half-loaded nodes
            return False  # mid-reload

    WebDriverWait(driver, 10).until(shown)


def label_in_browser(driver, url: str) -> None:
    driver.get(url)
    assert count(driver, "mine") == 0 and count(driver, "wanted") == 6
    shown = driver.find_element(By.ID, "left").text + driver.find_element(By.ID, "right").text
    assert MARKUP in shown  # the first pair holds the markup: shown as text, characters intact
    assert driver.find_elements(By.ID, "injected") == []
    assert driver.execute_script("return window.pwned === undefined")
    driver.find_element(By.ID, "reason").send_keys("markup is not an answer")
    driver.find_element(By.ID, "choice-right").click()  # the mouse: a click saves at once
    wait_mine(driver, 1)
    assert "saved" in driver.find_element(By.ID, "status").text
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys("1")  # the keyboard: select, then Enter
    assert "selected" in driver.find_element(By.ID, "choice-left").get_attribute("class")
    body.send_keys(Keys.ENTER)
    wait_mine(driver, 2)
    driver.find_element(By.TAG_NAME, "body").send_keys("u")  # undo the keyboard label
    wait_mine(driver, 1)
    driver.find_element(By.ID, "copy-left").click()
    driver.find_element(By.ID, "ideal").send_keys(" (edited)")
    driver.execute_script("document.activeElement.blur()")  # keys typed in the textarea are text
    for n, key in enumerate(["2", "1", "1", "4", "2"], start=2):
        driver.find_element(By.TAG_NAME, "body").send_keys(key, Keys.ENTER)
        wait_mine(driver, n)
    assert driver.find_elements(By.ID, "done")
    assert count(driver, "labelled") == 6


def test_label_page_in_chromium_then_export_trains_a_reward_model(tmp_path, tiny_model_dir):
    texts = lambda i: (MARKUP, "42") if i == 0 else (f"{i + 1}", f"{i + 2}")  # noqa: E731
    db = queued_db(tmp_path / "labels.sqlite", 6, texts=texts)
    server = Server(db)
    driver = chrome(tmp_path / "profile")
    try:
        label_in_browser(driver, server.url + "/")
    except Exception:
        driver.save_screenshot(str(tmp_path / "failure.png"))
        raise
    finally:
        driver.quit()
        server.stop()

    from lightning_rlhf.label.db import LabelDB
    from lightning_rlhf.label.export import export_preferences

    counts = export_preferences(LabelDB(db), str(tmp_path / "p.jsonl"), str(tmp_path / "s.jsonl"))
    assert counts == {"labels": 6, "pairs": 5, "both_bad": 1, "sft": 1}, counts
    assert "(edited)" in (tmp_path / "s.jsonl").read_text()
    train_reward_model(tiny_model_dir, tmp_path / "p.jsonl")


class WeightsMoved(L.Callback):
    """The trainable weights at the start of fit, compared with those at its end."""

    def on_train_start(self, trainer, module) -> None:
        self.before = [p.detach().clone() for p in module.parameters() if p.requires_grad]

    def on_train_end(self, trainer, module) -> None:
        after = [p.detach() for p in module.parameters() if p.requires_grad]
        self.moved = len(after) > 0 and any(
            not torch.equal(a, b) for a, b in zip(after, self.before)
        )


def train_reward_model(model_dir, prefs) -> None:
    """A few steps of the reward stage on the exported file, through its own data module."""
    from lightning_rlhf import PreferenceDataModule, RewardModule

    dm = PreferenceDataModule(
        train_path=str(prefs), val_path=str(prefs), tokenizer=model_dir, max_length=64, batch_size=2
    )
    watch = WeightsMoved()
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[watch],
    )
    trainer.fit(RewardModule(model_dir), dm)
    assert trainer.global_step == 2 and watch.moved
