"""batchserve's HTTP edge: Litestar app, routes, configuration, the serve command and the shutdown sequence."""
