"""The one training loop: PGD-AT, TRADES, FairAT and the class-wise fair-AT methods (WAT, FRL, CFA,
DAFA), on CPU or GPU, single process or `torchrun`.

Design:
- Data stays as a uint8 tensor on the device; each batch is gathered, converted and augmented in
  batched tensor ops (no DataLoader, no per-image Python).
- Every epoch draws its randomness from generators seeded by (seed, epoch), so a run is repeatable
  on CPU and a resumed run continues exactly where it stopped; the learning rate is a pure function
  of training progress, so there is no scheduler state to lose.
- Rank-aware: the epoch plan (order, hard-example copies, augmentation, attack start) is drawn for
  the global batch on every rank, and each rank trains its slice, so N ranks see the same examples
  as one process. BatchNorm statistics cover the global batch (SyncBatchNorm on GPU, our
  GlobalBatchNorm2d on CPU), so N ranks train the model one process would, up to float rounding.
  Hard-example scores are all-gathered, metrics all-reduced, and only rank 0 writes checkpoints.
  Nothing in a checkpoint depends on the world size, so a run saved by N ranks resumes on M.
- No method names here: the method's registry entry (:mod:`fairat.engine.methods`) gives the
  base objective, the class policy, the batch hook and the weight average.
- Returns, never writes outputs: :func:`train` returns the summary with the model payload in it;
  the train step (``fairat.steps.train``) writes model.pt, the JSON summary and the CSV history.
  Checkpoints (``last.pt``, ``best.pt``) are the engine's own, for resuming.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fairat.config import ModelConfig, TrainConfig, to_dict
from fairat.engine.attacks import pgd_attack
from fairat.engine.augment import random_crop_flip
from fairat.engine.checkpoint import (data_fingerprint, load_checkpoint, model_file_payload,
                                      resume_mismatches, save_checkpoint)
from fairat.engine.class_weights import EpochStats
from fairat.engine.data import PreparedData, channel_stats
from fairat.engine.device import resolve_device
from fairat.engine.distributed import (DistContext, all_reduce_sum, barrier, block_shard,
                                       global_batchnorm, rank_slice)
from fairat.engine.methods import method
from fairat.engine.models import ModelSpec, build_model
from fairat.engine.objectives import (OBJECTIVES, Batch, BatchHook, ClassTerms, start_noise,
                                      validation_cost)
from fairat.engine.schedule import (epoch_generators, epoch_plan, lr_at,  # noqa: F401 (also
                                    training_record)  # imported from here by tests, benchmarks)
from fairat.engine.seeds import generator
from fairat.errors import DataError, TrainingDiverged
from fairat.provenance import load_average, machine, usable_cores


@dataclass(frozen=True)
class TrainPaths:
    """Where a run's files go: the chosen model, the checkpoints folder (the engine's own), a JSON
    summary and a CSV history (written by the train step from the returned summary)."""

    model: Path
    checkpoints: Path
    metrics: Path
    history: Path


@dataclass
class TrainSummary:
    epochs: int
    chosen_epoch: int
    chosen_by: str
    chosen_metrics: dict[str, Any]
    seconds: float
    examples_trained: int
    examples_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)  # all sessions: training_record()
    model: dict[str, Any] | None = field(default=None, repr=False)  # model.pt's payload (rank 0)


class Trainer:
    """Holds one run's state; :meth:`run` trains the remaining epochs."""

    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, data: PreparedData,
                 paths: TrainPaths, ctx: DistContext | None = None, device: torch.device | None = None,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None):
        self.model_cfg, self.cfg, self.data, self.paths = model_cfg, cfg, data, paths
        self.on_epoch = on_epoch  # rank 0 only: e.g. live MLflow metrics; never changes training
        self.ctx = ctx or DistContext()
        self.device = device or resolve_device(cfg.device)
        if cfg.checkpoint == "best" and len(data.val) == 0:
            raise ValueError("train.checkpoint: 'best' is chosen on the validation split, which is "
                             "empty; set data.val_per_class > 0 or train.checkpoint: last")
        if cfg.batch_size < self.ctx.world_size:
            raise ValueError(f"train.batch_size: {cfg.batch_size} is smaller than the world size "
                             f"{self.ctx.world_size}")
        train = data.train
        mean, std = channel_stats(train)
        self.spec = ModelSpec(train.images.shape[1], train.num_classes, train.images.shape[2],
                              mean, std)
        torch.manual_seed(cfg.seed)
        self.model = build_model(model_cfg.name, self.spec, model_cfg.width, model_cfg.depth)
        self.model.to(self.device)
        self.amp = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_model: nn.Module = self.model
        if self.ctx.active:
            # BatchNorm statistics over the global batch, so N ranks train like one process:
            # PyTorch's SyncBatchNorm on GPU; on CPU (gloo, where SyncBatchNorm refuses to run)
            # GlobalBatchNorm2d. Both keep BatchNorm2d's state-dict keys.
            self.model = global_batchnorm(self.model, self.device.type)
            ids = [self.ctx.local_rank] if self.device.type == "cuda" else None
            # Buffers need no broadcast: global BatchNorm gives every rank the same all-reduced
            # statistics, so running stats stay identical (one collective per forward saved).
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                                   broadcast_buffers=False)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        self.images = train.images.to(self.device)
        self.labels = train.labels.to(self.device)
        self.data_sha256 = data_fingerprint(data)  # a resumed run must continue on the same data
        spec = method(cfg.method)  # the registry entry: everything method-specific comes from it
        self.objective = spec.objective_of(cfg)  # "pgd_at" | "trades"
        self.step_fn = OBJECTIVES[self.objective]
        # FairAT: hard examples and their augmented copies; the others: nothing per batch
        self.hook: BatchHook = spec.batch_hook(cfg, self.labels, train.num_classes) or BatchHook()
        # WAT, FRL, CFA, DAFA: per-class radii and loss weights from class statistics
        self.policy = spec.policy(cfg, train.num_classes, list(train.class_names))
        self.class_terms = self._device_terms()  # (C,) on the device, refreshed per update
        self.similarity = self.policy is not None and self.policy.needs_similarity
        self.fawa = spec.weight_average(cfg)  # CFA: the shipped model is a weight average
        self.shadow = copy.deepcopy(self.model) if self.fawa is not None else None
        self.epoch_stats: EpochStats | None = None  # per-class statistics of the last epoch
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "value": -math.inf}
        # One entry per process run that completed epochs (a resumed run adds one): the machine
        # and the wall time to its last checkpoint, so the cost covers every session.
        self.sessions: list[dict[str, Any]] = []
        self.session: dict[str, Any] | None = None  # this process's entry, from its 1st epoch

    # --- checkpoints ------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"model": to_dict(self.model_cfg), "train": to_dict(self.cfg)}

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "tracker": self.hook.state_dict(),
                "data_sha256": self.data_sha256,
                "weighting": None if self.policy is None else self.policy.state_dict(),
                "fawa": None if self.fawa is None else self.fawa.state_dict(),
                "history": self.history, "best": self.best, "config": self.config_dict(),
                "sessions": self.sessions}

    def resume(self) -> bool:
        """Load ``last.pt`` if present; refuse a checkpoint written with a different config."""
        path = self.paths.checkpoints / "last.pt"
        if not path.exists():
            return False
        state = load_checkpoint(path, self.device)
        saved = state.get("data_sha256")
        if saved != self.data_sha256:
            raise DataError(
                f"cannot resume from {path}: " + (
                    f"it was trained on other data (data sha256 {str(saved)[:12]}..., the "
                    f"prepared data now {self.data_sha256[:12]}...)" if saved else
                    "it does not record the data it was trained on (written before fairat "
                    "recorded it)") + "; restore that data or start without --resume")
        diff = resume_mismatches(state["config"], self.config_dict())
        if diff:
            raise ValueError(f"cannot resume from {path}: the config differs in {diff}; "
                             "use the original params or start without --resume")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.hook.load_state_dict(state["tracker"])
        if self.policy is not None:
            self.policy.load_state_dict(state["weighting"])
            self.class_terms = self._device_terms()
        if self.fawa is not None:
            self.fawa.load_state_dict(state["fawa"])
        self.epoch, self.history, self.best = state["epoch"], state["history"], state["best"]
        # a checkpoint from before sessions were recorded: its epochs' time is unknown
        self.sessions = state.get("sessions") or [
            {"machine": None, "seconds": None, "examples_trained": None, "epochs": [1, self.epoch]}]
        return True

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> TrainSummary:
        start, cpu_start = time.perf_counter(), time.process_time()
        trained = 0
        where, first = machine(self.device, self.ctx.world_size), self.epoch + 1
        while self.epoch < self.cfg.epochs:
            record = self.train_epoch(self.epoch)
            trained += record["examples"]
            record.update(self.validate())
            if self.policy is not None:  # from the live model's statistics
                record.update(self.policy.after_epoch(self.epoch + 1, self.epoch_stats, record))
                self.class_terms = self._device_terms()
            if self.fawa is not None:  # validation and selection then judge the average
                record.update(self._fawa_step(record))
            self.epoch += 1
            value = self._selection_value(record)
            if value is not None and value > self.best["value"]:
                self.best = {"epoch": self.epoch, "value": value}
                if self.ctx.is_main:
                    save_checkpoint(self.model_payload(), self.paths.checkpoints / "best.pt")
            self.history.append(record)
            if self.session is None:  # this process's first epoch: its entry starts
                self.session = {"machine": where, "cores": usable_cores(), "max_load": 0.0}
                self.sessions.append(self.session)
            load = (load_average() or [None])[0]  # other work sharing the cores makes no cost
            self.session.update(seconds=round(time.perf_counter() - start, 3),
                                cpu_seconds=round(time.process_time() - cpu_start, 3),
                                examples_trained=trained, epochs=[first, self.epoch],
                                max_load=None if load is None or self.session["max_load"] is None
                                else max(self.session["max_load"], load))
            if self.ctx.is_main:
                save_checkpoint(self.state(), self.paths.checkpoints / "last.pt")
                self._log_epoch(record)
                if self.on_epoch is not None:
                    self.on_epoch(record)
            barrier(self.ctx)
        return self.finish(time.perf_counter() - start, trained, time.process_time() - cpu_start)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        hard = self.hook.select(self, epoch)  # examples to copy this epoch (FairAT), else none
        plan_gen, dev_gen = epoch_generators(cfg.seed, epoch, self.device)
        batches = epoch_plan(len(self.data.train), hard, self.hook.copies, cfg.batch_size,
                             ctx.world_size, plan_gen, cfg.max_batches)
        k = self.spec.num_classes
        # loss, n, correct, copies; per class: n, correct; DAFA: adversarial softmax sums (k x k)
        size = 4 + 2 * k + (k * k if self.similarity else 0)
        totals = torch.zeros(size, dtype=torch.float64, device=self.device)
        t0 = time.perf_counter()
        progress = self._progress(batches, epoch)
        for i, (idx, is_copy) in enumerate(progress):
            lr = lr_at(cfg, (epoch + i / len(batches)) / cfg.epochs)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            totals += self.train_batch(idx.to(self.device), is_copy.to(self.device), dev_gen,
                                       (epoch + 1, i + 1, len(batches), lr))
            if hasattr(progress, "set_postfix") and i % 10 == 0:
                progress.set_postfix(loss=f"{totals[0] / max(totals[1], 1):.3f}",
                                     adv_acc=f"{totals[2] / max(totals[1] - totals[3], 1):.3f}")
        totals = all_reduce_sum(totals, ctx)
        seconds = time.perf_counter() - t0
        loss, n, correct, copies = totals[:4].tolist()
        n_c, correct_c = totals[4:4 + k], totals[4 + k:4 + 2 * k]
        robust_c = (correct_c / n_c.clamp(min=1)).cpu()
        similarity = ((totals[4 + 2 * k:].view(k, k) / n_c.clamp(min=1)[:, None]).cpu()
                      if self.similarity else None)
        self.epoch_stats = EpochStats(robust_c, similarity)
        names = self.data.train.class_names
        hard_c = torch.bincount(self.labels[hard.to(self.device)], minlength=k).tolist()
        return {"epoch": epoch + 1, "lr": lr_at(cfg, epoch / cfg.epochs),
                "train_loss": loss / max(n, 1), "train_robust_acc": correct / max(n - copies, 1),
                "train_robust_per_class": dict(zip(names, robust_c.tolist())),
                "examples": int(n), "hard_count": int(hard.numel()),
                "hard_per_class": dict(zip(names, (int(v) for v in hard_c))),
                "seconds": seconds, "examples_per_second": n / max(seconds, 1e-9)}

    def train_batch(self, idx: torch.Tensor, is_copy: torch.Tensor, gen: torch.Generator,
                    where: tuple[int, int, int, float] = (0, 0, 0, 0.0)) -> torch.Tensor:
        """Augment the global batch, train this rank's slice; returns [loss sum, n, correct,
        copies, then per class n and correct, then (DAFA) the (k x k) adversarial softmax
        sums]."""
        cfg, ctx = self.cfg, self.ctx
        x = random_crop_flip(self.images[idx].float().div_(255), cfg.crop_padding, cfg.flip, gen)
        labels = self.labels[idx]
        x, targets = self.hook.augment(x, labels, is_copy, gen)
        noise = start_noise(self.objective, x.shape, gen, self.device)
        part = rank_slice(idx.numel(), ctx)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        batch = Batch(x[part], targets[part], labels[part], noise[part],
                      self.class_terms.index(labels[part]))
        # Attacks run on an eval-mode view with BatchNorm folded where the architecture allows it.
        attack_model = self.model.attack_view()
        with self.autocast():
            out = self.step_fn(attack_model, self.train_model, batch, cfg, self.hook.need_clean)
        loss = out.per_sample_loss.sum() * (ctx.world_size / idx.numel())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._stop_if_diverged(loss, where)
        self.optimizer.step()
        original = ~is_copy[part]
        self.hook.observe(self, idx[part], out, batch.targets, original)
        k = self.spec.num_classes
        hit = (out.logits_adv.argmax(1) == batch.labels)[original]
        y = batch.labels[original]
        parts = [torch.stack([
            out.per_sample_loss.detach().sum().double(),
            torch.tensor(float(batch.x.shape[0]), dtype=torch.float64, device=x.device),
            hit.sum().double(), (~original).sum().double()]),
            torch.bincount(y, minlength=k).double(), torch.bincount(y[hit], minlength=k).double()]
        if self.similarity:
            probs = torch.softmax(out.logits_adv[original].float(), 1).double()
            parts.append(torch.zeros(k, k, dtype=torch.float64, device=x.device)
                         .index_add_(0, y, probs).flatten())
        return torch.cat(parts)

    def _stop_if_diverged(self, loss: torch.Tensor, where: tuple[int, int, int, float]) -> None:
        """Raise before the step when the loss or the (all-reduced) gradients are not finite.

        Why the gradients: under torchrun they are the same on every rank after backward, so
        every rank stops at the same batch instead of one rank waiting for the others. Nothing is
        written: the previous run's model and metrics stay as they were.
        """
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        finite = torch.stack([g.isfinite().all() for g in grads]).all() if grads else True
        if self.ctx.world_size == 1:
            finite = finite & loss.detach().isfinite()
        if not bool(finite):
            epoch, batch, batches, lr = where
            raise TrainingDiverged(
                f"training diverged: non-finite loss or gradient at epoch {epoch}, batch "
                f"{batch}/{batches}, learning rate {lr:.6g}; stopped before writing anything "
                "(the previous model and metrics are untouched). Lower train.lr or check the data.")

    # --- validation and model choice --------------------------------------------------------
    def validate(self, model: nn.Module | None = None) -> dict[str, Any]:
        """Per-class clean and PGD accuracy on the validation split (this rank's shard, reduced),
        of ``model`` (default: the live model)."""
        model = self.model if model is None else model
        val = self.data.val
        if len(val) == 0:
            return {}
        a = self.cfg.attack
        k = val.num_classes
        # total, clean, robust counts and the base objective's loss sum (WAT's cost)
        counts = torch.zeros(4, k, dtype=torch.float64, device=self.device)
        model.eval()
        # Blocks of 256 dealt round-robin to ranks, each with its own seeded attack start: the
        # per-example results, hence the counts, do not depend on the world size.
        for block, idx in block_shard(len(val), 256, self.ctx):
            gen = generator(self.cfg.seed, "validate", block, device=self.device)
            x = val.images[idx].to(self.device).float().div_(255)
            y = val.labels[idx].to(self.device)
            with self.autocast():
                with torch.no_grad():
                    logits = model(x)
                clean = logits.argmax(1) == y
                res = pgd_attack(model, x, y, a.eps, a.step_size, self.cfg.val_attack_steps,
                                 generator=gen, track_best=True)
                with torch.no_grad():
                    cost = validation_cost(self.objective, logits.float(),
                                           model(res.x_adv).float(), y, self.cfg.trades_beta)
            for row, flags in enumerate((torch.ones_like(clean), clean, res.correct)):
                counts[row] += torch.bincount(y[flags], minlength=k).double()
            counts[3] += torch.bincount(y, weights=cost.double(), minlength=k)
        counts = all_reduce_sum(counts, self.ctx)
        clean_pc = (counts[1] / counts[0]).tolist()
        robust_pc = (counts[2] / counts[0]).tolist()
        names = val.class_names
        return {"val_cost_per_class": (counts[3] / counts[0]).tolist(),
                "val_cost_avg": float(counts[3].sum() / counts[0].sum()),
                "val_clean_avg": sum(clean_pc) / k, "val_robust_avg": sum(robust_pc) / k,
                "val_robust_worst": min(robust_pc),
                "val_robust_worst_class": names[robust_pc.index(min(robust_pc))],
                "val_clean_per_class": dict(zip(names, clean_pc)),
                "val_robust_per_class": dict(zip(names, robust_pc))}

    def _device_terms(self) -> ClassTerms:
        return ClassTerms() if self.policy is None else self.policy.class_terms().to(self.device)

    def _fawa_step(self, live: dict[str, Any]) -> dict[str, Any]:
        """CFA's FAWA: fold this epoch in if its worst validation class qualifies, then validate
        the average, whose numbers replace the live model's (kept as ``val_live_*``)."""
        admitted = self.fawa.update(self.model, live["val_robust_worst"])
        out = {"fawa_admitted": admitted, "fawa_epochs": self.fawa.admitted,
               **{f"val_live_{key[4:]}": live[key]
                  for key in ("val_clean_avg", "val_robust_avg", "val_robust_worst")}}
        if self.fawa.average is not None:
            self.shadow.load_state_dict(self.fawa.average)
            out.update(self.validate(self.shadow))
        return out

    def _selection_value(self, record: dict[str, Any]) -> float | None:
        if "val_robust_avg" not in record:
            return None
        metric = self.cfg.select_metric
        if metric == "val_robust_sum":
            return record["val_robust_avg"] + record["val_robust_worst"]
        return record[metric]

    def model_payload(self) -> dict[str, Any]:
        """The shippable model now: the live weights, or CFA's weight average."""
        weights = self.model.state_dict() if self.fawa is None else self.fawa.state_for(self.model)
        return model_file_payload(weights, self.model_cfg, self.spec,
                                  self.data.train.class_names, self.epoch, self.config_dict())

    def finish(self, seconds: float, trained: int, cpu_seconds: float) -> TrainSummary:
        """The run's summary and, on rank 0, the payload of model.pt (best or last epoch, as
        configured); the train step writes them."""
        use_best = self.cfg.checkpoint == "best" and self.best["epoch"] > 0
        chosen = self.best["epoch"] if use_best else self.epoch
        by = f"best {self.cfg.select_metric} on the validation split" if use_best else "last epoch"
        record = next((r for r in self.history if r["epoch"] == chosen), {})
        if self.session is not None:  # to the end, not the last checkpoint
            self.session.update(seconds=round(seconds, 3), cpu_seconds=round(cpu_seconds, 3))
        summary = TrainSummary(
            epochs=self.epoch, chosen_epoch=chosen, chosen_by=by,
            chosen_metrics={k: v for k, v in record.items() if k.startswith("val_")},
            seconds=seconds, examples_trained=trained,
            examples_per_second=trained / seconds if seconds > 0 else 0.0, history=self.history,
            training=training_record(self.sessions))
        if self.ctx.is_main:
            if use_best:
                payload = load_checkpoint(self.paths.checkpoints / "best.pt", torch.device("cpu"))
            else:
                payload = self.model_payload()
            payload["selected"] = {"epoch": chosen, "by": by}
            # in the model file, so the cost reaches the hash-checked evaluation report
            payload["training"] = summary.training
            summary.model = payload
        return summary

    # --- small helpers ----------------------------------------------------------------------
    def autocast(self):
        if not self.amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _progress(self, batches: list, epoch: int):
        # A bar only on a terminal: piped into DVC or Kubeflow logs it is just noise.
        if not (self.cfg.progress and self.ctx.is_main and sys.stderr.isatty()):
            return batches
        from tqdm import tqdm

        return tqdm(batches, desc=f"epoch {epoch + 1}/{self.cfg.epochs} [{self.cfg.method}]",
                    leave=False, dynamic_ncols=True)

    def _log_epoch(self, r: dict[str, Any]) -> None:
        val = (f" val clean {r['val_clean_avg']:.3f} robust {r['val_robust_avg']:.3f} "
               f"worst {r['val_robust_worst']:.3f} ({r['val_robust_worst_class']})"
               if "val_robust_avg" in r else "")
        hard = f" hard {r['hard_count']}" if self.hook.copies else ""
        print(f"epoch {r['epoch']}/{self.cfg.epochs} loss {r['train_loss']:.4f} "
              f"adv acc {r['train_robust_acc']:.3f}{val}{hard} "
              f"({r['examples_per_second']:.1f} ex/s)", flush=True)


def train(model_cfg: ModelConfig, cfg: TrainConfig, data: PreparedData, paths: TrainPaths,
          resume: bool = False, ctx: DistContext | None = None,
          device: torch.device | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainSummary:
    """Train ``cfg.method`` on ``data``, keeping checkpoints in ``paths.checkpoints``.

    With ``resume``, continue from ``paths.checkpoints / 'last.pt'`` when it exists (the data and
    the config must match). ``on_epoch(record)`` is called on rank 0 after each epoch's checkpoint
    is written. Returns the run's summary; on rank 0 its ``model`` is the payload of model.pt.
    Writes nothing else: the train step writes the outputs.
    """
    trainer = Trainer(model_cfg, cfg, data, paths, ctx, device, on_epoch)
    if resume and trainer.resume() and trainer.ctx.is_main:
        print(f"resumed after epoch {trainer.epoch} from {paths.checkpoints / 'last.pt'}", flush=True)
    return trainer.run()
