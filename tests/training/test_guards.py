"""Tiny-data guards (issue #8, part 4; measurements in docs/quality.md "Guards for tiny data").

``recommend(..., num_train_tokens=, has_eval_data=)``: a hold-out when no eval data is given,
early stopping below 50 samples, the parameters-per-target-token warning, warmup as a ratio; and the
trainer carving the hold-out out of the training set (``TrainerConfig.holdout_samples``).
"""

import json
import math

import datasets
import pytest
from transformers import TrainerCallback

from deepsynth.data import load_sample_dataset
from deepsynth.data.collate import build_example
from deepsynth.models import tiny
from deepsynth.training import recommend as rec_module
from deepsynth.training.config import TrainerConfig
from deepsynth.training.errors import ConfigError
from deepsynth.training.plan import plan_run
from deepsynth.data.splits import load_splits, split_holdout
from deepsynth.training.production_trainer import UnifiedProductionTrainer
from deepsynth.training.recommend import count_target_tokens, holdout_size, recommend

V1 = "deepseek-ai/DeepSeek-OCR"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M"


# --- hold-out ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, held", [(1, 0), (3, 0), (5, 0), (6, 1), (9, 1), (10, 2), (24, 4), (50, 10), (51, 10)])
def test_holdout_rule(n, held):
    assert holdout_size(n) == held
    assert n - holdout_size(n) >= 1


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_holdout_size_refuses_bad_counts(bad):
    with pytest.raises(ConfigError, match="num_samples"):
        holdout_size(bad)


def test_without_eval_data_samples_are_held_out_and_settings_follow_the_rest():
    rec = recommend(10, model=V1, has_eval_data=False)
    assert rec.evaluation == {"holdout_samples": 2, "train_samples": 8, "eval_on_training_data": False}
    assert rec.num_samples == 10  # all the data given
    assert rec.preset_name == "tiny_data"  # 8 samples train, not 10 (10 would be 'balanced')
    assert rec.training_config["gradient_accumulation_steps"] == 8
    assert rec.estimates["effective_updates"] == rec_module.estimate_updates(8, 1, 8, 300).effective_updates
    assert rec.training_config["early_stopping_patience"] == 3  # the held-out samples are scored during training
    assert any("2 of the 10 samples are held out" in w and "overstate" in w for w in rec.warnings)


def test_fifty_samples_without_eval_data_train_on_forty():
    rec = recommend(50, has_eval_data=False)
    assert rec.evaluation == {"holdout_samples": 10, "train_samples": 40, "eval_on_training_data": False}
    assert rec.preset_name == "balanced"  # chosen for the 40 that remain
    assert "early_stopping_patience" in rec.training_config  # 40 < 50
    with_eval = recommend(50)
    assert with_eval.preset_name == "high_capacity_moe" and "early_stopping_patience" not in with_eval.training_config


def test_too_few_samples_to_hold_out_says_metrics_are_on_training_data():
    rec = recommend(3, model=V1, has_eval_data=False)
    assert rec.evaluation == {"holdout_samples": 0, "train_samples": 3, "eval_on_training_data": True}
    assert "early_stopping_patience" not in rec.training_config  # nothing held out to stop on
    assert "eval_every_updates" not in rec.training_config
    assert any("measure memorisation" in w and "early stopping is off" in w for w in rec.warnings)
    config = rec.apply(TrainerConfig(output_dir="x"))
    assert config.holdout_samples is None and config.early_stopping_patience is None


def test_with_eval_data_nothing_is_held_out():
    rec = recommend(10, model=V1)
    assert rec.evaluation == {"holdout_samples": 0, "train_samples": 10, "eval_on_training_data": False}
    assert not any("held out for evaluation" in w or "memorisation" in w for w in rec.warnings)
    assert rec.apply(TrainerConfig(output_dir="x")).holdout_samples is None


