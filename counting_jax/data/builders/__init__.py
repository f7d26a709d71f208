"""tensorflow-datasets builders, one module per data set."""
