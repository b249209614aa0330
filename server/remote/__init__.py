"""The remote backend: a web tier that forwards classification to other batchserve servers over HTTP.

`batchserve serve --backend remote --upstream URL[,URL...]` runs the routes, auth, rate limits and
events here and sends each request's images to one of its upstreams (see docs/remote-backend.md):
upstreams.py keeps the pool (health, circuit breakers, least outstanding work), forwarding.py one
request's trip and retries, wire.py the bytes on the wire, catalog.py the models the upstreams
serve, backend.py the `Backend` the routes call.
"""
