"""MoE knobs on tiny models, without a training run: gate dropout, expert dropout, aux loss, telemetry."""

import logging

import pytest
import torch
from tiny_families import example_inputs, lora_with_nonzero_b, tiny_ocr2, tiny_ocr_v1
from transformers import TrainingArguments

from deepsynth.models.families import family_names
from deepsynth.training.lora_config import AdapterSettings
from deepsynth.training.moe import find_routers, install_moe, routing_decisions
from deepsynth.training.moe.regularisers import ExpertDropout, GateDropout, load_balancing_loss, resolve_gate_dropout
from deepsynth.training.moe.routers import route_from_logits
from deepsynth.training.trainer import MoeTrainer

OCR2 = "deepseek_ocr2"
TOP_K = 2  # tiny_families: 4 routed experts, 2 per token, MoE layers 1 and 2
EXPERTS = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine they spin and slow down 5-10×."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def adapted(targets=("q_proj", "gate_proj", "down_proj", "gate"), save=(), family=OCR2, builder=tiny_ocr2):
    """Tiny model with LoRA (B initialised non-zero so that every LoRA tensor gets a gradient)."""
    model = builder()
    lora = AdapterSettings(rank=4, alpha=8, dropout=0.0, target_modules=list(targets), modules_to_save=list(save))
    return lora_with_nonzero_b(model, lora, family)


def gradients(model, inputs) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model.train()
    model(**inputs).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# --- finding the router ---------------------------------------------------------------------------


@pytest.mark.parametrize("family, builder", [(OCR2, tiny_ocr2), ("deepseek_ocr", tiny_ocr_v1)])
def test_routers_are_found_bare_and_under_peft_wrappers(family, builder):
    layers = ["model.language_model.layers.1", "model.language_model.layers.2"]
    assert [layer for layer, _ in find_routers(builder(), family)] == layers
    lora = find_routers(adapted(family=family, builder=builder), family)  # ParamWrapper → base_layer
    assert [layer for layer, _ in lora] == layers
    assert all(type(router).__name__.endswith("TopkRouter") for _, router in lora)
    full = find_routers(adapted(targets=["q_proj"], save=["gate"], family=family, builder=builder), family)
    assert [layer for layer, _ in full] == [layers[0]] * 2 + [layers[1]] * 2  # original + trained copy
    assert find_routers(builder(), "causal_lm") == []


# --- gate dropout ---------------------------------------------------------------------------------


def test_gate_dropout_statistics_drop_rate_and_preserve_expectation():
    rate = 0.3
    dropout = GateDropout(rate, seed=0)
    ones = torch.ones(500, 400)
    masked = dropout.mask_gradient(ones)
    assert abs(float((masked == 0).float().mean()) - rate) < 0.01
    assert torch.all((masked == 0) | torch.isclose(masked, torch.tensor(1 / (1 - rate))))
    assert abs(dropout.dropped_fraction - rate) < 0.01
    grad = torch.randn(20, 30)
    mean = torch.stack([dropout.mask_gradient(grad) for _ in range(4000)]).mean(0)
    torch.testing.assert_close(mean, grad, atol=0.1, rtol=0.05)  # E[mask · grad / (1-p)] = grad
    assert float((mean - grad).abs().mean()) < 0.02


def test_gate_dropout_acts_on_router_tensors_only_never_gate_proj():
    model = adapted()  # LoRA on q_proj, gate_proj (dense + shared experts), down_proj and the router
    parameters, warnings = resolve_gate_dropout(model, OCR2, ["gate", "router", "gate_proj"])
    names = family_names(OCR2)
    assert parameters and all(names.group_of(name) == "router" for name in parameters)
    assert all("gate_proj" not in name for name in parameters)
    assert any("gate_proj" in warning and "ignored" in warning for warning in warnings)
    inputs = example_inputs(model, OCR2)
    reference = gradients(model, inputs)
    moe = install_moe(model, OCR2, gate_dropout_rate=0.5, gate_dropout_keywords=("gate",), seed=1, telemetry=False)
    dropped = gradients(model, inputs)
    moe.remove()
    assert moe.report()["moe"]["gate_dropout_active"] is True
    assert reference.keys() == dropped.keys()
    for name in reference:
        if name in parameters:  # router LoRA: elements zeroed, survivors scaled by 1/(1-p)
            zero = dropped[name] == 0
            torch.testing.assert_close(dropped[name][~zero], reference[name][~zero] * 2)
            assert zero.any() and (~zero).any()
        else:  # gate_proj, down_proj, attention: bit-identical
            assert torch.equal(dropped[name], reference[name]), name
    assert any("mlp.gate_proj" in name for name in reference) and any("shared_experts.gate_proj" in name for name in reference)
    assert abs(moe.gate_dropout.dropped_fraction - 0.5) < 0.1


