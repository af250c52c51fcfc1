"""gnnjax: graph neural network research at scale in JAX."""
