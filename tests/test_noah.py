"""NOAH: entangled modules that equal fresh ones of their size, subnet counts by formula equal to
what the plain method trains (tiny ViTs and ViT-B/16 on the meta device), NOAH's published
subnet files, supernet training through the engine (a subnet per step, resumable), the
evolutionary search (budget, determinism, resume), and the whole pipeline through the CLI and
the bench on the shipped backbone and generated tasks."""

from __future__ import annotations

import copy
import json
import random
import statistics
from pathlib import Path

import pytest
import timm
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

import snftune
from snftune.bench.params import count_tuned_parameters, format_table, noah_subnet_table
from snftune.cli import main
from snftune.engine import CHECKPOINT_NAME, TUNED_NAME, TrainConfig, train
from snftune.engine.checkpoint import load_checkpoint
from snftune.methods import Adapter, LoRALinear, NoahConfig, resolve_config
from snftune.methods.noah import (
    EntangledAdapter,
    EntangledLoRA,
    EntangledPrompts,
    set_active_subnet,
    supernet_space,
)
from snftune.methods.noah_subnets import (
    Subnet,
    SubnetFileError,
    SubnetSpace,
    quarter_depths,
    read_noah_subnet,
    subnet_parameters,
    write_noah_subnet,
)
from snftune.methods.registry import MethodSettingsError
from snftune.methods.vpt import PromptTokens
from snftune.nas import EvolutionSettings, evolve, parse_count
from snftune.nas.noah import RESULT_NAME, SEARCH_DIR, STATE_NAME, SUBNET_NAME, SUPERNET_DIR, load_supernet
from snftune.runs import SettingsError, evaluate_tuned, read_run_config, settings_from_record
from snftune.tuning import tuned_tensors

FIXTURES = Path(__file__).parent / "fixtures" / "noah"
CIFAR100, SVHN = FIXTURES / "ViT-B_prompt_cifar100.yaml", FIXTURES / "ViT-B_prompt_svhn.yaml"
C = 192  # vit_tiny width

pytestmark = pytest.mark.usefixtures("one_thread")


def vit(depth: int = 4, num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=depth, num_classes=num_classes, drop_path_rate=0.0
    )


def original(module: nn.Module, name: str) -> torch.Tensor:
    """The full (largest-size) tensor behind a sliced parameter."""
    return module.parametrizations[name].original


def randomise(model: nn.Module, std: float = 0.05) -> None:
    """Moves every tuned tensor off its initial value (zero-initialised ones would hide slicing errors)."""
    torch.manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(0.0, std)


# ---------------------------------------------------------------- entangled modules and subnets


@pytest.mark.parametrize("size", [0, 1, 3, 8])
def test_each_entangled_module_at_a_size_is_a_fresh_module_of_that_size_with_the_sliced_weights(size) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 7, 12)
    prompts = EntangledPrompts(8, 12, num_prefix_tokens=1, init_range=0.5, dropout=0.0)
    lora = EntangledLoRA(nn.Linear(12, 36), 8, dropout=0.0)
    adapter = EntangledAdapter(12, 8, channel_dim=-1)
    randomise(nn.ModuleList([prompts, lora, adapter]))
    for module in (prompts, lora, adapter):
        module.set_size(size)
    prompts.replaces = 2
    with torch.no_grad():
        if size == 0:  # no module in that block: what comes in goes out
            assert torch.equal(prompts(x), x) and torch.equal(adapter(x), x)
            assert torch.equal(lora(x), lora.base_layer(x))
            return
        fresh_prompts = PromptTokens(size, 12, 1, replaces=2, init_range=0.5)
        fresh_prompts.prompts.copy_(original(prompts, "prompts")[:size])
        fresh_lora = LoRALinear(copy.deepcopy(lora.base_layer), size, alpha=float(size))
        fresh_lora.lora_A.copy_(original(lora, "lora_A")[:size])
        fresh_lora.lora_B.copy_(original(lora, "lora_B")[:, :size])
        fresh_adapter = Adapter(12, size)
        fresh_adapter.down.weight.copy_(original(adapter.down, "weight")[:size])
        fresh_adapter.down.bias.copy_(original(adapter.down, "bias")[:size])
        fresh_adapter.up.weight.copy_(original(adapter.up, "weight")[:, :size])
        fresh_adapter.up.bias.copy_(adapter.up.bias)
        assert prompts(x).shape == (2, 7 - 2 + size, 12)
        assert torch.equal(prompts(x), fresh_prompts(x))
        assert torch.allclose(lora(x), fresh_lora(x), atol=1e-6, rtol=0)
        assert torch.allclose(adapter(x), fresh_adapter(x), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="outside 0..8"):
        adapter.set_size(9)


