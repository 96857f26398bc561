"""The lab protocol end to end (Gao et al., arXiv 2210.10760): SFT -> pairs -> proxy RM -> RL × methods × seeds.

The proxy depends on the testbed (Testbed.proxy): a Bradley-Terry RM on gold-labelled pairs
(summarize, hf), a judge trained on gold-labelled answers (judge), or a rule with nothing to train
(math_format). The hf testbed's policy is already fine-tuned: its SFT stage only records the model.

Shared stages (SFT, labelled data, proxy models) are computed once per OUT and reused; each stage records the
fingerprint of the configuration it was built from, so a changed configuration is refused instead
of silently mixed with stale artifacts.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from datasets import DatasetDict, load_from_disk
from pyarrow import ArrowException
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from overopt import distributed, faults
from overopt.checkpoint import Checkpointer
from overopt.config import ExperimentConfig, JudgeConfig, ModelConfig, PairsConfig, PRMConfig, to_yaml
from overopt.errors import StaleArtifactError
from overopt.io import atomic_write_text, fingerprint, read_json, replace_dir, write_json
from overopt.lock import run_lock
from overopt.methods import MethodPlan, resolve_method
from overopt.models.policy import SAFE_LOADING, tiny_llama
from overopt.models.reward import reward_model_from_backbone
from overopt.progress import StageProgress, console
from overopt.sampling import pad_left
from overopt.stages.bon import run_best_of_n
from overopt.stages.daa import run_daa
from overopt.stages.judge import ANSWER_COLUMNS, sample_and_label_answers, train_judge
from overopt.stages.method_run import SAMPLE_BATCH, Lab, run_method
from overopt.stages.pairs import PAIR_COLUMNS, gold_score_given_pairs, sample_and_label_pairs
from overopt.stages.prm import STEP_COLUMNS, given_steps, sample_and_label_steps, train_prm
from overopt.stages.rm import train_reward_model
from overopt.stages.sft import train_sft
from overopt.testbeds import TESTBEDS, make_testbed
from overopt.testbeds.base import Testbed


def quiet_libraries() -> None:
    """Our own progress bars say what is happening; silence the libraries' per-file bars and load reports."""
    import datasets
    import huggingface_hub
    import transformers

    huggingface_hub.utils.logging.set_verbosity_error()  # e.g. its retry warnings for an unreachable Hub
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def stage_fingerprints(cfg: ExperimentConfig, proxy: str, device: torch.device | str | None = None) -> dict[str, str]:
    """Each stage's fingerprint covers the sections it is built from; "rm" is what the RL runs start from
    (the proxy model, or the SFT policy under a rule reward, which reads no pairs, judge or RM section).
    `device`: where the testbed's models run (None: config `device`); a GPU's stages and runs are other ones
    than the CPU's (other kernels), and everything built on the CPU before the knob existed keeps its own."""
    entry = TESTBEDS.resolve(cfg.testbed)  # a plugin's code version makes its stages stale when it changes
    device = torch.device(device if device is not None else distributed.lab_device(cfg.device))
    world = (cfg.testbed, entry.knobs(cfg), cfg.seed, *([entry.version] if entry.version else []),
             *([{"device": device.type}] if device.type != "cpu" else []))  # fmt: skip
    sft = fingerprint(world, cfg.model.model_dump(), cfg.sft.model_dump())
    heldout = _heldout_fingerprints(cfg, sft)
    if proxy == "rule":
        return {"sft": sft, "data": sft, "rm": sft, **heldout}
    labelled = fingerprint(sft, _labelled_section(cfg, proxy).model_dump())
    if proxy in ("judge", "process"):
        return {"sft": sft, "data": labelled, "rm": labelled, **heldout}
    # An RM of its own size starts from an SFT model of that size ("rm_backbone"); the size knobs enter the
    # RM's fingerprint through that stage only, so an RM on the policy's backbone keeps its fingerprint.
    own = own_rm_backbone(cfg)
    backbone = fingerprint(world, cfg.rm_backbone.model_dump(), cfg.sft.model_dump()) if own else sft
    rm = fingerprint(labelled, cfg.rm.model_dump(exclude=set(ModelConfig.model_fields)), *([backbone] if own else []),
                     *_computation(cfg))  # fmt: skip
    return {"sft": sft, "data": labelled, "rm": rm, "rm_backbone": backbone, **heldout}