def test_gate_dropout_on_full_router_hits_the_trained_copy_only():
    model = adapted(targets=["q_proj"], save=["gate"])
    parameters, _ = resolve_gate_dropout(model, OCR2, ["router"])
    assert sorted(parameters) == [f"base_model.model.model.language_model.layers.{i}.mlp.gate.modules_to_save.default.weight"
                                  for i in (1, 2)]


def test_gate_dropout_keywords_select_the_routers_they_name():
    model = adapted()  # router LoRA in MoE layers 1 and 2
    every, _ = resolve_gate_dropout(model, OCR2, ["gate"])
    assert {name.split(".layers.")[1].split(".")[0] for name in every} == {"1", "2"}
    second, warnings = resolve_gate_dropout(model, OCR2, ["layers.2.mlp.gate"])
    assert not warnings and second and sorted(second) == sorted(n for n in every if ".layers.2." in n)
    assert resolve_gate_dropout(model, OCR2, ["layers.2", "mlp.gate"])[0].keys() == every.keys()
    # A partial word names nothing ("layers.2" is not "layers.20"); gate_proj is never a router.
    for words in (["layers.", "ate"], ["gate_proj"], ["layers.7"]):
        parameters, warnings = resolve_gate_dropout(model, OCR2, words)
        assert parameters == {} and "ignored" in warnings[0], words

    inputs = example_inputs(model, OCR2)
    reference = gradients(model, inputs)
    moe = install_moe(model, OCR2, gate_dropout_rate=0.5, gate_dropout_keywords=["layers.2"], seed=1, telemetry=False)
    dropped = gradients(model, inputs)
    moe.remove()
    assert moe.gate_dropout_parameters == sorted(second)
    for name in every:  # layer 2's router gradient is masked, layer 1's is untouched
        assert torch.equal(dropped[name], reference[name]) is (name not in second), name


def test_gate_dropout_with_a_frozen_router_is_reported_inactive(caplog):
    model = adapted(targets=["q_proj", "gate_proj"])
    with caplog.at_level(logging.WARNING, logger="deepsynth"):
        moe = install_moe(model, OCR2, gate_dropout_rate=0.1)
    assert "gate dropout is INACTIVE" in caplog.text and "frozen" in caplog.text
    report = moe.report()["moe"]
    assert report["gate_dropout_active"] is False and report["gate_dropout_dropped_fraction"] is None
    inputs = example_inputs(model, OCR2)
    assert gradients(model, inputs).keys()  # training still works, nothing hooked
    assert moe.gate_dropout is None


# --- expert dropout -------------------------------------------------------------------------------


def test_expert_dropout_rate_floor_and_seed():
    dropout = ExpertDropout(0.3, min_keep=1, seed=0)
    withheld = dropout.sample(20_000, 64, floor=6)
    assert abs(float(withheld.float().mean()) - 0.3) < 0.01
    assert int((~withheld).sum(-1).min()) >= 6
    # A high rate on few experts: the floor max(min_keep, top_k) binds, and exactly.
    withheld = ExpertDropout(0.95, min_keep=3, seed=0).sample(5_000, 8, floor=3)
    kept = (~withheld).sum(-1)
    assert int(kept.min()) == 3 and float((kept == 3).float().mean()) > 0.8
    assert torch.equal(ExpertDropout(0.3, seed=5).sample(100, 8, 2), ExpertDropout(0.3, seed=5).sample(100, 8, 2))
    assert not torch.equal(ExpertDropout(0.3, seed=5).sample(100, 8, 2), ExpertDropout(0.3, seed=6).sample(100, 8, 2))