def materialise(supernet: nn.Module, subnet: Subnet) -> nn.Module:
    """The ``noah`` model of ``subnet`` holding the supernet's sliced weights (and its head)."""
    plain = snftune.apply(vit(), "noah", **subnet.to_dict(), dropout=0.0)
    with torch.no_grad():
        plain.head.load_state_dict(supernet.head.state_dict())
        for big, small, p, r, a in zip(supernet.blocks, plain.blocks, *subnet.to_dict().values(), strict=True):
            if p:
                small.token_slot.prompts.copy_(original(big.token_slot, "prompts")[:p])
            if r:
                small.attn.qkv.lora_A.copy_(original(big.attn.qkv, "lora_A")[:r])
                small.attn.qkv.lora_B.copy_(original(big.attn.qkv, "lora_B")[:, :r])
            if a:
                down, up = big.mlp_site.branch.down, big.mlp_site.branch.up
                small.mlp_site.branch.down.weight.copy_(original(down, "weight")[:a])
                small.mlp_site.branch.down.bias.copy_(original(down, "bias")[:a])
                small.mlp_site.branch.up.weight.copy_(original(up, "weight")[:, :a])
                small.mlp_site.branch.up.bias.copy_(up.bias)
    return plain


def test_a_subnet_of_the_supernet_computes_what_the_plain_method_of_its_sizes_computes() -> None:
    supernet = snftune.apply(vit(), "noah-supernet", sizes=(2, 4, 8), dropout=0.0).eval()
    randomise(supernet)
    space = supernet_space(supernet)
    assert space == SubnetSpace((2, 4, 8), (1, 2, 3, 4), 4)
    draw = random.Random(3).randrange
    subnets = [space.random(draw) for _ in range(3)] + [Subnet((3, 0, 5, 0), (0, 8, 0, 1), (8, 0, 0, 2))]
    x = torch.randn(3, 3, 32, 32)
    outputs = set()
    for subnet in subnets:  # the last one has gaps: prompts carried past prompt-less blocks
        set_active_subnet(supernet, subnet)
        with torch.no_grad():
            out = supernet(x)
            assert torch.allclose(out, materialise(supernet, subnet).eval()(x), atol=1e-5, rtol=0)
        outputs.add(tuple(out.flatten().tolist()))
    assert len(outputs) == len(subnets)


def test_subnet_counts_by_formula_equal_the_plain_methods_trainable_parameters() -> None:
    space = SubnetSpace((2, 4, 8), quarter_depths(4), 4)
    draw = random.Random(0).randrange
    for subnet in [space.random(draw) for _ in range(6)] + [space.smallest(), space.largest()]:
        model = snftune.apply(vit(), "noah", **subnet.to_dict())
        assert snftune.trainable_summary(model).tuned == subnet_parameters(subnet, C), subnet.label()
    supernet = snftune.apply(vit(), "noah-supernet", sizes=(2, 4, 8))
    assert snftune.trainable_summary(supernet).tuned == subnet_parameters(space.largest(), C)
    # by hand: a block with prompt 2, LoRA 4 and adapter 8 trains 2C + 4 * 4C + (2 * 8C + 8 + C)
    assert subnet_parameters(Subnet((2,), (4,), (8,)), C) == 2 * C + 16 * C + 16 * C + 8 + C


