"""Design-space studies: controlled random search plans, trained resumably into the bank.

GraphGym's controlled random search (You et al., 2020, sec. 6): to judge one dimension (say
batch norm), sample K "setups" (base designs with that dimension pinned) and train each setup
with every choice of the dimension, everything else held fixed; then rank the choices within
each setup (`gnnjax.design.analysis`).

    plan = controlled_random_search(space, ["batch_norm", "stage_type"], 8, seed=0)
    with bank_lib.Bank("results/bank.sqlite") as bank:
      run_trials(bank, "cora", cora, plan_designs(plan), seeds=[1, 2, 3])

`run_trials` is resumable: trials already in the bank are skipped, the rest are trained in
populations (one trainer call each) and every result is committed as soon as the trainer hands
it over (the default trainer, `engine.iter_population`, hands over each chunk as it finishes).
With `checkpoint_dir` (a trainer option), the chunk in flight also saves its state every
`checkpoint_every` epochs; the same command then skips finished trials and continues the
in-flight chunk from its last save, so a kill loses at most the epochs since that save.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import zlib
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
from absl import logging

from gnnjax.design import analysis
from gnnjax.design import bank as bank_lib
from gnnjax.design import hosts as hosts_lib
from gnnjax.design import trial as trial_lib
from gnnjax.design.design import Design
from gnnjax.design.spaces import DesignSpace
from gnnjax.design.trial import DIVERGED, OK, TrialKey, TrialResult

# trainer(designs, dataset, seeds, **kwargs) -> one TrialResult per (design, seed), designs
# outer, seeds inner; a list (the whole population at once) or an iterator (one at a time).
Trainer = Callable[..., Iterable[TrialResult]]
# Designs per trainer call. Large: the engine cuts a population into chunks by memory itself,
# each trainer call compiles its own programs (one per conv type and batch size), and with
# population checkpoints a kill no longer loses a whole call.
DEFAULT_POPULATION_SIZE = 256


class PlanRow(NamedTuple):
  """One config of a controlled experiment.

  Attributes:
    dim: the studied dimension.
    setup_id: which base design (0..K-1) of that dimension.
    choice: the label of the dimension's choice in `design` (see `analysis.choice_label`).
    design: the config to train.
  """

  dim: str
  setup_id: int
  choice: str
  design: Design


# ----------------------------------------------------------------------------------------------
# Planning.


def _pinned_subspace(space: DesignSpace, dim: str) -> DesignSpace:
  """`space` without `dim`, which is fixed to its first choice (GraphGym pins it so)."""
  first = space.dims[dim][0]
  pinned = dict(first) if isinstance(first, Mapping) else {dim: first}
  dims = {name: choices for name, choices in space.dims.items() if name != dim}
  return DesignSpace(dims, {**space.fixed, **pinned}, name=f"{space.name}|{dim}")


def _dim_rng(seed: int, dim: str) -> np.random.Generator:
  # One stream per dimension: adding or reordering dims leaves each dim's setups unchanged.
  return np.random.default_rng([int(seed), zlib.crc32(dim.encode("utf-8"))])


def sample_base_designs(space: DesignSpace, dim: str, num_base_designs: int, seed: int = 0
                        ) -> list[Design]:
  """`num_base_designs` distinct designs with `dim` pinned to its first choice.

  As GraphGym, designs are drawn one at a time uniformly and duplicates redrawn, so asking for
  more base designs with the same seed keeps the earlier ones as a prefix.
  """
  subspace = _pinned_subspace(space, dim)
  if not 0 <= num_base_designs <= subspace.size:
    raise ValueError(f"cannot draw {num_base_designs} distinct base designs for dimension "
                     f"{dim!r}: space {space.name!r} has {subspace.size} with it pinned")
  return _draw_distinct(subspace, num_base_designs, _dim_rng(seed, dim))


def _draw_distinct(space: DesignSpace, count: int, rng: np.random.Generator) -> list[Design]:
  """`count` distinct designs of `space`, drawn one at a time uniformly with duplicates
  redrawn: the same rng state and a larger count keep the earlier designs as a prefix."""
  chosen: dict[int, None] = {}
  while len(chosen) < count:
    chosen.setdefault(int(rng.integers(space.size)))
  return [space.design_at(index) for index in chosen]


def controlled_random_search(space: DesignSpace, dims: Sequence[str] | None = None,
                             num_base_designs: int = 8, seed: int = 0) -> list[PlanRow]:
  """GraphGym's controlled random search plan (graphgym.md 6.1, adapted to one task space).

  For each studied dimension: `num_base_designs` base designs are sampled uniformly from
  `space` with the dimension pinned, and each is expanded into one config per choice of the
  dimension (`space.vary`). GraphGym samples (task, design) pairs per task chunk; here the same
  setups are trained on every task of a study, so a dimension gets tasks x K setups.

  Args:
    space: the design space.
    dims: the dimensions to study, in order (default: all of the space's).
    num_base_designs: K, the setups per dimension.
    seed: plan seed; each dimension has its own stream derived from it.

  Returns:
    Rows (dim, setup_id, choice, design), dims outer, setups, then choices in the space's order.
  """
  dims = list(space.dim_names if dims is None else dims)
  unknown = [d for d in dims if d not in space.dims]
  if unknown:
    raise ValueError(f"unknown dimension(s) {unknown}; space {space.name!r} has "
                     f"{list(space.dim_names)}")
  if len(set(dims)) != len(dims):
    raise ValueError(f"dimensions listed twice: {dims}")
  plan = []
  for dim in dims:
    labels = [analysis.choice_label(c) for c in space.dims[dim]]
    for setup_id, base in enumerate(sample_base_designs(space, dim, num_base_designs, seed)):
      for label, design in zip(labels, space.vary(base, dim)):
        plan.append(PlanRow(dim, setup_id, label, design))
  return plan


RANDOM_DIM = "random"  # PlanRow.dim of a plain random plan's rows
PLANS = ("controlled", "random")


def random_plan(space: DesignSpace, num_designs: int, seed: int = 0) -> list[PlanRow]:
  """`num_designs` distinct designs drawn uniformly from `space`: a task-model bank's pool.

  A controlled random search's designs come in clusters (one base design with one dimension
  varied); a bank that searches are replayed on wants designs spread over the whole space, as
  AutoTransfer's. Drawn one at a time with duplicates redrawn, so asking for more designs with
  the same seed keeps the earlier ones as a prefix (a bank grows without retraining).

  Returns:
    Rows (RANDOM_DIM, i, "", design_i), i = 0..num_designs-1.
  """
  if not 0 <= num_designs <= space.size:
    raise ValueError(f"cannot draw {num_designs} distinct designs from space {space.name!r} of "
                     f"size {space.size}")
  designs = _draw_distinct(space, num_designs, _dim_rng(seed, RANDOM_DIM))
  return [PlanRow(RANDOM_DIM, i, "", design) for i, design in enumerate(designs)]


def make_plan(space: DesignSpace, search: str = "controlled", dims: Sequence[str] | None = None,
              num_designs: int = 8, seed: int = 0, max_epochs: int | None = None
              ) -> list[PlanRow]:
  """A study's plan: GraphGym's controlled random search over `dims` with `num_designs` base
  designs each ('controlled'), or `num_designs` designs drawn uniformly ('random', `dims`
  unused); every design's epochs capped at `max_epochs` (None: unchanged)."""
  if search == "controlled":
    plan = controlled_random_search(space, dims, num_designs, seed)
  elif search == "random":
    plan = random_plan(space, num_designs, seed)
  else:
    raise ValueError(f"unknown plan {search!r}; choose from {PLANS}")
  return cap_epochs(plan, max_epochs)