def test_recomputed_routing_equals_the_routers_own():
    model = tiny_ocr2()
    router = find_routers(model, OCR2)[0][1]
    hidden = torch.randn(2, 9, router.hidden_dim)
    for method in ("greedy", "group_limited_greedy"):
        router.topk_method, router.num_group, router.topk_group = method, 2, 1
        logits, weights, indices = router(hidden)
        again_weights, again_indices = route_from_logits(router, logits)
        assert torch.equal(again_indices, indices) and torch.equal(again_weights, weights)


@pytest.mark.parametrize("wrapping", ["bare", "lora", "full"])
def test_expert_dropout_changes_training_routing_only(wrapping):
    model = {"bare": tiny_ocr2, "lora": adapted, "full": lambda: adapted(targets=["q_proj"], save=["gate"])}[wrapping]()
    inputs = example_inputs(model, OCR2)
    model.eval()
    with torch.no_grad():
        clean_eval = model(**inputs).logits
    clean_routes = routing_decisions(model, OCR2, inputs)
    model.train()
    with torch.no_grad():
        clean_train = model(**inputs).logits

    moe = install_moe(model, OCR2, expert_dropout_rate=0.5, expert_dropout_min_keep=3, seed=0)
    selected = {}
    for layer, router in find_routers(model, OCR2):
        router.register_forward_hook(lambda m, a, out, layer=layer: selected.__setitem__(layer, out[2]))
    model.train()
    with torch.no_grad():
        dropped_train = model(**inputs).logits
    assert not torch.allclose(dropped_train, clean_train)  # routing changed in training
    for layer, indices in selected.items():
        withheld = moe.expert_dropout._last[layer]
        assert int((~withheld).sum(-1).min()) >= 3  # min_keep 3 > top_k 2
        assert not withheld.gather(1, indices).any()  # a withheld expert is never chosen
    assert 0 < moe.expert_dropout.withheld_fraction <= 1 / EXPERTS  # at most 1 of 4: the floor of 3 binds
    # Evaluation: no dropout, deterministic, identical to the model without expert dropout.
    model.eval()
    with torch.no_grad():
        first, second = model(**inputs).logits, model(**inputs).logits
    assert torch.equal(first, second)
    torch.testing.assert_close(first, clean_eval)
    assert all(torch.equal(a, b) for a, b in zip(routing_decisions(model, OCR2, inputs).values(), clean_routes.values()))
    moe.remove()


def test_expert_dropout_is_reproducible_under_a_seed():
    def training_logits(seed):
        model = tiny_ocr2()
        install_moe(model, OCR2, expert_dropout_rate=0.4, seed=seed)
        model.train()
        inputs = example_inputs(model, OCR2)
        with torch.no_grad():
            return [model(**inputs).logits for _ in range(2)]

    first, again, other = training_logits(3), training_logits(3), training_logits(4)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], first[1])  # a fresh mask every forward
    assert not torch.equal(first[0], other[0])


# --- telemetry ------------------------------------------------------------------------------------


def test_counts_sum_to_non_padding_tokens_times_top_k():
    model = adapted()
    moe = install_moe(model, OCR2)
    torch.manual_seed(0)
    input_ids = torch.randint(2, 90, (2, 11))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0  # second row right-padded: 7 real tokens
    model.train()
    model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss.backward()
    model.eval()
    with torch.no_grad():
        model(input_ids=input_ids[:1, :5], attention_mask=attention_mask[:1, :5])
    report = moe.report()["expert_utilization"]
    assert list(report["train"]["layers"]) == ["model.language_model.layers.1", "model.language_model.layers.2"]
    for layer, counts in report["train"]["layers"].items():
        assert len(counts) == EXPERTS and sum(counts) == (11 + 7) * TOP_K
    assert all(sum(counts) == 5 * TOP_K for counts in report["eval"]["layers"].values())
    summary = report["train"]["summary"]
    assert summary["tokens"] == 18 and summary["experts_per_token"] == TOP_K and summary["num_experts"] == EXPERTS
    assert 0 < summary["mean_normalized_entropy"] <= 1 and 1 / EXPERTS <= summary["max_share"] <= 1
    assert set(summary["per_layer"]) == set(report["train"]["layers"])


