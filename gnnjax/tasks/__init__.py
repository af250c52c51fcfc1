"""Task space (GraphGym / AutoTransfer): anchors, task similarity, FIM task features and the
learned task embedding.

* `anchors`: AutoTransfer's 12 anchor designs; GraphGym's anchor selection.
* `similarity`: Kendall-tau task similarity from anchor performance; matrices and heatmaps.
* `fisher`: FIM-based task features (alpha = m2 / m1^2 per anchor and seed), jitted per anchor
  and vmapped over seeds.
* `embedding`: the projection g trained with the margin ranking loss; leave-one-task-out
  evaluation against GraphGym's similarity.
"""