def cap_epochs(plan: Sequence[PlanRow], max_epochs: int | None) -> list[PlanRow]:
  """The plan with every design's epochs capped at `max_epochs` (None: unchanged).

  Raises:
    ValueError: the plan studies 'epochs' (capping would merge its choices).
  """
  if max_epochs is None:
    return list(plan)
  if max_epochs < 1:
    raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
  if any(row.dim == "epochs" for row in plan):
    raise ValueError("capping epochs would merge the choices of the studied dimension "
                     "'epochs'; study other dimensions or do not cap epochs")
  return [row._replace(design=row.design.replace(epochs=min(row.design.epochs, max_epochs)))
          for row in plan]


def plan_designs(plan: Sequence[PlanRow]) -> list[Design]:
  """The distinct designs of a plan, in plan order (a design shared by two setups once)."""
  unique = {row.design.design_id: row.design for row in plan}
  return list(unique.values())


def plan_to_json(plan: Sequence[PlanRow]) -> list[dict[str, Any]]:
  return [{"dim": row.dim, "setup_id": row.setup_id, "choice": row.choice,
           "design_id": row.design.design_id, "design": row.design.to_dict()} for row in plan]


def plan_from_json(rows: Sequence[Mapping[str, Any]]) -> list[PlanRow]:
  return [PlanRow(row["dim"], int(row["setup_id"]), row["choice"], Design.from_dict(row["design"]))
          for row in rows]