def _heldout_fingerprints(cfg: ExperimentConfig, sft: str) -> dict[str, str]:
    """The validation RM's stages (eval.heldout_rm_prompts > 0): its own pairs and a Bradley-Terry RM on the SFT
    backbone, trained with the pairs and rm sections whatever the testbed's proxy is."""
    n = cfg.eval.heldout_rm_prompts
    if not n:
        return {}
    pairs = fingerprint(sft, cfg.pairs.model_dump(), "heldout", n)
    rm = fingerprint(pairs, cfg.rm.model_dump(exclude=set(ModelConfig.model_fields)), *_computation(cfg))
    return {"heldout_pairs": pairs, "rm_heldout": rm}


def _computation(cfg: ExperimentConfig) -> list:
    """What changes how a stage computes (not what): compute_once, in the fingerprints of the stages it changes.
    Only when on: everything built before the knob existed computed every row in full and stays valid off."""
    return [{"compute_once": True}] if cfg.compute_once else []


def own_rm_backbone(cfg: ExperimentConfig) -> bool:
    """True when the proxy RM is sized (rm.*) unlike the policy, so it needs an SFT backbone of its own."""
    return cfg.rm_backbone != cfg.model


# Knobs added after runs were built, by section: (switch, its value that reproduces what ran before the knob
# existed, the fields then left out). A run with the switch at that value is the run it was before, so its
# fingerprint leaves the knob out and finished runs stay valid (tests/test_pipeline.py pins them).
_ADDED_KNOBS: dict[str, list[tuple[str, Any, set[str]]]] = {
    "rl": [("stop_on_alarm", "", {"stop_on_alarm"})],  # no stop alarm
    "eval": [("heldout_rm_prompts", 0, {"heldout_rm_prompts"})],  # no validation RM
    "ocrm": [("warm_start", False, {"warm_start", "warm_start_epochs"})],  # refits from scratch
}


def _without_added_knobs(name: str, section: dict) -> dict:
    """`section` (a model_dump) without the fields of the knobs added later that are at their old behaviour."""
    drop = {f for switch, old, fields in _ADDED_KNOBS.get(name, ()) if section.get(switch) == old for f in fields}
    return {key: value for key, value in section.items() if key not in drop}


def _run_fingerprint(rm_fp: str, plan, variant: ExperimentConfig, seed: int) -> str:
    """A run's fingerprint: the proxy it starts from, its RL and eval settings, its method's sections, its seed."""
    sections = {name: _without_added_knobs(name, section) for name, section in plan.part_sections(variant).items()}
    if plan.ensemble:
        sections["ensemble"] = variant.ensemble.model_dump()
    if plan.daa:
        sections["daa"] = variant.daa.model_dump()
    # Best-of-n and direct alignment do no RL: rl.* cannot make them stale.
    rl = {} if plan.best_of_n or plan.daa else _without_added_knobs("rl", plan.rl.model_dump())
    evaluation = _without_added_knobs("eval", variant.eval.model_dump())
    sampler = [{"batch_runs": True}] if variant.batch_runs else []  # the stacked sampler: see overopt.batching
    return fingerprint(rm_fp, plan.name, rl, evaluation, sections, seed, *_computation(variant), *sampler)


def _refuse_stale(out: Path, fps: dict[str, str], runs: dict[Path, str]) -> None:
    """Raise StaleArtifactError if any finished stage or run in OUT was built from another configuration."""
    stages = {out / "artifacts" / "sft": fps["sft"], out / "artifacts" / "rm": fps["rm"]}
    if "rm_backbone" in fps:
        stages[out / "artifacts" / "rm_backbone"] = fps["rm_backbone"]
    stages.update({out / "artifacts" / data: fps["data"] for data in ("pairs", "judge_data")})
    stages.update({out / "artifacts" / name: fps[name] for name in ("heldout_pairs", "rm_heldout") if name in fps})
    for member in out.glob("artifacts/rm_*"):  # ensemble members 1..k-1
        if member.name[3:].isdigit():
            stages[member] = fingerprint(fps["rm"], int(member.name[3:]))
    for directory, fp in {**stages, **runs}.items():
        _finished(directory, fp)


def _finished(stage_dir: Path, expected: str) -> bool:
    """True if the stage is complete and matches; raises if it was built from another config."""
    marker = stage_dir / "stage.json"
    if not marker.exists():
        return False
    found = read_json(marker).get("fingerprint")
    if found != expected:
        raise StaleArtifactError(
            f"{stage_dir} was built from a different configuration; use a new --out or delete that directory"
        )
    return True


