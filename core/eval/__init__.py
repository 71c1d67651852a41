"""Every policy across a grid of budgets: perplexity (teacher-forced and real decoding), hit accuracy,
attention recall, the co-reference and entities tasks, achieved sparsity. Writes JSON, plotly HTML
and a markdown table under assets/results/; finished cells are cached so an interrupted run resumes.

Perplexity follows the paper (held-out 1024-token chunks) with one change that matches real decoding:
the first `dense_prefix` tokens (64) are a dense prefill and the loss counts only tokens predicted by
later rows, each reading its own budget. Tasks use each sample's own prompt length the same way.
"""

# Modules, bottom up: config (what to measure), cache (finished cells and their keys), measure (one
# sequence's cells), stages (cells over the data, reduced per policy x budget; a whole run), report
# (markdown tables and figure panels, pure), figures (plotly, PNG and the files of a run), cli.