def test_vit_b16_counts_on_the_meta_device() -> None:
    """The supernet at NOAH's size 100 in 12 blocks, random subnets, and NOAH's published ones."""
    assert count_tuned_parameters("vit_base_patch16_224", "noah-supernet") == 12 * (7 * 768 * 100 + 100 + 768)
    space = SubnetSpace((5, 10, 50, 100), quarter_depths(12), 12)
    assert space.depths == (3, 6, 9, 12)
    draw = random.Random(1).randrange
    configs = [resolve_config("noah", **space.random(draw).to_dict()) for _ in range(3)]
    configs += [resolve_config("noah", subnet=str(CIFAR100)), resolve_config("noah", subnet=str(SVHN))]
    for config in configs:
        subnet = Subnet(config.prompt, config.lora, config.adapter)
        assert count_tuned_parameters("vit_base_patch16_224", config) == subnet_parameters(subnet, 768)
    rows = noah_subnet_table([str(CIFAR100), str(SVHN)], {"ViT-B/16": "vit_base_patch16_224"})
    assert [(r.method, r.tuned) for r in rows] == [
        ("noah (ViT-B_prompt_cifar100)", 320_330),
        ("noah (ViT-B_prompt_svhn)", 431_686),
        ("noah (mean of 2)", 376_008),
    ]
    assert "| noah (ViT-B_prompt_svhn) | 431,686 (0.432M) |" in format_table(rows)


def test_noahs_published_subnet_files_are_read_from_their_retrain_block(tmp_path) -> None:
    subnet = read_noah_subnet(CIFAR100)
    assert subnet.prompt == (10, 5, 10, 1, 5, 1, 10, 1, 10, 5, 1, 10)
    assert subnet.lora == (10, 1, 5, 5, 1, 10, 1, 1, 1, 10, 1, 1)
    assert subnet.adapter == (5, 10, 10, 10, 5, 1, 1, 1, 10, 10, 10, 1)
    config = NoahConfig(subnet=str(CIFAR100))
    assert Subnet(config.prompt, config.lora, config.adapter) == subnet
    assert config.subnet is None and config.source == str(CIFAR100)
    assert NoahConfig(**json.loads(json.dumps(config.to_dict()))) == config  # the tuned file needs no YAML
    written = write_noah_subnet(tmp_path / "found.yaml", subnet, "a comment")
    assert read_noah_subnet(written) == subnet and written.read_text().startswith("# a comment\nRETRAIN:")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RETRAIN: [1, 2]\n", "no RETRAIN: block"),
        ("SUPERNET: {DEPTH: 12}\n", "no RETRAIN: block"),
        ("RETRAIN: {VISUAL_PROMPT_DIM: [1], LORA_DIM: [1], ADAPTER_DIM: [1, 2]}\n", "one size per block"),
        ("RETRAIN: {VISUAL_PROMPT_DIM: [1], LORA_DIM: [-1], ADAPTER_DIM: [1]}\n", "ints >= 0"),
        ("RETRAIN: {VISUAL_PROMPT_DIM: [1], ADAPTER_DIM: [1]}\n", "RETRAIN.LORA_DIM"),
        ("RETRAIN: {VISUAL_PROMPT_DIM: [1], LORA_DIM: [1], ADAPTER_DIM: [1], PREFIX_DIM: [5]}\n", "prefix tuning"),
        ("RETRAIN: {VISUAL_PROMPT_DIM: [1\n", "not valid YAML"),
    ],
)
def test_a_bad_subnet_file_is_refused_when_the_config_is_built(tmp_path, text, message) -> None:
    path = tmp_path / "subnet.yaml"
    path.write_text(text)
    with pytest.raises(SubnetFileError, match=message):
        read_noah_subnet(path)
    with pytest.raises(MethodSettingsError, match=message):
        resolve_config("noah", subnet=str(path))


