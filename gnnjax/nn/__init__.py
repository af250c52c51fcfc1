"""Neural-network building blocks on padded `jraph.GraphsTuple`s."""