def _run_stage(out: Path, name: str, fp: str, build, every_s: float) -> Path:
    """Run `build(tmp_dir, progress, checkpoints) -> metrics` unless finished; the result appears atomically
    at OUT/artifacts/name. An interrupted build resumes from its checkpoints in OUT/checkpoints/name."""
    final = out / "artifacts" / name
    checkpoints = Checkpointer(out / "checkpoints" / name, fp, every_s)
    if _finished(final, fp):
        checkpoints.clear()  # left behind if the run stopped right after the stage was published
        console.print(f"[dim]reusing {final}[/dim]")
        return final
    # Several processes all build the stage; the main one publishes it, the others drop their copy.
    main = distributed.is_main()
    tmp = out / "artifacts" / (f".{name}.tmp" if main else f".{name}.tmp.rank{distributed.rank()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    with StageProgress(name) as progress:
        metrics = build(tmp, progress, checkpoints)
    if main:
        write_json(
            tmp / "stage.json",
            {"stage": name, "fingerprint": fp, "wall_s": time.perf_counter() - start, "metrics": metrics},
        )
        faults.point("stage.publish")
        replace_dir(tmp, final)
        checkpoints.clear()
    else:
        shutil.rmtree(tmp)
    distributed.barrier()  # the others read what the main process published
    return final


Plans = dict[str, tuple[MethodPlan, ExperimentConfig]]  # run name -> (method, its configuration)


def resolve_plans(cfg: ExperimentConfig, variants: list[tuple[str, str, ExperimentConfig]] | None = None) -> Plans:
    """Every run's method plan and configuration; impossible methods and sweeps raise ValueError."""
    variants = cfg.method_variants() if variants is None else variants
    return {name: (resolve_method(method, variant.rl), variant) for name, method, variant in variants}


def jobs(cfg: ExperimentConfig, plans: Plans) -> list[tuple[str, int]]:
    """(run name, seed) of every run, in the order `overopt run` executes them."""
    return [(name, seed) for name in plans for seed in range(cfg.seeds)]


def open_testbed(cfg: ExperimentConfig, plans: Plans):
    """Quiet the libraries, set threads, build the testbed and check every method against its proxy."""
    quiet_libraries()
    if not distributed.is_main():
        console.quiet = True  # under accelerate launch, the main process reports for all
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    testbed = make_testbed(cfg)  # the hf testbed checks its models and data here
    if own_rm_backbone(cfg) and (testbed.proxy != "preference" or testbed.policy_path is not None):
        raise ValueError(
            f"rm.hidden_size/num_layers/num_heads size the lab's own Bradley-Terry RM; testbed {testbed.name!r} "
            f"has none (its proxy: {testbed.proxy}) or brings its own policy"
        )
    for plan, _ in plans.values():
        plan.check_proxy(testbed.proxy, testbed.name)
    if testbed.proxy != "process" and any(variant.rl.aggregation != "sum" for _, variant in plans.values()):
        raise ValueError(
            f"rl.aggregation: testbed {testbed.name!r} scores whole completions; aggregating step rewards needs "
            "a process reward (testbed process)"
        )
    for name, (plan, _) in plans.items():  # the method's own RL settings (`none` turns the KL off)
        if testbed.proxy == "process" and (conflict := plan.rl.step_return_conflict()):
            raise ValueError(f"method {name!r}: {conflict}")
    return testbed


def build_lab(cfg: ExperimentConfig, testbed, plans: Plans, publish: bool = True) -> Lab:
    """The shared stages (SFT, labelled data, proxy models), trained or reused, as a Lab.

    Finished stages and runs built from another configuration are refused first. `publish` writes
    OUT/config.yaml; the comparison's worker processes, which only read the stages, pass False."""
    out = Path(cfg.out)
    fps = stage_fingerprints(cfg, testbed.proxy, testbed.device)
    runs = {
        out / "runs" / name / f"seed{seed}": _run_fingerprint(fps["rm"], plan, variant, seed)
        for name, (plan, variant) in plans.items()
        for seed in range(cfg.seeds)
    }
    _refuse_stale(out, fps, runs)  # before config.yaml is replaced: it still describes what OUT holds
    out.mkdir(parents=True, exist_ok=True)  # commands create it with its lock (overopt.lock.out_lock)
    if publish and distributed.is_main():
        atomic_write_text(out / "config.yaml", to_yaml(cfg))
        write_json(out / TESTBED_FILE, testbed_record(cfg, testbed))
    # Adam's moment estimates of parameters that get no gradient for a while (unused embeddings,
    # completions a method weights by 0) decay into subnormal floats, which x86 CPUs process about
    # 100× slower; flushing them to zero changes nothing measurable and keeps steps fast.
    torch.set_flush_denormal(True)
    tok = testbed.tokenizer

    # 1. SFT policy.
    every_s = cfg.checkpoint_every_s
    stage = partial(_run_stage, out, every_s=every_s)

    def build_sft(size: ModelConfig, tmp: Path, progress: StageProgress, checkpoints: Checkpointer) -> dict:
        corpus = testbed.sft_corpus(cfg.sft.n_examples, cfg.seed)
        policy = tiny_llama(
            tok,
            size.hidden_size,
            size.num_layers,
            size.num_heads,
            max_positions=_longest_sequence(cfg, testbed, corpus) + 8,
            seed=cfg.seed,
        ).to(testbed.device)  # initialised on the CPU: the same weights wherever it trains
        metrics = train_sft(
            policy,
            corpus,
            epochs=cfg.sft.epochs,
            batch_size=cfg.sft.batch_size,
            lr=cfg.sft.lr,
            eval_fraction=cfg.sft.eval_fraction,
            pad_id=tok.pad_token_id,
            seed=cfg.seed,
            progress=progress,
            checkpoints=checkpoints,
        )
        policy.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        return metrics

    policy_path = testbed.policy_path  # hf: a given model that is already the SFT policy
    if policy_path is None:
        sft_dir = stage("sft", fps["sft"], partial(build_sft, cfg.model))
    else:  # nothing to train or copy: OUT/artifacts/sft/stage.json records which model it is
        stage("sft", fps["sft"], lambda tmp, progress, checkpoints: {"policy": policy_path})
        sft_dir = policy_path
    sft_policy = _load_artifact(sft_dir, AutoModelForCausalLM.from_pretrained, **_loading(testbed))
    sft_policy = testbed.loaded_policy(sft_policy.to(testbed.device).eval())  # config `device`: a GPU when there is one

    # 2-4. The proxy: a Bradley-Terry RM on gold-labelled pairs, a judge of gold-labelled answers,
    #      or (RLVR) the testbed's rule reward with nothing to train.
    rm_backbone = sft_dir
    if own_rm_backbone(cfg):  # 2a. The RM's own backbone: an SFT model of the RM's size, on the same demonstrations.
        rm_backbone = stage("rm_backbone", fps["rm_backbone"], partial(build_sft, cfg.rm_backbone))
    if testbed.proxy == "preference":
        data_stage, train_member = "pairs", _pairs_and_rm(cfg, testbed, sft_policy, rm_backbone)
    elif testbed.proxy == "judge":
        data_stage = "judge_data"
        train_member = _answers_and_classifier(cfg, testbed, sft_policy, sft_dir, sample_and_label_answers,
                                               train_judge)  # fmt: skip
    elif testbed.proxy == "process":
        data_stage = "prm_data"
        train_member = _answers_and_classifier(cfg, testbed, sft_policy, sft_dir, sample_and_label_steps,
                                               train_prm)  # fmt: skip
    else:
        data_stage, train_member = None, None
    labelled = None
    if data_stage is not None:
        data_dir = stage(data_stage, fps["data"], train_member.build_data)
        columns = {"judge": ANSWER_COLUMNS, "process": STEP_COLUMNS}.get(testbed.proxy, PAIR_COLUMNS)
        labelled = _load_artifact(data_dir, _load_labelled, columns=columns)
    reward_models: list = []

    def first_reward_models(k: int) -> list:
        """The first k proxy models; more members, differing only in seed (head init and data order),
        are trained on demand for ensembles."""
        if train_member is None:
            raise ValueError(f"testbed {testbed.name!r} rewards by rule: it has no learned reward model to train")
        for member in range(len(reward_models), k):
            name, fp = ("rm", fps["rm"]) if member == 0 else (f"rm_{member}", fingerprint(fps["rm"], member))
            member_dir = stage(name, fp, partial(train_member.build_model, labelled, cfg.seed + member))
            rm = _load_artifact(member_dir, AutoModelForSequenceClassification.from_pretrained, **SAFE_LOADING)
            reward_models.append(rm.to(sft_policy.device).eval())
        return reward_models[:k]

    if train_member is not None:
        first_reward_models(1)

    # 4b. The practitioner's validation RM (eval.heldout_rm_prompts): a Bradley-Terry RM on gold-labelled SFT pairs
    #     of prompts the proxy never saw; the runs log its score of their eval samples, gold stays unseen.
    heldout_rm = None
    if cfg.eval.heldout_rm_prompts:
        validation = _pairs_and_rm(cfg, testbed, sft_policy, sft_dir, prompts=_heldout_prompts(cfg, testbed))
        pairs_dir = stage("heldout_pairs", fps["heldout_pairs"], validation.build_data)
        heldout_pairs = _load_artifact(pairs_dir, _load_labelled, columns=PAIR_COLUMNS)
        rm_dir = stage("rm_heldout", fps["rm_heldout"], partial(validation.build_model, heldout_pairs,
                                                                 cfg.seed + HELDOUT_RM_SEED))  # fmt: skip
        heldout_rm = _load_artifact(rm_dir, AutoModelForSequenceClassification.from_pretrained, **SAFE_LOADING)
        heldout_rm = heldout_rm.to(sft_policy.device).eval()

    # The held-out prompts of every evaluation; policy optimisation runs through run_job.
    eval_ids, eval_mask = pad_left(_eval_prompts(cfg, testbed), tok.pad_token_id)
    return Lab(
        cfg=cfg, testbed=testbed, sft_dir=sft_dir, rm_backbone=rm_backbone, sft_policy=sft_policy, pairs=labelled,
        reward_models=first_reward_models,
        train_prompts=_rl_prompts(cfg, testbed),
        eval_ids=eval_ids, eval_mask=eval_mask, run_fingerprints=runs, heldout_rm=heldout_rm,
    )  # fmt: skip


TESTBED_FILE = "testbed.json"  # the testbed that ran: the report names it (a plugin's spec is an import path)


def testbed_record(cfg: ExperimentConfig, testbed: Testbed) -> dict:
    """OUT/testbed.json: the testbed that ran (its own name and proxy), how it was asked for, its code version."""
    entry = TESTBEDS.resolve(cfg.testbed)
    return {"name": testbed.name, "spec": cfg.testbed, "proxy": testbed.proxy, "version": entry.version}


# The prompts of each stage: one definition, read by the stage and by the SFT model's position count.
def _eval_prompts(cfg: ExperimentConfig, testbed: Testbed) -> list[list[int]]:
    return testbed.prompts("eval", cfg.eval.n_prompts, cfg.seed)


def _rl_prompts(cfg: ExperimentConfig, testbed: Testbed) -> list[list[int]]:
    return testbed.prompts("train", max(4 * cfg.rl.prompts_per_step, cfg.pairs.n_prompts), cfg.seed + 2)


MIN_PAIRS = 20  # fewer gold-labelled pairs than this train no RM worth the name (and leave no held-out split)
HELDOUT_RM_SEED = 1000  # the validation RM's head init and data order: cfg.seed + this (no proxy member has it)


def _heldout_prompts(cfg: ExperimentConfig, testbed: Testbed) -> list[list[int]]:
    """The validation RM's prompts: a draw of their own (seed + 3), apart from the proxy's (seed + 1)."""
    return testbed.prompts("train", cfg.eval.heldout_rm_prompts, cfg.seed + 3)


def _labelled_prompts(cfg: ExperimentConfig, testbed: Testbed) -> list[list[int]]:
    """The prompts of the proxy's labelled data: preference pairs, the judge's or the PRM's answers."""
    return testbed.prompts("train", _labelled_section(cfg, testbed.proxy).n_prompts, cfg.seed + 1)


def _labelled_section(cfg: ExperimentConfig, proxy: str) -> JudgeConfig | PRMConfig | PairsConfig:
    """The config section of the proxy's labelled data and its training: judge, prm, or pairs."""
    return {"judge": cfg.judge, "process": cfg.prm}.get(proxy, cfg.pairs)


def _longest_sequence(cfg: ExperimentConfig, testbed: Testbed, corpus: list) -> int:
    """Positions the SFT model needs: the longest prompt any stage will use plus the completion budget, or
    the longest demonstration (prompts may vary in length). Prompt ids outside the vocabulary are refused here."""
    prompt_sets = [_eval_prompts(cfg, testbed), _rl_prompts(cfg, testbed)]
    if testbed.proxy != "rule":
        prompt_sets.append(_labelled_prompts(cfg, testbed))
    if cfg.eval.heldout_rm_prompts:
        prompt_sets.append(_heldout_prompts(cfg, testbed))
    prompts = [p for prompts in prompt_sets for p in prompts]
    vocab = len(testbed.tokenizer)
    bad = next((t for p in [*prompts, *(e.prompt_ids + e.completion_ids for e in corpus)] for t in p
                if not 0 <= t < vocab), None)  # fmt: skip
    if bad is not None:
        raise ValueError(f"testbed {cfg.testbed!r}: token id {bad} is outside its tokenizer's vocabulary ({vocab})")
    longest_prompt = max(len(p) for p in prompts) + testbed.max_completion_tokens
    return max(longest_prompt, max((len(e.prompt_ids) + len(e.completion_ids) for e in corpus), default=0))


def is_finished(lab: Lab, name: str, seed: int) -> bool:
    """True if run `name` × `seed` is finished in OUT (raises if it was built from another configuration)."""
    run_dir = Path(lab.cfg.out) / "runs" / name / f"seed{seed}"
    return _finished(run_dir, lab.run_fingerprints[run_dir])


def run_job(lab: Lab, plans: Plans, name: str, seed: int) -> None:
    """Run `name` for `seed` (or reuse it when finished), resuming from its checkpoints."""
    out, every_s = Path(lab.cfg.out), lab.cfg.checkpoint_every_s
    plan, variant = plans[name]
    run_dir = out / "runs" / name / f"seed{seed}"
    run_fp = lab.run_fingerprints[run_dir]
    checkpoints = Checkpointer(out / "checkpoints" / "runs" / name / f"seed{seed}", run_fp, every_s)
    with run_lock(run_dir):  # parallel workers never train one run twice (overopt.lock)
        if _finished(run_dir, run_fp):
            checkpoints.clear()
            console.print(f"[dim]reusing {run_dir}[/dim]")
            return
        if plan.best_of_n:
            run_best_of_n(lab, plan, variant, seed, run_dir, name)
        elif plan.daa:
            run_daa(lab, plan, variant, seed, run_dir, name, checkpoints)
        else:
            run_method(lab, plan, variant, seed, run_dir, name, checkpoints)
        if distributed.is_main():
            write_json(run_dir / "stage.json", {"stage": "rl", "method": name, "seed": seed, "fingerprint": run_fp})
            checkpoints.clear()
    distributed.barrier()


def _load_artifact(path, load: Callable, **kwargs):
    """`load(path, **kwargs)` for a stage's output; a damaged or missing file ends in one line naming it."""
    try:
        return load(path, **kwargs)
    except (OSError, ValueError, IndexError, SafetensorError, ArrowException) as err:  # datasets: IndexError for 0 rows
        detail = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        fix = "; delete the directory to rebuild it" if Path(path).is_dir() else ""  # else an hf Hub id
        raise ValueError(f"{path}: cannot load it ({detail}){fix}") from None


def _load_labelled(path: Path, columns: tuple[str, ...]) -> DatasetDict:
    """A labelled-data stage's train/test splits, checked for the columns the proxy trains on."""
    data = load_from_disk(str(path / "data"))
    for split in ("train", "test"):
        if split not in data:
            raise ValueError(f"it has no {split!r} split")
        missing = [c for c in columns if c not in data[split].column_names]
        if missing:
            raise ValueError(f"its {split!r} split has no {missing[0]!r} column")
    return data


def _loading(testbed) -> dict:
    """from_pretrained arguments: safetensors only, no remote code (hf: float32 weights, hf.trust_remote_code)."""
    return {**SAFE_LOADING, **testbed.load_kwargs}


class _ProxyTraining(NamedTuple):
    """How a testbed's learned proxy is made: its labelled data, then each model from that data."""

    build_data: Callable[[Path, StageProgress, Checkpointer], dict]
    build_model: Callable[[DatasetDict, int, Path, StageProgress, Checkpointer], dict]


def _pairs_and_rm(
    cfg: ExperimentConfig, testbed, sft_policy, backbone: Path, prompts: list[list[int]] | None = None
) -> _ProxyTraining:
    """Gold-labelled pairs sampled from the SFT policy (on `prompts`, else the proxy's labelled prompts, or the
    testbed's own pairs where it brings them: Testbed.preference_pairs); Bradley-Terry RMs (`backbone`, fresh head)."""
    tok = testbed.tokenizer

    def build_data(tmp: Path, progress: StageProgress, checkpoints: Checkpointer) -> dict:
        torch.manual_seed(cfg.seed)
        given = testbed.preference_pairs() if prompts is None else None  # the validation RM samples its own
        if given is not None:
            pairs, stats = gold_score_given_pairs(testbed, given, batch_size=SAMPLE_BATCH, progress=progress)
            short = f"the testbed's preference data has {len(pairs)} pairs"
        else:
            pairs, stats = sample_and_label_pairs(
                sft_policy, testbed, _labelled_prompts(cfg, testbed) if prompts is None else prompts,
                labeling=cfg.pairs.labeling, bt_temperature=cfg.pairs.bt_temperature,
                label_noise=cfg.pairs.label_noise, drop_ties=cfg.pairs.drop_ties, seed=cfg.seed,
                batch_size=SAMPLE_BATCH, progress=progress,
            )  # fmt: skip
            asked = len(_labelled_prompts(cfg, testbed) if prompts is None else prompts)
            short = (f"{asked} prompts gave {len(pairs)} gold-labelled pairs that are not ties (the SFT policy's "
                     "two samples scored alike)")  # fmt: skip
        if len(pairs) < MIN_PAIRS:
            raise ValueError(f"{short}; an RM needs at least {MIN_PAIRS}" + ("" if given else ": ask for more prompts"))
        pairs.train_test_split(test_size=cfg.pairs.heldout_fraction, seed=cfg.seed).save_to_disk(str(tmp / "data"))
        return stats

    def build_model(
        pairs: DatasetDict, seed: int, tmp: Path, progress: StageProgress, checkpoints: Checkpointer
    ) -> dict:
        rm = reward_model_from_backbone(backbone, seed=seed, **_loading(testbed)).to(sft_policy.device)
        metrics = train_reward_model(
            rm, pairs["train"], pairs["test"], epochs=cfg.rm.epochs, batch_size=cfg.rm.batch_size,
            lr=cfg.rm.lr, pad_id=tok.pad_token_id, seed=seed, progress=progress, checkpoints=checkpoints,
            share_prefix=cfg.compute_once,
        )  # fmt: skip
        rm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        return metrics

    return _ProxyTraining(build_data, build_model)


def _answers_and_classifier(
    cfg: ExperimentConfig, testbed, sft_policy, sft_dir: Path, sample: Callable, train: Callable
) -> _ProxyTraining:
    """One T=1 SFT answer per labelled prompt, gold-labelled by `sample` (a judge: right/wrong; a PRM: each
    step); classifiers (SFT backbone, fresh head) trained by `train` with BCE on those labels, with the
    knobs of the judge or prm section (`_labelled_section`)."""
    tok, knobs = testbed.tokenizer, _labelled_section(cfg, testbed.proxy)

    def build_data(tmp: Path, progress: StageProgress, checkpoints: Checkpointer) -> dict:
        torch.manual_seed(cfg.seed)
        given = testbed.stepwise_examples() if testbed.proxy == "process" else None
        if given is not None:  # the testbed's own step-labelled solutions (hf.stepwise_dataset)
            answers, stats = given_steps(given)
        else:
            answers, stats = sample(
                sft_policy, testbed, _labelled_prompts(cfg, testbed), batch_size=SAMPLE_BATCH, progress=progress
            )
        answers.train_test_split(test_size=knobs.heldout_fraction, seed=cfg.seed).save_to_disk(str(tmp / "data"))
        return stats

    def build_model(
        answers: DatasetDict, seed: int, tmp: Path, progress: StageProgress, checkpoints: Checkpointer
    ) -> dict:
        model = reward_model_from_backbone(sft_dir, seed=seed, **_loading(testbed)).to(sft_policy.device)
        metrics = train(
            model, answers["train"], answers["test"], epochs=knobs.epochs, batch_size=knobs.batch_size,
            lr=knobs.lr, pad_id=tok.pad_token_id, seed=seed, progress=progress, checkpoints=checkpoints,
        )  # fmt: skip
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        return metrics

    return _ProxyTraining(build_data, build_model)