def test_apply_sets_the_holdout_on_the_trainer_config():
    rec = recommend(12, has_eval_data=False)
    config = rec.apply(TrainerConfig(output_dir="x"))
    assert config.holdout_samples == rec.evaluation["holdout_samples"] == 2
    assert TrainerConfig.from_dict(config.to_dict()) == config


def test_to_dict_carries_the_evaluation_plan():
    data = recommend(12, model=V1, has_eval_data=False).to_dict()
    assert data["evaluation"] == {"holdout_samples": 2, "train_samples": 10, "eval_on_training_data": False}


@pytest.mark.parametrize("bad", [None, 0, "no"])
def test_has_eval_data_must_be_a_boolean(bad):
    with pytest.raises(ConfigError, match="has_eval_data"):
        recommend(3, has_eval_data=bad)


# --- early stopping ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [3, 9, 10, 49])
def test_tiny_data_gets_early_stopping(n):
    rec = recommend(n, model=V1)
    tc = rec.training_config
    updates = rec.estimates["effective_updates"]
    assert tc["early_stopping_patience"] == rec_module.EARLY_STOPPING_PATIENCE == 3
    assert tc["eval_every_updates"] == math.ceil(updates / 20)
    assert any("early stopping on" in w for w in rec.warnings)


def test_three_samples_evaluate_every_fifteen_updates():
    assert recommend(3).training_config["eval_every_updates"] == 15  # 300 updates / 20


@pytest.mark.parametrize("n", [50, 64, 200])
def test_no_early_stopping_from_fifty_samples(n):
    rec = recommend(n, model=V1)
    assert "early_stopping_patience" not in rec.training_config
    assert "eval_every_updates" not in rec.training_config
    assert not any("early stopping on" in w for w in rec.warnings)


def test_apply_puts_early_stopping_on_the_run_not_the_optimizer():
    rec = recommend(3, model=V1)
    config = rec.apply(TrainerConfig(output_dir="x"))
    assert config.early_stopping_patience == 3
    assert config.eval_every_updates == rec.training_config["eval_every_updates"] == 15
    assert config.optimizer.learning_rate == rec.training_config["learning_rate"]
    assert TrainerConfig.from_dict(config.to_dict()) == config  # valid: patience comes with an eval interval


def test_apply_from_fifty_samples_keeps_the_users_own_eval_settings():
    mine = TrainerConfig(output_dir="x", eval_every_updates=7, early_stopping_patience=2)
    config = recommend(60).apply(mine)
    assert (config.eval_every_updates, config.early_stopping_patience) == (7, 2)


# --- parameters per target token -----------------------------------------------------------------

def test_params_per_token_warning_gives_the_numbers():
    rec = recommend(3, model=V1, num_train_tokens=258)
    trainable = rec.estimates["trainable_params"]
    assert trainable / 258 > 10_000
    assert rec.estimates["train_tokens"] == 258 and rec.estimates["train_tokens_assumed"] is False
    assert rec.estimates["params_per_train_token"] == round(trainable / 258, 1)
    warning = next(w for w in rec.warnings if "parameters per token" in w)
    assert f"{trainable:,}" in warning and "258" in warning and f"{round(trainable / 258):,}" in warning
    assert "assumed" not in warning


def test_smollm2_at_three_samples_warns_with_the_assumed_count():
    rec = recommend(3, model=SMOLLM2)
    assert rec.estimates["train_tokens"] == 270 and rec.estimates["train_tokens_assumed"] is True
    assert rec.estimates["params_per_train_token"] == round(rec.estimates["trainable_params"] / 270, 1) > 10_000
    warning = next(w for w in rec.warnings if "parameters per token" in w)
    assert "assumed: 90 per sample" in warning and "num_train_tokens" in warning


def test_the_tiny_embedded_model_does_not_warn():
    rec = recommend(3)
    assert rec.estimates["params_per_train_token"] < 10_000
    assert not any("parameters per token" in w for w in rec.warnings)


def test_params_per_token_quiet_when_data_is_large_enough():
    rec = recommend(3, model=V1, num_train_tokens=10**9)
    assert not any("parameters per token" in w for w in rec.warnings)


