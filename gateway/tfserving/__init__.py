"""TF Serving's own API (REST ``/v1/models/...`` and gRPC ``tensorflow.serving.*``) over the DataPlane.

A TF Serving request is translated into the same InferRequest a v2 request becomes, so it gets
the same validation, queue, batcher and metrics, for every runtime. ``predict`` holds what both
transports share; ``json_codec`` and ``tensor_proto`` translate the two wire formats; ``rest``
and ``grpc_servicer`` are the transports. The generated modules in ``generated/`` register
``tensorflow.*`` messages: a process that imports them must never import tensorflow itself
(the frontends do not; the SavedModel worker never imports this package).
"""