# ----------------------------------------------------------------------------------------------
# Training.


def trial_keys(task: str, designs: Sequence[Design], seeds: Sequence[int]) -> list[TrialKey]:
  """Keys in trainer order: designs outer, seeds inner."""
  return [TrialKey(task, d.design_id, int(s)) for d in designs for s in seeds]


def default_trainer() -> Trainer:
  """`gnnjax.design.engine.iter_population` (imported only when a study trains): results
  come chunk by chunk, so each is committed as soon as its chunk finishes."""
  from gnnjax.design import engine
  return engine.iter_population


def sequential_trainer(designs: Sequence[Design], dataset: Any, seeds: Sequence[int], *,
                       eval_every: int = 20, **unused: Any) -> Iterable[TrialResult]:
  """Trains one (design, seed) at a time with `reference.train_design`, yielding each result as
  it finishes (so the bank commits it at once). Population options (max_parallel, devices,
  progress) do not apply and are ignored."""
  del unused
  from gnnjax.design import reference
  for design in designs:
    for seed in seeds:
      yield reference.train_design(design, dataset, seed, eval_every=eval_every)


def _populations(designs: Sequence[Design], missing: set[tuple[str, int]], seeds: Sequence[int],
                 population_size: int) -> list[tuple[list[Design], list[int]]]:
  """Groups the missing (design, seed) pairs into trainer calls of at most `population_size`
  designs sharing the same missing seeds (usually all of them), in near-equal chunks (33
  designs in populations of 32 train as 17 + 16, not 32 + 1)."""
  groups: dict[tuple[int, ...], list[Design]] = {}
  for design in designs:
    todo = tuple(s for s in seeds if (design.design_id, int(s)) in missing)
    if todo:
      groups.setdefault(todo, []).append(design)
  populations = []
  for todo, members in groups.items():
    num_chunks = -(-len(members) // population_size)
    bounds = [len(members) * i // num_chunks for i in range(num_chunks + 1)]
    populations += [(members[lo:hi], list(todo)) for lo, hi in zip(bounds, bounds[1:])]
  return populations


def _keyed(result: TrialResult, position: int, expected: Sequence[TrialKey]) -> TrialResult:
  """The result under the study's key (task name and planned design id).

  A trainer may name the task differently (dataset.name) or hash the resolved design; the
  orchestrator's key is what resumption looks up, so it wins. Results are matched by
  (design_id, seed) when the trainer used the planned id, else by position.
  """
  by_id = {(k.design_id, k.seed): k for k in expected}
  key = by_id.get((result.key.design_id, int(result.key.seed)))
  if key is None:
    if position >= len(expected):
      raise ValueError(f"trainer returned more results than the {len(expected)} asked for")
    key = expected[position]
    if int(result.key.seed) != key.seed:
      raise ValueError(f"trainer result {position} has seed {result.key.seed}, expected "
                       f"{key.seed} (results must come designs x seeds in order)")
  return dataclasses.replace(result, key=key)


@dataclasses.dataclass
class RunSummary:
  """What `run_trials` did: trials asked for, already in the bank, trained now (by status)."""

  requested: int
  skipped: int
  trained: int = 0
  by_status: dict[str, int] = dataclasses.field(default_factory=dict)


def run_trials(bank: bank_lib.Bank, task_name: str, dataset: Any, designs: Sequence[Design],
               seeds: Sequence[int], trainer: Trainer | None = None, *,
               population_size: int = DEFAULT_POPULATION_SIZE, retry_failed: bool = False,
               on_result: Callable[[TrialResult], None] | None = None,
               **trainer_kwargs: Any) -> RunSummary:
  """Trains every (design, seed) of a task that the bank lacks, committing each result.

  Args:
    bank: where results go (and what is skipped).
    task_name: the task's name in the bank; stored keys use it whatever the trainer names it.
    dataset: the task's dataset, or a zero-argument function returning it (called only when
      something is left to train).
    designs: designs to train (duplicates are trained once).
    seeds: seeds for every design.
    trainer: `trainer(designs, dataset, seeds, **trainer_kwargs)` returning one TrialResult per
      (design, seed), designs outer (or an iterator yielding them as they finish, in any
      order when their keys carry the planned design ids); default `engine.iter_population`.
    population_size: designs per trainer call; without checkpoints a kill loses at most one
      call's unfinished results.
    retry_failed: train again trials stored as 'failed' (diverged ones are results and stay).
    on_result: called with each result after it is committed (progress display).
    **trainer_kwargs: passed to the trainer (eval_every, max_parallel, devices, progress,
      checkpoint_dir, checkpoint_every).

  Returns:
    A RunSummary.
  """
  if population_size < 1:
    raise ValueError(f"population_size must be >= 1, got {population_size}")
  designs = list({d.design_id: d for d in designs}.values())
  keys = trial_keys(task_name, designs, seeds)
  done_statuses = (OK, DIVERGED) if retry_failed else bank_lib.STATUSES
  missing = bank.missing(keys, done_statuses)
  summary = RunSummary(requested=len(keys), skipped=len(keys) - len(missing))
  if not missing:
    return summary
  if callable(dataset):
    dataset = dataset()
  trainer = trainer or default_trainer()
  todo = {(k.design_id, k.seed) for k in missing}
  for population, population_seeds in _populations(designs, todo, seeds, population_size):
    expected = trial_keys(task_name, population, population_seeds)
    received = set()
    for position, result in enumerate(trainer(population, dataset, population_seeds,
                                              **trainer_kwargs)):
      result = _keyed(result, position, expected)
      bank.add(result)
      received.add(result.key)
      summary.trained += 1
      summary.by_status[result.status] = summary.by_status.get(result.status, 0) + 1
      if on_result is not None:
        on_result(result)
    lost = [k for k in expected if k not in received]
    if lost:
      logging.warning("trainer returned no result for %d trial(s) of %s (e.g. %s); a rerun "
                      "trains them", len(lost), task_name, lost[0])
  return summary


# ----------------------------------------------------------------------------------------------
# Progress.


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class ProgressPrinter:
  """Prints 'trials done / total, elapsed, ETA' after each committed trial.

  The ETA extrapolates the rate of the trials trained by this process (skipped ones are free).
  """

  def __init__(self, total: int, done: int = 0, print_fn: Callable[[str], None] = print,
               clock: Callable[[], float] = time.monotonic):
    self.total, self.done = total, done
    self._trained = 0
    self._print, self._clock = print_fn, clock
    self._started = clock()

  def __call__(self, result: TrialResult) -> None:
    self.done += 1
    self._trained += 1
    elapsed = self._clock() - self._started
    remaining = max(self.total - self.done, 0)
    eta = elapsed / self._trained * remaining
    val = result.final.get("val", {})
    metric = trial_lib.score_metric(val) or "accuracy"
    score = {"accuracy": "acc"}.get(metric, metric)
    self._print(f"[{self.done:{len(str(self.total))}d}/{self.total}] "
                f"{100 * self.done / max(self.total, 1):3.0f}%  elapsed {_duration(elapsed)}  "
                f"ETA {_duration(eta)}  {result.key.task} {result.key.design_id} "
                f"seed={result.key.seed} {result.status} "
                f"val_{score}={val.get(metric, math.nan):.3f}")


def engine_progress(print_fn: Callable[[str], None] = print, every_seconds: float = 15.0,
                    clock: Callable[[], float] = time.monotonic) -> Callable[..., None]:
  """A `progress(done, total, info)` callback for `engine.train_population` printing at most
  every `every_seconds` where a population is (chunk, epoch), so long populations show life."""
  last = [-math.inf]

  def report(done: int, total: int, info: Mapping[str, Any]) -> None:
    now = clock()
    resumed = info.get("resumed_at")
    if resumed and info.get("epoch") == resumed + 1:
      print_fn(f"  population: chunk {info.get('chunk', '?')} ({info.get('members', '?')} "
               f"members) resumed from its checkpoint at epoch {resumed}")
    if now - last[0] < every_seconds:
      return
    last[0] = now
    print_fn(f"  population: {done}/{total} trials done; chunk {info.get('chunk', '?')}/"
             f"{info.get('chunks', '?')} ({info.get('members', '?')} members) at epoch "
             f"{info.get('epoch', '?')}/{info.get('epochs', '?')}")
  return report


# ----------------------------------------------------------------------------------------------
# A whole study.


@dataclasses.dataclass
class StudyResult:
  """The plan, the trials of the studied tasks, and one rank table per dimension."""

  plan: list[PlanRow]
  results: list[TrialResult]
  tables: dict[str, analysis.RankTable]


def run_study(bank: bank_lib.Bank, space: DesignSpace, tasks: Mapping[str, Any],
              dims: Sequence[str] | None = None, num_base_designs: int = 8,
              seeds: Sequence[int] = (1, 2, 3), *, plan_seed: int = 0,
              max_epochs: int | None = None, trainer: Trainer | None = None,
              population_size: int = DEFAULT_POPULATION_SIZE,
              print_fn: Callable[[str], None] | None = print,
              host: tuple[int, int] = (0, 1), analyze: bool = True,
              search: str = "controlled", **trainer_kwargs: Any) -> StudyResult:
  """Plans a controlled random search, trains what the bank lacks on every task, ranks.

  Args:
    bank: the task-model bank (read for resumption, written with every result).
    space: the design space.
    tasks: task name -> dataset, or -> zero-argument loader (called only if needed).
    dims: studied dimensions (default: all of the space's).
    num_base_designs: setups per dimension and task.
    seeds: training seeds of every config (GraphGym: 1, 2, 3).
    plan_seed: seed of the plan.
    max_epochs: cap every design's epochs (quick runs); None keeps the space's.
    trainer: see `run_trials` (default engine.iter_population).
    population_size: designs per trainer call.
    print_fn: progress lines go here (None: silent).
    host: (k, n): train only host k's share of the (task, design) pairs, every n-th
      (`gnnjax.design.hosts`); the plan is the same on every host.
    analyze: rank the choices (False: train only, `tables` empty; a host's share alone is not
      a study).
    search: 'controlled' (GraphGym's controlled random search over `dims`, `num_base_designs`
      setups each) or 'random' (`num_base_designs` designs drawn uniformly, `dims` unused, no
      rank tables: a bank's pool for transfer studies); see `make_plan`.
    **trainer_kwargs: passed to the trainer.

  Returns:
    A StudyResult; `tables[dim]` ranks the choices of dim over tasks x setups.
  """
  plan = make_plan(space, search, dims, num_base_designs, plan_seed, max_epochs)
  designs = plan_designs(plan)
  pairs = hosts_lib.share([(task, design) for task in tasks for design in designs], *host)
  by_task = {task: [d for t, d in pairs if t == task] for task in tasks}
  all_keys = [k for task in tasks for k in trial_keys(task, by_task[task], seeds)]
  pending = len(bank.missing(all_keys))
  progress = ProgressPrinter(len(all_keys), len(all_keys) - pending, print_fn or (lambda _: None))
  if print_fn is not None:
    print_fn(f"{space.name}: {len(plan)} configs ({len(designs)} distinct designs) x "
             f"{len(seeds)} seed(s) x {len(tasks)} task(s) = {len(all_keys)} trials; "
             f"{len(all_keys) - pending} already in {bank.path}")
  for task, dataset in tasks.items():
    if by_task[task]:
      run_trials(bank, task, dataset, by_task[task], seeds, trainer,
                 population_size=population_size, on_result=progress, **trainer_kwargs)
  if not analyze:
    return StudyResult(plan=plan, results=[], tables={})
  wanted = set(all_keys)
  results = [r for task in tasks for r in bank.query(task=task) if r.key in wanted]
  studied = list(dict.fromkeys(row.dim for row in plan if row.dim != RANDOM_DIM))
  tables = {dim: analysis.rank_table(results, plan, dim) for dim in studied}
  return StudyResult(plan=plan, results=results, tables=tables)


def format_pools(results: Sequence[TrialResult], split: str = "val", metric: str | None = None
                 ) -> str:
  """A table of each task's pool: trials by status and the spread of the final `split` metric
  (None: each task's own, `analysis.trial_accuracy`; what a random plan leaves in the bank for
  transfer studies to draw from)."""
  by_task: dict[str, list[TrialResult]] = {}
  for result in results:
    by_task.setdefault(result.key.task, []).append(result)
  width = max([len("task")] + [len(t) for t in by_task])
  lines = [f"{'task':<{width}}  {'trials':>6}  {'ok':>5}  {'diverged':>8}  {'failed':>6}  "
           f"{split + ' ' + (metric or 'score') + ': best':>22}  {'median':>7}  {'worst':>7}"]
  for task in sorted(by_task):
    rows = by_task[task]
    scores = np.array([analysis.trial_accuracy(r, split, metric) for r in rows], dtype=float)
    scores = scores[np.isfinite(scores)]
    spread = (f"{scores.max():>22.4f}  {np.median(scores):>7.4f}  {scores.min():>7.4f}"
              if scores.size else f"{'-':>22}  {'-':>7}  {'-':>7}")
    counts = [sum(r.status == status for r in rows) for status in (OK, DIVERGED)]
    lines.append(f"{task:<{width}}  {len(rows):>6}  {counts[0]:>5}  {counts[1]:>8}  "
                 f"{len(rows) - sum(counts):>6}  {spread}")
  return "\n".join(lines)


def save_study(result: StudyResult, out_dir: str) -> list[str]:
  """Writes plan.json, ranks.json, ranks.png (every dimension) and ranks_<dim>.png into
  `out_dir`; returns the paths written."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name, payload in (("plan.json", plan_to_json(result.plan)),
                        ("ranks.json", {d: t.to_dict() for d, t in result.tables.items()})):
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
      json.dump(payload, f, indent=1)
      f.write("\n")
    paths.append(path)
  tables = [t for t in result.tables.values() if t.num_setups]
  if tables:
    paths.append(analysis.plot_ranks(tables, os.path.join(out_dir, "ranks.png")))
    for table in tables:
      paths.append(analysis.plot_ranks([table], os.path.join(out_dir, f"ranks_{table.dim}.png")))
  return paths