def test_noah_settings_are_checked() -> None:
    with pytest.raises(MethodSettingsError, match="not both"):
        resolve_config("noah", subnet=str(CIFAR100), lora=4)
    with pytest.raises(MethodSettingsError, match="twice"):
        resolve_config("noah-supernet", sizes=[5, 5])
    with pytest.raises(snftune.methods.NotApplicableError, match="exceed the model's 4 blocks"):
        snftune.apply(vit(), "noah-supernet", depths=[2, 6])
    with pytest.raises(MethodSettingsError, match="snftune search noah"):
        snftune.apply(vit(), "noah")  # no sizes: they are to be searched
    with pytest.raises(snftune.methods.NotApplicableError, match="model has 4 blocks"):
        snftune.apply(vit(), "noah", subnet=str(CIFAR100))  # NOAH's files are for 12 blocks
    assert [parse_count(v) for v in ("0.64M", "640K", "640000", 640_000, "1.5k")] == [640_000] * 4 + [1500]
    for bad in ("0.64", "lots", 0, "-1M"):
        with pytest.raises(SettingsError):
            parse_count(bad)


# ---------------------------------------------------------------- supernet training


def test_supernet_training_draws_a_subnet_per_step_and_resumes_to_the_same_weights(tmp_path) -> None:
    torch.manual_seed(1)
    data = TensorDataset(torch.randn(32, 3, 32, 32), torch.arange(32) % 5)
    settings = TrainConfig(
        epochs=2, batch_size=8, lr=1e-2, warmup_epochs=0.5, workers=0, progress=False, checkpoint_every=5, eval_every=0
    )

    def supernet() -> nn.Module:
        return snftune.apply(vit(depth=2), "noah-supernet", sizes=(2, 4, 8))

    reference, seen = supernet(), []
    reference.register_forward_hook(lambda model, args, out: seen.append(model.noah_switch.current))
    train(reference, data, settings, tmp_path / "reference")
    assert len(seen) == 8 and len(set(seen)) >= 6  # 8 steps, a fresh random subnet in each

    class Killed(Exception):
        pass

    def kill_at_step_7(model, args) -> None:
        kill_at_step_7.calls += 1
        if kill_at_step_7.calls == 7:
            raise Killed

    kill_at_step_7.calls = 0
    crashed = supernet()
    handle = crashed.register_forward_pre_hook(kill_at_step_7)
    with pytest.raises(Killed):
        train(crashed, data, settings, tmp_path / "crashed")
    assert load_checkpoint(tmp_path / "crashed" / CHECKPOINT_NAME)["position"] == {"epoch": 1, "step": 1}
    handle.remove()
    resumed = supernet()
    train(resumed, data, settings, tmp_path / "crashed", resume=True)
    expected = tuned_tensors(reference)
    assert all(torch.equal(t, expected[name]) for name, t in tuned_tensors(resumed).items())


# ---------------------------------------------------------------- the evolutionary search


def synthetic_search(tmp_path: Path, fitness=None, **settings):
    """A search over a 6-block space with a cheap deterministic score."""
    space = SubnetSpace((5, 10, 50, 100), quarter_depths(6), 6)
    score = fitness or (lambda s: float(sum(s.prompt) + 2 * sum(s.adapter) - 0.5 * sum(s.lora)))
    values = dict(param_limit=40_000, population=12, generations=4, top_k=4, mutation=4, crossover=4, seed=5)
    lines: list[str] = []
    result = evolve(
        space,
        lambda s: subnet_parameters(s, 32),
        score,
        EvolutionSettings(**{**values, **settings}),
        tmp_path / "state.json",
        fingerprint="synthetic",
        log=lines.append,
    )
    return result, lines


def untimed(result: dict) -> dict:
    return {key: value for key, value in result.items() if key != "timing"}


def test_search_respects_the_limit_logs_every_generation_and_is_deterministic(tmp_path) -> None:
    result, lines = synthetic_search(tmp_path / "a")
    state = json.loads((tmp_path / "a" / "state.json").read_text())
    assert all(c["parameters"] <= 40_000 for c in state["candidates"]) and result["over_limit"] > 0
    assert len({json.dumps(c["subnet"]) for c in state["candidates"]}) == len(state["candidates"])  # once each
    assert [h["generation"] for h in result["history"]] == [0, 1, 2, 3, 4]
    assert all("limit 40,000" in line for line in lines) and len(lines) == 5
    best_scores = [h["best_top1"] for h in result["history"]]
    assert best_scores == sorted(best_scores) and result["best"]["top1"] == best_scores[-1]
    assert result["best"]["top1"] == max(c["top1"] for c in state["candidates"])
    again, _ = synthetic_search(tmp_path / "b")
    assert untimed(again) == untimed(result)
    other, _ = synthetic_search(tmp_path / "c", seed=6)
    assert other["history"] != result["history"]


