"""Class-wise robustness evaluation: clean, PGD, CW-PGD and AutoAttack, reported per class name.

Why per sample: fairness claims live in the worst class, and a worst-class number is only
trustworthy when the attacks agree. Every attack yields a per-sample robust flag, so the report can
(1) give per-class accuracies keyed by class name, (2) combine attacks into a per-sample worst case
and (3) check that AutoAttack never calls a sample robust where plain PGD already broke it (the
project standard treats AutoAttack above PGD-20 as a bug to explain).

Robust means "correct on the clean input and at the adversarial point", as in AutoAttack, so for
every class clean >= PGD >= worst case on the same examples.

Scale-out: under `torchrun` every rank attacks its own blocks of examples (fixed blocks of
``batch_size``, dealt round-robin) and the per-sample flags are all-gathered, so each rank builds
the same report from every example. PGD and CW draw each block's random start from a generator
seeded by the block's number, so the flags (and the per-class counts) equal a one-process run's
exactly, whatever the world size. AutoAttack runs pyautoattack on each rank's shard; its own random
restarts are seeded per call, so its flags can differ from a one-process run on the few examples
whose outcome depends on the random start (see docs/scale-out.md).

Shapes: images (N, C, H, W) uint8; labels (N,) int64; pixels become [0, 1] floats batch by batch on
the device. eps and step sizes are L-inf radii in [0, 1] pixel units.
"""

from __future__ import annotations

import logging
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

import fairat
from fairat.engine.attacks import pgd_attack
from fairat.config import EvalConfig, to_dict
from fairat.engine.distributed import (DistContext, all_gather_cat, all_reduce_max, block_shard,
                                      rank_slice)
from fairat.engine.progress import Progress
from fairat.engine.seeds import generator
from fairat.io import write_json_atomic
from fairat.engine.metrics import accuracy_from_counts, classwise_counts, summarize
from fairat.provenance import git_commit, machine, package_version

log = logging.getLogger(__name__)

ATTACK_ORDER = ("clean", "pgd", "cw", "autoattack", "worst_case")
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


def first_per_class(labels: torch.Tensor, per_class: int | None,
                       num_classes: int) -> torch.Tensor:
    """Indices of the first ``per_class`` examples of every class, in index order (all if None).

    Deterministic: no RNG, so every attack and every rerun sees the same examples. A class with
    fewer examples contributes all it has. Returns sorted int64 indices into ``labels``.
    """
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    if per_class is None:
        return torch.arange(len(labels))
    picked = [torch.nonzero(labels == c).reshape(-1)[:per_class] for c in range(num_classes)]
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


# ----------------------------------------------------------------------------- AutoAttack adapter

def autoattack_settings(cfg: EvalConfig, num_classes: int) -> dict[str, Any]:
    """The AutoAttack run ``cfg`` asks for, with target counts clamped to ``num_classes - 1``.

    "standard" is the published configuration (APGD-CE 1 restart, APGD-T and FAB-T 9 targets,
    Square 5000 queries) except for that clamp; "custom" runs ``cfg.autoattack_attacks`` with
    ``cfg.apgd_restarts`` APGD-CE restarts (pyautoattack would default to 5) and
    ``cfg.apgd_targets`` targets.
    """
    if cfg.autoattack == "none":
        raise ValueError("evaluate.autoattack is 'none': there is no AutoAttack run to configure")
    standard = cfg.autoattack == "standard"
    attacks = list(STANDARD_ATTACKS if standard else cfg.autoattack_attacks)
    if num_classes < 4 and any(a in attacks for a in ("apgd-t", "apgd-dlr", "fab-t")):
        raise ValueError(f"AutoAttack {attacks} needs at least 4 classes for its DLR/targeted "
                         f"attacks; the model has {num_classes}. Use version 'custom' with "
                         "apgd-ce.")
    targets = max(1, min(9 if standard else cfg.apgd_targets, num_classes - 1))
    return {"version": cfg.autoattack, "attacks": attacks, "norm": "Linf", "eps": cfg.eps,
            "apgd_restarts": 1 if standard else cfg.apgd_restarts, "apgd_targets": targets,
            "fab_targets": targets, "seed": cfg.seed, "implementation": cfg.autoattack_impl}


@contextmanager
def _quiet_logger(name: str, quiet: bool) -> Iterator[None]:
    """Raise a logger to WARNING for the block (pyautoattack logs progress at INFO/DEBUG)."""
    logger = logging.getLogger(name)
    old = logger.level
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


