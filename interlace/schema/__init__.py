"""The API's types: the PruneJob spec and status models (schema.spec), the CRD generated from them
(schema.crd) and the facts both share with the pure-Python stages (schema.limits).

Pydantic only: the operator imports this package, and it never imports torch, transformers, ray or
kubernetes. This `__init__` imports nothing, so `interlace.schema.limits` loads without pydantic.
"""
