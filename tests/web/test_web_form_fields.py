"""Every field of the web form reaches the trainer's config, driven in a real page (headless Chromium).

The page is the one users get (the form app.js builds from ``GET /api/trainer/fields``): each field is
set in its input to a value that differs from its default, the job is started with the page's own
button, and the config the queued job will run (its ``config.yaml``, read back through the API) must
hold every value. Three submissions in one browser session cover the fields that exclude each other
(warmup steps or ratio; a 4/8-bit base needs LoRA on) and the preset select.
"""

from __future__ import annotations

import sys
from typing import Any

from web_support import ACCESS_TOKEN, STUB_TRAINER

from deepsynth.training.config import config_fields
from deepsynth.training.lora_config import FLAT_FIELDS, AdapterSettings, get_lora_preset
from deepsynth.web.jobs.requests import SERVER_FIELDS

FIELDS = {info.name: info for info in config_fields()}
# A valid value for each field that differs from its default; by kind unless a field needs its own.
VALUES: dict[str, Any] = {
    "model_name": "org/some-model", "scheduler_type": "linear", "lora_bias": "all", "lora_quantization": "8bit",
    "dtype": "bfloat16", "resume_from_checkpoint": "never", "instruction": "Résume le document.",
    "hub_model_id": "org/name", "task": "transcribe", "image_mode": "gundam",
    "lora_target_modules": ["q_proj", "v_proj"], "lora_modules_to_save": ["router"],
}
BY_KIND: dict[str, Any] = {"int": 3, "float": 0.25, "number": 12.5, "list": ["q_proj", "router"],
                           "dict": {"summary": "target", "text": "document"}}
# Each submission: the fields it sets (None: every other form field) and the ones it leaves empty.
WARMUP_BY_RATIO = {"use_lora": False, "lora_quantization": None, "warmup_ratio": 0.25, "warmup_steps": None}


def sample(name: str) -> Any:
    info = FIELDS[name]
    if name in VALUES:
        return VALUES[name]
    return (not info.default) if info.kind == "bool" else BY_KIND[info.kind]


def _stub(config, data, eval_data, output):
    return [sys.executable, "-c", STUB_TRAINER, str(output)]


def set_field(page, name: str, value: Any) -> None:
    """Set one input of the form as a user does (a checkbox, a select, a text or number box)."""
    selector = f"#f-{name}"
    kind = FIELDS[name].kind
    if kind == "bool":
        page.set_checked(selector, value)
    elif page.eval_on_selector(selector, "e => e.tagName") == "SELECT":
        page.select_option(selector, "" if value is None else str(value))
    elif kind == "list":
        page.fill(selector, ", ".join(value or []))
    elif kind == "dict":
        page.fill(selector, ", ".join(f"{k}={v}" for k, v in value.items()))
    else:
        page.fill(selector, "" if value is None else str(value))


def submitted_config(page, server, preset: str | None, values: dict[str, Any]) -> dict[str, Any]:
    """Reload the form, choose ``preset``, set ``values``, press Start job; the queued job's config, flat."""
    page.goto(f"{server.url}/")
    page.wait_for_selector("body[data-ready='1']")
    page.evaluate("document.querySelectorAll('details').forEach((d) => { d.open = true; })")
    if preset:
        page.select_option("#preset-select", preset)
    for name, value in values.items():
        set_field(page, name, value)
    shown = page.text_content("#job-id")  # the newest job, which the page opens on load
    page.click("#start-job")
    page.wait_for_function("(shown) => document.getElementById('job-id').textContent !== shown", arg=shown)
    job = server.http.get(f"/api/jobs/{page.text_content('#job-id')}").json()
    assert page.text_content("#job-form-error") == "", page.text_content("#job-form-error")
    return {**job["config"], **job["config"].pop("optimizer")}


def test_every_form_field_reaches_the_trainers_config(browser, live_server):
    with live_server(job_command=_stub, max_concurrent_jobs=3) as server:
        served = {info["name"] for info in server.http.get("/api/trainer/fields").json()["fields"]}
        # The form offers every field but the ones the server sets itself (and the preset, as its select).
        assert served == set(FIELDS) - set(SERVER_FIELDS)
        form = sorted(served - {"preset"})
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{server.url}/?token={ACCESS_TOKEN}")  # signs in: the session cookie
        checked: set[str] = set()

        every = {name: sample(name) for name in form if name not in ("use_lora", "warmup_ratio")}
        config = submitted_config(page, server, None, {**every, "warmup_ratio": None})
        for name, value in every.items():
            assert config[name] == value, (name, config[name], value)
        assert config["preset"] is None  # hand-set LoRA values: custom
        checked |= set(every)

        config = submitted_config(page, server, None, WARMUP_BY_RATIO)
        assert {name: config[name] for name in WARMUP_BY_RATIO} == WARMUP_BY_RATIO
        checked |= set(WARMUP_BY_RATIO)

        config = submitted_config(page, server, "balanced", {})
        lora = AdapterSettings.from_flat({name: config[name] for name in FLAT_FIELDS})
        assert config["preset"] == "balanced" and lora == get_lora_preset("balanced")
        checked.add("preset")

        assert checked == served and not errors, (served - checked, errors)
