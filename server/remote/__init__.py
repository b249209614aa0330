"""The remote backend: a web tier that forwards classification to other batchserve servers over HTTP.

`batchserve serve --backend remote --upstream URL[,URL...]` runs the routes, auth, rate limits and
events here and sends each request's images to one of its upstreams (see docs/remote-backend.md):
upstreams.py keeps the pool (circuit breakers, least outstanding work), health.py the checks,
forwarding.py one request's trip and retries (over client/pooled_http.py's keep-alive HTTP/1.1
connections, which the queue worker's S3 and SQS calls share), wire.py the bytes on the wire,
markers.py the upstream's cache and fallback marks, catalog.py the models the upstreams serve,
backend.py the `Backend` the routes call.
"""
