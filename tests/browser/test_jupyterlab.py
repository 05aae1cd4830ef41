"""JupyterLab in a real browser (Debian's chromium driven by Playwright): pick "Cumulus GPU" in
the kernel picker, run a cell on the remote kernel, read its output on the page."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cumulus_jupyter import kernelspec
from tests.support.gateway import Gateway
from tests.support.jupyter import jupyter_server

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(
    os.environ.get("CUMULUS_ARTIFACTS", Path(__file__).resolve().parents[2] / ".artifacts")
)
CELL = "import os\nprint('partition', os.environ['CHRONOS_PARTITION_ID'], 'gpu', os.environ['CHRONOS_GPU_AMOUNT'])"


SLIDER = "import ipywidgets\nslider = ipywidgets.IntSlider(value=3, min=0, max=10)\nslider"
READ_SLIDER = "print('slider at', slider.value)"


MAGIC_CELLS = (
    "%load_ext cumulus_jupyter",
    "%%cumulus --session ui --no-pull\nimport ipywidgets\n"
    "remote_slider = ipywidgets.IntSlider(value=3, min=0, max=10)\nremote_slider",
    "%%cumulus --session ui --no-push --no-pull\nprint('remote slider at', remote_slider.value)",
)


def notebook(sources: tuple[str, ...] = (CELL, SLIDER, READ_SLIDER)) -> dict[str, object]:
    cells = [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": f"c{i}",
            "metadata": {},
            "outputs": [],
            "source": source,
        }
        for i, source in enumerate(sources)
    ]
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def magic_notebook() -> dict[str, object]:
    """A local Python 3 notebook whose cells use ``%%cumulus``."""
    nb = notebook(MAGIC_CELLS)
    nb["metadata"] = {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                       "language": "python"},
    }  # fmt: skip
    return nb


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, str, Gateway]]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: the test setup (make test) installs it")
        pytest.skip("Debian's chromium is not installed here (make test installs it)")
    gw = Gateway(tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log")
    env = os.environ | {
        "JUPYTER_PATH": str(tmp_path / "share" / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "CUMULUS_GATEWAY_URL": gw.url,
        "CUMULUS_TOKEN": gw.token,
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", env["JUPYTER_PATH"])
        kernelspec.install("0.5", "30m", prefix=str(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    (work / "demo.ipynb").write_text(json.dumps(notebook()))
    (work / "magic.ipynb").write_text(json.dumps(magic_notebook()))
    try:
        with jupyter_server("jupyterlab", work, tmp_path / "lab.log", env=env) as (url, token):
            yield url, token, gw
    finally:
        gw.stop()


def launch(playwright: Any) -> Any:
    """Debian's chromium, headless, as these machines run it (never a downloaded browser)."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run"],
    )  # fmt: skip


def move_slider_to_5_and_read_it(page: Any, handle: Any) -> None:
    """Two steps right from 3 with the keyboard, then run the third cell (it reads the value
    in the remote kernel)."""
    handle.first.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.locator(".widget-readout", has_text="5").first.wait_for(timeout=60_000)
    page.locator(".jp-Notebook .jp-Cell .cm-content").nth(2).click()
    page.keyboard.press("Shift+Enter")


@pytest.mark.timeout(300)
def test_pick_cumulus_gpu_in_jupyterlab_and_run_a_cell(lab: tuple[str, str, Gateway]) -> None:
    from playwright.sync_api import sync_playwright

    url, token, gw = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}/lab/tree/demo.ipynb?token={token}", timeout=120_000)
            dialog = page.locator(".jp-Dialog")
            dialog.wait_for(timeout=120_000)
            picker = dialog.locator("select")
            labels = picker.locator("option").all_inner_texts()
            assert "Cumulus GPU (0.5 GPU, 30m)" in labels, labels
            picker.select_option(label="Cumulus GPU (0.5 GPU, 30m)")
            dialog.locator(".jp-mod-accept").click()
            # the kernel answers kernel_info at once, while its partition is still being taken
            page.get_by_text("Cumulus GPU (0.5 GPU, 30m) | Idle").wait_for(timeout=120_000)
            page.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
            page.keyboard.press("Shift+Enter")
            output = page.locator(
                ".jp-OutputArea-output", has_text=re.compile(r"partition p-\w+ gpu 0\.5")
            )
            output.first.wait_for(timeout=120_000)
            text = output.first.inner_text()
            # an ipywidgets slider renders, and moving it changes the value in the remote kernel
            page.keyboard.press("Shift+Enter")
            handle = page.locator(".jp-OutputArea-output .widget-slider .noUi-handle")
            handle.first.wait_for(timeout=120_000)
            move_slider_to_5_and_read_it(page, handle)
            page.locator(".jp-OutputArea-output", has_text="slider at 5").first.wait_for(
                timeout=120_000
            )
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-cumulus-gpu.png"))
        finally:
            browser.close()
    [kernel] = gw.get("/api/kernels").json()
    assert f"partition {kernel['cumulus']['partition_id']} gpu 0.5" in text


@pytest.mark.timeout(300)
def test_a_slider_from_a_cumulus_cell_renders_and_moves_the_remote_value(
    lab: tuple[str, str, Gateway],
) -> None:
    """A local notebook, a ``%%cumulus`` cell makes a slider: it renders here, moving it
    changes the value in the remote kernel, and Cumulus's status is no error-red stderr."""
    from playwright.sync_api import sync_playwright

    url, token, gw = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}/lab/tree/magic.ipynb?token={token}", timeout=120_000)
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
            page.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
            page.keyboard.press("Shift+Enter")  # %load_ext
            page.keyboard.press("Shift+Enter")  # the %%cumulus cell that makes the slider
            handle = page.locator(".jp-OutputArea-output .widget-slider .noUi-handle")
            handle.first.wait_for(timeout=120_000)
            status = page.locator(".jp-OutputArea-output", has_text="Cumulus: partition p-")
            status.first.wait_for(timeout=60_000)
            assert page.locator("[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
            move_slider_to_5_and_read_it(page, handle)
            page.locator(".jp-OutputArea-output", has_text="remote slider at 5").first.wait_for(
                timeout=120_000
            )
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-cumulus-magic-slider.png"))
        finally:
            browser.close()
    [kernel] = gw.get("/api/kernels").json()
    assert kernel["cumulus"]["amount"] == 0.5