@torch.no_grad()
def predict_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                    batch_size: int) -> torch.Tensor:
    """(N,) bool on the CPU: ``model(x).argmax(1) == y``, in batches on ``device``."""
    out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size].cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig,
                   device: torch.device | str, verbose: bool = False,
                   progress: bool = False) -> torch.Tensor:
    """Per-sample robust flags under AutoAttack, L-inf radius ``cfg.eps``.

    ``cfg.autoattack_impl`` picks the code: "reference" calls pyautoattack's
    ``run_standard_evaluation``; "fast" (fairat.engine.autoattack_fast) drives pyautoattack's own
    attack objects with every target of APGD-T and FAB-T in one batch and pyautoattack's random
    starts reproduced (benchmarks/autoattack_agreement.py measures that the verdicts agree).

    Args:
        model: maps [0, 1] inputs to logits; put it in eval mode first (AutoAttack assumes a
            deterministic model).
        x: (N, C, H, W) float in [0, 1], any device; made contiguous (APGD-T needs it).
        y: (N,) int64 labels.
        cfg: version, attacks, restarts, targets, seed, batch size and implementation.
        device: where the model runs; batches move there.
        verbose: let pyautoattack log its progress (reference).
        progress: print per-attack progress lines with robust-so-far and an ETA (fast).
    Returns:
        (N,) bool on the CPU: ``model(x_adv).argmax(1) == y``, computed here, not by the attack.
        The global torch RNG state is left as it was (pyautoattack reseeds it).
    """
    device = torch.device(device)
    x = x.detach().float().contiguous()
    y = y.detach().long().contiguous()
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.bool)
    with torch.no_grad():
        num_classes = model(x[:1].to(device)).shape[1]
    plan = autoattack_settings(cfg, num_classes)
    with _quiet_logger("auto-attack", not verbose), \
            torch.random.fork_rng(devices=_rng_devices(device)):
        if cfg.autoattack_impl == "fast":
            from fairat.engine.autoattack_fast import run_fast_autoattack
            from fairat.engine.progress import AttackProgress
            with AttackProgress(f"autoattack ({cfg.autoattack}, fast)", len(x),
                                enabled=progress) as bar:
                x_adv, _ = run_fast_autoattack(model, x, y, plan, cfg.batch_size, device,
                                               report=bar.report)
        else:
            x_adv = _reference_autoattack(model, x, y, cfg, plan, device, verbose)
    linf = (x_adv.to(x.device) - x).abs().amax().item()
    if linf > cfg.eps + 1e-5:
        raise RuntimeError(f"AutoAttack returned points {linf:.6f} away in L-inf (eps {cfg.eps})")
    return predict_correct(model, x_adv, y, device, cfg.batch_size)


def _reference_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig,
                          plan: dict[str, Any], device: torch.device,
                          verbose: bool) -> torch.Tensor:
    """pyautoattack's own ``run_standard_evaluation`` with ``plan``'s settings: the reference."""
    from pyautoattack import AutoAttack  # heavy, and only needed when AutoAttack runs

    custom = cfg.autoattack == "custom"
    aa = AutoAttack(model, attacks=plan["attacks"] if custom else None, device=device,
                    eps=cfg.eps, norm="Linf", seed=cfg.seed, version=cfg.autoattack)
    aa.verbose = verbose
    aa.apgd.n_restarts = plan["apgd_restarts"]
    aa.apgd_targeted.n_target_classes = plan["apgd_targets"]
    aa.fab.n_target_classes = plan["fab_targets"]
    out = aa.run_standard_evaluation(x, y, batch_size=cfg.batch_size)
    return (out[0] if isinstance(out, tuple) else out).detach()


# ----------------------------------------------------------------------------- consistency