def test_held_out_samples_do_not_count_as_training_tokens():
    rec = recommend(10, model=V1, num_train_tokens=1000, has_eval_data=False)
    assert rec.estimates["train_tokens"] == 800
    assert recommend(10, model=V1, has_eval_data=False).estimates["train_tokens"] == 8 * 90


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "100"])
def test_bad_token_counts_are_refused(bad):
    with pytest.raises(ConfigError, match="num_train_tokens"):
        recommend(3, model=V1, num_train_tokens=bad)


def test_target_tokens_are_the_labels_the_trainer_trains_on():
    rows = load_sample_dataset("train", max_samples=3)
    _, processor = tiny.load_embedded()
    labels = [build_example(processor, image, summary)["labels"] for image, summary in zip(rows["image"], rows["summary"])]
    assert count_target_tokens(None, rows["summary"]) == sum(int((label != -100).sum()) for label in labels)


# --- warmup --------------------------------------------------------------------------------------

def test_warmup_is_a_ratio_so_a_shortened_run_keeps_a_short_warmup():
    rec = recommend(3)
    assert rec.training_config["warmup_ratio"] == 0.1 and "warmup_steps" not in rec.training_config
    assert rec.estimates["warmup_steps"] == 30  # resolved for the recipe's 300 updates
    config = rec.apply(TrainerConfig(output_dir="x"))
    assert config.optimizer.warmup_steps is None and config.optimizer.warmup_ratio == 0.1
    shortened = TrainerConfig.from_dict({**config.to_dict(), "num_epochs": 20})  # 20 updates of 3 samples
    assert shortened.optimizer.resolve_warmup(20) == 2  # not 19 (an absolute 30 clipped to the run)


# --- the TrainerConfig field ---------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_holdout_samples_field_is_validated(bad):
    with pytest.raises(ConfigError, match="holdout_samples"):
        TrainerConfig.from_dict({"holdout_samples": bad})


def test_holdout_samples_round_trips(tmp_path):
    config = TrainerConfig(output_dir="x", holdout_samples=3)
    assert TrainerConfig.from_dict(config.to_dict()).holdout_samples == 3
    assert TrainerConfig.from_file(config.save(tmp_path / "c.yaml")) == config
    assert TrainerConfig.from_file(config.save(tmp_path / "c.json")) == config


def test_split_holdout_is_seeded_disjoint_and_ordered():
    rows = datasets.Dataset.from_dict({"text": [f"doc {i}" for i in range(12)], "summary": [f"s{i}" for i in range(12)]})
    train, held, indices = split_holdout(rows, 3, seed=7)
    assert len(train) == 9 and len(held) == 3 and indices == sorted(indices)
    assert list(held["text"]) == [f"doc {i}" for i in indices]
    assert not set(train["text"]) & set(held["text"])
    assert set(train["text"]) | set(held["text"]) == set(rows["text"])
    assert split_holdout(rows, 3, seed=7)[2] == indices  # same seed, same documents
    assert any(split_holdout(rows, 3, seed=s)[2] != indices for s in range(8, 14))  # the seed matters


@pytest.mark.parametrize("count", [0, 5, 6])
def test_split_holdout_leaves_something_to_train_on(count):
    rows = datasets.Dataset.from_dict({"text": list("abcde"), "summary": list("vwxyz")})
    with pytest.raises(ConfigError, match="holdout_samples"):
        split_holdout(rows, count, seed=0)


# --- the trainer ---------------------------------------------------------------------------------

NOTES = [
    ("Le marché ouvre samedi matin place de la mairie.", "Marché samedi matin."),
    ("La piscine municipale ferme lundi pour vidange.", "Piscine fermée lundi."),
    ("Le conseil vote le budget de la voirie mardi.", "Budget voirie mardi."),
    ("La bibliothèque prolonge ses horaires en juin.", "Bibliothèque ouverte plus tard."),
    ("Un concert gratuit aura lieu au parc dimanche.", "Concert gratuit dimanche."),
    ("Les travaux de la rue Haute durent deux semaines.", "Travaux rue Haute."),
    ("La mairie recrute des animateurs pour l'été.", "Recrutement d'animateurs."),
]