def test_a_killed_search_resumes_to_the_same_result(tmp_path) -> None:
    reference, _ = synthetic_search(tmp_path / "reference")
    calls = []

    def dies_mid_generation_3(subnet: Subnet) -> float:
        calls.append(subnet)
        if len(calls) == 30:
            raise KeyboardInterrupt
        return float(sum(subnet.prompt) + 2 * sum(subnet.adapter) - 0.5 * sum(subnet.lora))

    with pytest.raises(KeyboardInterrupt):
        synthetic_search(tmp_path / "killed", fitness=dies_mid_generation_3)
    assert json.loads((tmp_path / "killed" / "state.json").read_text())["generation"] == 1
    resumed, lines = synthetic_search(tmp_path / "killed")
    assert lines[0] == "  resuming the search after generation 1"
    assert untimed(resumed) == untimed(reference)
    with pytest.raises(SettingsError, match="other settings"):
        synthetic_search(tmp_path / "killed", population=10)


def test_search_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match="exceed the population"):
        EvolutionSettings(population=10, mutation=6, crossover=6)
    with pytest.raises(SettingsError, match="mutation_prob"):
        EvolutionSettings(mutation_prob=1.5)


# ---------------------------------------------------------------- the pipeline on the shipped backbone


QUICK = ["--workers", "0", "--no-progress", "--data-options", "n_test=200"]
SEARCH = [
    *"search noah --model snftune-vit-tiny --data generated/shapes --param-limit 20K --sizes 4 8 16 32".split(),
    *"--population 6 --generations 2 --top-k 3 --mutation 2 --crossover 2".split(),
    *"--epochs 1 --warmup-epochs 0.2 --lr 0.005 --supernet epochs=2".split(),
    *QUICK,
]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("noah") / "shapes"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*SEARCH, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_the_pipeline_writes_each_phase_in_its_folder(pipeline, capsys) -> None:
    out = pipeline
    supernet = read_run_config(out / SUPERNET_DIR)
    assert (supernet["method"], supernet["train_split"], supernet["eval_split"]) == (
        "noah-supernet",
        "train800",
        "val200",
    )
    assert supernet["train"]["epochs"] == 2 and supernet["method_options"]["sizes"] == [4, 8, 16, 32]
    assert supernet["train"]["weight_decay"] == 1e-4  # NOAH's recipe where nothing was given
    result = json.loads((out / SEARCH_DIR / RESULT_NAME).read_text())
    state = json.loads((out / SEARCH_DIR / STATE_NAME).read_text())
    assert result["selected_on"] == "val200" and result["best"]["parameters"] <= 20_000
    assert all(c["parameters"] <= 20_000 for c in state["candidates"]) and len(result["history"]) == 3
    retrain = read_run_config(out)
    best = Subnet.from_dict(result["best"]["subnet"])
    assert (
        retrain["method"] == "noah" and retrain["train_split"] == "train800val200" and retrain["eval_split"] == "test"
    )
    assert read_noah_subnet(out / SEARCH_DIR / SUBNET_NAME) == best
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tuned_parameters"] == result["best"]["parameters"] == subnet_parameters(best, 96)
    settings = settings_from_record(retrain)
    evaluated = evaluate_tuned(settings, out / TUNED_NAME, workers=0)  # load_tuned on a fresh backbone
    assert evaluated["top1"] == metrics["top1"] and evaluated["split"] == "test"
    # a rerun skips every finished phase and touches nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main([*SEARCH, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished, skipped") == 3 and "NOAH: top-1" in printed
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_the_search_beats_the_median_of_random_subnets_under_the_same_limit(pipeline) -> None:
    scorer = load_supernet(pipeline / SUPERNET_DIR)
    found = json.loads((pipeline / SEARCH_DIR / RESULT_NAME).read_text())["best"]
    draw, randoms = random.Random(2024).randrange, []
    while len(randoms) < 8:
        subnet = scorer.space.random(draw)
        if scorer.count(subnet) <= 20_000:
            randoms.append(scorer.fitness(subnet))
    assert found["top1"] >= statistics.median(randoms)
    assert found["top1"] == scorer.fitness(Subnet.from_dict(found["subnet"]))  # inherited weights, reproducible


