"""TokenButler Studio core library: query-aware KV-cache sparsity for LLM decoding.

Importable without gradio; the app and the CLI only call into this package.
"""