def consistency_check(strong: Any, reference: Any, labels: Any, class_names: Sequence[str],
                      strong_name: str = "autoattack",
                      reference_name: str = "pgd") -> dict[str, Any] | None:
    """Warning when ``strong`` calls samples robust that ``reference`` already broke, else None.

    All three arrays cover the same examples: (N,) robust flags and (N,) labels. A stronger attack
    should find every adversarial example the weaker one found; each such sample is counted (also
    per class name), and accuracy above the reference's is flagged as an error.
    """
    s = np.asarray(torch.as_tensor(strong).cpu(), dtype=bool).reshape(-1)
    r = np.asarray(torch.as_tensor(reference).cpu(), dtype=bool).reshape(-1)
    y = np.asarray(torch.as_tensor(labels).cpu()).reshape(-1)
    if not (len(s) == len(r) == len(y)):
        raise ValueError(f"flag arrays differ in length: {len(s)}, {len(r)}, {len(y)}")
    bad = s & ~r
    if not bad.any():
        return None
    by_class, _ = classwise_counts(bad, y, len(class_names))
    acc_s, acc_r = float(s.mean()), float(r.mean())
    above = acc_s > acc_r
    return {
        "check": f"{strong_name}_robust_where_{reference_name}_succeeded",
        "severity": "error" if above else "warning",
        "attack": strong_name, "reference": reference_name, "n_examples": int(len(s)),
        "n_disagreeing": int(bad.sum()),
        "per_class_disagreeing": {n: int(c) for n, c in zip(class_names, by_class) if c},
        "accuracy": acc_s, "reference_accuracy": acc_r, "accuracy_above_reference": bool(above),
        "message": (f"{strong_name} says {int(bad.sum())} of {len(s)} examples are robust although "
                    f"{reference_name} found adversarial examples for them"
                    + (f"; {strong_name} accuracy {acc_s:.2%} is ABOVE {reference_name} "
                       f"{acc_r:.2%}: a bug to explain (attack or model setup)" if above else "")),
    }


# ----------------------------------------------------------------------------- evaluation

def _attack_entry(flags: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                  settings: dict[str, Any]) -> dict[str, Any]:
    hits, totals = classwise_counts(flags, labels, len(class_names))
    per_class = accuracy_from_counts(hits, totals, class_names)
    return {"per_class": per_class, "summary": summarize(per_class),
            "accuracy": float(hits.sum()) / float(totals.sum()), "n": int(totals.sum()),
            "counts": {"correct": dict(zip(class_names, map(int, hits))),
                       "total": dict(zip(class_names, map(int, totals)))},
            "settings": settings}


def _pgd_settings(cfg: EvalConfig, loss: str) -> dict[str, Any]:
    return {"eps": cfg.eps, "steps": cfg.pgd_steps, "step_size": cfg.pgd_step_size, "loss": loss,
            "random_start": True, "restarts": 1, "track_best": True, "seed": cfg.seed}