class RecordTrainedTargets(TrainerCallback):
    """Keeps the target token ids of every example the Trainer's dataloader trains on."""

    def __init__(self) -> None:
        self.targets: list[tuple[int, ...]] = []

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        for example in train_dataloader.dataset:
            labels = example["labels"]
            self.targets.append(tuple(labels[labels != -100].tolist()))


def test_trainer_holds_out_documents_it_never_trains_on(tmp_path):
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"text": t, "summary": s}, ensure_ascii=False) + "\n" for t, s in NOTES),
                    encoding="utf-8")
    config = TrainerConfig(output_dir=str(tmp_path / "run"), data_path=str(data), holdout_samples=2, seed=3,
                           batch_size=1, num_epochs=1, gradient_accumulation_steps=5, max_new_tokens=4,
                           resume_from_checkpoint="never", preset="tiny_data")
    recorder = RecordTrainedTargets()
    metrics, paths = UnifiedProductionTrainer(config, callbacks=[recorder]).train()

    saved = json.loads(paths["metrics"].read_text(encoding="utf-8"))
    indices = saved["holdout"]["indices"]
    assert saved["holdout"] == {"samples": 2, "indices": indices, "seed": 3} and len(set(indices)) == 2
    assert saved["eval_on_training_data"] is False
    assert saved["num_train_samples"] == 5 and saved["num_eval_samples"] == 2
    assert [s["reference"] for s in saved["samples"]] == [NOTES[i][1] for i in indices]  # scored on the held-out

    tokenizer = tiny.shipped_tokenizer()

    def target(summary: str) -> tuple[int, ...]:
        return (*tokenizer(summary, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id)

    trained = sorted(recorder.targets)
    assert trained == sorted(target(s) for i, (_, s) in enumerate(NOTES) if i not in indices)
    assert not {target(NOTES[i][1]) for i in indices} & set(trained)


def test_load_splits_says_why_there_is_no_eval_split_in_the_users_terms(tmp_path):
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"text": t, "summary": s}, ensure_ascii=False) + "\n" for t, s in NOTES),
                    encoding="utf-8")
    split = load_splits(str(data), holdout_samples=2, seed=3)
    assert split.eval_from == "holdout" and len(split.train) == 5 and len(split.eval) == 2
    assert split.no_eval_split == "it has no 'split' column"  # not the loader's "pass split=None"
    assert split.held_out_indices == split_holdout(load_splits(str(data)).train, 2, seed=3)[2]
    unsplit = load_splits(str(data), max_eval_samples=3)
    assert unsplit.eval_on_training_data and unsplit.eval_from == "training_data" and len(unsplit.eval) == 3


def test_trainer_ignores_the_holdout_when_eval_data_is_given(tmp_path):
    config = TrainerConfig(output_dir=str(tmp_path / "run"), max_train_samples=3, max_eval_samples=1,
                           holdout_samples=1)
    data = plan_run(config).prepared  # what the trainer runs; bundled samples: they have an eval split
    assert len(data.train) == 3 and data.held_out_indices == [] and data.eval_on_training_data is False
    assert data.eval_from == "eval_split"


def test_trainer_refuses_a_holdout_that_leaves_nothing_to_train(tmp_path):
    data = tmp_path / "two.csv"
    data.write_text("text,summary\nLe marché ouvre.,Marché.\nLa piscine ferme.,Piscine.\n", encoding="utf-8")
    config = TrainerConfig(output_dir=str(tmp_path / "run"), data_path=str(data), holdout_samples=2)
    with pytest.raises(ConfigError, match="holdout_samples"):
        UnifiedProductionTrainer(config).train()
    assert not (tmp_path / "run").exists()
