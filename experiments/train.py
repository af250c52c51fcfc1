r"""Train one model on one dataset over several seeds (or k folds) and write a results JSON.

Examples:
  # Kipf & Welling's GCN on Cora, 10 seeds:
  python -m experiments.train --dataset=cora --data_dir=../shared/datasets --model=gcn \
      --normalize_features --seeds=0-9 --results_json=results/cora_gcn.json
  # GIN-0 on MUTAG with the GIN paper's 10-fold protocol:
  python -m experiments.train --dataset=MUTAG --data_dir=../shared/datasets --model=gin \
      --protocol=kfold --num_layers=5 --hidden=64 --batch_size=32 --epochs=350 \
      --schedule=step --weight_decay=0 --dropout=0.5
  # A GraphGym design on a synthetic task:
  python -m experiments.train --dataset=smallworld/clustering/pagerank --design=design.json
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging

from gnnjax import data as data_lib
from gnnjax.data import featurize
from gnnjax.models import baselines
from gnnjax.training import loop, optim, protocols

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", data_lib.DEFAULT_DATASET,
                    "Dataset name (see gnnjax.data): cora, MUTAG, bbbp, smallworld/clustering/"
                    "onehot, generated/... The default needs no files.")
flags.DEFINE_string("data_dir", None, "Local data root laid out like shared/datasets "
                    "(default: $GNNJAX_DATA, then the download cache).")
flags.DEFINE_enum("model", "gcn", list(baselines.MODELS), "Baseline model (ignored with --design).")
flags.DEFINE_string("design", None, "A GraphGym design: a JSON string or a path to a JSON file. "
                    "Overrides --model and the optimisation flags with the design's own.")
flags.DEFINE_integer("hidden", 16, "Hidden width (per head for GAT).")
flags.DEFINE_integer("num_layers", 2, "Number of layers (graph tasks: GIN's count, input "
                     "layer included).")
flags.DEFINE_float("dropout", 0.5, "Dropout rate.")
flags.DEFINE_integer("heads", 8, "GAT attention heads.")
flags.DEFINE_enum("pooling", "sum", ["sum", "mean", "max"], "Graph readout.")
flags.DEFINE_enum("optimizer", "adam", list(optim.OPTIMIZERS), "Optimizer.")
flags.DEFINE_float("lr", 0.01, "Learning rate.")
flags.DEFINE_float("weight_decay", 5e-4, "Weight decay (coupled L2 for adam/sgd).")
flags.DEFINE_enum("schedule", "constant", list(optim.SCHEDULES), "Learning-rate schedule.")
flags.DEFINE_integer("step_size", 50, "Epochs between decays of the 'step' schedule.")
flags.DEFINE_float("step_gamma", 0.5, "Decay factor of the 'step' schedule.")
flags.DEFINE_integer("epochs", 200, "Training epochs.")
flags.DEFINE_integer("batch_size", 32, "Graphs per batch (node tasks on one graph: full batch).")
flags.DEFINE_integer("eval_every", None, "Evaluate every k epochs (default: 1; 20 with --design, "
                     "GraphGym's eval period).")
flags.DEFINE_string("metric", None, "Model-selection metric (default by task type).")
flags.DEFINE_string("seeds", "0", "Seeds: a comma list (0,1,2) or a range (0-9).")
flags.DEFINE_enum("split", "default", list(data_lib.SPLIT_PROTOCOLS), "Split protocol.")
flags.DEFINE_enum("protocol", "holdout", ["holdout", "kfold"],
                  "holdout: train/val/test split per seed; kfold: stratified k-fold CV.")
flags.DEFINE_integer("folds", 10, "Folds for --protocol=kfold.")
flags.DEFINE_bool("normalize_features", False, "Row-normalise Planetoid features (Kipf).")
flags.DEFINE_integer("limit", None, "Use only the first N molecules (MoleculeNet).")
flags.DEFINE_string("results_json", None, "Where to write the results JSON.")
flags.DEFINE_string("metrics_dir", None, "Folder for per-run JSON-lines metric logs.")
flags.DEFINE_string("checkpoint_dir", None, "Folder for orbax checkpoints; re-running the same "
                    "command resumes interrupted runs.")
flags.DEFINE_integer("checkpoint_every", 50, "Epochs between checkpoints.")
flags.DEFINE_integer("log_every", 10, "Print progress every k evaluations (0: quiet).")


def _model_fn(design):
  if design is not None:
    from gnnjax.models import graphgym  # Imported lazily: only design runs need it.
    return lambda dataset: graphgym.build_model(design, dataset)[0]
  # Integer node features are the molecule featurisation of Hu et al. (atom type, chirality).
  molecule_vocab = (featurize.NUM_ATOM_TYPES, featurize.NUM_CHIRALITY)
  return lambda dataset: baselines.BaselineGNN(
      FLAGS.model, dataset.num_outputs, dataset.task_level, hidden=FLAGS.hidden,
      num_layers=FLAGS.num_layers, dropout=FLAGS.dropout, heads=FLAGS.heads,
      pooling=FLAGS.pooling,
      categorical_vocab=molecule_vocab if dataset.node_features_categorical else None)


def _load_design():
  if FLAGS.design is None:
    return None
  from gnnjax.design import design as design_lib
  text = FLAGS.design
  if os.path.exists(text):
    with open(text) as f:
      text = f.read()
  return design_lib.Design.from_json(text)


def main(argv):
  del argv
  design = _load_design()
  dataset = data_lib.load_dataset(FLAGS.dataset, FLAGS.data_dir, normalize_features=
                                  FLAGS.normalize_features, limit=FLAGS.limit)
  logging.info("%s", dataset.summary())
  if design is not None:
    from gnnjax.design import design as design_lib
    optim_config = design_lib.optim_config(design)
    epochs, batch_size = design.epochs, design.batch_size
  else:
    optim_config = optim.OptimConfig(
        optimizer=FLAGS.optimizer, learning_rate=FLAGS.lr, weight_decay=FLAGS.weight_decay,
        schedule=FLAGS.schedule, epochs=FLAGS.epochs, step_size=FLAGS.step_size,
        step_gamma=FLAGS.step_gamma)
    epochs, batch_size = FLAGS.epochs, FLAGS.batch_size
  if FLAGS.metrics_dir:
    os.makedirs(FLAGS.metrics_dir, exist_ok=True)
  fit_config = loop.FitConfig(
      epochs=epochs, eval_every=FLAGS.eval_every or (20 if design is not None else 1),
      metric=FLAGS.metric,
      log_path=FLAGS.metrics_dir and os.path.join(FLAGS.metrics_dir, "metrics"),
      checkpoint_dir=FLAGS.checkpoint_dir, checkpoint_every=FLAGS.checkpoint_every,
      log_every=FLAGS.log_every)
  seeds = protocols.parse_seeds(FLAGS.seeds)
  started = time.time()
  if FLAGS.protocol == "kfold":
    results = protocols.run_kfold(dataset, _model_fn(design), optim_config, fit_config,
                                  FLAGS.folds, seed=seeds[0], batch_size=batch_size)
    headline = results["best_epoch_test"]
    print(f"{dataset.name}: {FLAGS.folds}-fold {results['metric']} at best averaged epoch "
          f"{results['best_epoch']}: {headline['mean']:.4f} +- {headline['std']:.4f}; "
          f"last epoch {results['last_epoch_test']['mean']:.4f} +- "
          f"{results['last_epoch_test']['std']:.4f}")
  else:
    results = protocols.run_seeds(
        dataset, lambda seed: data_lib.apply_split(dataset, FLAGS.split, seed),
        _model_fn(design), optim_config, fit_config, seeds, batch_size)
    for key, stats in results["best_val"].items():
      if key.startswith(("val_", "test_")) and not key.endswith("_loss"):
        print(f"{dataset.name}: {key} at best val epoch: {stats['mean']:.4f} +- "
              f"{stats['std']:.4f} over {stats['n']} run(s)")
  results.update(dataset=dataset.name, dataset_report={k: v for k, v in dataset.report.items()
                                                       if k != "smiles"},
                 protocol=FLAGS.protocol, seconds=round(time.time() - started, 1),
                 design=design.to_dict() if design is not None else None,
                 flags={f.name: f.value for f in FLAGS.get_key_flags_for_module(__name__)})
  if FLAGS.results_json:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.results_json)), exist_ok=True)
    tmp = FLAGS.results_json + ".tmp"
    with open(tmp, "w") as f:
      json.dump(results, f, indent=1, default=str)
    os.replace(tmp, FLAGS.results_json)
    print(f"wrote {FLAGS.results_json}")


if __name__ == "__main__":
  app.run(main)
