"""``mai serve``: an OpenAI-compatible HTTP endpoint (FastAPI + uvicorn) for the exported language model
and the ONNX voice.

``backends`` wraps the models (no HTTP), with the continuous batch that all text generations share in
``batcher``; ``routes`` maps the OpenAI wire format onto them (no model code), with the request bodies
in ``schemas``, the error bodies in ``errors``, the log-probability shapes in ``logprobs``, the API
key, body size and concurrency limits in ``slots``, the inference thread pool in ``jobs`` and the
speech encodings in ``audio``; ``server`` loads both models and runs uvicorn. Nothing here imports
Dagster or MLflow: a serving host needs the exported directories only.
"""