def _flags_by_block(n: int, ctx: DistContext, device: torch.device, block: int, names: list[str],
                    run: Any, progress: bool = True,
                    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Per-sample flags for positions ``range(n)``: ``run(block_number, positions)`` on this
    rank's blocks, gathered from every rank into position order. ``run`` returns
    ({name: (len,) bool flags}, {name: seconds}) for every name in ``names``; the seconds
    reported are the slowest rank's. Collectives run on ``device`` (NCCL needs GPU tensors)."""
    flags: dict[str, list[torch.Tensor]] = {}
    seconds: dict[str, float] = {}
    done: list[torch.Tensor] = []
    mine = block_shard(n, block, ctx)
    label = f"evaluate {'+'.join(names)} on {n} images"
    with Progress(label, len(mine), enabled=progress and ctx.is_main) as bar:
        for number, pos in mine:
            block_flags, block_seconds = run(number, pos)
            for name, f in block_flags.items():
                flags.setdefault(name, []).append(f.cpu())
                seconds[name] = seconds.get(name, 0.0) + block_seconds.get(name, 0.0)
            done.append(pos)
            bar.advance()
    out = {}
    pos = torch.cat(done) if done else torch.zeros(0, dtype=torch.long)
    pos_all = all_gather_cat(pos.to(device), ctx).cpu()
    for name in names:
        mine = torch.cat(flags[name]) if name in flags else torch.zeros(0, dtype=torch.bool)
        full = torch.zeros(n, dtype=torch.bool)
        full[pos_all] = all_gather_cat(mine.to(device, torch.uint8), ctx).cpu().bool()
        out[name] = full
    wall = all_reduce_max(torch.tensor([seconds.get(k, 0.0) for k in names], dtype=torch.float64,
                                       device=device), ctx)
    return out, dict(zip(names, wall.tolist()))


def _run_batched_attacks(model: nn.Module, images: torch.Tensor, idx: torch.Tensor,
                         y: torch.Tensor, cfg: EvalConfig, device: torch.device,
                         ctx: DistContext) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Clean, PGD-CE and (if cfg.cw) PGD-CW robust flags for ``images[idx]``, block by block.

    Block ``b`` (positions ``b * batch_size ...``) starts PGD from noise drawn by a generator
    seeded with (seed, b), so a flag depends on the example and the seed, not on the world size.
    """
    names = ["pgd"] + (["cw"] if cfg.cw else [])

    def run(block: int, pos: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        x = images[idx[pos]].to(device).float().div_(255)
        yb = y[pos].to(device)
        t0 = time.perf_counter()
        clean = predict_correct(model, x, yb, device, cfg.batch_size)
        flags, seconds = {"clean": clean}, {"clean": time.perf_counter() - t0}
        for k, name in enumerate(names):
            t0 = time.perf_counter()
            gen = generator(cfg.seed, "evaluate", name, block, device=device)
            noise = torch.rand(x.shape, generator=gen, device=device, dtype=x.dtype)
            with torch.enable_grad():
                res = pgd_attack(model, x, yb, cfg.eps, cfg.pgd_step_size, cfg.pgd_steps,
                                 loss="ce" if name == "pgd" else "cw", random_start=True,
                                 noise=noise, track_best=True)
            flags[name] = res.correct.cpu() & clean
            seconds[name] = time.perf_counter() - t0
        return flags, seconds

    return _flags_by_block(len(idx), ctx, device, cfg.batch_size, ["clean"] + names, run,
                           cfg.progress)


def evaluate(model: nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor,
             class_names: Sequence[str], cfg: EvalConfig, device: torch.device | str,
             provenance: dict[str, Any] | None = None,
             ctx: DistContext | None = None) -> dict[str, Any]:
    """Class-wise clean / PGD / CW / AutoAttack report of ``model`` (JSON-ready dict).

    Args:
        model: maps [0, 1] inputs to logits; evaluated in eval mode (its mode is restored after).
        images_uint8: (N, C, H, W) uint8 test images. labels: (N,) int labels.
        class_names: name of label i at position i; every report key uses these names.
        cfg: eps, subset sizes, PGD steps, AutoAttack version, seed, batch size.
        device: where the model and the attacks run.
        provenance: caller facts (model and data hashes, ...), merged with library versions, git
            commit, seed, device type and world size.
        ctx: under `torchrun`, this rank's place; every rank must call, each attacks its own
            blocks, and every rank returns the same report (the caller lets rank 0 write it).
    Returns:
        {"attacks": {name: {per_class, summary, accuracy, n, counts, settings}}, "class_names",
        "examples_per_class", "eps", "provenance", "consistency": [warnings], "seconds"}.
    """
    device = torch.device(device)
    ctx = ctx or DistContext()
    images, labels = torch.as_tensor(images_uint8), torch.as_tensor(labels).long().reshape(-1)
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
        raise ValueError(f"images must be (N, C, H, W) uint8 matching {len(labels)} labels; got "
                         f"{images.dtype} {tuple(images.shape)}")
    class_names = [str(n) for n in class_names]
    idx = first_per_class(labels, cfg.examples_per_class, len(class_names))
    y = labels[idx]
    was_training = model.training
    model.eval()
    try:
        flags, seconds = _run_batched_attacks(model, images, idx, y, cfg, device, ctx)
        attacks = {"clean": _attack_entry(flags["clean"], y, class_names, {})}
        attacks["pgd"] = _attack_entry(flags["pgd"], y, class_names, _pgd_settings(cfg, "ce"))
        if "cw" in flags:
            attacks["cw"] = _attack_entry(flags["cw"], y, class_names, _pgd_settings(cfg, "cw"))
        pos = torch.arange(len(idx))  # positions within the evaluated subset
        consistency: list[dict[str, Any]] = []
        if cfg.autoattack != "none":
            pos = first_per_class(y, cfg.autoattack_per_class, len(class_names))
            aa_flags, aa_seconds = _autoattack_sharded(model, images, idx[pos], y[pos], cfg,
                                                       device, ctx)
            flags["autoattack"] = aa_flags
            seconds["autoattack"] = aa_seconds
            settings = autoattack_settings(cfg, len(class_names))
            settings["examples_per_class"] = cfg.autoattack_per_class
            attacks["autoattack"] = _attack_entry(flags["autoattack"], y[pos], class_names,
                                                  settings)
            for ref in ("pgd", "cw"):
                if ref in flags:
                    warning = consistency_check(flags["autoattack"], flags[ref][pos], y[pos],
                                                class_names, "autoattack", ref)
                    if warning is not None:
                        log.warning("CONSISTENCY %s: %s", warning["severity"].upper(),
                                    warning["message"])
                        consistency.append(warning)
    finally:
        model.train(was_training)
    run = [n for n in flags]
    worst = torch.stack([flags[n] if n == "autoattack" else flags[n][pos] for n in run]).all(0)
    attacks["worst_case"] = _attack_entry(worst, y[pos], class_names, {
        "attacks": run, "examples": "autoattack subset" if "autoattack" in flags else "all"})
    _, totals = classwise_counts(torch.ones_like(y, dtype=torch.bool), y, len(class_names))
    for name in ("pgd", "autoattack", "worst_case"):
        if name in attacks:
            s = attacks[name]["summary"]
            log.info("%s: average %.2f%%, worst %.2f%% (%s)", name, 100 * s["average"],
                     100 * s["worst"], s["worst_class"])
    return {"attacks": attacks, "class_names": class_names,
            "examples_per_class": dict(zip(class_names, map(int, totals))), "eps": cfg.eps,
            "provenance": _provenance(provenance, cfg, device, ctx), "consistency": consistency,
            "seconds": {n: round(s, 4) for n, s in seconds.items()}}


def _autoattack_sharded(model: nn.Module, images: torch.Tensor, idx: torch.Tensor, y: torch.Tensor,
                        cfg: EvalConfig, device: torch.device,
                        ctx: DistContext) -> tuple[torch.Tensor, float]:
    """AutoAttack flags for ``images[idx]``: one pyautoattack run per rank on its contiguous
    shard (balanced sizes), flags gathered in position order; seconds of the slowest rank."""
    n = len(idx)
    part = rank_slice(n, ctx)
    t0 = time.perf_counter()
    show = cfg.progress and ctx.is_main
    if cfg.autoattack_impl == "fast":  # reports per attack and target batch itself
        mine = run_autoattack(model, images[idx[part]].float().div_(255), y[part], cfg, device,
                              progress=show)
    else:  # one pyautoattack call: no progress inside it, so a start and an end line
        with Progress(f"evaluate autoattack ({cfg.autoattack}, reference) on {n} images", 1,
                      unit="runs", enabled=show) as bar:
            mine = run_autoattack(model, images[idx[part]].float().div_(255), y[part], cfg,
                                  device)
            bar.advance()
    seconds = all_reduce_max(torch.tensor([time.perf_counter() - t0], dtype=torch.float64,
                                          device=device), ctx)
    return all_gather_cat(mine.to(device, torch.uint8), ctx).cpu().bool(), float(seconds.item())


def _eval_config_record(cfg: EvalConfig) -> dict[str, Any]:
    """``cfg`` as a dict, with ``autoattack_attacks`` naming the attacks that ran: the published
    four under "standard" (the custom list would be a false record), none under "none"."""
    record = to_dict(cfg)
    if cfg.autoattack == "standard":
        record["autoattack_attacks"] = list(STANDARD_ATTACKS)
    elif cfg.autoattack == "none":
        record["autoattack_attacks"] = []
    return record


def _provenance(extra: dict[str, Any] | None, cfg: EvalConfig, device: torch.device,
                ctx: DistContext) -> dict[str, Any]:
    """Caller facts plus measured ones; a measured value wins unless it is unknown (None)."""
    measured = {
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": package_version("torchvision"),
        "pyautoattack": package_version("pyautoattack"), "fairat": fairat.__version__,
        "git_commit": git_commit(), "seed": cfg.seed, "device": device.type,
        "world_size": ctx.world_size, "machine": machine(device, ctx.world_size),
        "eval_config": _eval_config_record(cfg),
    }
    merged = dict(extra or {})
    for key, value in measured.items():
        if value is not None or key not in merged:
            merged[key] = value
    return merged


# ----------------------------------------------------------------------------- outputs

def summary_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """``{attack: {average, worst, gap, class: {name: accuracy}}}`` fractions of a report.

    The numbers DVC's ``metrics:`` show (``dvc exp diff`` then names the class a method helped:
    ``worst_case.class.cat``) and, flattened the same way, Kubeflow's Metrics artifact; no hashes,
    ids or paths, which live in the report's provenance.
    """
    return {name: {**{key: float(entry["summary"][key]) for key in ("average", "worst", "gap")},
                   "class": {c: float(v) for c, v in entry["per_class"].items()}}
            for name, entry in report["attacks"].items()}


def classwise_csv(report: dict[str, Any]) -> str:
    """One row per class, one column per attack (percent): the table `dvc plots diff` draws per
    revision, so two experiments' per-class robust accuracies stand side by side."""
    attacks = [a for a in ATTACK_ORDER if a in report["attacks"]]
    rows = ["class," + ",".join(attacks)]
    for c in report["class_names"]:
        rows.append(f"{c}," + ",".join(f"{100 * report['attacks'][a]['per_class'][c]:.2f}"
                                        for a in attacks))
    return "\n".join(rows) + "\n"


def write_report(report: dict[str, Any], json_path: str | Path) -> None:
    """Write the report as key-sorted JSON, atomically; NaN or infinity is a ValueError."""
    write_json_atomic(json_path, report)
