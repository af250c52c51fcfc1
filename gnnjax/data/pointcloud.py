"""A generated point-cloud part-segmentation task (offline, seeded, NumPy).

Each cloud is a random 3-D shape made of 2-4 primitive parts, each a sphere, box, cylinder or
cone of random size and orientation, placed so that it touches or overlaps a part placed
before it. `points` points are sampled uniformly on the union of the part surfaces (each part
gets points in proportion to its area, at least `min_part_points`), jittered with Gaussian
noise, and the whole cloud is randomly rotated, centred and scaled into the unit ball.

Every point is labelled with the primitive type of the part it was sampled from
(0 sphere, 1 box, 2 cylinder, 3 cone): a 4-class node-level task. Absolute coordinates carry no
label information (random rotation, placement and scale), so a model has to read local
geometry (flat faces, edges, constant or single-direction curvature) and, for the flat caps of
cylinders and cones that look like box faces, context beyond the nearest neighbours: the task
rewards receptive field, i.e. depth and dilation.

Graphs follow `gnnjax.data.dataset`: nodes['x'] float32 [P, 3] (xyz), nodes['y'] int32 [P];
no edges (models build k-NN graphs on device, `gnnjax.nn.knn`), unless `static_k` > 0 asks for
the k-NN graph of xyz (self excluded, receivers = the point, sorted) as a static input graph.
Splits are whole clouds (`split_clouds`): a cloud's points are all train, all val or all test.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gnnjax.data import splits as splits_lib
from gnnjax.data.dataset import MULTICLASS, NODE, GraphDataset, make_graph

COLLECTION = "pointcloud"  # registry name: 'pointcloud' or 'pointcloud/<points>'
PRIMITIVES = ("sphere", "box", "cylinder", "cone")
NUM_CLASSES = len(PRIMITIVES)
DEFAULT_POINTS = 256
DEFAULT_NUM_GRAPHS = 256


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
  """A uniformly random 3x3 rotation (QR of a Gaussian matrix with the sign fix)."""
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  q = q * np.sign(np.diag(r))
  if np.linalg.det(q) < 0:
    q[:, 0] = -q[:, 0]
  return q


def _disc(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
  """n points uniform on a disc of `radius` in the xy plane -> [n, 2]."""
  rho = radius * np.sqrt(rng.uniform(size=n))
  phi = rng.uniform(0, 2 * np.pi, size=n)
  return np.stack([rho * np.cos(phi), rho * np.sin(phi)], axis=1)


def _sample_part(rng: np.random.Generator, kind: int, dims: np.ndarray, n: int) -> np.ndarray:
  """n points uniform on the surface of a primitive centred at the origin (axis z) -> [n, 3]."""
  if kind == 0:  # sphere, radius dims[0]
    v = rng.normal(size=(n, 3))
    return dims[0] * v / np.linalg.norm(v, axis=1, keepdims=True)
  if kind == 1:  # box, half-extents dims
    a = dims
    areas = np.array([a[1] * a[2], a[0] * a[2], a[0] * a[1]] * 2)
    face = rng.choice(6, size=n, p=areas / areas.sum())
    pts = rng.uniform(-1, 1, size=(n, 3)) * a
    axis = face % 3
    sign = np.where(face < 3, 1.0, -1.0)
    pts[np.arange(n), axis] = sign * a[axis]
    return pts
  r, h = dims[0], dims[1]
  if kind == 2:  # cylinder, radius r, half-height h
    side, cap = 2 * np.pi * r * 2 * h, np.pi * r * r
    where = rng.choice(3, size=n, p=np.array([side, cap, cap]) / (side + 2 * cap))
    phi = rng.uniform(0, 2 * np.pi, size=n)
    pts = np.stack([r * np.cos(phi), r * np.sin(phi), rng.uniform(-h, h, size=n)], axis=1)
    caps = where > 0
    pts[caps, :2] = _disc(rng, int(caps.sum()), r)
    pts[caps, 2] = np.where(where[caps] == 1, h, -h)
    return pts
  if kind == 3:  # cone, base radius r at z = -h/2, apex at z = +h/2
    lateral, base = np.pi * r * np.sqrt(r * r + h * h), np.pi * r * r
    on_base = rng.uniform(size=n) < base / (lateral + base)
    s = np.sqrt(rng.uniform(size=n))  # distance fraction from the apex; area density ~ s
    phi = rng.uniform(0, 2 * np.pi, size=n)
    pts = np.stack([r * s * np.cos(phi), r * s * np.sin(phi), h / 2 - h * s], axis=1)
    pts[on_base, :2] = _disc(rng, int(on_base.sum()), r)
    pts[on_base, 2] = -h / 2
    return pts
  raise ValueError(f"unknown primitive {kind}; choose from {list(range(NUM_CLASSES))}")


def _part_dims(rng: np.random.Generator, kind: int) -> tuple[np.ndarray, float, float]:
  """Random dimensions, surface area and bounding radius of a primitive."""
  if kind == 0:
    r = rng.uniform(0.4, 1.0)
    return np.array([r]), 4 * np.pi * r * r, r
  if kind == 1:
    a = rng.uniform(0.25, 0.9, size=3)
    return a, 8 * (a[0] * a[1] + a[1] * a[2] + a[0] * a[2]), float(np.linalg.norm(a))
  r, h = rng.uniform(0.25, 0.7), rng.uniform(0.4, 1.2)
  if kind == 2:
    return np.array([r, h]), 4 * np.pi * r * h + 2 * np.pi * r * r, float(np.hypot(r, h))
  return (np.array([r, 2 * h]), np.pi * r * np.sqrt(r * r + 4 * h * h) + np.pi * r * r,
          float(np.hypot(r, h)))


def _allocate(areas: np.ndarray, total: int, minimum: int) -> np.ndarray:
  """Point counts per part: proportional to area (largest remainder), each >= minimum."""
  minimum = min(minimum, total // len(areas))
  rest = total - minimum * len(areas)
  share = rest * areas / areas.sum()
  counts = np.floor(share).astype(np.int64)
  order = np.argsort(-(share - counts), kind="stable")
  counts[order[:rest - counts.sum()]] += 1
  return counts + minimum


def generate_cloud(rng: np.random.Generator, points: int = DEFAULT_POINTS, noise: float = 0.01,
                   min_parts: int = 2, max_parts: int = 4, min_part_points: int = 16
                   ) -> tuple[np.ndarray, np.ndarray]:
  """One random shape: (xyz float32 [points, 3] in the unit ball, labels int32 [points])."""
  num_parts = int(rng.integers(min_parts, max_parts + 1))
  kinds = rng.integers(0, NUM_CLASSES, size=num_parts)
  specs = [_part_dims(rng, int(k)) for k in kinds]
  centres = [np.zeros(3)]
  for i in range(1, num_parts):
    j = int(rng.integers(0, i))  # attach to an earlier part: touching or slightly overlapping
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    gap = (specs[i][2] + specs[j][2]) * rng.uniform(0.6, 0.9)
    centres.append(centres[j] + gap * direction)
  counts = _allocate(np.array([s[1] for s in specs]), points, min_part_points)
  xyz, labels = [], []
  for kind, (dims, _, _), centre, count in zip(kinds, specs, centres, counts):
    part = _sample_part(rng, int(kind), dims, int(count)) @ _random_rotation(rng).T + centre
    xyz.append(part)
    labels.append(np.full(int(count), kind, np.int32))
  xyz = np.concatenate(xyz) @ _random_rotation(rng).T
  xyz = xyz + noise * np.max(np.linalg.norm(xyz - xyz.mean(0), axis=1)) * rng.normal(size=xyz.shape)
  xyz = xyz - xyz.mean(0)
  xyz = xyz / np.max(np.linalg.norm(xyz, axis=1))
  order = rng.permutation(points)  # no part order in the point order
  return xyz[order].astype(np.float32), np.concatenate(labels)[order]


def _static_knn(xyz: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  d = ((xyz[:, None, :] - xyz[None, :, :]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  nbr = np.argsort(d, axis=1, kind="stable")[:, :k]
  return nbr.reshape(-1), np.repeat(np.arange(xyz.shape[0]), k)


def make_pointcloud_dataset(num_graphs: int = DEFAULT_NUM_GRAPHS, points: int = DEFAULT_POINTS,
                            seed: int = 0, noise: float = 0.01, static_k: int = 0,
                            name: str = "pointcloud") -> GraphDataset:
  """`num_graphs` generated clouds of `points` points each as a node-level GraphDataset.

  Deterministic per (seed, num_graphs, points, noise): cloud i is drawn from its own generator
  seeded (seed, i), so the first clouds do not change when more are asked for.
  """
  if num_graphs < 1 or points < 8:
    raise ValueError(f"need num_graphs >= 1 and points >= 8, got {num_graphs}, {points}")
  graphs = []
  for i in range(num_graphs):
    xyz, labels = generate_cloud(np.random.default_rng((seed, i)), points, noise)
    senders = receivers = np.zeros(0, np.int32)
    if static_k:
      senders, receivers = _static_knn(xyz, static_k)
    graphs.append(make_graph(senders, receivers, points, {"x": xyz, "y": labels}))
  report = {"points_per_graph": points, "classes": list(PRIMITIVES), "seed": seed,
            "noise": noise, "static_k": static_k, "generated": True}
  return GraphDataset(name=name, graphs=graphs, task_level=NODE, task_type=MULTICLASS,
                      num_outputs=NUM_CLASSES, report=report)


def split_clouds(dataset: GraphDataset, fractions=(0.8, 0.1, 0.1), seed: int = 0
                 ) -> GraphDataset:
  """Whole-cloud split: node masks that put every point of a cloud in the same split."""
  graph_splits = splits_lib.random_graph_split(len(dataset), fractions, seed=seed)
  which = {int(i): key for key, idx in graph_splits.items() for i in idx}
  graphs = []
  for i, graph in enumerate(dataset.graphs):
    n = int(graph.n_node[0])
    masks = [np.full(n, which.get(i) == key) for key in ("train", "val", "test")]
    graphs.append(splits_lib.with_node_split(graph, *masks))
  return dataclasses.replace(dataset, graphs=graphs)


def load_pointcloud(name: str = COLLECTION, num_graphs: int | None = None, seed: int = 0
                    ) -> GraphDataset:
  """The registry entry: 'pointcloud' (DEFAULT_POINTS points) or 'pointcloud/<points>'."""
  parts = name.lower().split("/")
  if parts[0] != COLLECTION or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
    raise ValueError(f"point-cloud dataset names are {COLLECTION!r} or '{COLLECTION}/<points>' "
                     f"(e.g. '{COLLECTION}/512'), got {name!r}")
  points = int(parts[1]) if len(parts) == 2 else DEFAULT_POINTS
  return make_pointcloud_dataset(num_graphs or DEFAULT_NUM_GRAPHS, points, seed=seed, name=name)