def test_generation_counts_each_new_token_once():
    model = tiny_ocr2()
    moe = install_moe(model, OCR2)
    prompt = torch.randint(2, 90, (1, 6))
    model.eval()
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                         min_new_tokens=4)
    generated = out.shape[1] - prompt.shape[1]
    # The prompt is routed once, then each decoding step routes its one new token (the last one is never fed back).
    expected = (prompt.shape[1] + generated - 1) * TOP_K
    assert all(sum(c) == expected for c in moe.report()["expert_utilization"]["eval"]["layers"].values())
    assert moe.report()["expert_utilization"]["train"]["layers"] == {}


def test_gradient_checkpointing_neither_double_counts_nor_resamples():
    def run(checkpointing):
        model = tiny_ocr2()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        moe = install_moe(model, OCR2, expert_dropout_rate=0.4, seed=2)
        inputs = example_inputs(model, OCR2)
        grads = gradients(model, inputs)
        return moe, grads, inputs["input_ids"].numel()

    plain, plain_grads, tokens = run(False)
    checkpointed, checkpointed_grads, _ = run(True)
    for counts in checkpointed.report()["expert_utilization"]["train"]["layers"].values():
        assert sum(counts) == tokens * TOP_K
    assert checkpointed.expert_dropout.slots == plain.expert_dropout.slots == 2 * tokens * EXPERTS
    for name, grad in plain_grads.items():  # recomputed forwards reuse their masks: same gradients
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-4, atol=1e-6)


# --- aux loss -------------------------------------------------------------------------------------


def test_aux_loss_adds_exactly_coef_times_balance_loss_and_reaches_the_router(tmp_path):
    model = adapted(targets=["q_proj", "gate"])
    inputs = example_inputs(model, OCR2)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", gradient_accumulation_steps=1)
    coef = 0.5

    def step(coef):
        moe = install_moe(model, OCR2, router_aux_loss_coef=coef, telemetry=False)
        trainer = MoeTrainer(model=model, args=args, moe=moe)
        model.train()
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(inputs))
        loss.backward()
        router_grads = {n: p.grad.clone() for n, p in model.named_parameters() if ".mlp.gate." in n and p.grad is not None}
        return loss.detach(), router_grads, trainer

    plain, plain_grads, _ = step(0.0)
    with_aux, aux_grads, trainer = step(coef)
    model.train()
    with torch.no_grad():
        outputs = model(**inputs, output_router_logits=True)
    assert len(outputs.router_logits) == 2  # one per MoE layer
    aux = load_balancing_loss(outputs.router_logits, EXPERTS, TOP_K, inputs["attention_mask"])
    assert float(aux) >= TOP_K - 1e-4  # top_k is the perfectly balanced value
    torch.testing.assert_close(with_aux - plain, coef * aux, rtol=1e-5, atol=1e-6)
    assert plain_grads.keys() == aux_grads.keys() and plain_grads
    assert any(not torch.allclose(plain_grads[n], aux_grads[n]) for n in plain_grads)
    trainer.log({"loss": float(with_aux)})
    assert trainer.state.log_history[-1]["aux_loss"] == pytest.approx(float(aux), rel=1e-5)
    # Evaluation forwards never add the term.
    model.eval()
    torch.testing.assert_close(trainer.compute_loss(model, dict(inputs)).detach(), model(**inputs).loss.detach())


def test_knobs_on_a_dense_model_are_reported_inactive(caplog):
    from tiny_families import tiny_llama

    with caplog.at_level(logging.WARNING, logger="deepsynth"):
        moe = install_moe(tiny_llama(), "causal_lm", gate_dropout_rate=0.1, expert_dropout_rate=0.1,
                          router_aux_loss_coef=0.01)
    report = moe.report()
    assert report["expert_utilization"] is None
    assert not report["moe"]["gate_dropout_active"] and not report["moe"]["expert_dropout_active"]
    assert not report["moe"]["aux_loss_active"]
    assert caplog.text.count("INACTIVE") == 3