def test_a_search_killed_mid_generation_resumes_to_the_pipelines_result(pipeline, tmp_path) -> None:
    scorer = load_supernet(pipeline / SUPERNET_DIR)
    reference = json.loads((pipeline / SEARCH_DIR / RESULT_NAME).read_text())
    settings = EvolutionSettings(**reference["settings"])
    calls = []

    def dies(subnet: Subnet) -> float:
        calls.append(subnet)
        if len(calls) == 8:  # in generation 1
            raise KeyboardInterrupt
        return scorer.fitness(subnet)

    def search(fitness):
        return evolve(
            scorer.space,
            scorer.count,
            fitness,
            settings,
            tmp_path / "state.json",
            fingerprint=scorer.fingerprint,
            log=lambda line: None,
        )

    with pytest.raises(KeyboardInterrupt):
        search(dies)
    resumed = search(scorer.fitness)
    for key in ("best", "top_k", "history", "evaluated", "over_limit"):
        assert resumed[key] == reference[key], key


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--param-limit", "2K"], "below the smallest subnet"),
        (["--model", "resnet18", "--pretrained", "random"], "resnet backbone"),
        (["--retrain", "learning_rate=0.1"], "'learning_rate' cannot be set per phase"),
        (["--population", "3"], "exceed the population"),
    ],
)
def test_bad_requests_fail_in_one_line_before_anything_is_written(tmp_path, capsys, extra, message) -> None:
    assert main([*SEARCH, *extra, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("snftune search: error:")
    assert not (tmp_path / "out").exists()


def test_a_bad_subnet_file_fails_train_in_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("RETRAIN: {VISUAL_PROMPT_DIM: [1, 2, 3, 4], LORA_DIM: [1, 2, 3], ADAPTER_DIM: [1, 2, 3, 4]}\n")
    args = ["train", "--model", "snftune-vit-tiny", "--data", "generated/shapes", "--method", "noah"]
    assert main([*args, "--method-options", f"subnet={bad}", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "one size per block" in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_bench_runs_noah_per_cell_and_tables_its_retrained_subnet(tmp_path, capsys) -> None:
    suite = {
        "name": "noah-check",
        "model": "vit_tiny_patch16_224",
        "pretrained": "random",
        "model_kwargs": {"depth": 2, "patch_size": 8},
        "img_size": 32,
        "train": {"epochs": 1, "warmup_epochs": 0.2, "batch_size": 64, "workers": 0, "drop_path": 0.0},
        "data_options": {"n_test": 100},
        "methods": [
            {
                "label": "noah",
                "method": "noah",
                "options": {
                    "param_limit": "20K",
                    "sizes": [4, 8],
                    "population": 3,
                    "generations": 0,
                    "top_k": 2,
                    "mutation": 0,
                    "crossover": 0,
                },
            },
        ],
        "tasks": [{"data": "generated/count", "column": "Count"}],
    }
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    args = ["bench", "--suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 0
    cell = tmp_path / "out" / "noah" / "generated-count"
    assert (cell / SUPERNET_DIR / "metrics.json").is_file() and (cell / SEARCH_DIR / SUBNET_NAME).is_file()
    row = json.loads((tmp_path / "out" / "results.json").read_text())["cells"][0]
    assert row["method"] == "noah" and row["top1"] is not None and 0 < row["tuned_parameters"] <= 20_000
    capsys.readouterr()
    assert main(args) == 0 and "finished, skipped" in capsys.readouterr().out
    assert main([*args, "--dry-run"]) == 0
