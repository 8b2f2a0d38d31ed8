"use strict";
// DeepSynth web UI: plain JS over the JSON API. Every decision (presets, recommendation, parameter
// counts, validation) is the server's; this file only fills forms and draws.

const $ = (id) => document.getElementById(id);

// Form fields come from the server (GET /api/trainer/fields: TrainerConfig's field metadata): name →
// {kind, optional, default, help, choices, group, lora_name}. None is typed here.
const FIELDS = {};
const loraField = (name) => FIELDS[name] && FIELDS[name].group === "lora";
// The LoRA fields (the form's name → a preset's and the estimate request's name, e.g. lora_rank → rank):
// from each field's lora_name, so that the map is the server's (deepsynth.training.boundary).
const loraNames = () => Object.values(FIELDS).filter((info) => info.lora_name).map((info) => [info.name, info.lora_name]);
const TERMINAL = ["succeeded", "failed", "cancelled"];

const state = {
  presets: [], datasets: [], jobs: [],
  selectedJob: null, source: null, loss: [], evals: [], expert: null, estimateTimer: null, estimateSeq: 0,
  applying: false,
};

// --- helpers ----------------------------------------------------------------------------------

async function api(path, options = {}) {
  const init = { ...options, headers: { ...(options.headers || {}) } };
  if (init.json !== undefined) {
    init.body = JSON.stringify(init.json);
    init.headers["Content-Type"] = "application/json";
    delete init.json;
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    // The session cookie no longer matches (the server restarted with a new token): back to sign-in.
    window.location.assign("/");
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { error: text }; }
  if (!response.ok) {
    const error = new Error((body && body.error) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return body;
}

const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const fmtNum = (n, digits = 4) => (typeof n === "number" ? Number(n.toPrecision(digits)).toString() : "–");
const fmtDate = (t) => (t ? new Date(t * 1000).toLocaleString() : "");

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function fieldInput(name) { return $("f-" + name); }

function setField(name, value) {
  const input = fieldInput(name);
  if (!input) return;
  const kind = FIELDS[name].kind;
  if (kind === "bool") input.checked = Boolean(value);
  else if (kind === "list") input.value = (value || []).join(", ");
  else if (kind === "dict") input.value = Object.entries(value || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  else input.value = value === null || value === undefined ? "" : String(value);
}

function readField(name) {
  const input = fieldInput(name);
  const { kind, optional } = FIELDS[name];
  if (kind === "bool") return input.checked;
  const raw = input.value.trim();
  if (kind === "list" || kind === "dict") {
    const items = raw.split(",").map((s) => s.trim()).filter(Boolean);
    if (!items.length && optional) return null;
    if (kind === "list") return items;
    // "summary=target, text=document"; an item without "=" goes to the server as is (it names the error).
    return Object.fromEntries(items.map((item) => item.includes("=") ? item.split("=", 2).map((s) => s.trim()) : [item, ""]));
  }
  if (raw === "") return optional ? null : (kind === "str" ? "" : null);
  if (kind === "int") return /^-?\d+$/.test(raw) ? parseInt(raw, 10) : raw;  // the server names a bad value
  if (kind === "float" || kind === "number") return Number.isFinite(Number(raw)) ? Number(raw) : raw;
  return raw;
}

function knownField(name) {
  return name in FIELDS;
}

// One input per field, of its kind: a checkbox, a select of its choices, a number or a text box.
function fieldElement(info) {
  const id = "f-" + info.name;
  const title = `${info.name}: ${info.help}`;
  if (info.kind === "bool") {
    return el("label", { class: "check", title }, el("input", { id, type: "checkbox" }), " " + info.help);
  }
  let input;
  if (info.choices) {
    input = el("select", { id }, ...info.choices.map((c) => el("option", { value: c === null ? "" : c }, c === null ? "default" : c)));
  } else if (["int", "float", "number"].includes(info.kind)) {
    input = el("input", { id, type: "number", step: info.kind === "int" ? "1" : "any" });
  } else {
    input = el("input", { id, type: "text" });
  }
  if (info.optional && info.default === null && input.tagName === "INPUT") input.placeholder = "default";
  const wide = ["list", "dict", "str"].includes(info.kind) && !info.choices;
  return el("label", { class: wide ? "wide" : "", title }, info.name.replace(/_/g, " ") + " ", input);
}

// --- presets and defaults ---------------------------------------------------------------------

async function loadPresets() {
  const data = await api("/api/lora/presets");
  state.presets = data.presets;
  const select = $("preset-select");
  for (const preset of data.presets) select.append(el("option", { value: preset.name }, preset.name));
  select.addEventListener("change", onPresetChosen);
  describePreset();
}

function describePreset() {
  const name = $("preset-select").value;
  const preset = state.presets.find((p) => p.name === name);
  $("preset-description").textContent = preset
    ? `${preset.description} rank ${preset.settings.rank}, alpha ${preset.settings.alpha}, dropout ${preset.settings.dropout}; targets ${preset.settings.target_modules.join(", ")}` +
      (preset.settings.modules_to_save.length ? `; fully trained ${preset.settings.modules_to_save.join(", ")}` : "")
    : "Custom: set every field yourself.";
}

function applyLoraSettings(settings) {
  for (const [name, loraName] of loraNames()) setField(name, settings[loraName]);
}

// The form's LoRA settings under their preset names (what the estimate request takes).
function loraSettings() {
  return Object.fromEntries(loraNames().map(([name, loraName]) => [loraName, readField(name)]));
}

function onPresetChosen() {
  describePreset();
  const preset = state.presets.find((p) => p.name === $("preset-select").value);
  if (preset) {
    applyLoraSettings(preset.settings);
    scheduleEstimate();
  }
}

async function loadFields() {
  const data = await api("/api/trainer/fields");
  for (const info of data.fields) {
    if (info.name === "preset") continue;  // the preset select above sets it
    FIELDS[info.name] = info;
    $("fields-" + info.group).append(fieldElement(info));
    setField(info.name, info.default);
    const input = fieldInput(info.name);
    input.addEventListener(input.type === "checkbox" || input.tagName === "SELECT" ? "change" : "input", onFieldEdited);
  }
}

// --- datasets ---------------------------------------------------------------------------------

async function loadDatasets(selectId) {
  const data = await api("/api/datasets");
  state.datasets = data.datasets;
  const select = $("dataset-select");
  const evalSelect = $("eval-dataset-select");
  const keep = selectId || select.value;
  const keepEval = evalSelect.value;
  select.replaceChildren();
  evalSelect.replaceChildren(el("option", { value: "" }, "none: the dataset's eval split, else its training rows"));
  for (const info of state.datasets) {
    const label = `${info.name} (${info.rows} rows)`;
    select.append(el("option", { value: info.id }, label));
    evalSelect.append(el("option", { value: info.id }, label));
  }
  if (keep && state.datasets.some((d) => d.id === keep)) select.value = keep;
  if (keepEval && state.datasets.some((d) => d.id === keepEval)) evalSelect.value = keepEval;
  renderDatasetTable();
  describeDataset();
}

function selectedDataset() {
  return state.datasets.find((d) => d.id === $("dataset-select").value) || null;
}

function describeDataset() {
  const info = selectedDataset();
  if (!info) { $("dataset-info").textContent = "No dataset."; return; }
  const splits = Object.entries(info.splits || {}).map(([k, v]) => `${v} ${k}`).join(", ");
  $("dataset-info").textContent = `${info.name}: ${info.rows} rows` + (splits ? ` (${splits}); ` : "; ") +
    `${info.train_rows} used for training.`;
}

function renderDatasetTable() {
  const body = $("datasets-table").querySelector("tbody");
  body.replaceChildren();
  for (const info of state.datasets) {
    const splits = Object.entries(info.splits || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
    const actions = info.builtin ? el("span", { class: "muted" }, "bundled")
      : el("button", { class: "small delete-dataset", type: "button", dataset: { datasetId: info.id },
        onclick: () => deleteDataset(info.id) }, "Delete");
    body.append(el("tr", { dataset: { datasetId: info.id } }, el("td", {}, info.name), el("td", { class: "num" }, info.rows),
      el("td", {}, splits || "–"), el("td", {}, info.builtin ? "" : fmtDate(info.created)), el("td", {}, actions)));
  }
}

async function uploadDataset(event) {
  event.preventDefault();
  const file = $("dataset-file").files[0];
  const status = $("upload-status");
  if (!file) { status.className = "error"; status.textContent = "Choose a file first."; return; }
  const form = new FormData();
  form.append("file", file);
  if ($("dataset-name").value.trim()) form.append("name", $("dataset-name").value.trim());
  status.className = "muted";
  status.textContent = `Uploading and checking ${file.name}…`;
  $("dataset-upload").disabled = true;
  try {
    const info = await api("/api/datasets", { method: "POST", body: form });
    $("dataset-file").value = "";
    $("dataset-name").value = "";
    await loadDatasets(info.id);  // first, so that "Uploaded" means the new dataset is selected
    status.className = "ok";
    status.textContent = `Uploaded “${info.name}”: ${info.rows} rows, all valid.`;
  } catch (error) {
    status.className = "error";
    status.textContent = error.message;
  } finally {
    $("dataset-upload").disabled = false;
  }
}

async function deleteDataset(id) {
  const status = $("upload-status");
  try {
    await api(`/api/datasets/${encodeURIComponent(id)}`, { method: "DELETE" });
    status.className = "muted";
    status.textContent = "Dataset deleted.";
    await loadDatasets();
  } catch (error) {
    status.className = "error";
    status.textContent = error.message;
  }
}

// --- recommendation and estimates -------------------------------------------------------------

// "Apply Preset & Auto-Configure": the server plans the run (plan_run, as `deepsynth train --auto`) for
// the chosen data; the page shows and fills in what the plan says, and decides nothing itself.
function planRequest() {
  const overrides = {};
  // The counts, and what a page costs and how long an example is (the mode, the task and its prompt, the
  // sequence length): the plan keeps them and reports the run the form describes.
  for (const name of ["max_train_samples", "max_eval_samples", "task", "image_mode", "instruction", "max_length"]) {
    const value = readField(name);
    if (value !== null && value !== "") overrides[name] = value;
  }
  return { dataset_id: $("dataset-select").value, eval_dataset_id: $("eval-dataset-select").value || null,
    model: readField("model_name"), overrides };
}

function showPlan(plan) {
  const config = plan.config;
  const flat = { ...config, ...config.optimizer };
  for (const name of Object.keys(FIELDS)) if (name in flat) setField(name, flat[name]);
  $("preset-select").value = config.preset || "custom";
  describePreset();
  const estimates = plan.recommendation ? plan.recommendation.estimates : {};
  $("est-preset").textContent = config.preset || "custom";
  $("est-samples").textContent = fmtInt(plan.data.train_samples);
  $("est-total-steps").textContent = fmtInt(plan.updates.total_steps);
  $("est-updates").textContent = fmtInt(plan.updates.effective_updates);
  $("est-warmup").textContent = fmtInt(plan.updates.warmup_steps);
  $("est-trainable").textContent = fmtInt(estimates.trainable_params);
  // What a page costs in the chosen resolution mode (the plan's VisionTokens; none for a text model).
  $("est-vision").textContent = plan.vision_tokens ? plan.vision_tokens.text : "none (a text model reads no page images)";
  $("est-time").textContent = estimates.estimated_time_minutes === null || estimates.estimated_time_minutes === undefined
    ? "unknown (measure it with `deepsynth recommend --calibrate`)" : `${estimates.estimated_time_minutes} min`;
  $("warnings").replaceChildren(...plan.warnings.map((w) => el("li", {}, w)));
}

async function applyRecommendation() {
  const note = $("apply-note");
  $("recommendation").hidden = false;
  if (!selectedDataset()) { note.className = "error"; note.textContent = "Choose or upload a dataset first."; return; }
  const chosen = $("preset-select").value;
  $("apply-preset").disabled = true;
  try {
    const plan = await api("/api/trainer/plan", { method: "POST", json: planRequest() });
    state.applying = true;
    showPlan(plan);
    state.applying = false;
    note.className = "ok";
    note.textContent = plan.lines.map((line) => line.trim()).join(" · ") +
      (chosen !== "custom" && chosen !== plan.config.preset
        ? ` (You had chosen ${chosen}: choose it again to use its LoRA settings with these training settings.)` : "");
    scheduleEstimate(0);
  } catch (error) {
    note.className = "error";
    note.textContent = error.message;
  } finally {
    state.applying = false;
    $("apply-preset").disabled = false;
  }
}

function scheduleEstimate(delay = 350) {
  clearTimeout(state.estimateTimer);
  state.estimateTimer = setTimeout(runEstimate, delay);
}

async function runEstimate() {
  const seq = ++state.estimateSeq;
  const body = { model: readField("model_name"), ...loraSettings() };
  $("trainable-params").dataset.pending = "1";
  try {
    const report = await api("/api/lora/estimate", { method: "POST", json: body });
    if (seq !== state.estimateSeq) return;
    $("trainable-params").textContent = fmtInt(report.trainable);
    const groups = Object.entries(report.by_group).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${fmtInt(v)}`);
    const warnings = (report.targets && report.targets.warnings) || [];
    $("trainable-by-group").textContent = `(${groups.join(", ") || "none"} · ${fmtNum(100 * report.trainable / report.total_params, 3)}% of ${fmtInt(report.total_params)})`;
    $("estimate-warnings").replaceChildren(...warnings.map((w) => el("li", {}, w)));
    // A 4/8-bit base (lora_quantization): what the loader holds in 4/8 bits, as `deepsynth inspect` says it.
    $("estimate-quantization").hidden = !report.quantization;
    $("estimate-quantization").textContent = report.quantization
      ? `base weights (${report.quantization.method}): ${report.quantization.description}` : "";
    $("estimate-status").textContent = "";
  } catch (error) {
    if (seq !== state.estimateSeq) return;
    $("trainable-params").textContent = "–";
    $("trainable-by-group").textContent = "";
    $("estimate-warnings").replaceChildren();
    $("estimate-status").textContent = error.message;
  } finally {
    if (seq === state.estimateSeq) delete $("trainable-params").dataset.pending;
  }
}

function onFieldEdited(event) {
  const name = event.target.id.replace(/^f-/, "");
  if (!loraField(name) || state.applying) return;
  // Hand edits that leave the preset's values make the settings custom.
  const preset = state.presets.find((p) => p.name === $("preset-select").value);
  if (preset && name !== "model_name") {
    const form = loraSettings();
    const same = Object.entries(form).every(([key, value]) =>
      JSON.stringify(value ?? (Array.isArray(preset.settings[key]) ? [] : null)) === JSON.stringify(preset.settings[key]));
    if (!same) { $("preset-select").value = "custom"; describePreset(); }
  }
  scheduleEstimate();
}

// --- jobs -------------------------------------------------------------------------------------

function jobPayload() {
  const payload = { dataset_id: $("dataset-select").value };
  if ($("eval-dataset-select").value) payload.eval_dataset_id = $("eval-dataset-select").value;
  const preset = $("preset-select").value;
  payload.preset = preset === "custom" ? null : preset;
  for (const name of Object.keys(FIELDS)) {
    if (fieldInput(name) && knownField(name)) payload[name] = readField(name);
  }
  return payload;
}

async function startJob(event) {
  event.preventDefault();
  const error = $("job-form-error");
  error.textContent = "";
  $("start-job").disabled = true;
  try {
    const job = await api("/api/jobs", { method: "POST", json: jobPayload() });
    await refreshJobs();
    await selectJob(job.id);
  } catch (err) {
    error.textContent = err.message;
  } finally {
    $("start-job").disabled = false;
  }
}

async function refreshJobs() {
  const data = await api("/api/jobs");
  state.jobs = data.jobs;
  const body = $("jobs-table").querySelector("tbody");
  body.replaceChildren();
  for (const job of state.jobs) {
    const actions = el("td", {});
    if (!TERMINAL.includes(job.status)) {
      actions.append(el("button", { class: "small cancel-job", type: "button", dataset: { jobId: job.id },
        onclick: (e) => { e.stopPropagation(); cancelJob(job.id); } }, job.cancel_requested ? "Stopping…" : "Cancel"));
    }
    if (job.has_checkpoint) {  // failed or cancelled, with a complete checkpoint: continue from it
      actions.append(el("button", { class: "small resume-job", type: "button", dataset: { jobId: job.id },
        title: "continue this job from its newest complete checkpoint",
        onclick: (e) => { e.stopPropagation(); resumeJob(job.id); } }, "Resume"));
    }
    if (job.has_adapter) {
      actions.append(" ", el("a", { class: "download-job", href: `/api/jobs/${job.id}/artifacts`, dataset: { jobId: job.id },
        onclick: (e) => e.stopPropagation() }, "Download"));
    }
    const step = job.total_updates ? `${job.step} / ${job.total_updates}` : String(job.step || 0);
    const row = el("tr", { class: "clickable" + (job.id === state.selectedJob ? " selected" : ""), dataset: { jobId: job.id },
      onclick: () => selectJob(job.id) },
      el("td", {}, el("code", {}, job.id)), el("td", {}, job.dataset_name || job.dataset_id),
      el("td", { class: "status-" + job.status }, job.status), el("td", { class: "num" }, step),
      el("td", {}, fmtDate(job.created_at)), actions);
    body.append(row);
  }
  const current = state.jobs.find((j) => j.id === state.selectedJob);
  if (current) showJobStatus(current);
}

async function cancelJob(id) {
  try {
    await api(`/api/jobs/${id}/cancel`, { method: "POST" });
  } catch (error) {
    $("job-error").textContent = error.message;
  }
  await refreshJobs();
}

async function resumeJob(id) {
  $("job-error").textContent = "";
  try {
    await api(`/api/jobs/${id}/resume`, { method: "POST" });
    await refreshJobs();
    await selectJob(id);
  } catch (error) {
    $("job-error").textContent = error.message;
    await refreshJobs();
  }
}

function showJobStatus(job) {
  $("job-status").textContent = job.status;
  $("job-status").className = "status-" + job.status;
  const phase = job.status === "running" ? (job.cancel_requested ? "stopping" : job.phase || "starting")
    : job.status === "queued" ? "waiting for the running job" : "";
  $("job-phase").textContent = phase;
  $("job-phase").hidden = !phase;
  $("job-step").textContent = job.step || 0;
  $("job-total").textContent = job.total_updates || "?";
  $("job-loss").textContent = typeof job.last_loss === "number" ? `loss ${fmtNum(job.last_loss)}` : "";
  $("job-error").textContent = job.error || "";
}

async function selectJob(id) {
  if (state.source) { state.source.close(); state.source = null; }
  state.selectedJob = id;
  for (const row of $("jobs-table").querySelectorAll("tbody tr")) row.classList.toggle("selected", row.dataset.jobId === id);
  $("job-detail").hidden = false;
  $("job-id").textContent = id;
  const job = await api(`/api/jobs/${id}`);
  if (state.selectedJob !== id) return;
  renderJobDetail(job);
  if (!TERMINAL.includes(job.status)) openStream(id);
}

function renderJobDetail(job) {
  showJobStatus(job);
  state.loss = job.loss_history.map((p) => [p.step, p.loss]);
  state.evals = job.eval_history.map((p) => [p.step, p.eval_loss]);
  drawLoss();
  renderMetrics(job.metrics);
  renderExperts(job.expert_utilization);
  $("job-log").textContent = (job.log_tail || []).join("\n");
  $("push-form").hidden = job.status !== "succeeded";
  if (job.config && job.config.hub_model_id && !$("push-repo-id").value) $("push-repo-id").value = job.config.hub_model_id;
}

function openStream(id) {
  state.loss = [];
  state.evals = [];
  const source = new EventSource(`/api/jobs/${id}/events`);
  state.source = source;
  source.addEventListener("progress", (event) => {
    const data = JSON.parse(event.data);
    if (data.event === "log" && typeof data.loss === "number") state.loss.push([data.step, data.loss]);
    if (data.event === "eval" && typeof data.eval_loss === "number") state.evals.push([data.step, data.eval_loss]);
    if (data.event === "start") $("job-total").textContent = data.total_updates;
    drawLoss();
  });
  source.addEventListener("status", (event) => showJobStatus(JSON.parse(event.data)));
  source.addEventListener("end", async () => {
    source.close();
    if (state.source === source) state.source = null;
    await refreshJobs();
    if (state.selectedJob === id) renderJobDetail(await api(`/api/jobs/${id}`));
  });
}

// --- charts -----------------------------------------------------------------------------------

function drawLoss() {
  const canvas = $("loss-chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 640;
  const height = canvas.clientHeight || 260;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const pad = { l: 52, r: 12, t: 12, b: 28 };
  const points = state.loss.concat(state.evals);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#667085";
  if (!points.length) {
    ctx.fillText("waiting for the first logged update…", pad.l, height / 2);
    return;
  }
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const xMin = Math.min(...xs, 0), xMax = Math.max(...xs, 1);
  let yMin = Math.min(...ys), yMax = Math.max(...ys);
  if (yMax - yMin < 1e-9) { yMin -= 0.5; yMax += 0.5; }
  const x = (v) => pad.l + (v - xMin) / (xMax - xMin || 1) * (width - pad.l - pad.r);
  const y = (v) => height - pad.b - (v - yMin) / (yMax - yMin) * (height - pad.t - pad.b);
  ctx.strokeStyle = "#d9dee7";
  ctx.beginPath();
  ctx.moveTo(pad.l, pad.t); ctx.lineTo(pad.l, height - pad.b); ctx.lineTo(width - pad.r, height - pad.b);
  ctx.stroke();
  for (let i = 0; i <= 4; i++) {
    const v = yMin + (yMax - yMin) * i / 4;
    ctx.fillText(fmtNum(v, 3), 4, y(v) + 4);
  }
  ctx.fillText("0", pad.l - 3, height - 10);
  ctx.fillText(String(xMax), width - pad.r - 20, height - 10);
  ctx.fillText("update", (width) / 2, height - 6);
  if (state.loss.length) {
    ctx.strokeStyle = "#2f5bea";
    ctx.lineWidth = 2;
    ctx.beginPath();
    state.loss.forEach(([sx, sy], i) => (i ? ctx.lineTo(x(sx), y(sy)) : ctx.moveTo(x(sx), y(sy))));
    ctx.stroke();
    ctx.fillStyle = "#2f5bea";
    for (const [sx, sy] of state.loss) { ctx.beginPath(); ctx.arc(x(sx), y(sy), 2.5, 0, 2 * Math.PI); ctx.fill(); }
  }
  ctx.fillStyle = "#e8772e";
  for (const [sx, sy] of state.evals) { ctx.beginPath(); ctx.arc(x(sx), y(sy), 4, 0, 2 * Math.PI); ctx.fill(); }
}

function renderExperts(util) {
  state.expert = util && util.layers && Object.keys(util.layers).length ? util : null;
  $("expert-section").hidden = !state.expert;
  if (!state.expert) return;
  const select = $("expert-layer-select");
  select.replaceChildren(el("option", { value: "" }, "all layers (sum)"));
  for (const name of Object.keys(state.expert.layers)) select.append(el("option", { value: name }, name));
  select.onchange = drawExperts;
  const summary = state.expert.summary || {};
  $("expert-summary").textContent = Object.entries(summary)
    .filter(([, v]) => typeof v !== "object").map(([k, v]) => `· ${k}: ${typeof v === "number" ? fmtNum(v) : v}`).join(" ");
  drawExperts();
}

function drawExperts() {
  const svg = $("expert-chart");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const layer = $("expert-layer-select").value;
  const layers = state.expert.layers;
  let counts;
  if (layer) counts = layers[layer];
  else {
    counts = [];
    for (const values of Object.values(layers)) values.forEach((v, i) => { counts[i] = (counts[i] || 0) + v; });
  }
  const total = counts.reduce((a, b) => a + b, 0) || 1;
  const width = 640, height = 260, pad = { l: 40, r: 10, t: 14, b: 30 };
  const max = Math.max(...counts, 1) / total;
  const band = (width - pad.l - pad.r) / counts.length;
  const mk = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  mk("line", { x1: pad.l, y1: height - pad.b, x2: width - pad.r, y2: height - pad.b, stroke: "#d9dee7" });
  const even = 1 / counts.length;
  const evenY = height - pad.b - even / max * (height - pad.t - pad.b);
  counts.forEach((count, i) => {
    const share = count / total;
    const h = share / max * (height - pad.t - pad.b);
    const rect = mk("rect", { x: pad.l + i * band + band * 0.1, y: height - pad.b - h, width: band * 0.8, height: h,
      fill: "#2f5bea", class: "expert-bar", "data-expert": i, "data-count": count });
    const title = document.createElementNS(ns, "title");
    title.textContent = `expert ${i}: ${fmtInt(count)} tokens (${fmtNum(100 * share, 3)}%)`;
    rect.append(title);
    mk("text", { x: pad.l + i * band + band / 2, y: height - pad.b + 14, "text-anchor": "middle", "font-size": 10, fill: "#667085" }, i);
  });
  mk("line", { x1: pad.l, y1: evenY, x2: width - pad.r, y2: evenY, stroke: "#e8772e", "stroke-dasharray": "4 3" });
  mk("text", { x: width - pad.r, y: evenY - 4, "text-anchor": "end", "font-size": 10, fill: "#e8772e" }, "even split");
  mk("text", { x: 4, y: pad.t + 4, "font-size": 10, fill: "#667085" }, `${fmtNum(100 * max, 3)}%`);
  mk("text", { x: width / 2, y: height - 4, "text-anchor": "middle", "font-size": 10, fill: "#667085" }, "expert");
}

function renderMetrics(metrics) {
  const section = $("metrics-section");
  const evaluation = metrics && metrics.eval;
  section.hidden = !(evaluation && evaluation.before && evaluation.after);
  if (section.hidden) return;
  const body = $("metrics-table").querySelector("tbody");
  body.replaceChildren();
  const lowerIsBetter = new Set(["loss", "cer", "loop_rate", "wer"]);
  for (const name of Object.keys(evaluation.before)) {
    const before = evaluation.before[name];
    const after = evaluation.after[name];
    const delta = typeof before === "number" && typeof after === "number" ? after - before : null;
    const better = delta === null || delta === 0 ? "" : ((delta < 0) === lowerIsBetter.has(name) ? "delta-good" : "delta-bad");
    body.append(el("tr", { dataset: { metric: name } }, el("td", {}, name), el("td", { class: "num" }, fmtNum(before)),
      el("td", { class: "num" }, fmtNum(after)),
      el("td", { class: "num " + better }, delta === null ? "–" : (delta > 0 ? "+" : "") + fmtNum(delta))));
  }
  $("metrics-note").textContent = metrics.eval_on_training_data ? "(on training samples: no held-out data)"
    : (metrics.num_eval_samples ? `(on ${metrics.num_eval_samples} held-out samples)` : "");
  const parts = [];
  if (metrics.optimizer_updates !== undefined) parts.push(`${fmtInt(metrics.optimizer_updates)} optimizer updates`);
  if (metrics.trainable_params && metrics.trainable_params.total !== undefined) parts.push(`${fmtInt(metrics.trainable_params.total)} trainable parameters`);
  if (metrics.train && metrics.train.runtime_seconds !== undefined) parts.push(`${fmtNum(metrics.train.runtime_seconds, 3)} s of training`);
  $("metrics-extra").textContent = parts.join(" · ");
}

async function pushAdapter(event) {
  event.preventDefault();
  const status = $("push-status");
  status.className = "muted";
  status.textContent = "Pushing…";
  $("push-button").disabled = true;
  try {
    const report = await api(`/api/jobs/${state.selectedJob}/push`, {
      method: "POST", json: { repo_id: $("push-repo-id").value.trim(), private: $("push-private").checked },
    });
    status.className = "ok";
    status.textContent = `Pushed ${report.uploaded.length} file(s)` + (report.commit_url ? `: ${report.commit_url}` : ".");
  } catch (error) {
    status.className = "error";
    status.textContent = error.message;
  } finally {
    $("push-button").disabled = false;
  }
}

async function loadHubStatus() {
  try {
    const hub = await api("/api/hub");
    $("hub-status").textContent = hub.token_available ? `Hub token: ${hub.source}` : "No Hub token (set HF_TOKEN to push)";
  } catch (_) { /* informative only */ }
}

// --- start ------------------------------------------------------------------------------------

async function main() {
  $("upload-form").addEventListener("submit", uploadDataset);
  $("dataset-select").addEventListener("change", describeDataset);
  $("apply-preset").addEventListener("click", applyRecommendation);
  $("config-form").addEventListener("submit", startJob);
  $("push-form").addEventListener("submit", pushAdapter);
  await Promise.all([loadFields(), loadPresets(), loadDatasets(), loadHubStatus()]);
  scheduleEstimate(0);
  await refreshJobs();
  if (state.jobs.length) await selectJob(state.jobs[0].id);
  setInterval(() => refreshJobs().catch(() => {}), 2000);
  document.body.dataset.ready = "1";
}

main().catch((error) => {
  const note = el("p", { class: "error", id: "fatal-error" }, `The page could not load: ${error.message}`);
  document.querySelector("main").prepend(note);
});
