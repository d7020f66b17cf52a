"""``mai serve``: an OpenAI-compatible HTTP endpoint (FastAPI + uvicorn) for the exported language model
and the ONNX voice.

``backends`` wraps the models (no HTTP), ``app`` maps the OpenAI wire format onto them (no model code),
``server`` loads both and runs uvicorn. Nothing here imports Dagster or MLflow: a serving host needs
the exported directories only.
"""
